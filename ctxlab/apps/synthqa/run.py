"""`ctxlab synth-qa`: the synthetic-QA pipeline (ctxlab/apps/synthqa/generator.py) driven by ctxlab checkpoints.

- The generator is a native ctxlab checkpoint (load_model + Tokenizer + engine batched generation). It sees
  `generation_prompt(context)` followed by GEN_SEPARATOR, encoded without special tokens — exactly the SFT rows the
  experiment (ctxlab/apps/synthqa/experiment.py) trains on with `ctxlab train sft` — and should answer
  "question: … answer: …" then its end token. With `per_context > 1` it samples (default temperature 1.0).
- The round-trip QA model (the same checkpoint unless `qa_model` names another) answers greedily with the
  `xquad:LANG` task's prompt ("Context: …\\n\\nQuestion: …\\n\\nAnswer:") and parse (first non-empty line).

Every option, the contexts spec, the output path and the checkpoints' files are validated before any weights load.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ctxlab.apps.synthqa.generator import (
    DEFAULT_MIN_ROUNDTRIP_F1,
    Answer,
    Context,
    Generate,
    format_stats,
    load_contexts,
    run_synth_qa,
    save_synth_qa,
)
from ctxlab.checks import is_int
from ctxlab.errors import CtxlabError
from ctxlab.fileio import check_writable_dir
from ctxlab.tasks.base import Sample
from ctxlab.tasks.xquad import make_task

GEN_SEPARATOR = "\n"  # between the generation prompt and the "question: … answer: …" target
DEFAULT_SAMPLING_TEMPERATURE = 1.0  # used when per_context > 1 and no temperature is given
_QA_TASK = make_task("en")  # prompt/parse are language-independent; only scoring uses the language


def generator_prompt(prompt: str) -> str:
    """The text a generator checkpoint is conditioned on for a pipeline prompt ('context: …')."""
    return prompt + GEN_SEPARATOR


def qa_prompt(context: str, question: str) -> str:
    """The `xquad:LANG` task prompt (training rows for QA models use it too)."""
    return _QA_TASK.prompt(Sample(id="", context=context, question=question, reference=[]))


def qa_parse(generation: str) -> str:
    return _QA_TASK.parse(generation)


# ---------------------------------------------------------------------------------------------------- models


class TextModel:
    """A ctxlab checkpoint as a batched text-in/text-out function (plain prompts, no chat template)."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 16, name: str = ""):
        self.model, self.tokenizer, self.batch_size, self.name = model, tokenizer, batch_size, name
        self.truncated = 0  # prompts left-truncated to fit the context, over all calls

    @classmethod
    def load(cls, path: str | os.PathLike, *, dtype: str | None = None, device: str = "cpu",
             batch_size: int = 16) -> TextModel:
        from ctxlab.models.loading import load_model
        from ctxlab.tokenizer import Tokenizer

        loaded = load_model(path, dtype=dtype, device=device)
        for notice in loaded.notices:
            print(f"note: {notice}", file=sys.stderr)
        return cls(loaded.model, Tokenizer.from_dir(loaded.path), batch_size=batch_size, name=str(path))

    def complete(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = 0, stop: Sequence[str] = ()) -> list[str]:
        """One completion per prompt (special tokens dropped, cut at the first stop string), in prompt order.

        Prompts are sorted by length and run in batches of `batch_size` (less left padding); over-long prompts are
        left-truncated to fit the model's context. Batch k of a call samples with seed + k."""
        from ctxlab.engine import SamplingParams, StopCriteria, generate, trim_at_stop

        if not prompts:
            return []
        ids = self.tokenizer.encode_batch(list(prompts), add_special_tokens=False)
        crit = StopCriteria.from_strings(list(stop), self.tokenizer.decode) if stop else None
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[str] = [""] * len(ids)
        for k, b in enumerate(range(0, len(order), self.batch_size)):
            chunk = order[b:b + self.batch_size]
            params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                    seed=None if seed is None else seed + k)
            gens = generate(self.model, [ids[i] for i in chunk], params, self.tokenizer.eos_token_ids, crit,
                            truncate=True)
            for i, g in zip(chunk, gens, strict=True):
                self.truncated += int(g.truncated > 0)
                text = self.tokenizer.decode(g.ids, skip_special_tokens=True)
                out[i] = trim_at_stop(text, stop) if stop else text
        return out


def make_generate(lm: TextModel, *, max_new_tokens: int, temperature: float, top_p: float = 1.0,
                  seed: int = 0) -> Generate:
    """The pipeline's `generate` callable; each call gets fresh seeds, so repeated prompts differ when sampling."""
    calls = [0]

    def generate(prompts: list[str]) -> list[str]:
        calls[0] += 1
        return lm.complete([generator_prompt(p) for p in prompts], max_new_tokens=max_new_tokens,
                           temperature=temperature, top_p=top_p, seed=seed + 100_003 * calls[0])

    return generate


def make_answer(lm: TextModel, *, max_new_tokens: int = 32) -> Answer:
    """The pipeline's round-trip `answer` callable: greedy, XQuAD prompt, first line of the generation."""

    def answer(contexts: list[str], questions: list[str]) -> list[str]:
        prompts = [qa_prompt(c, q) for c, q in zip(contexts, questions, strict=True)]
        return [qa_parse(t) for t in lm.complete(prompts, max_new_tokens=max_new_tokens, stop=["\n"])]

    return answer


# ---------------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class SynthQAOptions:
    per_context: int = 1
    min_roundtrip_f1: float = DEFAULT_MIN_ROUNDTRIP_F1
    roundtrip: bool = True
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    max_new_tokens: int = 64
    qa_max_new_tokens: int = 32
    batch_size: int = 16



def resolve_options(per_context: int = 1, min_roundtrip_f1: float | None = None, roundtrip: bool = True,
                    qa_model: str | None = None, temperature: float | None = None, top_p: float = 1.0,
                    seed: int = 0, max_new_tokens: int = 64, qa_max_new_tokens: int = 32,
                    batch_size: int = 16) -> SynthQAOptions:
    """Check the options (one-line errors) and fill the defaults that depend on others."""
    if not is_int(per_context) or per_context < 1:
        raise CtxlabError(f"--per-context must be an integer >= 1, got {per_context!r}")
    if not roundtrip and (qa_model is not None or min_roundtrip_f1 is not None):
        raise CtxlabError("--no-roundtrip disables the QA model; drop --qa-model / --min-roundtrip-f1")
    f1 = DEFAULT_MIN_ROUNDTRIP_F1 if min_roundtrip_f1 is None else min_roundtrip_f1
    if not isinstance(f1, (int, float)) or not 0.0 <= f1 <= 1.0:
        raise CtxlabError(f"--min-roundtrip-f1 must be in [0, 1], got {f1!r}")
    if temperature is None:
        temperature = DEFAULT_SAMPLING_TEMPERATURE if per_context > 1 else 0.0
    if not isinstance(temperature, (int, float)) or not 0.0 <= temperature < float("inf"):
        raise CtxlabError(f"--temperature must be a finite number >= 0, got {temperature!r}")
    if per_context > 1 and temperature == 0:
        raise CtxlabError(f"--per-context {per_context} needs sampling (--temperature > 0): greedy repeats are "
                          "identical and would all be dropped as duplicates")
    if not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0:
        raise CtxlabError(f"--top-p must be in (0, 1], got {top_p!r}")
    if not is_int(seed) or seed < 0:
        raise CtxlabError(f"--seed must be an integer >= 0, got {seed!r}")
    for name, v in (("--max-new-tokens", max_new_tokens), ("--qa-max-new-tokens", qa_max_new_tokens),
                    ("--batch-size", batch_size)):
        if not is_int(v) or v < 1:
            raise CtxlabError(f"{name} must be an integer >= 1, got {v!r}")
    return SynthQAOptions(per_context, float(f1), roundtrip, float(temperature), float(top_p), seed, max_new_tokens,
                          qa_max_new_tokens, batch_size)


def check_out_path(out: str | os.PathLike, inputs: Sequence[str] = ()) -> Path:
    """OUT must be a .json file path whose directory exists or can be created, distinct from the inputs."""
    p = Path(out).expanduser()
    if p.suffix != ".json":
        raise CtxlabError(f"--out {out}: the output is SQuAD JSON; give a path ending in .json")
    if p.is_dir():
        raise CtxlabError(f"--out {out} is a directory; give a file path ending in .json")
    resolved = p.resolve()
    for src in inputs:
        if Path(src).exists() and Path(src).resolve() in (resolved, resolved.with_suffix(".stats.json")):
            raise CtxlabError(f"--out {out} would overwrite the input {src}")
    check_writable_dir(resolved.parent, f"--out {out}: directory")
    return p


def check_checkpoint(model: str | os.PathLike, flag: str = "MODEL") -> Path:
    """Resolve a checkpoint and check its config, tokenizer and weight files without reading any weights."""
    from ctxlab.models.loading import check_checkpoint as check

    try:
        return check(model)
    except CtxlabError as e:
        raise CtxlabError(f"{flag} {model}: {e}") from None


# ---------------------------------------------------------------------------------------------------- command


def synth_qa(
    model: str,
    contexts: str,
    out: str,
    *,
    per_context: int = 1,
    min_roundtrip_f1: float | None = None,
    roundtrip: bool = True,
    qa_model: str | None = None,
    temperature: float | None = None,
    top_p: float = 1.0,
    seed: int = 0,
    lang: str | None = None,
    max_new_tokens: int = 64,
    qa_max_new_tokens: int = 32,
    batch_size: int = 16,
    data_dir: str | None = None,
    dtype: str | None = None,
    device: str = "cpu",
    stdout: TextIO | None = None,
) -> dict[str, dict[str, Any]]:
    """Generate synthetic QA for CONTEXTS with MODEL, filter it, write OUT (+ OUT.stats.json); print the per-language
    stats and return them. `contexts` is `xquad:LANG[:SPLIT]` or a .txt/.jsonl/.json file (see load_contexts)."""
    from ctxlab.models.loading import default_dtype

    stdout = stdout or sys.stdout
    opts = resolve_options(per_context, min_roundtrip_f1, roundtrip, qa_model, temperature, top_p, seed,
                           max_new_tokens, qa_max_new_tokens, batch_size)
    out_path = check_out_path(out, [contexts])
    default_dtype(device, dtype)
    ctxs: list[Context] = load_contexts(contexts, lang=lang, data_dir=data_dir)
    gen_path = check_checkpoint(model, "MODEL")
    qa_path = check_checkpoint(qa_model, "--qa-model") if (opts.roundtrip and qa_model is not None) else None

    load = {"dtype": dtype, "device": device, "batch_size": opts.batch_size}
    gen_lm = TextModel.load(gen_path, **load)
    generate = make_generate(gen_lm, max_new_tokens=opts.max_new_tokens, temperature=opts.temperature,
                             top_p=opts.top_p, seed=opts.seed)
    answer = None
    qa_lm = None
    if opts.roundtrip:
        qa_lm = gen_lm if qa_path is None else TextModel.load(qa_path, **load)
        answer = make_answer(qa_lm, max_new_tokens=opts.qa_max_new_tokens)
    squad, stats = run_synth_qa(generate, answer, ctxs, opts.per_context, min_roundtrip_f1=opts.min_roundtrip_f1,
                                batch_size=opts.batch_size)
    path, side = save_synth_qa(squad, stats, out_path)
    print(format_stats(stats), file=stdout)
    kept = sum(s["kept"] for s in stats.values())
    rt = (f"round trip with {qa_lm.name} at F1 >= {opts.min_roundtrip_f1:g}" if qa_lm is not None
          else "no round trip")
    trunc = gen_lm.truncated + (qa_lm.truncated if qa_lm is not None and qa_lm is not gen_lm else 0)
    note = f"; {trunc} prompts left-truncated to fit the context" if trunc else ""
    print(f"wrote {kept} questions on {len(ctxs)} contexts to {path} (stats: {side}); "
          f"T={opts.temperature:g}, {opts.per_context}/context, {rt}{note}", file=stdout)
    return stats


__all__ = ["GEN_SEPARATOR", "SynthQAOptions", "TextModel", "check_checkpoint", "check_out_path", "generator_prompt",
           "make_answer", "make_generate", "qa_parse", "qa_prompt", "resolve_options", "synth_qa"]

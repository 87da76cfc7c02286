"""Inference strategies compared at equal compute (shared docs qttt.md §3.3, §5, App. G): answer directly, think
first, vote over samples, or adapt the queries (qTTT). One interface:

    Strategy.run(model, tokenizer, prompt, parse=None) -> StrategyResult(answer_text, parsed, flops, wall_time, extra)

`prompt` is a `Prompt(context, question)` (rendered here with the answer instruction; the context/question split
lets qTTT draw spans from the context only) or an already rendered string (used verbatim as the user message).
With a chat template the text becomes one user turn; thinking-capable templates (those reading `enable_thinking`,
Qwen3) get `enable_thinking` True for thinking strategies and False otherwise.

- InContext: decode the answer directly.
- Thinking: up to `think_tokens` generated tokens first — inside the model's `<think>` block when the template
  supports it, else after a scratchpad instruction that asks for the answer after "Final:". If thinking ends by
  itself ("</think>", or "Final:" in scratchpad mode) the model answers on; if the budget runs out (or EOS comes
  first) the closing tag and/or the "Final:" marker are forced and the answer is decoded after them.
- SelfConsistency: `samples` sampled thinking runs sharing the budget (think_tokens // samples each) from one
  prefill (the cache is truncated back to the prompt between samples); majority vote over parse(answer).
- QTTT: qTTT with N steps of span k chosen so that N steps cost no more than `think_tokens` thinking tokens
  (flops.ArchCost.match at this prompt length; matching="paper" uses the paper's dense formulas instead, which
  give N ≈ think_tokens / 2k), then a direct answer from the adapted model.

FLOPs are analytic (ctxlab.strategies.flops.ArchCost from the model's config, paper unit = MACs) from the actual token
counts: the prefill, every decoded/forced token written to the cache, and for qTTT each step at its actual span
start plus the 1-token refresh of the last prompt position. The answer text is what follows the last "Final:"
(or the whole answer when there is none); `parse` defaults to its first line.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from torch import nn

from ctxlab.engine import SamplingParams, StopCriteria, generate_from_cache, prefill
from ctxlab.errors import CtxlabError
from ctxlab.strategies.flops import DEFAULT_SPAN, ArchCost, CostModel, PaperCost
from ctxlab.strategies.qttt import QTTTConfig, QTTTResult, qttt_answer, resolve_region
from ctxlab.tasks.format import FINAL_MARKER, answer_region, format_prompt

Parse = Callable[[str], Any]
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Qwen3-recommended sampling (thinking mode) for self-consistency.
SC_PARAMS = SamplingParams(temperature=0.6, top_k=20, top_p=0.95, seed=0)


@dataclass(frozen=True)
class Prompt:
    context: str
    question: str
    system: str | None = None


@dataclass(frozen=True)
class StrategyResult:
    answer_text: str
    parsed: Any
    flops: float  # analytic, paper unit (multiply-accumulates)
    wall_time: float  # seconds, prefill included
    extra: dict = field(default_factory=dict)


class Strategy(Protocol):
    """What every strategy offers (InContext, Thinking, SelfConsistency, QTTT are frozen dataclasses of options)."""

    name: str

    def run(self, model: nn.Module, tokenizer, prompt: Prompt | str, parse: Parse | None = None) -> StrategyResult:
        ...


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    context_len: int | None  # prompt tokens up to the end of the context (None: unknown, str prompt)
    thinking_format: str  # "template" (<think> via enable_thinking) | "scratchpad" | "none"


def supports_thinking(tokenizer) -> bool:
    """The chat template reads `enable_thinking` (Qwen3-style <think> blocks)."""
    if not getattr(tokenizer, "has_chat_template", False):
        return False
    try:
        return "enable_thinking" in tokenizer.get_chat_template()
    except CtxlabError:
        return False


def encode_prompt(tokenizer, prompt: Prompt | str, thinking: bool) -> Encoded:
    """Token ids of the prompt, the number of tokens through the end of the context, and the thinking format."""
    template = getattr(tokenizer, "has_chat_template", False)
    native = supports_thinking(tokenizer)
    fmt = ("template" if native else "scratchpad") if thinking else "none"
    if isinstance(prompt, Prompt):
        body = format_prompt(prompt.context, prompt.question, thinking=thinking and not native)
        system, ctx_end = prompt.system, prompt.context
    else:
        body, system, ctx_end = prompt, None, None
    if template:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": body}]
        kw = {"enable_thinking": thinking} if native else {}
        text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, **kw)
        special = False
    else:
        text = f"{system}\n\n{body}" if system else body
        special = True
    ids = tokenizer.encode(text, add_special_tokens=special)
    context_len = None
    if ctx_end is not None and ctx_end in text:
        cut = text.index(ctx_end) + len(ctx_end)
        context_len = min(len(tokenizer.encode(text[:cut], add_special_tokens=special)), len(ids))
    if not ids:
        raise CtxlabError("the prompt encodes to no tokens")
    return Encoded(ids, context_len, fmt)


def default_parse(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


def answer_text(text: str) -> str:
    """The answer in a generation: after the thinking block (if any) and after the last "Final:" (if any)."""
    if THINK_CLOSE in text:
        text = text.rsplit(THINK_CLOSE, 1)[1]
    return answer_region(text)[0].strip()


class _Run:
    """One prompt's prefilled cache plus exact accounting of the tokens written after it."""

    def __init__(self, model: nn.Module, ids: list[int], extra_slots: int):
        limit = getattr(model, "max_context", None)
        T = len(ids)
        if limit is not None and T + extra_slots > limit:
            raise CtxlabError(f"prompt of {T} tokens + {extra_slots} generated tokens exceeds the model's context "
                              f"of {limit} tokens; lower the budget or shorten the context")
        self.model, self.T = model, T
        self.device = next(model.parameters()).device
        self.cache = model.new_cache(1, T + extra_slots)
        with torch.inference_mode():
            self.logits, _ = prefill(model, torch.tensor([ids], device=self.device), None, self.cache)  # (1, V)
        self.fed = 0  # tokens written after the prompt, over all samples
        self.at_prompt = self.cache.snapshot()

    def feed(self, ids: Sequence[int]) -> torch.Tensor:
        with torch.inference_mode():
            out, _ = self.model(torch.tensor([list(ids)], device=self.device), self.cache, last_only=True)
        return out[:, -1]  # (1, V)

    def reset(self) -> int:
        """Truncate back to the prompt; returns the tokens this sample wrote."""
        n = self.cache.length - self.T
        self.fed += n
        self.cache.restore(self.at_prompt)
        return n


def _force_text(fmt: str) -> str:
    """What is appended when thinking does not end by itself."""
    return "\n" + THINK_CLOSE + "\n\n" + FINAL_MARKER if fmt == "template" else "\n" + FINAL_MARKER


def _think_slots(tokenizer, fmt: str, budget: int, answer_tokens: int) -> int:
    """Cache slots after the prompt: ≤ budget thinking tokens, the forced text, the answer."""
    return budget + len(tokenizer.encode(_force_text(fmt), add_special_tokens=False)) + answer_tokens


def _think_sample(run: _Run, tokenizer, fmt: str, budget: int, answer_tokens: int, params: SamplingParams,
                  eos: tuple[int, ...]) -> tuple[str, dict]:
    """Thinking (≤ budget tokens), forced close if needed, then the answer. Returns (generated text, stats)."""
    logits, ids, natural = run.logits, [], False
    close = THINK_CLOSE if fmt == "template" else FINAL_MARKER
    pending: list[int] = []
    if budget > 0:
        stop = StopCriteria.from_strings([close], lambda t: tokenizer.decode(t, skip_special_tokens=False))
        g = generate_from_cache(run.model, logits, run.cache, replace(params, max_new_tokens=budget), eos, stop)[0]
        ids = list(g.ids)
        natural = g.finish_reason == "stop"
        pending = ids[-1:] if g.finish_reason != "eos" and ids else []
    think_used = len(ids)
    forced = [] if natural else tokenizer.encode(_force_text(fmt), add_special_tokens=False)
    if pending or forced:
        logits = run.feed(pending + forced)
    ids += forced
    seed = None if params.seed is None else params.seed + 1
    g = generate_from_cache(run.model, logits, run.cache,
                            replace(params, max_new_tokens=answer_tokens, seed=seed), eos)[0]
    ids += g.ids
    text = tokenizer.decode(ids, skip_special_tokens=False)
    return text, {"think_tokens": think_used, "forced": not natural, "generated_tokens": len(ids)}


def _eos(tokenizer) -> tuple[int, ...]:
    return tuple(getattr(tokenizer, "eos_token_ids", ()) or ())


def _check_int(name: str, value: int, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise CtxlabError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class InContext:
    max_answer_tokens: int = 64
    params: SamplingParams | None = None  # None = greedy
    name = "in-context"

    def run(self, model: nn.Module, tokenizer, prompt: Prompt | str, parse: Parse | None = None) -> StrategyResult:
        _check_int("max_answer_tokens", self.max_answer_tokens, 1)
        t0 = time.perf_counter()
        enc = encode_prompt(tokenizer, prompt, thinking=False)
        run = _Run(model, enc.ids, self.max_answer_tokens)
        params = replace(self.params or SamplingParams(), max_new_tokens=self.max_answer_tokens)
        g = generate_from_cache(model, run.logits, run.cache, params, _eos(tokenizer))[0]
        run.reset()
        text = tokenizer.decode(g.ids, skip_special_tokens=False)
        answer = answer_text(text)
        cost = ArchCost.from_config(model.cfg)
        flops = cost.prefill(run.T) + cost.decode(run.T, run.fed)
        extra = {"prompt_tokens": run.T, "generated_tokens": len(g.ids), "generation": text}
        return StrategyResult(answer, (parse or default_parse)(answer), flops, time.perf_counter() - t0, extra)


@dataclass(frozen=True)
class Thinking:
    think_tokens: int = 8192
    max_answer_tokens: int = 64
    params: SamplingParams | None = None  # None = greedy
    name = "thinking"

    def run(self, model: nn.Module, tokenizer, prompt: Prompt | str, parse: Parse | None = None) -> StrategyResult:
        _check_int("think_tokens", self.think_tokens, 0)
        _check_int("max_answer_tokens", self.max_answer_tokens, 1)
        t0 = time.perf_counter()
        enc = encode_prompt(tokenizer, prompt, thinking=True)
        run = _Run(model, enc.ids, _think_slots(tokenizer, enc.thinking_format, self.think_tokens,
                                                self.max_answer_tokens))
        params = self.params or SamplingParams()
        text, stats = _think_sample(run, tokenizer, enc.thinking_format, self.think_tokens, self.max_answer_tokens,
                                    params, _eos(tokenizer))
        run.reset()
        answer = answer_text(text)
        cost = ArchCost.from_config(model.cfg)
        flops = cost.prefill(run.T) + cost.decode(run.T, run.fed)
        extra = {"prompt_tokens": run.T, "format": enc.thinking_format, "generation": text, **stats}
        return StrategyResult(answer, (parse or default_parse)(answer), flops, time.perf_counter() - t0, extra)


@dataclass(frozen=True)
class SelfConsistency:
    think_tokens: int = 8192  # shared by all samples
    samples: int = 8
    max_answer_tokens: int = 64
    params: SamplingParams = SC_PARAMS
    name = "self-consistency"

    def run(self, model: nn.Module, tokenizer, prompt: Prompt | str, parse: Parse | None = None) -> StrategyResult:
        _check_int("samples", self.samples, 1)
        _check_int("think_tokens", self.think_tokens, 0)
        _check_int("max_answer_tokens", self.max_answer_tokens, 1)
        if self.params.greedy:
            raise CtxlabError("self-consistency needs sampling (temperature > 0); greedy samples are identical")
        parse = parse or default_parse
        t0 = time.perf_counter()
        enc = encode_prompt(tokenizer, prompt, thinking=True)
        per = self.think_tokens // self.samples
        run = _Run(model, enc.ids, _think_slots(tokenizer, enc.thinking_format, per, self.max_answer_tokens))
        answers, parsed, texts, fed = [], [], [], []
        base = self.params.seed
        for i in range(self.samples):
            seed = None if base is None else base + 2 * i  # seed + 1 is the sample's answer phase
            text, _ = _think_sample(run, tokenizer, enc.thinking_format, per, self.max_answer_tokens,
                                    replace(self.params, seed=seed), _eos(tokenizer))
            fed.append(run.reset())
            texts.append(text)
            answers.append(answer_text(text))
            parsed.append(parse(answers[-1]))
        votes = Counter(p for p in parsed if p is not None)
        if votes:
            best = max(votes.values())
            winner = next(p for p in parsed if p is not None and votes[p] == best)  # ties: first sampled
            idx = parsed.index(winner)
        else:
            winner, idx = None, 0
        cost = ArchCost.from_config(model.cfg)
        flops = cost.prefill(run.T) + sum(cost.decode(run.T, n) for n in fed)
        extra = {"prompt_tokens": run.T, "format": enc.thinking_format, "per_sample_budget": per,
                 "votes": dict(votes), "answers": answers, "generations": texts}
        return StrategyResult(answers[idx], winner, flops, time.perf_counter() - t0, extra)


def qttt_flops(cost: ArchCost, res: QTTTResult) -> dict[str, float]:
    """Analytic cost of a qttt_answer run from its actual counts: prefill, each step at its span start, the
    1-token refresh of the last prompt slot, probe passes (if any) and the decoded tokens."""
    T, k, rep = res.prompt_tokens, res.report.span, res.report
    parts = {
        "prefill": cost.prefill(T),
        "adapt": sum(cost.qttt_step(T, k, t) for t in rep.starts),
        "refresh": cost.frozen_forward(T - 1, 1),
        "probe": 2 * cost.frozen_forward(rep.probe_start, k) if rep.probe_start is not None else 0.0,
        "decode": cost.decode(T, res.fed_tokens),
    }
    parts["total"] = sum(parts.values())
    return parts


@dataclass(frozen=True)
class QTTT:
    """FLOP-matched qTTT: `steps` None = as many steps of span k as `think_tokens` thinking tokens would cost."""

    think_tokens: int = 8192
    span: int = DEFAULT_SPAN
    steps: int | None = None
    lr: float = 1e-5
    weight_decay: float = 0.01
    clip: float | None = 1.0
    seed: int = 0
    region: str | tuple[int, int] = "context"
    probe: bool = False  # probe losses cost two extra frozen forwards; off for fair timing
    matching: str = "arch"  # "arch": ArchCost of the model; "paper": the paper's dense formulas (PaperCost)
    max_answer_tokens: int = 64
    params: SamplingParams | None = None  # None = greedy
    name = "qttt"

    def config(self, T: int, context_len: int | None, cost: CostModel) -> tuple[QTTTConfig, dict]:
        cfg = QTTTConfig(steps=1 if self.steps is None else self.steps, span=self.span, lr=self.lr,
                         weight_decay=self.weight_decay, clip=self.clip, seed=self.seed, region=self.region,
                         probe=self.probe)
        lo, hi = resolve_region(cfg, T, context_len)
        k = min(self.span, hi - lo - 1)
        if self.steps is not None:
            return cfg, {"matched": False, "k": k, "N": self.steps}
        _check_int("think_tokens", self.think_tokens, 1)
        _, N = cost.match(T, self.think_tokens, k)
        return replace(cfg, steps=N), {"matched": True, "matching": self.matching, "k": k, "N": N,
                                       "think_budget": self.think_tokens}

    def run(self, model: nn.Module, tokenizer, prompt: Prompt | str, parse: Parse | None = None) -> StrategyResult:
        _check_int("max_answer_tokens", self.max_answer_tokens, 1)
        t0 = time.perf_counter()
        if self.matching not in ("arch", "paper"):
            raise CtxlabError(f"matching must be 'arch' or 'paper', got {self.matching!r}")
        enc = encode_prompt(tokenizer, prompt, thinking=False)
        cost = ArchCost.from_config(model.cfg)
        T = len(enc.ids)
        matcher = cost if self.matching == "arch" else PaperCost.from_config(model.cfg)
        cfg, match = self.config(T, enc.context_len, matcher)
        res = qttt_answer(model, enc.ids, cfg, self.max_answer_tokens, _eos(tokenizer), self.params,
                          context_len=enc.context_len)
        text = tokenizer.decode(res.ids, skip_special_tokens=False)
        answer = answer_text(text)
        flops = qttt_flops(cost, res)["total"]
        extra = {"prompt_tokens": T, "context_tokens": enc.context_len, **match, "generation": text,
                 "losses": list(res.report.losses), "probe_loss_before": res.report.probe_loss_before,
                 "probe_loss_after": res.report.probe_loss_after, "prefill_s": res.prefill_s,
                 "adapt_s": res.adapt_s, "decode_s": res.decode_s, "generated_tokens": len(res.ids)}
        return StrategyResult(answer, (parse or default_parse)(answer), flops, time.perf_counter() - t0, extra)


STRATEGIES: dict[str, type[Strategy]] = {
    "in-context": InContext, "thinking": Thinking, "self-consistency": SelfConsistency, "qttt": QTTT,
}

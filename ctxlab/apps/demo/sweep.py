"""`ctxlab demo`: the long-context sandbox sweep — in-context vs thinking vs qTTT at matched compute over prompt length
(shared docs qttt.md §2-§4, App. A/C/E).

For every task × target length × example (seeds seed, seed+1, ...; the needle is the same at every length, only the
haystack grows) and every strategy, it records the parsed answer, the attention mass on the evidence, the analytic
compute and the wall time. The strategies are those of ctxlab/strategies (what `ctxlab eval` runs), each asked for
an attention probe through its Request:

- in-context: the direct prompt (`render_prompt(example)`), greedy answer.
- thinking: the think-step-by-step prompt; the model writes its scratchpad until "Final:" (at most `think_budget`
  tokens; "\\nFinal:" is forced when the budget runs out or the model stops early), then the answer.
- qttt: qTTT on the direct prompt (spans from the context part only, AdamW on W_Q, frozen cache), then a greedy
  answer from the adapted model; the query weights are restored bit-exactly after every example.

Prompts are raw text, as the bundled model was trained (no chat template). Lengths are counted with the model's own
tokenizer (`Tokenizer.count_tokens`); a generator that cannot hit a length within its 5% tolerance gives its closest
example (tolerance=None), and tables report the actual mean prompt length.

Matched compute (ctxlab.strategies.flops.ArchCost of the model; unit = multiply-accumulates): by default each
example's qTTT step count N is the largest whose N steps of span k cost no more than `think_budget` thinking tokens
after that prompt (`ArchCost.match`); with `qttt_steps` given instead, the thinking budget is the most thinking
tokens N steps pay for (`ArchCost.think_budget`). Given both, nothing is matched (the output says so). Each
strategy prefills its own prompt and is charged its FLOPs and time.

Attention mass (App. E; ctxlab.strategies.diagnostics.probe_answer): teacher-forced on the reference answer tokens
that follow "Final:" — after the direct prompt + "Final:" (in-context; qTTT with the adapted weights) or after the
model's own scratchpad + "Final:" (thinking) — summed over the evidence tokens, averaged over layers, heads and
answer steps. Probes are diagnostics: their cost is in neither FLOPs nor wall time.

Output (out_dir): results.json (rewritten after every example, so an interrupted run leaves a valid file),
table.md, demo.png (accuracy and evidence mass vs length; ctxlab/apps/demo/report.py), plus a rich table and progress
bars on the terminal.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctxlab.apps.demo.records import DemoRecord, DemoResult, aggregate, write_json
from ctxlab.checks import is_int
from ctxlab.errors import CtxlabError
from ctxlab.fileio import check_writable_dir
from ctxlab.strategies import LM, QTTT, AnswerProbe, InContext, Outcome, Prompt, Request, Strategy, Thinking

SCHEMA = "ctxlab.apps.demo.sweep/1"
TASK_NAMES = ("bank", "code", "kv")
STRATEGY_NAMES = ("in-context", "thinking", "qttt")
DEFAULT_TASKS = ("kv", "bank", "code")
DEFAULT_LENGTHS = (256, 512, 1024, 2048, 4096)
QUICK_LENGTHS = (256, 1024)
FLOPS_UNIT = "multiply-accumulates (analytic, ctxlab.strategies.flops.ArchCost; x2 for hardware FLOPs)"
MIN_LENGTH = 64  # the sandbox generators' minimum
QTTT_REGIONS = ("context", "prompt")  # qTTT spans from the context only, or from context + question

# Defaults (full run, quick run). Sized on 2 shared CPU cores for the bundled model: see docs/demo_results.md.
DEFAULTS = {
    "n": (12, 6),
    "think_budget": (256, 128),
    "qttt_span": (32, 32),
    "qttt_lr": (3e-3, 3e-3),
    "qttt_region": ("context", "context"),
    "max_answer_tokens": (24, 24),
    # One torch thread: the bundled model's matmuls are small, and on a shared 2-core machine two OpenMP threads
    # ran 3-50x slower than one (spin-waiting against other processes); `--threads 2` on an idle machine.
    "threads": (1, 1),
}


# ---------------------------------------------------------------------------------------------------- config



def _names(value: str | Sequence[str], valid: Sequence[str], what: str) -> tuple[str, ...]:
    items = [s.strip() for s in value.split(",")] if isinstance(value, str) else [str(s).strip() for s in value]
    items = [s for s in items if s]
    if not items:
        raise CtxlabError(f"no {what}s given; valid: {', '.join(valid)}")
    bad = [s for s in items if s not in valid]
    if bad:
        raise CtxlabError(f"unknown {what} {bad[0]!r}; valid: {', '.join(valid)}")
    return tuple(dict.fromkeys(items))


def _lengths(value: str | Sequence[int]) -> tuple[int, ...]:
    raw = [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else list(value)
    out = []
    for x in raw:
        try:
            v = int(x) if isinstance(x, str) else x
        except ValueError:
            v = None
        if not is_int(v) or v < MIN_LENGTH:
            raise CtxlabError(f"lengths must be integers >= {MIN_LENGTH} tokens, got {x!r}")
        out.append(v)
    if not out:
        raise CtxlabError("no lengths given")
    return tuple(sorted(set(out)))


@dataclass(frozen=True)
class DemoConfig:
    model: str
    tasks: tuple[str, ...]
    lengths: tuple[int, ...]
    n: int
    strategies: tuple[str, ...]
    think_budget: int | None  # None with qttt_steps set: derived per example from the qTTT cost
    qttt_steps: int | None  # None: matched per example to think_budget
    qttt_span: int
    qttt_lr: float
    max_answer_tokens: int
    seed: int
    out_dir: str
    quick: bool
    threads: int
    qttt_region: str = "context"  # where qTTT spans are drawn: the context, or the whole prompt (question too)

    @property
    def matching(self) -> str:
        if self.qttt_steps is None:
            return "qttt-from-thinking"
        return "thinking-from-qttt" if self.think_budget is None else "none"

    def describe_matching(self) -> str:
        return {
            "qttt-from-thinking": f"qTTT steps N chosen per example so that N steps of span {self.qttt_span} cost no "
                                  f"more than {self.think_budget} thinking tokens (ArchCost.match)",
            "thinking-from-qttt": f"thinking budget chosen per example as the most thinking tokens that "
                                  f"{self.qttt_steps} qTTT steps of span {self.qttt_span} pay for "
                                  "(ArchCost.think_budget)",
            "none": f"not matched: {self.qttt_steps} qTTT steps of span {self.qttt_span}, thinking budget "
                    f"{self.think_budget} tokens (both given)",
        }[self.matching]


def make_config(
    model: str = "bundled", tasks: str | Sequence[str] = DEFAULT_TASKS, lengths: str | Sequence[int] | None = None,
    n: int | None = None, strategies: str | Sequence[str] = STRATEGY_NAMES, think_budget: int | None = None,
    qttt_steps: int | None = None, qttt_span: int | None = None, qttt_lr: float | None = None,
    max_answer_tokens: int | None = None, seed: int = 0, out_dir: str = "demo_out", quick: bool = False,
    threads: int | None = None, qttt_region: str | None = None,
) -> DemoConfig:
    """Validated options; None = the default for a full or a --quick run."""
    q = int(bool(quick))

    def pick(name: str, value: Any) -> Any:
        return DEFAULTS[name][q] if value is None else value

    if not isinstance(model, str) or not model.strip():
        raise CtxlabError("model must be 'bundled', a checkpoint directory or a hub id")
    cfg_tasks = _names(tasks, TASK_NAMES, "task")
    cfg_strats = _names(strategies, STRATEGY_NAMES, "strategy")
    cfg_lengths = _lengths(QUICK_LENGTHS if quick else DEFAULT_LENGTHS) if lengths is None else _lengths(lengths)
    if think_budget is None and qttt_steps is None:
        think_budget = DEFAULTS["think_budget"][q]
    n, span, lr, answer = pick("n", n), pick("qttt_span", qttt_span), pick("qttt_lr", qttt_lr), \
        pick("max_answer_tokens", max_answer_tokens)
    for name, value, low in (("n", n, 1), ("qttt_span", span, 1), ("max_answer_tokens", answer, 1), ("seed", seed, 0)):
        if not is_int(value) or value < low:
            raise CtxlabError(f"{name} must be an integer >= {low}, got {value!r}")
    if think_budget is not None and (not is_int(think_budget) or think_budget < 1):
        raise CtxlabError(f"think_budget must be an integer >= 1 tokens, got {think_budget!r}")
    if qttt_steps is not None and (not is_int(qttt_steps) or qttt_steps < 1):
        raise CtxlabError(f"qttt_steps must be an integer >= 1, got {qttt_steps!r}")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
        raise CtxlabError(f"qttt_lr must be a number > 0, got {lr!r}")
    region = pick("qttt_region", qttt_region)
    if region not in QTTT_REGIONS:
        raise CtxlabError(f"qttt_region must be one of {', '.join(QTTT_REGIONS)}, got {region!r}")
    threads = pick("threads", threads)
    if not is_int(threads) or threads < 1:
        raise CtxlabError(f"threads must be an integer >= 1, got {threads!r}")
    if not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir).strip():
        raise CtxlabError("out_dir must be a directory path")
    out = check_writable_dir(out_dir, "out_dir")
    return DemoConfig(model.strip(), cfg_tasks, cfg_lengths, n, cfg_strats, think_budget, qttt_steps, span, float(lr),
                      answer, seed, str(out), bool(quick), threads, region)


def resolve_model(model: str) -> Path | str:
    """'bundled' → ctxlab.assets.bundled_path() (a clear error when it is not built yet); anything else as given."""
    if model == "bundled":
        from ctxlab.assets import bundled_path

        return bundled_path()
    return model


# ------------------------------------------------------------------------------------------------ the runner


@dataclass(frozen=True)
class Item:
    """One example, encoded as the strategies encode it (raw text: the bundled model has no chat format)."""

    ex: Any  # SandboxExample
    prompt: Prompt
    prompt_tokens: int  # the direct prompt's tokens
    context_len: int | None  # tokens through the end of the context (a prefix of both prompts)
    probe: AnswerProbe  # evidence positions and the reference answer after "Final:"


def prepare(ex, lm: LM) -> Item:
    from ctxlab.strategies.diagnostics import char_spans_to_tokens
    from ctxlab.tasks.sandbox import FINAL_MARKER, render_target

    prompt = Prompt(ex.context, ex.question)
    enc = lm.encode(prompt, thinking=False)
    plain = lm.encode_plain
    offset = enc.context_len - len(plain(ex.context)) if enc.context_len is not None else 0  # e.g. a BOS token
    evidence = tuple(char_spans_to_tokens(plain, ex.context, ex.evidence, offset))
    target, fin = plain(render_target(ex, False)), plain(FINAL_MARKER)
    j = len(fin) if target[: len(fin)] == fin else 0
    while j < len(target) - 1 and not lm.tokenizer.decode(target[j : j + 1]).strip():
        j += 1  # a lone space token belongs to the marker: the answer steps start at the first answer character
    if j == 0:  # the target does not tokenize with "Final:" as a prefix: probe the whole target
        probe = AnswerProbe(evidence, tuple(target))
    else:
        probe = AnswerProbe(evidence, tuple(target[j:]), tuple(target[:j]), tuple(target[len(fin) : j]))
    return Item(ex, prompt, len(enc.ids), enc.context_len, probe)


class Runner:
    """Runs the strategies (ctxlab/strategies, the same ones `ctxlab eval` runs) on one prepared example."""

    def __init__(self, model: nn.Module, tok, cfg: DemoConfig):
        from ctxlab.strategies.thinking import forced_text

        self.lm = LM(model, tok, chat=False)
        self.cfg = cfg
        self.cost = self.lm.cost()
        self.device = next(model.parameters()).device
        self.forced = self.lm.encode_plain(forced_text("scratchpad"))

    def _qttt_plan(self, T: int, context_len: int | None) -> tuple[int, int | None, int | None]:
        """(span k, fixed steps N or None = matched by the strategy, thinking budget) per the matching mode."""
        k = min(self.cfg.qttt_span, (context_len or T) - 1)
        if self.cfg.matching == "qttt-from-thinking":
            return k, None, self.cfg.think_budget
        if self.cfg.matching == "thinking-from-qttt":
            return k, self.cfg.qttt_steps, self.cost.think_budget(T, k, self.cfg.qttt_steps)
        return k, self.cfg.qttt_steps, self.cfg.think_budget

    def strategies(self, item: Item) -> dict[str, Strategy]:
        k, steps, budget = self._qttt_plan(item.prompt_tokens, item.context_len)
        c = self.cfg
        return {"in-context": InContext(), "thinking": Thinking(think_tokens=budget),
                "qttt": QTTT(think_tokens=c.think_budget or 0, span=k, steps=steps, lr=c.qttt_lr,
                             region=c.qttt_region, probe=False)}

    def run(self, item: Item) -> list[DemoRecord]:
        strategies = self.strategies(item)
        req = Request(item.prompt, self.cfg.max_answer_tokens, seed=self.cfg.seed + item.ex.meta["seed"],
                      probe=item.probe)
        return [self._record(item, name, strategies[name], strategies[name].run(self.lm, req))
                for name in self.cfg.strategies]

    def _record(self, item: Item, name: str, strategy: Strategy, out: Outcome) -> DemoRecord:
        from ctxlab.tasks.sandbox import PARSERS

        ex, d, probe = item.ex, out.diagnostics, out.probe
        text = self.lm.tokenizer.decode(list(out.tokens), skip_special_tokens=True)
        pred = PARSERS[ex.task](text)
        extra: dict[str, Any] = {}
        if name == "thinking":
            extra = {"think_budget": strategy.think_tokens, "think_tokens": d["think_tokens"], "forced": d["forced"]}
        elif name == "qttt":
            losses = d["losses"]
            extra = {"think_budget": self._qttt_plan(item.prompt_tokens, item.context_len)[2],
                     "qttt_steps": len(losses), "qttt_span": d["span"],
                     "qttt_loss_first": losses[0] if losses else None, "qttt_loss_last": losses[-1] if losses else None}
        return DemoRecord(
            ex.task, ex.meta["target_tokens"], ex.meta["seed"], name, d["prompt_tokens"], item.context_len,
            len(item.probe.evidence), ex.answer, pred, pred == ex.answer, text, d["finish_reason"],
            None if probe is None else probe.mass, None if probe is None else probe.margin,
            None if probe is None else probe.answer_logprob, float(out.flops), out.wall_s, **extra,
        )


# ------------------------------------------------------------------------------------------------ examples


def make_example(task: str, seed: int, length: int, tok):
    """The task's example of `length` prompt tokens (this tokenizer), else its closest (see `example_near`)."""
    from ctxlab.tasks.sandbox import example_near

    ex = example_near(task, seed, length, tok.count_tokens)
    return replace(ex, meta={**ex.meta, "target_tokens": length})


# ------------------------------------------------------------------------------------------------ entry point


def run_demo(cfg: DemoConfig, console=None) -> DemoResult:
    """Run the sweep of a validated config (make_config), print the table, write results.json / table.md /
    demo.png to cfg.out_dir; returns the result. The model path is resolved before the model is loaded."""
    from rich.console import Console

    path = resolve_model(cfg.model)
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped / captured output: wide enough for the table on one line per row
            console = Console(width=160)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, path, console)
    finally:
        torch.set_num_threads(threads_before)


def _run(cfg: DemoConfig, path: Path | str, console) -> DemoResult:
    from ctxlab.eval.results import environment
    from ctxlab.models.loading import load_model
    from ctxlab.progress import progress_bar
    from ctxlab.tasks.sandbox import chance_level
    from ctxlab.tokenizer import Tokenizer

    t_start = time.perf_counter()
    loaded = load_model(path)
    tok = Tokenizer.from_dir(loaded.path)
    m = loaded.model
    limit = getattr(m, "max_context", None)
    runner = Runner(m, tok, cfg)
    longest = int(max(cfg.lengths) * 1.05) + 16
    extra = max((cfg.think_budget or 0) + len(runner.forced), 0) + cfg.max_answer_tokens + 8
    if limit is not None and longest + extra > limit:
        raise CtxlabError(f"length {max(cfg.lengths)} + thinking budget and answer (~{extra} tokens) exceed the "
                          f"model's context of {limit} tokens; choose shorter lengths")
    n_params = sum(p.numel() for p in m.parameters())
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(
        SCHEMA, "running", asdict(cfg),
        {"name": "bundled" if cfg.model == "bundled" else cfg.model, "path": str(loaded.path),
         "parameters": n_params, "max_context": limit, "config": loaded.hf_config},
        cfg.describe_matching(), FLOPS_UNIT,
        {**environment(device=str(runner.device)), "torch_threads": torch.get_num_threads()}, time.time(),
    )
    chance: dict[tuple[str, int], float] = {}
    json_path = out / "results.json"

    def save(status: str) -> None:
        result.status = status
        result.elapsed_s = time.perf_counter() - t_start
        result.points = aggregate(result.samples, chance)
        write_json(json_path, result.to_dict())

    save("running")
    total = len(cfg.tasks) * len(cfg.lengths) * cfg.n
    try:
        with progress_bar(console) as progress:
            bar = progress.add_task("demo", total=total)
            for task in cfg.tasks:
                for L in cfg.lengths:
                    progress.update(bar, description=f"{task} @ {L} tokens")
                    examples = []
                    for i in range(cfg.n):
                        ex = make_example(task, cfg.seed + i, L, tok)
                        examples.append(ex)
                        chance[task, L] = chance_level(task, examples)
                        result.samples.extend(runner.run(prepare(ex, runner.lm)))
                        save("running")
                        progress.advance(bar)
    except KeyboardInterrupt:
        save("interrupted")
        _finish(result, out, console, cfg)
        raise
    except BaseException:
        save("failed")
        raise
    save("complete")
    _finish(result, out, console, cfg)
    return result


def _finish(result: DemoResult, out: Path, console, cfg: DemoConfig) -> None:
    from ctxlab.apps.demo.report import markdown_table, plot, rich_table

    if not result.points:
        return
    (out / "table.md").write_text(markdown_table(result) + "\n")
    png = plot(result, out / "demo.png")
    console.print(rich_table(result))
    console.print(f"{len(result.samples)} records in {result.elapsed_s:.0f} s · compute: {result.matching} · "
                  f"results: {out / 'results.json'} · plot: {png}")

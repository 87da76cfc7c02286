"""`ctxlab demo`: the long-context sandbox sweep — in-context vs thinking vs qTTT at matched compute over prompt length
(shared docs qttt.md §2-§4, App. A/C/E).

For every task × target length × example (seeds seed, seed+1, ...; the needle is the same at every length, only the
haystack grows) and every strategy, it records the parsed answer, the attention mass on the evidence, the analytic
compute and the wall time:

- in-context: the direct prompt (`render_prompt(example)`), greedy answer.
- thinking: the think-step-by-step prompt; the model writes its scratchpad until "Final:" (at most `think_budget`
  tokens; "\\nFinal:" is forced when the budget runs out or the model stops early), then the answer.
- qtt: qTTT on the direct prompt (spans from the context part only, AdamW on W_Q, frozen cache), then a greedy
  answer from the adapted model; the query weights are restored bit-exactly after every example.

Prompts are raw text, as the bundled model was trained (no chat template). Lengths are counted with the model's own
tokenizer (`Tokenizer.count_tokens`); a generator that cannot hit a length within its 5% tolerance gives its closest
example (tolerance=None), and tables report the actual mean prompt length.

Matched compute (ctxlab.strategies.flops.ArchCost of the model; unit = multiply-accumulates): by default each
example's qTTT step count N is the largest whose N steps of span k cost no more than `think_budget` thinking tokens
after that prompt (`ArchCost.match`); with `qttt_steps` given instead, the thinking budget is the most thinking
tokens N steps pay for (`ArchCost.think_budget`). Given both, nothing is matched (the output says so). In-context
and qTTT read the same prompt, so one prefill serves both, and the thinking prompt shares its context + question
prefix (prefilled once, copied); each strategy is charged the full prefill's FLOPs and time, as if it had run alone.

Attention mass (App. E; ctxlab.strategies.diagnostics.probe_answer): teacher-forced on the reference answer tokens that
follow "Final:" — after the direct prompt + "Final:" (in-context; qTTT with the adapted weights) or after the
model's own scratchpad + "Final:" (thinking) — summed over the evidence tokens, averaged over layers, heads and
answer steps. Probes are diagnostics: their cost is in neither FLOPs nor wall time.

Output (out_dir): results.json (rewritten after every example, so an interrupted run leaves a valid file),
table.md, demo.png (accuracy and evidence mass vs length; ctxlab/apps/demo/report.py), plus a rich table and progress
bars on the terminal.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctxlab.errors import CtxlabError

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


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


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
        if not _is_int(v) or v < MIN_LENGTH:
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
        if not _is_int(value) or value < low:
            raise CtxlabError(f"{name} must be an integer >= {low}, got {value!r}")
    if think_budget is not None and (not _is_int(think_budget) or think_budget < 1):
        raise CtxlabError(f"think_budget must be an integer >= 1 tokens, got {think_budget!r}")
    if qttt_steps is not None and (not _is_int(qttt_steps) or qttt_steps < 1):
        raise CtxlabError(f"qttt_steps must be an integer >= 1, got {qttt_steps!r}")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
        raise CtxlabError(f"qttt_lr must be a number > 0, got {lr!r}")
    region = pick("qttt_region", qttt_region)
    if region not in QTTT_REGIONS:
        raise CtxlabError(f"qttt_region must be one of {', '.join(QTTT_REGIONS)}, got {region!r}")
    threads = pick("threads", threads)
    if not _is_int(threads) or threads < 1:
        raise CtxlabError(f"threads must be an integer >= 1, got {threads!r}")
    if not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir).strip():
        raise CtxlabError("out_dir must be a directory path")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CtxlabError(f"out_dir {out} exists and is not a directory")
    return DemoConfig(model.strip(), cfg_tasks, cfg_lengths, n, cfg_strats, think_budget, qttt_steps, span, float(lr),
                      answer, seed, str(out), bool(quick), threads, region)


def resolve_model(model: str) -> Path | str:
    """'bundled' → ctxlab.assets.bundled_path() (a clear error when it is not built yet); anything else as given."""
    if model == "bundled":
        from ctxlab.assets import bundled_path

        return bundled_path()
    return model


# --------------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class SampleRecord:
    """One example under one strategy."""

    task: str
    target_tokens: int
    seed: int
    strategy: str
    prompt_tokens: int  # the prompt this strategy read
    context_tokens: int | None
    evidence_tokens: int  # token positions holding the evidence
    reference: str
    prediction: str | None  # the task parser's reading of the generation (None: nothing parseable)
    correct: bool
    generation: str
    finish_reason: str
    attn_mass: float | None  # evidence attention mass (None: no probe)
    answer_margin: float | None  # first answer token: its logit − the best other logit
    answer_logprob: float | None  # Σ log p over the reference answer tokens
    flops: float
    wall_s: float
    think_budget: int | None = None
    think_tokens: int | None = None  # thinking tokens generated (before the forced marker, if any)
    forced: bool | None = None  # "Final:" had to be forced
    qttt_steps: int | None = None
    qttt_span: int | None = None
    qttt_loss_first: float | None = None
    qttt_loss_last: float | None = None


@dataclass(frozen=True)
class PointResult:
    """One task × length × strategy, aggregated over its examples."""

    task: str
    target_tokens: int
    strategy: str
    n: int
    correct: int
    accuracy: float  # 0-1
    ci_low: float  # Wilson 95% interval
    ci_high: float
    mean_prompt_tokens: float
    attn_mass: float | None
    attn_mass_sem: float | None
    flops: float  # mean per example
    wall_s: float  # mean per example
    chance: float  # a uniform guess among the candidates shown
    think_tokens: float | None = None  # mean
    qttt_steps: float | None = None  # mean


@dataclass
class DemoResult:
    schema: str
    status: str  # running | complete | interrupted | failed
    config: dict[str, Any]
    model: dict[str, Any]
    matching: str
    flops_unit: str
    env: dict[str, Any]
    started: float
    elapsed_s: float = 0.0
    points: list[PointResult] = field(default_factory=list)
    samples: list[SampleRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (0-1 scale)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (0.0 if k == 0 else max(0.0, mid - half)), (1.0 if k == n else min(1.0, mid + half))


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _sem(xs: Sequence[float]) -> float | None:
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) if len(xs) > 1 else None


def aggregate(samples: Sequence[SampleRecord], chance: dict[tuple[str, int], float]) -> list[PointResult]:
    groups: dict[tuple[str, int, str], list[SampleRecord]] = {}
    for s in samples:
        groups.setdefault((s.task, s.target_tokens, s.strategy), []).append(s)
    out = []
    for (task, L, strat), rs in groups.items():
        k, n = sum(r.correct for r in rs), len(rs)
        lo, hi = wilson(k, n)
        masses = [r.attn_mass for r in rs if r.attn_mass is not None]
        out.append(PointResult(
            task, L, strat, n, k, k / n, lo, hi, _mean([r.prompt_tokens for r in rs]), _mean(masses), _sem(masses),
            _mean([r.flops for r in rs]), _mean([r.wall_s for r in rs]), chance.get((task, L), 0.0),
            _mean([r.think_tokens for r in rs if r.think_tokens is not None]),
            _mean([r.qttt_steps for r in rs if r.qttt_steps is not None]),
        ))
    return out


def _finite(x: Any) -> Any:
    """JSON has no NaN/inf: non-finite floats become null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def write_json(path: Path, data: dict) -> None:
    """Atomic write: a reader (or an interrupted run) never sees half a file."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_finite(data), indent=1, allow_nan=False))
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------ the runner


@dataclass(frozen=True)
class Item:
    """One example, tokenized for the model."""

    ex: Any  # SandboxExample
    direct: list[int]  # the direct prompt
    think: list[int]  # the think-step-by-step prompt
    context_len: int | None  # tokens of the context (a prefix of both prompts), None if not a clean prefix
    evidence: list[int]  # token positions of the evidence (same in both prompts)
    marker: list[int]  # reference target tokens up to the answer: "Final:" (+ a lone space token)
    answer: list[int]  # reference answer tokens after `marker`
    marker_tail: list[int]  # the part of `marker` after the "Final:" tokens (appended after the model's own marker)


def _encoder(tok):
    return lambda text: tok.encode(text, add_special_tokens=False)


def prepare(ex, tok) -> Item:
    from ctxlab.strategies.diagnostics import char_spans_to_tokens
    from ctxlab.tasks.sandbox import FINAL_MARKER, render_prompt, render_target

    enc = _encoder(tok)
    direct, think = enc(render_prompt(ex, False)), enc(render_prompt(ex, True))
    ctx = enc(ex.context)
    context_len = len(ctx) if direct[: len(ctx)] == ctx and think[: len(ctx)] == ctx and len(ctx) >= 2 else None
    evidence = char_spans_to_tokens(enc, ex.context, ex.evidence)
    target, fin = enc(render_target(ex, False)), enc(FINAL_MARKER)
    j = len(fin) if target[: len(fin)] == fin else 0
    while j < len(target) - 1 and not tok.decode(target[j : j + 1]).strip():
        j += 1  # a lone space token belongs to the marker: the answer steps start at the first answer character
    if j == 0:  # the target does not tokenize with "Final:" as a prefix: probe the whole target
        return Item(ex, direct, think, context_len, evidence, [], target, [])
    return Item(ex, direct, think, context_len, evidence, target[:j], target[j:], target[len(fin) : j])


class Runner:
    """Runs the strategies on one prepared example; the model is float32 on CPU (or wherever it was loaded)."""

    def __init__(self, model: nn.Module, tok, cfg: DemoConfig):
        from ctxlab.strategies.flops import ArchCost

        self.model, self.tok, self.cfg = model, tok, cfg
        self.cost = ArchCost.from_config(model.cfg)
        self.device = next(model.parameters()).device
        self.eos = tuple(tok.eos_token_ids)
        self.fin = _encoder(tok)("Final:")
        self.forced = _encoder(tok)("\nFinal:")

    # ---- small helpers

    def _tensor(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.tensor([list(ids)], dtype=torch.long, device=self.device)

    def _feed(self, cache, ids: Sequence[int]) -> torch.Tensor:
        """Append ids to the cache; the last position's logits (1, V)."""
        with torch.no_grad():
            out, _ = self.model(self._tensor(ids), cache, last_only=True)
        return out[:, -1]

    def _greedy(self, logits, cache, max_new: int, stop=None):
        from ctxlab.engine import SamplingParams, generate_from_cache

        return generate_from_cache(self.model, logits, cache, SamplingParams(max_new_tokens=max_new), self.eos,
                                   stop)[0]

    def _probe(self, cache, prompt: list[int], extra: list[int], item: Item):
        """Evidence mass etc. with the current weights: the cache holds `prompt`; `extra` is appended, the answer
        teacher-forced, and the cache is rewound to len(prompt)."""
        from ctxlab.strategies.diagnostics import probe_answer

        T = len(prompt)
        try:
            if extra:
                self._feed(cache, extra)
            return probe_answer(self.model, cache, prompt + extra, item.evidence, item.answer)
        finally:
            cache.rewind(T)

    def _record(self, item: Item, strategy: str, prompt_tokens: int, ids: list[int], finish: str, probe, flops: float,
                wall: float, **extra: Any) -> SampleRecord:
        from ctxlab.tasks.sandbox import PARSERS

        ex = item.ex
        text = self.tok.decode(ids, skip_special_tokens=True)
        pred = PARSERS[ex.task](text)
        return SampleRecord(
            ex.task, ex.meta["target_tokens"], ex.meta["seed"], strategy, prompt_tokens, item.context_len,
            len(item.evidence), ex.answer, pred, pred == ex.answer, text, finish,
            None if probe is None else probe.mass, None if probe is None else probe.margin,
            None if probe is None else probe.answer_logprob, float(flops), wall, **extra,
        )

    def _qttt_plan(self, T: int, context_len: int | None) -> tuple[int, int, int | None]:
        """(span k, steps N, thinking budget) for a direct prompt of T tokens, per the matching mode."""
        k = min(self.cfg.qttt_span, (context_len or T) - 1)
        if self.cfg.matching == "qttt-from-thinking":
            return k, self.cost.match(T, self.cfg.think_budget, k)[1], self.cfg.think_budget
        if self.cfg.matching == "thinking-from-qttt":
            return k, self.cfg.qttt_steps, self.cost.think_budget(T, k, self.cfg.qttt_steps)
        return k, self.cfg.qttt_steps, self.cfg.think_budget

    # ---- strategies

    def run(self, item: Item) -> list[SampleRecord]:
        want = set(self.cfg.strategies)
        out: list[SampleRecord] = []
        k, N, budget = self._qttt_plan(len(item.direct), item.context_len)
        budget_t = self.cfg.think_budget if budget is None else budget
        A = self.cfg.max_answer_tokens
        caps = {}
        if want & {"in-context", "qttt"}:
            caps["direct"] = len(item.direct) + max(A, len(item.marker) + len(item.answer))
        if "thinking" in want:
            caps["think"] = (len(item.think) + budget_t + len(self.forced) + len(item.marker_tail)
                             + max(A, len(item.answer)))
        pre = self._prefill(item, caps)
        if "direct" in pre:
            out += self.direct(item, *pre["direct"], "in-context" in want, "qttt" in want, k, N, budget)
        if "think" in pre:
            out.append(self.thinking(item, *pre["think"], budget_t))
        order = {s: i for i, s in enumerate(self.cfg.strategies)}
        return sorted(out, key=lambda r: order[r.strategy])

    def _prefill(self, item: Item, caps: dict[str, int]) -> dict[str, tuple[Any, torch.Tensor, float]]:
        """Prefilled caches of the direct and/or thinking prompt: name → (cache, last logits (1, V), seconds).
        Both prompts start with the same context and question: with plain KV caches that prefix is prefilled once
        and copied, and its time is charged to both (what each would have spent alone)."""
        from ctxlab.engine import prefill
        from ctxlab.models.cache import KVCache

        ids = {"direct": item.direct, "think": item.think}
        caches = {name: self.model.new_cache(1, cap, rewindable=True) for name, cap in caps.items()}
        P, base = 0, {name: 0.0 for name in caps}
        if len(caps) == 2 and all(type(c) is KVCache for c in caches.values()):
            a, b = item.direct, item.think
            while P < min(len(a), len(b)) - 1 and a[P] == b[P]:
                P += 1
        with torch.no_grad():  # not inference mode: qTTT backpropagates through ops that read these caches
            if P > 0:
                src, dst = caches["direct"], caches["think"]
                t0 = time.perf_counter()
                prefill(self.model, self._tensor(a[:P]), None, src)
                t1 = time.perf_counter()
                dst.copy_prefix(src, P)
                base = {"direct": t1 - t0, "think": time.perf_counter() - t0}
            out = {}
            for name, cache in caches.items():
                t0 = time.perf_counter()
                logits, _ = prefill(self.model, self._tensor(ids[name][P:]), None, cache)
                out[name] = (cache, logits, base[name] + time.perf_counter() - t0)
        return out

    def direct(self, item: Item, cache, logits: torch.Tensor, t_prefill: float, in_context: bool, qttt: bool,
               k: int, N: int, budget: int | None) -> list[SampleRecord]:
        """In-context and/or qTTT from one prefilled cache of the direct prompt (qTTT never writes its slots)."""
        from ctxlab.strategies.native import qttt_flops
        from ctxlab.strategies.qttt import QTTTConfig, QTTTResult, adapted

        ids, T, A = item.direct, len(item.direct), self.cfg.max_answer_tokens
        out = []
        if in_context:
            t0 = time.perf_counter()
            g = self._greedy(logits, cache, A)
            wall = t_prefill + time.perf_counter() - t0
            fed = cache.length - T
            cache.rewind(T)
            flops = self.cost.prefill(T) + self.cost.decode(T, fed)
            probe = self._probe(cache, ids, item.marker, item)
            out.append(self._record(item, "in-context", T, g.ids, g.finish_reason, probe, flops, wall))
        if qttt:
            qcfg = QTTTConfig(steps=N, span=k, lr=self.cfg.qttt_lr, seed=self.cfg.seed + item.ex.meta["seed"],
                              region=self.cfg.qttt_region, probe=False)
            with adapted(self.model, cache, ids, qcfg, context_len=item.context_len) as report:
                t0 = time.perf_counter()
                with torch.no_grad():  # the adapted model's logits at the last prompt slot (queries only)
                    logits, _ = self.model(self._tensor(ids[-1:]), cache, start=T - 1, frozen=True)
                g = self._greedy(logits[:, -1], cache, A)
                t_decode = time.perf_counter() - t0
                fed = cache.length - T
                cache.rewind(T)
                probe = self._probe(cache, ids, item.marker, item)
            res = QTTTResult(g.ids, g.finish_reason, report, T, fed, t_prefill, report.wall_time, t_decode)
            flops = qttt_flops(self.cost, res)["total"]
            out.append(self._record(
                item, "qttt", T, g.ids, g.finish_reason, probe, flops, res.wall_time, think_budget=budget,
                qttt_steps=report.steps, qttt_span=report.span,
                qttt_loss_first=report.losses[0] if report.losses else None,
                qttt_loss_last=report.losses[-1] if report.losses else None,
            ))
        return out

    def thinking(self, item: Item, cache, logits: torch.Tensor, t_prefill: float, budget: int) -> SampleRecord:
        """Scratchpad until "Final:" (at most `budget` tokens, else forced), then the answer."""
        from ctxlab.engine import StopCriteria

        ids, T, A = item.think, len(item.think), self.cfg.max_answer_tokens
        t0 = time.perf_counter()
        thought: list[int] = []
        natural = False
        if budget > 0:
            stop = StopCriteria.from_strings(["Final:"], lambda t: self.tok.decode(t, skip_special_tokens=False))
            g = self._greedy(logits, cache, budget, stop)
            thought, natural = list(g.ids), g.finish_reason == "stop"
        # the decode loop does not feed its last sampled token (nor EOS): feed it with the forced marker, if any
        pending = thought[-1:] if thought and cache.length < T + len(thought) else []
        forced = [] if natural else list(self.forced)
        if pending or forced:
            logits = self._feed(cache, pending + forced)
        marked = T + len(thought) + len(forced)  # slots through "Final:"
        g = self._greedy(logits, cache, A)
        wall = t_prefill + time.perf_counter() - t0
        fed = cache.length - T
        flops = self.cost.prefill(T) + self.cost.decode(T, fed)
        cache.rewind(marked)
        probe = self._probe(cache, ids + thought + forced, item.marker_tail, item)
        return self._record(item, "thinking", T, thought + forced + g.ids, g.finish_reason, probe, flops, wall,
                            think_budget=budget, think_tokens=len(thought), forced=not natural)


# ------------------------------------------------------------------------------------------------ examples


def make_example(task: str, seed: int, length: int, tok):
    """The task's example of `length` prompt tokens (this tokenizer), else its closest (see `example_near`)."""
    from ctxlab.tasks.sandbox import example_near

    ex = example_near(task, seed, length, tok.count_tokens)
    return replace(ex, meta={**ex.meta, "target_tokens": length})


# ------------------------------------------------------------------------------------------------ entry point


def demo_cli(
    model: str = "bundled",
    tasks: str | Sequence[str] = DEFAULT_TASKS,
    lengths: str | Sequence[int] | None = None,
    n: int | None = None,
    strategies: str | Sequence[str] = STRATEGY_NAMES,
    think_budget: int | None = None,
    qttt_steps: int | None = None,
    qttt_span: int | None = None,
    qttt_lr: float | None = None,
    seed: int = 0,
    out_dir: str = "demo_out",
    quick: bool = False,
    *,
    max_answer_tokens: int | None = None,
    threads: int | None = None,
    qttt_region: str | None = None,
    console=None,
) -> DemoResult:
    """Run the sweep, print the table, write results.json / table.md / demo.png to out_dir; returns the result.
    All options are validated (and the model path resolved) before the model is loaded."""
    from rich.console import Console

    cfg = make_config(model, tasks, lengths, n, strategies, think_budget, qttt_steps, qttt_span, qttt_lr,
                      max_answer_tokens, seed, out_dir, quick, threads, qttt_region)
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
                        result.samples.extend(runner.run(prepare(ex, tok)))
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

"""The records of a `ctxlab demo` run: one DemoRecord per example × strategy, PointResult aggregates, the DemoResult
document written to results.json, and the Wilson interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ctxlab.fileio import write_json_atomic


@dataclass(frozen=True)
class DemoRecord:
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
    samples: list[DemoRecord] = field(default_factory=list)

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


def aggregate(samples: Sequence[DemoRecord], chance: dict[tuple[str, int], float]) -> list[PointResult]:
    groups: dict[tuple[str, int, str], list[DemoRecord]] = {}
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
    """Atomic write of a JSON document without NaN/inf (they become null)."""
    write_json_atomic(path, _finite(data), indent=1, allow_nan=False)

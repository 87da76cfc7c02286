"""Shared pieces of the sandbox tasks: the example record, a default token counter, the length fitter and the
rendering of an example in the lab-wide prompt/answer format (ctxlab/tasks/format.py) used by training, the demo
and the eval harness.

Length convention: `meta["n_tokens"]` (what the fitter aims at `n_tokens`) counts the no-thinking prompt
`render_prompt(example, thinking=False)`, i.e. context + question + answer instruction — what a model reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ctxlab.checks import check_int
from ctxlab.errors import CtxlabError
from ctxlab.tasks.format import FINAL_MARKER, format_prompt

CountTokens = Callable[[str], int]
TOLERANCE = 0.05  # allowed relative deviation of the prompt length from the target
MIN_TOKENS = 64


@dataclass(frozen=True)
class SandboxExample:
    """One generated example. `evidence` holds (char_start, char_end) spans of the needle inside `context`;
    `scratchpad` is a short correct reasoning text that ends with the answer (training target for "thinking")."""

    task: str
    context: str
    question: str
    answer: str
    evidence: tuple[tuple[int, int], ...]
    scratchpad: str
    meta: dict[str, Any] = field(default_factory=dict)


def render_prompt(example: SandboxExample, thinking: bool = False) -> str:
    return format_prompt(example.context, example.question, thinking)


def render_target(example: SandboxExample, thinking: bool = False) -> str:
    """What the model should produce: optionally the scratchpad, then `Final: <answer>`."""
    final = f"{FINAL_MARKER} {example.answer}"
    return f"{example.scratchpad}\n{final}" if thinking else final


def check_target(n_tokens: int) -> None:
    check_int("n_tokens", n_tokens, MIN_TOKENS)


def check_seed(seed: int) -> None:
    check_int("seed", seed, 0)


def span_of(context: str, line: str, start: int = 0) -> tuple[int, int]:
    """Character span of the first whole-line occurrence of `line` in `context` at or after `start`."""
    pos = start
    while True:
        i = context.find(line, pos)
        if i < 0:
            raise AssertionError(f"needle line not found in context: {line!r}")
        end = i + len(line)
        if (i == 0 or context[i - 1] == "\n") and (end == len(context) or context[end] == "\n"):
            return i, end
        pos = i + 1


def fit_length(
    build: Callable[[int, int], SandboxExample],
    count_tokens: CountTokens,
    n_tokens: int,
    *,
    n_max: int,
    fine_max: Callable[[int], int] = lambda n: 0,
    what: str = "example",
    tolerance: float | None = TOLERANCE,
) -> SandboxExample:
    """Pick haystack size n (coarse: operations, lines, pairs) and fine knob k so the prompt is closest to `n_tokens`.

    `build(n, k)` must be deterministic, with the prompt length non-decreasing in n (k = 0) and in k (for fixed n);
    k in [0, fine_max(n)] adds small amounts of text (e.g. memos) to bridge the gap between n and n + 1.
    Raises CtxlabError when no (n, k) is within `tolerance` (relative) of the target; `tolerance=None` accepts the
    closest example (its true length is in meta["n_tokens"]), e.g. for very short targets with coarse needles.
    """
    cache: dict[tuple[int, int], tuple[int, SandboxExample]] = {}

    def measure(n: int, k: int) -> int:
        if (n, k) not in cache:
            ex = build(n, k)
            cache[n, k] = (count_tokens(render_prompt(ex)), ex)
        return cache[n, k][0]

    # Largest n with measure(n, 0) <= target: galloping search, then bisection.
    lo, hi = 0, None
    if measure(0, 0) <= n_tokens:
        step = 1
        while True:
            cand = min(lo + step, n_max)
            if measure(cand, 0) > n_tokens:
                hi = cand
                break
            lo = cand
            if cand == n_max:
                break
            step *= 2
        if hi is not None:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if measure(mid, 0) <= n_tokens:
                    lo = mid
                else:
                    hi = mid
    candidates = [(lo, 0)]
    if hi is not None:
        candidates.append((hi, 0))
    k_hi = fine_max(lo)
    if k_hi > 0 and measure(lo, 0) < n_tokens:
        a, b = 0, k_hi  # largest k with measure <= target
        if measure(lo, b) <= n_tokens:
            a = b
        while b - a > 1:
            mid = (a + b) // 2
            if measure(lo, mid) <= n_tokens:
                a = mid
            else:
                b = mid
        candidates += [(lo, a), (lo, b)]
    n, k = min(candidates, key=lambda nk: (abs(measure(*nk) - n_tokens), nk))
    got, ex = measure(n, k), cache[n, k][1]
    if tolerance is not None and abs(got - n_tokens) > tolerance * n_tokens:
        raise CtxlabError(
            f"cannot build a {what} of {n_tokens} tokens (closest: {got} tokens); choose a larger or smaller length"
        )
    return replace(ex, meta={**ex.meta, "n_tokens": got, "target_tokens": n_tokens, "haystack_size": n})

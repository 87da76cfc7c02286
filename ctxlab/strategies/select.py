"""Strategies as the eval runner sees them: a prepared request in, an `Outcome` (answer text, raw generation,
FLOPs, wall time) out. Two kinds:

- `Generate` ("in-context" on every backend): plain generation through `backend.imap`, many requests at once
  (remote backends run them concurrently). No FLOP count (the runner cannot see inside a server).
- `TTTStrategy`: a ctxlab/ttt strategy object (InContext, Thinking, SelfConsistency, QTTT; interface
  `run(model, tokenizer, prompt, parse) -> StrategyResult(answer_text, parsed, flops, wall_time, extra)`)
  run on the native backend, one sample at a time, with analytic FLOPs at the configured thinking budget.

`make_strategy` validates the name, the backend's support for it and the strategy options before any model is
loaded. The answer text is what follows the last "</think>" and then the last "Final:" (the whole text when
neither occurs), the same rule as ctxlab/ttt, so the task's own parser sees comparable text on every backend.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ctxlab.errors import CtxlabError
from ctxlab.tasks.format import answer_region

THINK_CLOSE = "</think>"
# Fields the runner sets itself (budget, answer length, sampling); everything else is a strategy option.
_RUNNER_FIELDS = ("think_tokens", "max_answer_tokens", "params")
NATIVE_ONLY = ("thinking", "self-consistency", "qttt")  # need the weights and the KV cache
FORCED_TEXT_RESERVE = 16  # tokens for the forced "</think> Final:" text of thinking strategies


@dataclass(frozen=True)
class Request:
    """One sample, ready to run. `structured` = (context, question) when the task uses the standard
    context/question/"Final:" format and nothing was cut, so strategies can render it themselves (thinking
    instructions, qTTT spans drawn from the context only); otherwise `prompt` is used verbatim."""

    prompt: str
    max_new_tokens: int
    temperature: float
    seed: int
    structured: tuple[str, str] | None = None


@dataclass(frozen=True)
class Outcome:
    answer_text: str
    generation: str
    flops: float | None
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def answer_text(generation: str) -> str:
    if THINK_CLOSE in generation:
        generation = generation.rsplit(THINK_CLOSE, 1)[1]
    return answer_region(generation)[0].strip()


class Generate:
    """Plain generation on any backend (the in-context baseline of remote and hf backends)."""

    name = "in-context"
    batched = True
    thinking = False

    def __init__(self, budget: int):
        self.budget = budget

    def reserve(self, max_new_tokens: int) -> int:
        return max_new_tokens

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "generate", "options": {}}

    def run_many(self, backend: Any, reqs: Sequence[Request]) -> Iterator[tuple[int, Outcome]]:
        """Outcomes as requests finish; requests sharing max_new_tokens/temperature go to the backend together."""
        groups: dict[tuple[int, float], list[int]] = {}
        for i, r in enumerate(reqs):
            groups.setdefault((r.max_new_tokens, r.temperature), []).append(i)
        for (max_new, temp), idx in groups.items():
            for c in backend.imap([reqs[i].prompt for i in idx], max_new, temp):
                yield idx[c.index], Outcome(answer_text(c.text), c.text, None, c.wall_s)


class TTTStrategy:
    """A ctxlab.ttt strategy on the native backend."""

    batched = False

    def __init__(self, name: str, base: Any, budget: int):
        self.name = name
        self.thinking = name in ("thinking", "self-consistency")
        self.base = base  # a frozen dataclass instance with think_tokens already set
        self.budget = budget

    def reserve(self, max_new_tokens: int) -> int:
        think = getattr(self.base, "think_tokens", 0) if self.name in ("thinking", "self-consistency") else 0
        if self.name == "self-consistency":
            think //= max(1, self.base.samples)
        return max_new_tokens + (think + FORCED_TEXT_RESERVE if think else 0)

    def describe(self) -> dict[str, Any]:
        opts = {f.name: getattr(self.base, f.name) for f in dataclasses.fields(self.base)
                if f.name not in _RUNNER_FIELDS}
        return {"name": self.name, "kind": type(self.base).__name__, "options": opts}

    def _configured(self, req: Request) -> Any:
        from ctxlab.engine import SamplingParams

        fields = {f.name for f in dataclasses.fields(self.base)}
        kw: dict[str, Any] = {"max_answer_tokens": req.max_new_tokens}
        if self.name == "self-consistency":  # always samples; per-sample seed keeps resumed runs identical
            kw["params"] = dataclasses.replace(self.base.params, seed=req.seed)
        elif "params" in fields:
            kw["params"] = SamplingParams(temperature=req.temperature, seed=req.seed) if req.temperature > 0 else None
        if "seed" in fields:  # qTTT's span sampling
            kw["seed"] = req.seed
        return dataclasses.replace(self.base, **kw)

    def run(self, backend: Any, req: Request) -> Outcome:
        from ctxlab.strategies.native import Prompt

        strategy = self._configured(req)
        prompt = Prompt(*req.structured) if req.structured else req.prompt
        t0 = time.perf_counter()
        res = backend.run_strategy(strategy, prompt, parse=lambda s: s)
        wall = res.wall_time if res.wall_time else time.perf_counter() - t0
        extra = dict(res.extra)
        gen = extra.pop("generation", None)
        if gen is None:
            gens = extra.get("generations") or []
            gen = gens[0] if gens else res.answer_text
        return Outcome(res.answer_text.strip(), gen, float(res.flops), wall, extra)


# ------------------------------------------------------------------------------------------------ building


def strategy_classes() -> dict[str, type]:
    from ctxlab.strategies.native import STRATEGIES

    return dict(STRATEGIES)


def _coerce_field(cls: type, name: str, default: Any, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    v = value.strip()
    if v.lower() == "none":
        return None
    kind = type(default)
    try:
        if kind is bool:
            if v.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError
            return v.lower() in ("1", "true", "yes", "on")
        if kind is int or (default is None and v.lstrip("-").isdigit()):
            return int(v)
        if kind is float:
            return float(v)
    except ValueError:
        raise CtxlabError(f"strategy option {name} must be {kind.__name__}, got {value!r}") from None
    return v


def make_strategy(name: str, supported: Sequence[str], budget: int,
                  options: Mapping[str, Any] | None = None, backend: str = "native") -> Generate | TTTStrategy:
    """The runner's strategy object; names, backend support and options are checked here (no model needed)."""
    options = dict(options or {})
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
        raise CtxlabError(f"budget_think_tokens must be an integer >= 0, got {budget!r}")
    if name not in supported:
        if backend != "native" and name in NATIVE_ONLY:
            raise CtxlabError(f"strategy {name!r} is not available on backend {backend} (valid there: "
                              f"{', '.join(supported)}); {', '.join(NATIVE_ONLY)} need --backend native")
        raise CtxlabError(f"unknown strategy {name!r}; valid strategies: {', '.join(supported)}")
    if backend != "native" or supported == ("in-context",):
        if options:
            raise CtxlabError(f"strategy {name} on backend {backend} takes no options (got {', '.join(options)})")
        return Generate(budget)
    cls = strategy_classes()[name]
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in _RUNNER_FIELDS}
    kw: dict[str, Any] = {}
    for key, value in options.items():
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "none"
            raise CtxlabError(f"unknown option {key!r} for strategy {name}; valid options: {valid}")
        f = fields[key]
        default = f.default if f.default is not dataclasses.MISSING else None
        kw[key] = _coerce_field(cls, key, default, value)
    if "think_tokens" in {f.name for f in dataclasses.fields(cls)}:
        if name == "qttt" and budget < 1 and kw.get("steps") is None:
            raise CtxlabError("qttt matches FLOPs to the thinking budget: give budget_think_tokens >= 1 "
                              "(or a fixed steps option)")
        kw["think_tokens"] = budget
    try:
        base = cls(**kw)
    except TypeError as e:
        raise CtxlabError(f"strategy {name}: {e}") from None
    return TTTStrategy(name, base, budget)

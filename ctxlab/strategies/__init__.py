"""Inference strategies compared at equal compute: answer directly, think first, vote over samples, or adapt the
queries (qTTT). One contract (ctxlab/strategies/base.py): `strategy.run(lm, Request) -> Outcome`.

    base.py            Prompt, Request, Outcome, LM, the Strategy base, prompt encoding, one prefill (Prefilled)
    direct.py          InContext (native and remote backends)
    thinking.py        Thinking, SelfConsistency
    qttt.py            the qTTT algorithm: adapt / adapted / qttt_answer, QTTTConfig (query-only TTT)
    qttt_strategy.py   QTTT: qTTT FLOP-matched to a thinking budget, qttt_flops
    flops.py           analytic cost models (ArchCost, PaperCost) and matching
    diagnostics.py     attention mass on the evidence, answer margins (probe_answer, diagnose)

`make_strategy` validates a name and its options (strings from the CLI are converted to the option's type) before
any model is loaded; `STRATEGIES` is the registry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ctxlab.checks import check_int, coerce_like
from ctxlab.errors import CtxlabError
from ctxlab.strategies.base import LM, AnswerProbe, Outcome, Prompt, Request, Strategy
from ctxlab.strategies.direct import InContext
from ctxlab.strategies.qttt_strategy import QTTT
from ctxlab.strategies.thinking import SelfConsistency, Thinking

STRATEGIES: dict[str, type[Strategy]] = {
    "in-context": InContext, "thinking": Thinking, "self-consistency": SelfConsistency, "qttt": QTTT,
}
NATIVE_ONLY = tuple(n for n, c in STRATEGIES.items() if c.needs_weights)

__all__ = ["LM", "NATIVE_ONLY", "STRATEGIES", "AnswerProbe", "InContext", "Outcome", "Prompt", "QTTT", "Request",
           "SelfConsistency", "Strategy", "Thinking", "make_strategy"]


def make_strategy(name: str, budget: int, options: Mapping[str, Any] | None = None, *,
                  supported: tuple[str, ...] = tuple(STRATEGIES), backend: str = "native") -> Strategy:
    """The strategy `name` with `options` (the thinking budget fills its budget fields); names, backend support and
    options are checked here, before any model is loaded."""
    options = dict(options or {})
    check_int("budget_think_tokens", budget, 0)
    if name not in supported:
        if name in NATIVE_ONLY:
            raise CtxlabError(f"strategy {name!r} is not available on backend {backend} (valid there: "
                              f"{', '.join(supported)}); {', '.join(NATIVE_ONLY)} need --backend native")
        raise CtxlabError(f"unknown strategy {name!r}; valid strategies: {', '.join(supported)}")
    cls = STRATEGIES[name]
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in cls.budget_fields}
    kw: dict[str, Any] = {}
    for key, value in options.items():
        f = fields.get(key)
        if f is None or not _settable(f):
            valid = ", ".join(sorted(k for k, g in fields.items() if _settable(g))) or "none"
            raise CtxlabError(f"unknown option {key!r} for strategy {name}; valid options: {valid}")
        default = f.default if f.default is not dataclasses.MISSING else None
        kw[key] = coerce_like(default, value, f"strategy option {key}", none_ok=True)
    kw.update({b: budget for b in cls.budget_fields})
    try:
        return cls(**kw)
    except TypeError as e:
        raise CtxlabError(f"strategy {name}: {e}") from None


def _settable(f: dataclasses.Field) -> bool:
    """Options given as KEY=VALUE: scalar fields (not e.g. self-consistency's SamplingParams)."""
    default = f.default if f.default is not dataclasses.MISSING else None
    return default is None or isinstance(default, (bool, int, float, str))

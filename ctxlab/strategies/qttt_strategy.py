"""qTTT as a strategy at matched compute (shared docs qttt.md §3.3, §5): N steps of span k chosen so that N steps
cost no more than `think_tokens` thinking tokens (flops.ArchCost.match at this prompt length; matching="paper" uses
the paper's dense formulas instead, which give N ≈ think_tokens / 2k), then a direct answer from the adapted model.
The algorithm itself is ctxlab/strategies/qttt.py (`qttt_answer`).

FLOPs are analytic from the actual counts: the prefill, each step at its actual span start, the 1-token refresh of
the last prompt position, probe passes (if any) and every decoded token written to the cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from ctxlab.checks import check_int
from ctxlab.errors import CtxlabError
from ctxlab.strategies.base import LM, Outcome, Request, Strategy, outcome, run_probe
from ctxlab.strategies.flops import DEFAULT_SPAN, ArchCost, CostModel, PaperCost
from ctxlab.strategies.qttt import QTTTConfig, QTTTResult, qttt_answer, resolve_region

MATCHINGS = ("arch", "paper")


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
class QTTT(Strategy):
    """FLOP-matched qTTT: `steps` None = as many steps of span k as `think_tokens` thinking tokens would cost.
    Spans are drawn with the request's seed."""

    think_tokens: int = 8192
    span: int = DEFAULT_SPAN
    steps: int | None = None
    lr: float = 1e-5
    weight_decay: float = 0.01
    clip: float | None = 1.0
    region: str | tuple[int, int] = "context"
    probe: bool = False  # probe losses cost two extra frozen forwards; off for fair timing
    matching: str = "arch"  # "arch": ArchCost of the model; "paper": the paper's dense formulas (PaperCost)
    name = "qttt"
    budget_fields = ("think_tokens",)

    def __post_init__(self) -> None:
        if self.matching not in MATCHINGS:
            raise CtxlabError(f"matching must be 'arch' or 'paper', got {self.matching!r}")
        check_int("steps", self.steps, 0, allow_none=True)
        if self.steps is None:
            check_int("think_tokens (qTTT matches FLOPs to the thinking budget; or give fixed steps)",
                      self.think_tokens, 1)
        QTTTConfig(steps=self.steps or 0, span=self.span, lr=self.lr, weight_decay=self.weight_decay,
                   clip=self.clip, region=self.region)  # validates the hyperparameters

    def config(self, T: int, context_len: int | None, cost: CostModel, seed: int = 0) -> tuple[QTTTConfig, dict]:
        """The qTTT hyperparameters for a prompt of T tokens (N matched unless fixed) and what was matched."""
        cfg = QTTTConfig(steps=1 if self.steps is None else self.steps, span=self.span, lr=self.lr,
                         weight_decay=self.weight_decay, clip=self.clip, seed=seed, region=self.region,
                         probe=self.probe)
        lo, hi = resolve_region(cfg, T, context_len)
        k = min(self.span, hi - lo - 1)
        if self.steps is not None:
            return cfg, {"matched": False, "k": k, "N": self.steps}
        _, N = cost.match(T, self.think_tokens, k)
        return replace(cfg, steps=N), {"matched": True, "matching": self.matching, "k": k, "N": N,
                                       "think_budget": self.think_tokens}

    def run(self, lm: LM, req: Request) -> Outcome:
        t0 = time.perf_counter()
        enc = lm.encode(req.prompt, thinking=False)
        cost = lm.cost()
        T = len(enc.ids)
        matcher = cost if self.matching == "arch" else PaperCost.from_config(lm.model.cfg)
        cfg, match = self.config(T, enc.context_len, matcher, req.seed)
        p = req.probe
        t_setup = time.perf_counter() - t0
        res = qttt_answer(lm.model, enc.ids, cfg, req.max_new_tokens, lm.eos,
                          req.sampling() if req.temperature > 0 else None, context_len=enc.context_len,
                          probe=(lambda m, c: run_probe(m, c, enc.ids, p.marker, p)) if p else None,
                          probe_slots=p.slots(p.marker) if p else 0)
        rep = res.report
        flops = qttt_flops(cost, res)
        stats = {"prompt_tokens": T, "context_tokens": enc.context_len, **match, "losses": list(rep.losses),
                 "span": rep.span, "region": list(rep.region), "probe_loss_before": rep.probe_loss_before,
                 "probe_loss_after": rep.probe_loss_after, "prefill_s": res.prefill_s, "adapt_s": res.adapt_s,
                 "decode_s": res.decode_s, "generated_tokens": len(res.ids), "finish_reason": res.finish_reason,
                 "flops_parts": flops}
        # wall time: setup, prefill, adaptation and decoding (a requested probe is a diagnostic, not counted)
        return outcome(lm, res.ids, flops["total"], t_setup + res.wall_time, stats, res.probe)

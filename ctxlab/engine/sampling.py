"""Next-token sampling: validated parameters and small pure functions over logits (..., V).

Order of the warpers follows transformers: temperature → top-k → top-p, then a draw. Greedy (temperature 0) is
a plain argmax. Draws use the exponential-race trick (argmax of p / Exp(1) is a categorical draw with
probabilities p), which needs no host sync and is deterministic for a seeded `torch.Generator`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from ctxlab.checks import is_int
from ctxlab.errors import CtxlabError


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature 0 = greedy (top_k/top_p ignored); top_k 0 and top_p 1 = off.
    `seed` makes sampled runs reproducible (a fresh torch.Generator per generate call); None = global RNG."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise CtxlabError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not _is_real(self.temperature) or self.temperature < 0:
            raise CtxlabError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if not is_int(self.top_k) or self.top_k < 0:
            raise CtxlabError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise CtxlabError(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
        if self.seed is not None and (not is_int(self.seed) or self.seed < 0):
            raise CtxlabError(f"seed must be an integer >= 0 or None, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_generation_config(cls, gc: dict, **overrides: Any) -> SamplingParams:
        """Defaults from a checkpoint's generation_config.json (e.g. Qwen3: do_sample, temperature 0.6, top_k 20,
        top_p 0.95), then `overrides` (None values are ignored). do_sample false/absent means greedy."""
        kw: dict[str, Any] = {}
        if gc.get("do_sample"):
            kw["temperature"] = float(gc.get("temperature") if gc.get("temperature") is not None else 1.0)
            if gc.get("top_k") is not None:
                kw["top_k"] = int(gc["top_k"])
            if gc.get("top_p") is not None:
                kw["top_p"] = float(gc["top_p"])
        if gc.get("max_new_tokens") is not None:
            kw["max_new_tokens"] = int(gc["max_new_tokens"])
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise CtxlabError(f"unknown sampling option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)


def apply_top_k(logits: Tensor, top_k: int) -> Tensor:
    """Mask (-inf) all but the top_k logits along the last dim; ties at the threshold are kept (as in HF)."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: Tensor, top_p: float) -> Tensor:
    """Nucleus filter with transformers' semantics: keep the smallest set of most likely tokens whose cumulative
    probability reaches top_p (the top token is always kept). Same ascending-sort formulation as HF's warper, so
    boundary cases round the same way."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=False)  # (..., V) ascending
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cum <= (1 - top_p)
    drop_sorted[..., -1:] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def logits_to_probs(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """logits (..., V) → fp32 probabilities (..., V) after temperature, top-k and top-p.
    temperature 0 gives the greedy distribution (one-hot on the argmax)."""
    logits = logits.float()
    if temperature == 0:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    logits = logits / temperature
    logits = apply_top_p(apply_top_k(logits, top_k), top_p)
    return logits.softmax(dim=-1)


def sample_from_probs(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One categorical draw per row of probs (..., V) → ids (...); no host sync."""
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    race.clamp_min_(torch.finfo(race.dtype).tiny)  # an exact 0 draw would turn a masked 0/0 into NaN (argmax-max)
    return (probs / race).argmax(dim=-1)


def sample(logits: Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> Tensor:
    """logits (..., V) → token ids (...) (int64): argmax when params.temperature == 0, else a seeded draw."""
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = logits_to_probs(logits, params.temperature, params.top_k, params.top_p)
    return sample_from_probs(probs, generator)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A generator on `device` seeded with `seed`; None (global RNG) when seed is None."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)

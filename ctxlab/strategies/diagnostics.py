"""Does qTTT re-aim attention at the evidence? Attention mass on evidence positions and the answer's logit margin,
before and after adaptation (shared docs qttt.md §2, App. E).

Attention mass (App. E): for each answer step's query, the softmax probability on the evidence key slots, *summed*
over the evidence positions, then *averaged* over layers, heads and answer steps. Answer steps are teacher-forced
on the given answer ids: step 0 is the query of the last prompt slot (a frozen, queries-only pass, as qTTT decodes),
steps 1.. are the answer tokens appended after the prompt (written, then rewound). The cache's prompt slots
are never written, so the same prefill serves the "before" and "after" probes.

How the probabilities are obtained (model-agnostic): `attention_probe` temporarily wraps
`ctxlab.models.layers.attend` — the SDPA call behind `cached_attention`, which every family uses — and recomputes
softmax(q kᵀ · scale + mask) from the exact q, keys and mask SDPA receives (RoPE, QK-norm, Llama 4 temperature
tuning, chunk/window masks all included). Nothing in layers.py changes and there is no overhead when no probe is
active. Attention layers are identified by call order within one model call. Key columns are mapped to slots
from the end (the last key is the querying token's own slot), so windowed (Griffin) and chunked (Llama 4) layers,
whose key tensors start later or are masked, count only the evidence they can see.

Margin: logit(answer token) − max logit over the other tokens, per answer step (teacher-forced); `margin` is the
first answer token's.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ctxlab.errors import CtxlabError
from ctxlab.models import layers as _layers
from ctxlab.strategies.qttt import (
    AdaptReport,
    QTTTConfig,
    adapted,
    as_prompt,
    resolve_region,
)

ProbeFn = Callable[[Tensor, Tensor, Tensor | None, bool, float | None], None]


def attention_probs(q: Tensor, k: Tensor, mask: Tensor | None, causal: bool, scale: float | None) -> Tensor:
    """What SDPA computes before the value product: q (B, nh, T, hd), k (B, nkv, S, hd) → probs (B, nh, T, S), fp32.
    `mask` is a boolean "may attend" mask (or an additive float mask); causal without a mask = top-left aligned."""
    rep = q.shape[1] // k.shape[1]
    kf = k.float().repeat_interleave(rep, dim=1)  # (B, nh, S, hd): query head h reads kv head h // rep
    scores = q.float() @ kf.transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)  # (B, nh, T, S)
    T, S = scores.shape[-2:]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    elif causal:
        allowed = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()  # (T, S)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(-1)


@contextmanager
def attention_probe(fn: ProbeFn) -> Iterator[None]:
    """Call fn(q, k, mask, causal, scale) on every attention computation inside the block (any family using
    ctxlab.models.layers.attend / cached_attention). Not thread-safe: the wrap is module-global for its duration."""
    original = _layers.attend

    def probed(q, k, v, mask, causal, scale):
        fn(q, k, mask, causal, scale)
        return original(q, k, v, mask, causal, scale)

    # modules that imported `attend` by name hold their own reference: wrap those too
    holders = [m for name, m in list(sys.modules.items())
               if name.startswith("ctxlab.models") and getattr(m, "attend", None) is original]
    for m in holders:
        m.attend = probed
    try:
        yield
    finally:
        for m in holders:
            m.attend = original


@dataclass(frozen=True)
class Probe:
    """Evidence attention and answer margins of one model state."""

    mass: float  # Σ over evidence slots, mean over layers × heads × answer steps
    mass_per_layer: tuple[float, ...]
    margin: float  # first answer token: its logit − the best other logit
    margins: tuple[float, ...]  # per answer step
    answer_logprob: float  # Σ log p(answer token) over the answer steps


@dataclass(frozen=True)
class Diagnosis:
    before: Probe
    after: Probe
    report: AdaptReport

    def summary(self) -> str:
        b, a = self.before, self.after
        return (f"evidence attention mass {b.mass:.4f} → {a.mass:.4f} · answer margin {b.margin:+.3f} → "
                f"{a.margin:+.3f} · answer log-prob {b.answer_logprob:.3f} → {a.answer_logprob:.3f}")


def _margins(logits: Tensor, targets: Tensor) -> Tensor:
    """logits (n, V), targets (n,) → logit(target) − max other logit, (n,)."""
    logits = logits.float()
    gold = logits.gather(-1, targets[:, None])[:, 0]
    others = logits.scatter(-1, targets[:, None], float("-inf")).amax(-1)
    return gold - others


def probe_answer(
    model: nn.Module, cache, prompt_ids: Tensor | Sequence[int], evidence: Sequence[int], answer_ids: Sequence[int]
) -> Probe:
    """Teacher-forced probe of the current weights. `cache` holds the prompt's T slots (and room for
    len(answer_ids) − 1 more); it is rewound to T afterwards. `evidence`: prompt token positions (slots)."""
    device = next(model.parameters()).device
    ids = as_prompt(prompt_ids, device)
    T = ids.shape[1]
    ev = sorted({int(e) for e in evidence})
    if not ev or ev[0] < 0 or ev[-1] >= T:
        raise CtxlabError(f"evidence positions must be non-empty token indices in [0, {T})")
    answer = torch.tensor(list(answer_ids), dtype=torch.long, device=device)
    if answer.numel() == 0:
        raise CtxlabError("the probe needs at least one answer token")
    per_call: list[list[Tensor]] = []
    first_slot = [T - 1]  # slot of the current call's first query

    def record(q: Tensor, k: Tensor, mask: Tensor | None, causal: bool, scale: float | None) -> None:
        probs = attention_probs(q, k, mask, causal, scale)  # (1, nh, Tq, S)
        # the last key is the last query's own slot (every cached causal attention ends its keys there; windowed
        # ones start later), so evidence slot e is key column S − 1 − (last query slot − e)
        S, last = k.shape[2], first_slot[0] + q.shape[2] - 1
        cols = [S - 1 - (last - e) for e in ev if 0 <= S - 1 - (last - e) < S]
        mass = probs[0, :, :, cols].sum(-1) if cols else probs.new_zeros(probs.shape[1:3])  # (nh, Tq)
        per_call[-1].append(mass)

    logits: list[Tensor] = []
    snap = cache.snapshot()
    try:
        with torch.no_grad(), attention_probe(record):
            per_call.append([])
            out, _ = model(ids[:, T - 1 :], cache, start=T - 1, frozen=True)  # (1, 1, V): predicts answer[0]
            logits.append(out[0])
            if answer.numel() > 1:
                per_call.append([])
                first_slot[0] = T
                out, _ = model(answer[None, :-1], cache)  # slots [T, T+A−1): predicts answer[1:]
                logits.append(out[0])
    finally:
        cache.restore(snap)
    if any(len(c) != len(per_call[0]) for c in per_call) or not per_call[0]:
        raise CtxlabError(f"{type(model).__name__}: attention probe saw no (or inconsistent) attention layers")
    masses = [torch.cat(layer_calls, dim=-1) for layer_calls in zip(*per_call, strict=True)]  # per layer (nh, A)
    per_layer = tuple(m.mean().item() for m in masses)
    all_logits = torch.cat(logits)  # (A, V)
    margins = _margins(all_logits, answer)
    logprob = all_logits.float().log_softmax(-1).gather(-1, answer[:, None]).sum().item()
    return Probe(sum(per_layer) / len(per_layer), per_layer, margins[0].item(), tuple(margins.tolist()), logprob)


def diagnose(
    model: nn.Module,
    prompt_ids: Tensor | Sequence[int],
    evidence: Sequence[int],
    answer_ids: Sequence[int],
    cfg: QTTTConfig = QTTTConfig(),
    *,
    context_len: int | None = None,
) -> Diagnosis:
    """One prefill; probe; adapt (qTTT on the frozen cache); probe again; restore the weights."""
    device = next(model.parameters()).device
    ids = as_prompt(prompt_ids, device)
    T = ids.shape[1]
    resolve_region(cfg, T, context_len)
    cache = model.new_cache(1, T + max(len(answer_ids), 1), rewindable=True)
    with torch.no_grad():
        model(ids, cache, last_only=True)
    before = probe_answer(model, cache, ids, evidence, answer_ids)
    with adapted(model, cache, ids, cfg, context_len=context_len) as report:
        after = probe_answer(model, cache, ids, evidence, answer_ids)
    return Diagnosis(before, after, report)


def char_spans_to_tokens(
    encode: Callable[[str], list[int]], text: str, spans: Sequence[tuple[int, int]], offset: int = 0
) -> list[int]:
    """Token indices of the tokens holding characters of `spans` in `text` (e.g. a sandbox example's evidence in its
    context). Uses prefix token counts — the token holding character c is the last token of encode(text[:c+1]) — so
    it needs only `encode` (pass one without special tokens, and add as `offset` the number of prompt tokens that
    precede `text`, e.g. a chat template's header). Exact for tokenizers that do not merge across the boundary."""
    positions: set[int] = set()
    for s, e in spans:
        if not 0 <= s < e <= len(text):
            raise CtxlabError(f"evidence span ({s}, {e}) is outside the text of {len(text)} characters")
        first = len(encode(text[: s + 1])) - 1
        last = len(encode(text[:e])) - 1
        positions.update(range(offset + first, offset + max(first, last) + 1))
    return sorted(positions)

"""qTTT: query-only test-time training for long contexts (shared docs qttt.md §1; arXiv 2512.13898, Algorithm 1).

Flow of `qttt_answer` (batch 1):
    prompt (context + question, T tokens) → ONE prefill into a cache of T + max_new_tokens slots (no grad)
    → N steps: span x[t : t+k] with t ~ Uniform over the allowed region, frozen pass
      `model(x[t:t+k], cache, start=t, frozen=True)` → next-token loss on x[t+1 : t+k+1] → AdamW on W_Q only
    → a frozen 1-token pass over slot T−1 gives the adapted model's logits for the first answer token
    → decode the answer into slots T, T+1, … of the same cache (no second prefill)
    → restore W_Q bit-exactly and rewind the cache to T (the prompt slots were never written).

Frozen cache: the prefill's keys/values of every layer are reused as they are, for every step and for decoding.
Span-internal keys/values are the prefill's, i.e. computed with the original W_Q; we do not recompute them (a
changed W_Q alters deeper hidden states, hence deeper K/V, but the paper keeps the cache frozen). The span's queries
attend causally by slot: the query in slot t+i sees slots [0, t+i].

What is trained: exactly `model.query_weights()` (W_Q of every attention layer; Griffin: its local-attention layers).
Every other parameter has requires_grad=False for the duration (flags restored afterwards); Qwen3's q_norm weight
is not trained (the paper leaves it unspecified). AdamW(weight_decay=0.01), gradient-norm clip 1.0, one span per
step (spans redrawn with replacement, seeded), loss = mean NLL over the k span targets. Weights stored in bf16/fp16
are optimised through fp32 master copies: an AdamW step of ~lr = 1e-5 is below bf16's resolution at |w| ≈ 0.02 and
would round away.

Spans: inputs x[t : t+k], targets x[t+1 : t+k+1], all inside the region [lo, hi): t ∈ [lo, hi−k−1] (the paper's
t ~ U[1, T−k], 1-indexed). Region "context" (default) = the context part [0, context_len) when the caller says where
the question starts, else the whole prompt; "prompt" = the whole prompt, question tokens included; or explicit
(lo, hi) token indices. A region shorter than k+1 tokens shrinks the span to fit (reported in `AdaptReport.span`).

Restoration: `adapt` leaves the model adapted, but restores the original weights before re-raising when anything
(including KeyboardInterrupt) interrupts it; `adapted(...)` (a context manager) and `qttt_answer` always restore.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxlab.checks import is_int, is_number
from ctxlab.errors import CtxlabError

REGIONS = ("context", "prompt")


@dataclass(frozen=True)
class QTTTConfig:
    """Hyperparameters (paper defaults, App. D). `region`: "context", "prompt" or (lo, hi) token indices."""

    steps: int = 32
    span: int = 128
    lr: float = 1e-5
    weight_decay: float = 0.01
    clip: float | None = 1.0  # max gradient norm; None = no clipping
    seed: int = 0
    region: str | tuple[int, int] = "context"
    probe: bool = True  # measure the loss on a fixed probe span before and after (2 extra frozen forwards)

    def __post_init__(self) -> None:
        if not is_int(self.steps) or self.steps < 0:
            raise CtxlabError(f"qTTT steps must be an integer >= 0, got {self.steps!r}")
        if not is_int(self.span) or self.span < 1:
            raise CtxlabError(f"qTTT span must be an integer >= 1, got {self.span!r}")
        if not is_number(self.lr) or not self.lr > 0:
            raise CtxlabError(f"qTTT learning rate must be a finite number > 0, got {self.lr!r}")
        if not is_number(self.weight_decay) or self.weight_decay < 0:
            raise CtxlabError(f"weight decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.clip is not None and not (is_number(self.clip) and self.clip > 0):
            raise CtxlabError(f"gradient clip must be a finite number > 0 or None, got {self.clip!r}")
        if not is_int(self.seed):
            raise CtxlabError(f"seed must be an integer, got {self.seed!r}")
        r = self.region
        ok = r in REGIONS or (isinstance(r, tuple) and len(r) == 2 and all(is_int(x) for x in r) and 0 <= r[0] < r[1])
        if not ok:
            raise CtxlabError(f"region must be one of {REGIONS} or (lo, hi) token indices with 0 <= lo < hi, got {r!r}")


@dataclass(frozen=True)
class AdaptReport:
    """What one adaptation did. Losses are mean next-token NLL (nats) over the span's targets."""

    losses: tuple[float, ...]  # step n's training loss, measured before its update
    starts: tuple[int, ...]  # span start slot of each step
    grad_norms: tuple[float, ...]  # gradient norm of each step before clipping
    span: int  # effective span length k
    region: tuple[int, int]  # [lo, hi) token range spans were drawn from
    probe_start: int | None  # the fixed probe span x[p : p+k] (the region's last span)
    probe_loss_before: float | None
    probe_loss_after: float | None
    wall_time: float  # seconds, probes included

    @property
    def steps(self) -> int:
        return len(self.losses)


@dataclass(frozen=True)
class QTTTResult:
    """The adapted model's answer and how it was obtained. `fed_tokens` answer tokens were written to the cache."""

    ids: list[int]
    finish_reason: str  # "eos" | "length" | "stop"
    report: AdaptReport
    prompt_tokens: int
    fed_tokens: int
    prefill_s: float
    adapt_s: float
    decode_s: float
    probe: Any = None  # what qttt_answer's `probe` callback returned

    @property
    def wall_time(self) -> float:
        return self.prefill_s + self.adapt_s + self.decode_s


# --------------------------------------------------------------------------------------------- weight safety


class QuerySnapshot:
    """Bit-exact copies of `model.query_weights()`; `restore()` writes them back (idempotent)."""

    def __init__(self, model: nn.Module):
        self.params = list(model.query_weights())
        if not self.params:
            raise CtxlabError(f"{type(model).__name__} has no query weights to adapt")
        self.saved = [p.detach().clone() for p in self.params]

    def restore(self) -> None:
        with torch.no_grad():
            for p, s in zip(self.params, self.saved, strict=True):
                p.copy_(s)

    def changed(self) -> bool:
        return any(not torch.equal(p.detach(), s) for p, s in zip(self.params, self.saved, strict=True))


@contextmanager
def train_only(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """requires_grad only on `params` for the duration; every flag and the params' .grad restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    grads = [(p, p.grad) for p in params]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        yield
    finally:
        for p, g in grads:
            p.grad = g
        for p, f in flags:
            p.requires_grad_(f)


# ------------------------------------------------------------------------------------------------ adaptation


def as_prompt(prompt_ids: Tensor | Sequence[int], device: torch.device | str) -> Tensor:
    """prompt ids (T,), (1, T) or a list → a (1, T) long tensor on `device`."""
    ids = prompt_ids if isinstance(prompt_ids, Tensor) else torch.tensor(list(prompt_ids), dtype=torch.long)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise CtxlabError(f"qTTT adapts on one prompt at a time; got ids of shape {tuple(ids.shape)}")
    if ids.shape[1] < 2:
        raise CtxlabError("qTTT needs a prompt of at least 2 tokens")
    return ids.to(device=device, dtype=torch.long)


def resolve_region(cfg: QTTTConfig, T: int, context_len: int | None = None) -> tuple[int, int]:
    """[lo, hi) token range for spans (see the module docstring)."""
    if isinstance(cfg.region, tuple):
        lo, hi = cfg.region
        if hi > T:
            raise CtxlabError(f"qTTT region {cfg.region} exceeds the prompt of {T} tokens")
    elif cfg.region == "context" and context_len is not None:
        if not 2 <= context_len <= T:
            raise CtxlabError(f"context length {context_len} must be in [2, {T}] (the prompt has {T} tokens)")
        lo, hi = 0, context_len
    else:
        lo, hi = 0, T
    if hi - lo < 2:
        raise CtxlabError(f"qTTT region [{lo}, {hi}) is too short for a span (needs >= 2 tokens)")
    return lo, hi


def span_loss(model: nn.Module, cache, ids: Tensor, t: int, k: int) -> Tensor:
    """Mean NLL of x[t+1 : t+k+1] from a frozen pass over slots [t, t+k) (queries only, cache read-only)."""
    logits, _ = model(ids[:, t : t + k], cache, start=t, frozen=True)  # (1, k, V)
    return F.cross_entropy(logits[0].float(), ids[0, t + 1 : t + k + 1])


@torch.inference_mode(False)  # callers inside inference mode still get trainable tensors here
def adapt(
    model: nn.Module,
    cache,
    prompt_ids: Tensor | Sequence[int],
    cfg: QTTTConfig = QTTTConfig(),
    *,
    context_len: int | None = None,
    snapshot: QuerySnapshot | None = None,
) -> AdaptReport:
    """Run cfg.steps qTTT steps on the prompt whose keys/values fill slots [0, T) of `cache` (frozen, never
    written). Leaves the model adapted; on any exception (KeyboardInterrupt included) restores the query weights
    from `snapshot` (or a private one) before re-raising. Use `adapted()` to restore automatically."""
    t0 = time.perf_counter()
    params = list(model.query_weights())
    ids = as_prompt(prompt_ids, params[0].device)
    T = ids.shape[1]
    if cache.length < T:
        raise CtxlabError(f"the cache holds {cache.length} slots but the prompt has {T} tokens; prefill it first")
    if cache.is_inference():
        raise CtxlabError("the cache was filled under torch.inference_mode(); prefill it under torch.no_grad() "
                          "instead (qTTT backpropagates through the operations that read it)")
    lo, hi = resolve_region(cfg, T, context_len)
    k = min(cfg.span, hi - lo - 1)
    rng = random.Random(cfg.seed)
    snap = snapshot if snapshot is not None else QuerySnapshot(model)
    # fp32 master copies for low-precision weights; fp32 weights are optimised in place.
    masters = [p if p.dtype == torch.float32 else p.detach().float().requires_grad_(True) for p in params]
    losses: list[float] = []
    starts: list[int] = []
    norms: list[float] = []
    probe_t = hi - k - 1 if cfg.probe else None
    before = after = None
    try:
        with train_only(model, params), torch.enable_grad():
            opt = torch.optim.AdamW(masters, lr=cfg.lr, weight_decay=cfg.weight_decay)
            if probe_t is not None:
                with torch.no_grad():
                    before = span_loss(model, cache, ids, probe_t, k).item()
            for _ in range(cfg.steps):
                t = rng.randint(lo, hi - k - 1)
                loss = span_loss(model, cache, ids, t, k)
                loss.backward()
                for p, m in zip(params, masters, strict=True):
                    if m is not p and p.grad is not None:
                        m.grad = p.grad.float()
                        p.grad = None
                # the pre-clip norm; max_norm inf = measure only
                norm = torch.nn.utils.clip_grad_norm_(masters, float("inf") if cfg.clip is None else cfg.clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                with torch.no_grad():
                    for p, m in zip(params, masters, strict=True):
                        if m is not p:
                            p.copy_(m)
                losses.append(loss.item())
                starts.append(t)
                norms.append(norm.item())
            if probe_t is not None:
                with torch.no_grad():
                    after = span_loss(model, cache, ids, probe_t, k).item()
    except BaseException:
        snap.restore()
        raise
    return AdaptReport(
        tuple(losses), tuple(starts), tuple(norms), k, (lo, hi), probe_t, before, after, time.perf_counter() - t0
    )


@contextmanager
def adapted(
    model: nn.Module,
    cache,
    prompt_ids: Tensor | Sequence[int],
    cfg: QTTTConfig = QTTTConfig(),
    *,
    context_len: int | None = None,
) -> Iterator[AdaptReport]:
    """`with adapted(model, cache, ids, cfg) as report:` — the model is adapted inside the block and its query
    weights are restored bit-exactly on exit, whatever happens inside."""
    snap = QuerySnapshot(model)
    try:
        yield adapt(model, cache, prompt_ids, cfg, context_len=context_len, snapshot=snap)
    finally:
        snap.restore()


# ---------------------------------------------------------------------------------------------------- answer


@torch.inference_mode(False)
def qttt_answer(
    model: nn.Module,
    prompt_ids: Tensor | Sequence[int],
    cfg: QTTTConfig = QTTTConfig(),
    max_new_tokens: int = 64,
    eos_ids: Iterable[int] | int | None = (),
    params=None,
    *,
    context_len: int | None = None,
    stop=None,
    probe: Callable[[nn.Module, Any], Any] | None = None,
    probe_slots: int = 0,
) -> QTTTResult:
    """Prefill once, adapt W_Q on the frozen cache, decode the answer with the adapted model from the same cache,
    restore. `params`: a ctxlab.engine.SamplingParams (None = greedy); max_new_tokens overrides its length.
    `context_len`: prompt tokens before the question (restricts spans when cfg.region == "context").
    `probe(model, cache)`: called with the adapted weights after decoding, on the cache put back to the prompt
    (`probe_slots` more cache slots for it); its value is `QTTTResult.probe`."""
    from ctxlab.engine import SamplingParams, generate_from_cache, prefill

    params = SamplingParams() if params is None else params
    params = replace(params, max_new_tokens=max_new_tokens)
    device = next(model.parameters()).device
    ids = as_prompt(prompt_ids, device)
    T = ids.shape[1]
    limit = getattr(model, "max_context", None)
    if limit is not None and T + max_new_tokens > limit:
        raise CtxlabError(
            f"prompt of {T} tokens + {max_new_tokens} answer tokens exceeds the model's context of {limit} tokens"
        )
    resolve_region(cfg, T, context_len)  # validate before the expensive prefill
    t0 = time.perf_counter()
    with torch.no_grad():  # not inference mode: the adaptation backpropagates through ops that read the cache
        cache = model.new_cache(1, T + max(max_new_tokens, probe_slots), rewindable=True)
        prefill(model, ids, None, cache)
    _sync(device)
    t1 = time.perf_counter()
    snap = QuerySnapshot(model)
    at_prompt = cache.snapshot()
    try:
        report = adapt(model, cache, ids, cfg, context_len=context_len, snapshot=snap)
        t2 = time.perf_counter()
        with torch.no_grad():  # the adapted model's next-token logits at the last prompt slot (queries only)
            logits, _ = model(ids[:, T - 1 :], cache, start=T - 1, frozen=True)  # (1, 1, V)
        gen = generate_from_cache(model, logits[:, -1], cache, params, eos_ids, stop)[0]
        _sync(device)
        t3 = time.perf_counter()
        fed = cache.length - T
        cache.restore(at_prompt)
        measured = probe(model, cache) if probe is not None else None
    finally:
        snap.restore()
        cache.restore(at_prompt)
    return QTTTResult(gen.ids, gen.finish_reason, report, T, fed, t1 - t0, t2 - t1, t3 - t2, measured)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

"""Explicit caches and the per-call step plan shared by the model files.

A cache is a plain object passed into a model call and returned from it. Buffers are written in place; `length`
says how many slots are filled. A *frozen* call (qTTT) reads slots that already exist and writes nothing.
Every cache type offers the same protocol (`Cache`), so the engine, qTTT, the strategies and the demo never touch
a cache's fields:

    snap = cache.snapshot(); ...appends...; cache.restore(snap)   # back to the state at the snapshot, bit for bit
    cache.rewind(n)                  # forget slots past n (KVCache: always; GriffinCache: within its span history)
    dst.copy_prefix(src, n)          # dst holds src's first n slots (shared prompt prefixes)
    cache.is_inference()             # filled under torch.inference_mode() (autograd cannot read it: qTTT refuses)

`model.new_cache(batch, max_len, dtype=None, device=None, *, rewindable=False)` makes one; `rewindable=True` asks
families whose cache keeps per-slot history only on request (Griffin) to keep every slot, so frozen span calls and
`rewind` work anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from ctxlab.errors import CtxlabError


class Cache(Protocol):
    """What every cache type offers (KVCache, GriffinCache)."""

    length: int

    @property
    def capacity(self) -> int: ...

    @property
    def batch(self) -> int: ...

    def snapshot(self) -> Any: ...

    def restore(self, snap: Any) -> None: ...

    def rewind(self, length: int) -> Cache: ...

    def copy_prefix(self, src: Any, n: int) -> None: ...

    def is_inference(self) -> bool: ...


def _clone(x: Any) -> Any:
    """A deep copy of cache state: tensors cloned, lists and dataclasses copied field by field."""
    if isinstance(x, Tensor):
        return x.clone()
    if isinstance(x, list):
        return [_clone(y) for y in x]
    if is_dataclass(x) and not isinstance(x, type):
        return replace(x, **{f.name: _clone(getattr(x, f.name)) for f in fields(x)})
    return x


@dataclass
class KVCache:
    """k[l], v[l]: (B, nkv, S_max, hd); valid: (B, S_max) real-token flags; pos: (B, S_max) RoPE positions."""

    k: list[Tensor]
    v: list[Tensor]
    valid: Tensor
    pos: Tensor
    length: int = 0
    padded: bool = False  # some filled slot holds left padding → masks must consult `valid`

    @classmethod
    def allocate(
        cls, n_layers: int, batch: int, max_len: int, n_kv: int, head_dim: int, dtype: torch.dtype, device
    ) -> KVCache:
        shape = (batch, n_kv, max_len, head_dim)
        return cls(
            k=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)],
            v=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)],
            valid=torch.zeros(batch, max_len, dtype=torch.bool, device=device),
            pos=torch.zeros(batch, max_len, dtype=torch.long, device=device),
        )

    @property
    def capacity(self) -> int:
        return self.valid.shape[1]

    @property
    def batch(self) -> int:
        return self.valid.shape[0]

    def rewind(self, length: int) -> KVCache:
        """Forget slots past `length` (the data stays; it is overwritten by the next write)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot rewind a cache of length {self.length} to {length}")
        self.length = length
        return self

    def snapshot(self) -> tuple[int, bool]:
        """Appends never write slots below `length`, so the length (and padding flag) is the whole snapshot."""
        return self.length, self.padded

    def restore(self, snap: tuple[int, bool]) -> None:
        self.length, self.padded = snap

    def copy_prefix(self, src: KVCache, n: int) -> None:
        """Copy src's first n slots (keys, values, flags, positions) into this cache and set its length to n."""
        if not 0 <= n <= min(src.length, self.capacity):
            raise CtxlabError(f"cannot copy {n} slots from a cache of length {src.length} into one of {self.capacity}")
        for x, y in zip(src.k + src.v, self.k + self.v, strict=True):
            y[:, :, :n].copy_(x[:, :, :n])
        self.valid[:, :n] = src.valid[:, :n]
        self.pos[:, :n] = src.pos[:, :n]
        self.length, self.padded = n, src.padded

    def is_inference(self) -> bool:
        return any(t.is_inference() for t in (*self.k, *self.v, self.valid, self.pos))

    def write(self, layer: int, start: int, k: Tensor, v: Tensor) -> None:
        """Store k/v (B, nkv, T, hd) of slots [start, start+T) of `layer`."""
        T = k.shape[2]
        self.k[layer][:, :, start : start + T] = k
        self.v[layer][:, :, start : start + T] = v

    def read(self, layer: int, end: int) -> tuple[Tensor, Tensor]:
        """Keys and values (B, nkv, end, hd) of slots [0, end) of `layer`."""
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))



# ---------------------------------------------------------------------------------------------- RecurrentGemma


def ring_read(buf: Tensor, dim: int, lo: int, hi: int) -> Tensor:
    """Slots [lo, hi) of a ring buffer (slot s lives at s % size along `dim`), in slot order (a copy)."""
    idx = torch.arange(lo, hi, device=buf.device) % buf.shape[dim]
    return buf.index_select(dim, idx)


def ring_write(buf: Tensor, dim: int, start: int, new: Tensor) -> None:
    """Store `new` (slots [start, start+n) along `dim`) into a ring buffer; only the last `size` slots survive."""
    n, size = new.shape[dim], buf.shape[dim]
    m = min(n, size)
    idx = torch.arange(start + n - m, start + n, device=buf.device) % size
    buf.index_copy_(dim, idx, new.narrow(dim, n - m, m).detach().to(buf.dtype))


@dataclass
class SpanHistory:
    """Per-slot states of the last K slots (ring buffer, slot s at s % K) for frozen (qTTT) span calls.
    Lists are indexed by layer; entries of the other block type are None."""

    u: list[Tensor | None]  # recurrent: (B, K, L) conv inputs, activation dtype
    h: list[Tensor | None]  # recurrent: (B, K, L) RG-LRU state after each slot, fp32
    k: list[Tensor | None]  # attention: (B, nkv, K, hd)
    v: list[Tensor | None]
    valid: Tensor  # (B, K) real-token flags
    pos: Tensor  # (B, K) positions

    @property
    def keep(self) -> int:
        return self.valid.shape[1]


@dataclass
class GriffinCache:
    """Fixed-size decode state (see the module docstring). Lists are indexed by layer (None = other block type).
    `length` counts filled slots (padding included), `seen` the real tokens per row (= the next position)."""

    conv: list[Tensor | None]  # recurrent: (B, L, cw−1) last conv inputs, activation dtype
    lru: list[Tensor | None]  # recurrent: (B, L) fp32
    k: list[Tensor | None]  # attention: (B, nkv, W, hd) ring buffer
    v: list[Tensor | None]
    ring_valid: Tensor  # (B, W) real-token flag of each ring entry
    seen: Tensor  # (B,)
    max_len: int
    length: int = 0
    padded: bool = False  # some slot holds left padding → attention masks must consult the flags
    hist: SpanHistory | None = None
    hist_end: int = 0  # slots below this were written to the history (only the last K survive)

    @classmethod
    def allocate(cls, cfg: Any, batch: int, max_len: int, dtype: torch.dtype, device, keep: int = 0) -> GriffinCache:
        """Zero state for `batch` rows of a GriffinConfig `cfg`; `keep` > 0 also records the last `keep` slots."""
        B, L, cw, W = batch, cfg.lru_width, cfg.conv1d_width, cfg.attention_window_size
        kv = (B, cfg.num_kv_heads, W, cfg.head_dim)
        rec = [t == "recurrent" for t in cfg.layer_types]

        def per_layer(make, want: bool) -> list[Tensor | None]:
            return [make() if r == want else None for r in rec]

        hist = None
        if keep:
            hk = (B, cfg.num_kv_heads, keep, cfg.head_dim)
            hist = SpanHistory(
                u=per_layer(lambda: torch.zeros(B, keep, L, dtype=dtype, device=device), True),
                h=per_layer(lambda: torch.zeros(B, keep, L, dtype=torch.float32, device=device), True),
                k=per_layer(lambda: torch.zeros(hk, dtype=dtype, device=device), False),
                v=per_layer(lambda: torch.zeros(hk, dtype=dtype, device=device), False),
                valid=torch.zeros(B, keep, dtype=torch.bool, device=device),
                pos=torch.zeros(B, keep, dtype=torch.long, device=device),
            )
        return cls(
            conv=per_layer(lambda: torch.zeros(B, L, cw - 1, dtype=dtype, device=device), True),
            lru=per_layer(lambda: torch.zeros(B, L, dtype=torch.float32, device=device), True),
            k=per_layer(lambda: torch.zeros(kv, dtype=dtype, device=device), False),
            v=per_layer(lambda: torch.zeros(kv, dtype=dtype, device=device), False),
            ring_valid=torch.zeros(B, W, dtype=torch.bool, device=device),
            seen=torch.zeros(B, dtype=torch.long, device=device),
            max_len=max_len,
            hist=hist,
        )

    @property
    def capacity(self) -> int:
        return self.max_len

    @property
    def batch(self) -> int:
        return self.seen.shape[0]

    @property
    def window(self) -> int:
        return self.ring_valid.shape[1]

    def nbytes(self, history: bool = True) -> int:
        ts = [t for t in (*self.conv, *self.lru, *self.k, *self.v, self.ring_valid, self.seen) if t is not None]
        if history and self.hist is not None:
            h = self.hist
            ts += [t for t in (*h.u, *h.h, *h.k, *h.v, h.valid, h.pos) if t is not None]
        return sum(t.numel() * t.element_size() for t in ts)

    def rewind(self, length: int) -> GriffinCache:
        """Forget slots past `length` by restoring the state entering slot `length` from the span history (the
        qTTT driver rewinds to the prompt after decoding). Possible for lengths in frozen_range()."""
        if length == self.length:
            return self
        lo, hi = self.frozen_range()
        if not lo <= length <= hi or self.hist is None:
            raise CtxlabError(f"cannot rewind this RecurrentGemma cache to {length} slots (possible: [{lo}, {hi}]; "
                              "rewinding needs new_cache(..., rewindable=True))")
        w0 = max(0, length - self.window + 1)  # the ring gets back the keys of the window before `length`
        for i in range(len(self.conv)):
            if self.conv[i] is not None:
                self.conv[i], self.lru[i] = self.read_state(i, length, from_history=True)
            else:
                ring_write(self.k[i], 2, w0, ring_read(self.hist.k[i], 2, w0, length))
                ring_write(self.v[i], 2, w0, ring_read(self.hist.v[i], 2, w0, length))
        ring_write(self.ring_valid, 1, w0, ring_read(self.hist.valid, 1, w0, length))
        self.seen = torch.zeros_like(self.seen)
        if length > 0:  # real tokens so far = last position + 1 (0 if the row is still in its left padding)
            h = self.hist
            last_valid, last_pos = (ring_read(t, 1, length - 1, length)[:, 0] for t in (h.valid, h.pos))
            self.seen = torch.where(last_valid, last_pos + 1, 0)
        self.length = length
        return self

    def snapshot(self) -> dict[str, Any]:
        """The decode state as it is now: every field but the span history, which later appends extend without
        touching earlier slots while it keeps at least `capacity` slots (as rewindable caches do)."""
        return {f.name: _clone(getattr(self, f.name)) for f in fields(self) if f.name != "hist"}

    def restore(self, snap: dict[str, Any]) -> None:
        for name, value in snap.items():
            setattr(self, name, _clone(value))

    def copy_prefix(self, src: GriffinCache, n: int) -> None:
        """A fixed-size state holds no per-slot prefix: only the whole of `src` (n == src.length) can be copied."""
        if n != src.length:
            raise CtxlabError(f"a RecurrentGemma cache copies only a whole state ({src.length} slots), not {n}")
        for f in fields(self):
            setattr(self, f.name, _clone(getattr(src, f.name)))

    def is_inference(self) -> bool:
        return any(t.is_inference() for t in (*self.conv, *self.lru, self.seen) if t is not None)

    def frozen_range(self) -> tuple[int, int]:
        """(first start, end) of the slots a frozen (qTTT) call may cover (also the lengths `rewind` can go back
        to): the history must still hold the window's keys before `start` and the states entering it."""
        if self.hist is None:
            return self.length, self.length
        lo = self.hist_end - self.hist.keep  # older slots were overwritten in the history ring
        if lo <= 0:
            return 0, self.length
        cw1 = max((c.shape[2] for c in self.conv if c is not None), default=0)
        return min(lo + max(self.window - 1, cw1, 1), self.length), self.length

    # ---- recurrent layers
    def read_state(self, layer: int, start: int, from_history: bool) -> tuple[Tensor, Tensor]:
        """(conv inputs (B, L, cw−1), RG-LRU state (B, L)) entering slot `start`: live, or from the history."""
        if not from_history:
            return self.conv[layer], self.lru[layer]
        conv = self.conv[layer]
        u = torch.zeros_like(conv)  # (B, L, cw−1); slots before 0 are the conv's zero padding
        cw1 = conv.shape[2]
        lo = max(0, start - cw1)
        if start > lo:
            u[:, :, cw1 - (start - lo) :] = ring_read(self.hist.u[layer], 1, lo, start).transpose(1, 2)
        h = torch.zeros_like(self.lru[layer])  # (B, L)
        if start > 0:
            h = ring_read(self.hist.h[layer], 1, start - 1, start)[:, 0]
        return u, h

    def write_state(self, layer: int, start: int, u: Tensor, conv: Tensor, h: Tensor) -> None:
        """u (B, T, L) conv inputs, conv (B, L, cw−1) new conv state, h (B, T, L) fp32 states of slots [start, ...)."""
        self.conv[layer] = conv.detach()
        self.lru[layer] = h[:, -1].detach()
        if self.hist is not None:
            ring_write(self.hist.u[layer], 1, start, u)
            ring_write(self.hist.h[layer], 1, start, h)

    # ---- attention layers
    def append_kv(self, layer: int, start: int, k: Tensor, v: Tensor, valid: Tensor | None):
        """Prepend the stored keys of the window before `start` to the new k/v (B, nkv, T, hd), then store the new
        ones. Returns (k, v (B, nkv, S, hd), key flags (B, S) or None, first key slot)."""
        lo = max(0, start - self.window + 1)
        past_k, past_v = ring_read(self.k[layer], 2, lo, start), ring_read(self.v[layer], 2, lo, start)
        k_valid = None
        if self.padded or valid is not None:
            new_valid = valid if valid is not None else k.new_ones(k.shape[0], k.shape[2], dtype=torch.bool)
            k_valid = torch.cat([ring_read(self.ring_valid, 1, lo, start), new_valid], dim=1)  # (B, S)
        ring_write(self.k[layer], 2, start, k)
        ring_write(self.v[layer], 2, start, v)
        if self.hist is not None:
            ring_write(self.hist.k[layer], 2, start, k)
            ring_write(self.hist.v[layer], 2, start, v)
        return torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2), k_valid, lo

    def stored_kv(self, layer: int, start: int, end: int):
        """Frozen call: the prefill's keys/values of slots [start−W+1, end) from the history."""
        lo = max(0, start - self.window + 1)
        k, v = ring_read(self.hist.k[layer], 2, lo, end), ring_read(self.hist.v[layer], 2, lo, end)
        return k, v, ring_read(self.hist.valid, 1, lo, end) if self.padded else None, lo

    def commit(self, start: int, pos: Tensor, valid: Tensor | None) -> None:
        """Bookkeeping after every layer of an appending call over slots [start, start+T) has run."""
        flags = valid if valid is not None else torch.ones_like(pos, dtype=torch.bool)  # (B, T)
        ring_write(self.ring_valid, 1, start, flags)
        if self.hist is not None:
            ring_write(self.hist.valid, 1, start, flags)
            ring_write(self.hist.pos, 1, start, pos)
        self.seen = self.seen + flags.sum(-1)
        self.padded = self.padded or valid is not None
        self.length = start + pos.shape[1]
        self.hist_end = max(self.hist_end, self.length)


# ------------------------------------------------------------------------------------------------- step plan


def token_positions(valid: Tensor | None, start_counts: Tensor | None, B: int, T: int, device) -> Tensor:
    """RoPE positions (B, T) of new tokens: the count of real tokens before each one (pads get position 0)."""
    if valid is None:
        base = torch.arange(T, device=device)[None].expand(B, T)  # (B, T)
        return base if start_counts is None else base + start_counts[:, None]
    pos = valid.long().cumsum(-1) - 1  # (B, T)
    if start_counts is not None:
        pos = pos + start_counts[:, None]
    return pos.clamp_min(0)


def build_mask(
    q_pos: Tensor, k_pos: Tensor, k_valid: Tensor | None, start: int, chunk: int | None = None
) -> Tensor:
    """Boolean mask (B, 1, T, S): key slot j is visible to the query in slot start+i iff j <= start+i, the key is
    a real token and (for chunked attention) both positions fall in the same chunk. A query always sees itself,
    so rows of left-padding never become all -inf (their outputs are ignored)."""
    T, S = q_pos.shape[1], k_pos.shape[1]
    q_slot = torch.arange(start, start + T, device=q_pos.device)[:, None]  # (T, 1)
    k_slot = torch.arange(S, device=q_pos.device)[None, :]  # (1, S)
    allowed = (k_slot <= q_slot)[None]  # (1, T, S)
    if k_valid is not None:
        allowed = allowed & k_valid[:, None, :]  # (B, T, S)
    if chunk is not None:
        allowed = allowed & ((q_pos[:, :, None] // chunk) == (k_pos[:, None, :] // chunk))  # (B, T, S)
    allowed = allowed | (k_slot == q_slot)[None]
    return allowed[:, None]  # (B, 1, T, S)


Mask = tuple[Tensor | None, bool]  # (SDPA mask, is_causal) as returned by Step.mask


@dataclass(frozen=True)
class Step:
    """Where this call's T tokens sit: slots [start, start+T), their positions, and the visible keys."""

    start: int
    pos: Tensor  # (B, T) RoPE positions of the new tokens
    k_pos: Tensor  # (B, S) positions of the visible key slots, S = start + T
    k_valid: Tensor | None  # (B, S) real-token flags; None when nothing is padded
    write: bool  # compute and store k/v (False: frozen cache, queries only)

    def mask(self, chunk: int | None = None) -> tuple[Tensor | None, bool]:
        """(mask, is_causal) for SDPA; avoids materialising a mask on the common unpadded paths."""
        T = self.pos.shape[1]
        if self.k_valid is None and chunk is None:
            if self.start == 0:
                return None, True
            if T == 1:
                return None, False
        return build_mask(self.pos, self.k_pos, self.k_valid, self.start, chunk), False


def plan_step(
    ids: Tensor, cache: KVCache | None, valid: Tensor | None, start: int | None = None, frozen: bool = False
) -> Step:
    """Plan a model call on ids (B, T). `valid` (B, T) marks real tokens (False = left padding).

    With a cache, tokens go to slots [start, start+T) (default: append at cache.length) and the cache's valid/pos
    bookkeeping is updated; `frozen=True` reuses slots already filled (their stored positions) and writes nothing.
    """
    B, T = ids.shape
    if valid is not None and valid.all():
        valid = None
    if cache is None:
        if start not in (None, 0) or frozen:
            raise ValueError("start/frozen need a cache")
        pos = token_positions(valid, None, B, T, ids.device)
        return Step(0, pos, pos, valid, True)
    if cache.batch != B:
        raise CtxlabError(f"batch size {B} does not match the cache's batch size {cache.batch}")
    start = cache.length if start is None else start
    end = start + T
    if frozen:
        if end > cache.length:
            raise ValueError(f"frozen call over slots [{start}, {end}) but the cache holds only {cache.length}")
        k_valid = cache.valid[:, :end] if cache.padded else None
        return Step(start, cache.pos[:, start:end], cache.pos[:, :end], k_valid, False)
    if end > cache.capacity:
        raise CtxlabError(f"context limit exceeded: {end} tokens do not fit the cache of {cache.capacity}")
    counts = cache.valid[:, :start].sum(-1) if start > 0 else None
    pos = token_positions(valid, counts, B, T, ids.device)
    cache.valid[:, start:end] = True if valid is None else valid
    cache.pos[:, start:end] = pos
    cache.padded = cache.padded or valid is not None
    cache.length = end
    k_valid = cache.valid[:, :end] if cache.padded else None
    return Step(start, pos, cache.pos[:, :end], k_valid, True)

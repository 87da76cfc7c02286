"""Explicit, preallocated KV cache and the per-call step plan shared by the attention layers.

The cache is a plain object passed into a model call and returned from it, so callers (the engine, qTTT) can
crop, snapshot and restore it. Buffers are written in place; `length` says how many slots are filled.
A *frozen* call (qTTT) reads slots that already exist and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ctxlab.errors import CtxlabError


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

    def truncate(self, length: int) -> KVCache:
        """Forget slots past `length` (the data stays; it is overwritten by the next write)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        self.length = length
        return self

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))


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
        from ctxlab.models.layers import build_mask  # local import: layers imports this module

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
    from ctxlab.models.layers import token_positions

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

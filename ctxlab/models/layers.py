"""Shared primitives for the model files: RMSNorm variants, RoPE variants, gated MLPs, cached attention.

Shape legend (used in every model file):
    B  batch            T  new tokens in this call      S  key slots visible to this call (cache slots)
    H  hidden size      nh query heads                  nkv key/value heads        hd head dim
    I  MLP width        V  vocabulary
Slots index the preallocated cache; positions are the RoPE positions of the tokens in those slots
(they differ from slots when a batch is left-padded).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxlab.checks import is_number
from ctxlab.errors import CtxlabError
from ctxlab.models.cache import KVCache

# ----------------------------------------------------------------------------------------------------- norms


class RMSNorm(nn.Module):
    """Llama/Qwen RMSNorm: normalise in fp32, cast back to the activation dtype, then scale by w."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class GemmaRMSNorm(nn.Module):
    """Gemma RMSNorm: the weight is an offset from 1 and the multiply happens in fp32 before the cast."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * (1.0 + self.weight.float())).to(x.dtype)


# ------------------------------------------------------------------------------------------------------ RoPE

ROPE_TYPES = ("default", "linear", "llama3")


def rope_inv_freq(dim: int, theta: float, scaling: dict | None = None) -> Tensor:
    """Inverse frequencies for `dim` rotated channels (fp32, on the CPU), with optional HF rope scaling."""
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim))
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type == "default":
        return inv
    if rope_type == "linear":
        return inv / float(scaling["factor"])
    if rope_type == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        orig = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > orig / low, inv / factor, inv)
        smooth = (orig / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= orig / high) & (wavelen <= orig / low)
        return torch.where(medium, smoothed, scaled)
    raise CtxlabError(f"unsupported rope_type {rope_type!r}; supported: {', '.join(ROPE_TYPES)}")


class RoPE:
    """Caches inv_freq per device; returns cos/sin tables for arbitrary (per-row) positions."""

    def __init__(self, dim: int, theta: float, scaling: dict | None = None):
        self.dim = dim
        self._inv = {torch.device("cpu"): rope_inv_freq(dim, theta, scaling)}

    def inv_freq(self, device: torch.device) -> Tensor:
        if device not in self._inv:
            self._inv[device] = self._inv[torch.device("cpu")].to(device)
        return self._inv[device]

    def cos_sin(self, pos: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """pos (B, T) → cos, sin (B, 1, T, dim) in `dtype`; angles computed in fp32 as HF does."""
        freqs = pos[..., None].float() * self.inv_freq(pos.device)  # (B, T, dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, dim)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE on x (B, n, T, hd) with cos/sin (B, 1, T, hd)."""
    return x * cos + rotate_half(x) * sin


# ------------------------------------------------------------------------------------------------------- MLPs

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "silu": F.silu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
}


def activation(name: str) -> Callable[[Tensor], Tensor]:
    if name not in ACTIVATIONS:
        raise CtxlabError(f"unsupported activation {name!r}; supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU for Llama/Qwen, GeGLU (tanh) for Gemma."""

    def __init__(self, dim: int, hidden: int, act: str, bias: bool = False):
        super().__init__()
        self.w_gate = nn.Linear(dim, hidden, bias=bias)
        self.w_up = nn.Linear(dim, hidden, bias=bias)
        self.w_down = nn.Linear(hidden, dim, bias=bias)
        self.act = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(self.act(self.w_gate(x)) * self.w_up(x))


# -------------------------------------------------------------------------------------------------- attention


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, scale: float | None) -> Tensor:
    """SDPA over q (B, nh, T, hd) and k/v (B, nkv, S, hd) with grouped-query heads; returns (B, nh, T, hd)."""
    if q.shape[2] == 1 and not causal and q.device.type == "cpu":
        return _attend_one(q, k, v, mask, scale)
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale, enable_gqa=gqa
    )


def _attend_one(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None) -> Tensor:
    """One query token per row (decoding) on the CPU: two small batched matmuls. The fused SDPA kernel opens a
    parallel region per call, which costs more than the whole computation at T = 1 (and stalls on busy cores)."""
    B, nh, _, hd = q.shape
    nkv, S = k.shape[1], k.shape[2]
    g = nh // nkv
    qg = q.reshape(B, nkv, g, hd)  # (B, nkv, g, hd): the g query heads sharing each kv head
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * (scale if scale is not None else hd**-0.5)  # (B,nkv,g,S)
    if mask is not None:
        scores = scores.masked_fill(~mask.reshape(-1, 1, 1, S), float("-inf"))  # mask (B or 1, 1, 1, S)
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v).reshape(B, nh, 1, hd)  # (B, nkv, g, hd) → (B, nh, 1, hd)


def cached_attention(
    q: Tensor,
    k: Tensor | None,
    v: Tensor | None,
    cache: KVCache | None,
    layer: int,
    start: int,
    mask: Tensor | None,
    causal: bool,
    scale: float | None = None,
) -> Tensor:
    """Write this call's keys/values into `cache` (unless k is None: a frozen-cache pass that only reads) and
    attend over slots [0, start+T). Without a cache, attend over k/v directly."""
    if cache is None:
        return attend(q, k, v, mask, causal, scale)
    if k is not None:
        cache.write(layer, start, k, v)
    return attend(q, *cache.read(layer, start + q.shape[2]), mask, causal, scale)


ROPE_NUMBERS = {"linear": ("factor",),
                "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


def rope_from_hf(d: dict) -> tuple[float, dict | None]:
    """(theta, scaling) from an HF config dict, accepting both the v4 keys (rope_theta, rope_scaling) and the v5
    `rope_parameters` dict. `scaling` is None for plain RoPE. Nonsense values are one-line errors."""
    params = d.get("rope_parameters") or {}
    scaling = d.get("rope_scaling")
    if not isinstance(params, dict) or not (scaling is None or isinstance(scaling, dict)):
        raise CtxlabError("invalid config: rope_parameters / rope_scaling must be JSON objects")
    theta = _positive("rope_theta", params.get("rope_theta", d.get("rope_theta", 10000.0)))
    scaling = scaling or {k: v for k, v in params.items() if k != "rope_theta"} or None
    if scaling is not None:
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type == "default":
            return theta, None
        if rope_type not in ROPE_TYPES:
            raise CtxlabError(f"unsupported rope_type {rope_type!r}; supported: {', '.join(ROPE_TYPES)}")
        for key in ROPE_NUMBERS.get(rope_type, ()):
            if key not in scaling:
                raise CtxlabError(f"invalid config: {rope_type} rope scaling lacks {key}")
            _positive(f"rope scaling {key}", scaling[key])
        scaling = {**scaling, "rope_type": rope_type}
    return theta, scaling


def _positive(name: str, value: Any) -> float:
    if not is_number(value) or value <= 0:
        raise CtxlabError(f"invalid config: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def apply_rope_interleaved(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Interleaved (complex-pair, Meta/Llama 4) RoPE: channels (2i, 2i+1) form one pair rotated by angle i.

    x (B, n, T, hd); cos/sin (B, 1, T, hd/2). Rotates in fp32 and casts back, as HF's complex multiply does."""
    xf = x.float().unflatten(-1, (-1, 2))  # (B, n, T, hd/2, 2)
    x0, x1 = xf.unbind(-1)  # (B, n, T, hd/2) each
    c, s = cos.float(), sin.float()
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)  # (B, n, T, hd/2, 2)
    return out.flatten(-2).to(x.dtype)  # (B, n, T, hd)

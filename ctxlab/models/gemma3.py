"""Gemma 3 text models (270M … 27B, `gemma3_text`): the Gemma decoder with interleaved local and global attention.

Differences from Gemma 1 (gemma.py):
- `layer_types`: sliding-window ("sliding_attention", 5 of every 6 layers) or full causal attention per layer. A local
  layer's query in slot i sees key slots (i − window, i] (slot distance, as HF's mask: left padding counts);
- two RoPE tables: local layers use `rope_parameters["sliding_attention"]` (theta 10k), global ones
  `rope_parameters["full_attention"]` (theta 1M; linear scaling ×8 on the 4B+ models);
- per-head QK RMSNorm with Gemma's (1 + w) before RoPE; attention scale query_pre_attn_scalar^-0.5 (not hd^-0.5);
- sandwich norms: x += post_attn_norm(attn(in_norm(x))); x += post_ffn_norm(mlp(pre_ffn_norm(x))), all (1 + w);
- optional final logit soft-capping (None on the released models); attention soft-capping (Gemma 2) is refused.

Cache: local layers keep a ring of `window` slots (bounded memory at any context length) unless the cache is made
with `rewindable=True`, which keeps every slot on every layer — needed to rewind past the window and for frozen
qTTT span passes over old context (their local queries read keys (t − window, t]).

Shapes:  B batch · T new tokens · S visible key slots · W window · H hidden · nh / nkv query / kv heads ·
         hd head dim · V vocab.
Forward: ids (B, T) → embed·√H (B, T, H) → L × sandwich blocks → norm → logits (B, T, V) [→ soft-cap]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ctxlab.errors import CtxlabError
from ctxlab.models.cache import KVCache, Step
from ctxlab.models.layers import GatedMLP, GemmaRMSNorm, RoPE, apply_rope, attend, rope_from_hf
from ctxlab.models.llama import HF_WEIGHT_MAP as LLAMA_MAP
from ctxlab.models.llama import Attention, LlamaConfig, LlamaModel

LAYER_TYPES = ("sliding_attention", "full_attention")
QUERY_BLOCK = 4096  # sliding-window prefill runs in blocks of this many queries


@dataclass(frozen=True)
class Gemma3Config(LlamaConfig):
    rms_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    tie_word_embeddings: bool = True
    rope_theta: float = 1_000_000.0  # global layers
    layer_types: tuple[str, ...] = ()
    sliding_window: int = 512
    query_pre_attn_scalar: float = 256.0
    rope_local_theta: float = 10_000.0
    rope_local_scaling: dict | None = None
    final_logit_softcapping: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    model_type = "gemma3_text"
    architecture = "Gemma3ForCausalLM"

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.layer_types) != self.num_layers or any(t not in LAYER_TYPES for t in self.layer_types):
            raise CtxlabError(f"layer_types must list {self.num_layers} entries from {LAYER_TYPES}, "
                              f"got {list(self.layer_types)[:8]}")
        if not isinstance(self.sliding_window, int) or self.sliding_window < 1:
            raise CtxlabError(f"sliding_window must be a positive integer, got {self.sliding_window!r}")
        if not self.query_pre_attn_scalar > 0:
            raise CtxlabError(f"query_pre_attn_scalar must be > 0, got {self.query_pre_attn_scalar!r}")

    @classmethod
    def from_hf_config(cls, d: dict) -> Gemma3Config:
        if d.get("attn_logit_softcapping") is not None:
            raise CtxlabError("attn_logit_softcapping (Gemma 2) is not supported by the Gemma 3 model")
        if d.get("use_bidirectional_attention"):
            raise CtxlabError("use_bidirectional_attention (EmbeddingGemma) is not supported; ctxlab runs causal LMs")
        params = d.get("rope_parameters") or {}
        if set(params) & set(LAYER_TYPES):  # v5: one RoPE dict per layer type
            glob, loc = params.get("full_attention") or {}, params.get("sliding_attention") or {}
        else:  # v4: rope_theta / rope_scaling are the global layers', rope_local_base_freq the local ones'
            glob = {**(d.get("rope_scaling") or {}), "rope_theta": d.get("rope_theta", 1e6)}
            loc = {"rope_theta": d.get("rope_local_base_freq", 10000.0)}
        g_theta, g_scaling = rope_from_hf({"rope_parameters": glob})
        l_theta, l_scaling = rope_from_hf({"rope_parameters": loc})
        base = {k: v for k, v in d.items() if k not in ("rope_parameters", "rope_scaling", "rope_local_base_freq")}
        base["rope_theta"] = g_theta
        if "hidden_activation" in d:
            base["hidden_act"] = d["hidden_activation"]
        n = d.get("num_hidden_layers")
        if not d.get("layer_types") and isinstance(n, int):
            pattern = d.get("sliding_window_pattern") or d.get("_sliding_window_pattern") or 6
            base["layer_types"] = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
        cfg = super().from_hf_config(base)
        extra = {k: v for k, v in cfg.extra.items() if k not in (
            "hidden_activation", "sliding_window_pattern", "_sliding_window_pattern", "attn_logit_softcapping",
            "use_bidirectional_attention")}
        return cfg.with_(
            layer_types=tuple(base.get("layer_types") or ()), rope_scaling=g_scaling, rope_local_theta=l_theta,
            rope_local_scaling=l_scaling, extra=extra,
            **{k: base[k] for k in ("sliding_window", "query_pre_attn_scalar", "final_logit_softcapping")
               if base.get(k) is not None},
        )

    def to_hf_config(self) -> dict:
        d = super().to_hf_config()
        for k in ("rope_theta", "rope_scaling", "rope_local_theta", "rope_local_scaling", "hidden_act"):
            d.pop(k, None)
        d.update({
            "hidden_activation": self.hidden_act,
            "layer_types": list(self.layer_types),
            "attn_logit_softcapping": None,
            "rope_parameters": {
                "full_attention": {"rope_type": "default", **(self.rope_scaling or {}), "rope_theta": self.rope_theta},
                "sliding_attention": {"rope_type": "default", **(self.rope_local_scaling or {}),
                                      "rope_theta": self.rope_local_theta},
            },
        })
        return d

    def with_(self, **changes: Any) -> Gemma3Config:
        d = {**asdict(self), **changes}
        d["layer_types"] = tuple(d["layer_types"])
        return type(self)(**d)


HF_WEIGHT_MAP: dict[str, str | None] = {
    **{k: v for k, v in LLAMA_MAP.items() if "post_attention_layernorm" not in k},
    "model.layers.{}.self_attn.q_norm.weight": "blocks.{}.attn.q_norm.weight",
    "model.layers.{}.self_attn.k_norm.weight": "blocks.{}.attn.k_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "blocks.{}.post_attn_norm.weight",
    "model.layers.{}.pre_feedforward_layernorm.weight": "blocks.{}.ffn_norm.weight",
    "model.layers.{}.post_feedforward_layernorm.weight": "blocks.{}.post_ffn_norm.weight",
}


# --------------------------------------------------------------------------------------------------- cache


@dataclass
class WindowedKVCache(KVCache):
    """KVCache whose sliding-window layers may hold only a ring of slots: `ring[l]` is that layer's buffer length
    (slot s lives at s % ring[l]) or None when the layer keeps every slot (global layers; all when rewindable).

    Appends overwrite ring entries of old slots, so the protocol differs from KVCache's there: `snapshot` also
    copies the rings (a few MB), `rewind` is exact only while every ring still holds the window before the new
    length (otherwise an error: make the cache with rewindable=True), and `copy_prefix` needs that window in the
    source's rings."""

    ring: list[int | None] = field(default_factory=list)
    window: int = 0  # the sliding window the rings serve

    def _rings(self) -> list[int]:
        return [i for i, r in enumerate(self.ring) if r is not None]

    def _ring_holds(self, length: int, end: int) -> bool:
        """Whether, with `end` slots written (a ring holds slots [end − R, end)), every ring still holds the keys
        the query in slot `length` needs: (length − W, length)."""
        return all(end - self.ring[i] <= max(0, length - self.window + 1) for i in self._rings())

    def rewind(self, length: int) -> WindowedKVCache:
        if not self._ring_holds(length, self.length):
            raise CtxlabError(f"cannot rewind this sliding-window cache from {self.length} to {length} slots (its "
                              "rings no longer hold that window); make it with new_cache(..., rewindable=True)")
        super().rewind(length)
        return self

    def snapshot(self) -> tuple:
        rings = {i: (self.k[i].clone(), self.v[i].clone()) for i in self._rings()}
        return super().snapshot(), rings

    def restore(self, snap: tuple) -> None:
        base, rings = snap
        for i, (k, v) in rings.items():
            self.k[i].copy_(k)
            self.v[i].copy_(v)
        super().restore(base)

    def copy_prefix(self, src: KVCache, n: int) -> None:
        if not isinstance(src, WindowedKVCache) or src.ring != self.ring:
            raise CtxlabError("copy_prefix needs a source cache of the same layout (same max_len and rewindable)")
        if not src._ring_holds(n, src.length):
            raise CtxlabError(f"the source cache's rings no longer hold the window before slot {n}")
        super().copy_prefix(src, n)  # full layers: slots [0, n); ring layers: the whole ring (the window is in it)


def sliding_attention(q: Tensor, k: Tensor, v: Tensor, q0: int, k0: int, k_valid: Tensor | None, window: int,
                      scale: float) -> Tensor:
    """Causal sliding-window attention by slot: q (B, nh, T, hd) of slots [q0, q0+T) over k/v (B, nkv, S, hd) of
    slots [k0, k0+S); the query in slot i sees keys j with i − window < j ≤ i that are real tokens (k_valid (B, S)),
    and always itself. Queries run in blocks of QUERY_BLOCK so memory stays O(T · (window + block)) at any length
    (one block up to 4096 queries: the same single SDPA call as transformers, hence bit-equal logits)."""
    T, block = q.shape[2], QUERY_BLOCK
    out = []
    for a in range(0, T, block):
        b = min(T, a + block)
        lo = max(k0, q0 + a - window + 1) - k0  # first key any query of the block can see
        hi = q0 + b - k0  # keys past the block's last query are never visible
        q_slot = torch.arange(q0 + a, q0 + b, device=q.device)[:, None]  # (t, 1)
        k_slot = torch.arange(k0 + lo, k0 + hi, device=q.device)[None, :]  # (1, s)
        allowed = (k_slot <= q_slot) & (q_slot - k_slot < window)  # (t, s)
        allowed = allowed[None]  # (1, t, s)
        if k_valid is not None:
            allowed = allowed & k_valid[:, None, lo:hi]  # (B, t, s)
        allowed = (allowed | (k_slot == q_slot)[None])[:, None]  # (B or 1, 1, t, s)
        out.append(attend(q[:, :, a:b], k[:, :, lo:hi], v[:, :, lo:hi], allowed, False, scale))
    return out[0] if len(out) == 1 else torch.cat(out, dim=2)  # (B, nh, T, hd)


# --------------------------------------------------------------------------------------------------- model


class Gemma3Attention(Attention):
    """Gemma's QK-norm before RoPE, the layer type's RoPE table, query_pre_attn_scalar^-0.5, and a sliding window
    on local layers (through the base attention's hooks)."""

    def __init__(self, cfg: Gemma3Config, layer: int):
        super().__init__(cfg, layer)
        self.q_norm = GemmaRMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = GemmaRMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.kind = cfg.layer_types[layer]
        self.window = cfg.sliding_window if self.kind == "sliding_attention" else None
        self.scale = float(cfg.query_pre_attn_scalar) ** -0.5

    def qk_transform(self, q: Tensor, k: Tensor | None, rope: Any, step: Step) -> tuple[Tensor, Tensor | None]:
        cos, sin = rope[self.kind]  # Gemma3Model.rope_tables: one (cos, sin) per layer type
        q = apply_rope(self.q_norm(q), cos, sin)  # norm over hd of (B, nh, T, hd), then rotate
        return q, None if k is None else apply_rope(self.k_norm(k), cos, sin)

    def attend(self, q: Tensor, k: Tensor | None, v: Tensor | None, step: Step, cache: KVCache | None,
               masks: dict) -> Tensor:
        if self.window is None:
            return super().attend(q, k, v, step, cache, masks)
        W, start, T = self.window, step.start, q.shape[2]
        lo = max(0, start - W + 1)  # first slot any query of this call can see
        if cache is None:
            return sliding_attention(q, k, v, 0, 0, step.k_valid, W, self.scale)
        ring = cache.ring[self.layer] if isinstance(cache, WindowedKVCache) else None
        kb, vb = cache.k[self.layer], cache.v[self.layer]
        if ring is None:  # every slot kept: write, then read the window straight from the buffer
            if k is not None:
                cache.write(self.layer, start, k, v)
            keys, values = kb[:, :, lo : start + T], vb[:, :, lo : start + T]  # (B, nkv, S, hd)
        else:
            if k is None:
                raise CtxlabError("frozen (qTTT) calls on Gemma 3 need a cache made with new_cache(..., "
                                  "rewindable=True)")
            idx = torch.arange(lo, start, device=q.device) % ring  # ring entries of the window before `start`
            keys = torch.cat([kb[:, :, idx], k], dim=2)  # (B, nkv, S, hd), slots [lo, start+T)
            values = torch.cat([vb[:, :, idx], v], dim=2)
            keep = min(T, ring)  # only the last `ring` new slots survive in the ring
            dst = torch.arange(start + T - keep, start + T, device=q.device) % ring
            kb[:, :, dst], vb[:, :, dst] = k[:, :, T - keep :], v[:, :, T - keep :]
        k_valid = cache.valid[:, lo : start + T] if cache.padded else None
        return sliding_attention(q, keys, values, start, lo, k_valid, W, self.scale)


class Gemma3Block(nn.Module):
    """Sandwich norms: x += post_attn_norm(attn(attn_norm(x))); x += post_ffn_norm(ffn(ffn_norm(x)))."""

    def __init__(self, cfg: Gemma3Config, layer: int):
        super().__init__()
        H, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.attn_norm, self.post_attn_norm = GemmaRMSNorm(H, eps), GemmaRMSNorm(H, eps)
        self.ffn_norm, self.post_ffn_norm = GemmaRMSNorm(H, eps), GemmaRMSNorm(H, eps)
        self.attn = Gemma3Attention(cfg, layer)
        self.ffn = GatedMLP(H, cfg.intermediate_size, cfg.hidden_act, bias=cfg.mlp_bias)

    def forward(self, x: Tensor, rope: Any, step: Step, cache: KVCache | None, masks: dict) -> Tensor:
        x = x + self.post_attn_norm(self.attn(self.attn_norm(x), rope, step, cache, masks))
        return x + self.post_ffn_norm(self.ffn(self.ffn_norm(x)))


class Gemma3Model(LlamaModel):
    """Gemma 3 causal LM: LlamaModel's shell and forward over sandwich blocks, with one RoPE table per layer type,
    the √H embedding scale, optional final soft-capping and a cache whose local layers stay bounded."""

    config_cls = Gemma3Config
    norm_cls = GemmaRMSNorm
    hf_weight_map = HF_WEIGHT_MAP

    def __init__(self, cfg: Gemma3Config):
        super().__init__(cfg)
        self.rope_local = RoPE(cfg.head_dim, cfg.rope_local_theta, cfg.rope_local_scaling)

    def make_block(self, cfg: Gemma3Config, layer: int) -> nn.Module:
        return Gemma3Block(cfg, layer)

    def embed(self, ids: Tensor) -> Tensor:
        x = self.tok_emb(ids)  # (B, T, H)
        return x * torch.tensor(math.sqrt(self.cfg.hidden_size), dtype=x.dtype)  # √H rounded to the activation dtype

    def rope_tables(self, pos: Tensor, dtype: torch.dtype) -> dict[str, tuple[Tensor, Tensor]]:
        """One (cos, sin) per layer type: global layers rotate with `rope`, local ones with `rope_local`."""
        return {"full_attention": self.rope.cos_sin(pos, dtype),
                "sliding_attention": self.rope_local.cos_sin(pos, dtype)}

    def head(self, h: Tensor) -> Tensor:
        logits = super().head(h)  # (B, T, V)
        cap = self.cfg.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None, device=None, *,
                  rewindable: bool = False) -> WindowedKVCache:
        """Preallocated cache; local layers hold a ring of `sliding_window` slots unless `rewindable` (every slot,
        for rewinding anywhere and frozen qTTT passes; the cache protocol's request, ctxlab/models/cache.py)."""
        cfg, p = self.cfg, self.tok_emb.weight
        dtype, device = dtype or p.dtype, device or p.device
        ring = [None if rewindable or t == "full_attention" or max_len <= cfg.sliding_window else cfg.sliding_window
                for t in cfg.layer_types]
        shapes = [(batch, cfg.num_kv_heads, max_len if r is None else r, cfg.head_dim) for r in ring]
        return WindowedKVCache(
            k=[torch.zeros(s, dtype=dtype, device=device) for s in shapes],
            v=[torch.zeros(s, dtype=dtype, device=device) for s in shapes],
            valid=torch.zeros(batch, max_len, dtype=torch.bool, device=device),
            pos=torch.zeros(batch, max_len, dtype=torch.long, device=device),
            ring=ring,
            window=cfg.sliding_window,
        )

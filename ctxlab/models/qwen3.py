"""Qwen3 dense (0.6B … 32B): the Llama decoder plus per-head QK RMSNorm applied *before* RoPE.

Differences from Llama (see shared docs, architectures.md §D): `head_dim` is explicit (128, not H/nh); q and k are
RMS-normalised per head over head_dim with learned weights (shape [hd]) before the rotation; no QKV bias.

Shapes:  B batch · T new tokens · nh / nkv query / kv heads · hd head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ctxlab.models.cache import Step
from ctxlab.models.layers import RMSNorm, apply_rope
from ctxlab.models.llama import HF_WEIGHT_MAP as LLAMA_MAP
from ctxlab.models.llama import Attention, LlamaConfig, LlamaModel


@dataclass(frozen=True)
class Qwen3Config(LlamaConfig):
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6

    model_type = "qwen3"
    architecture = "Qwen3ForCausalLM"


HF_WEIGHT_MAP = {
    **LLAMA_MAP,
    "model.layers.{}.self_attn.q_norm.weight": "blocks.{}.attn.q_norm.weight",
    "model.layers.{}.self_attn.k_norm.weight": "blocks.{}.attn.k_norm.weight",
}


class Qwen3Attention(Attention):
    def __init__(self, cfg: Qwen3Config, layer: int):
        super().__init__(cfg, layer)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)

    def qk_transform(
        self, q: Tensor, k: Tensor | None, rope: tuple[Tensor, Tensor], step: Step
    ) -> tuple[Tensor, Tensor | None]:
        cos, sin = rope
        q = apply_rope(self.q_norm(q), cos, sin)  # norm over hd of (B, nh, T, hd), then rotate
        return q, None if k is None else apply_rope(self.k_norm(k), cos, sin)


class Qwen3Model(LlamaModel):
    config_cls = Qwen3Config
    attn_cls = Qwen3Attention
    hf_weight_map = HF_WEIGHT_MAP

"""Llama dense decoder (Llama 2 / 3 / 3.1 / 3.2, incl. llama3 RoPE scaling): the reference dense family.

Qwen3 (QK-norm) and Gemma (offset norms, embedding scale, GeGLU) are short subclasses of these modules.

Shapes:  B batch · T new tokens · S visible key slots · H hidden · nh / nkv query / kv heads · hd head dim ·
         I MLP width · V vocab.
Forward: ids (B, T) → embed (B, T, H) → L × [x += attn(norm(x)); x += mlp(norm(x))] → norm → logits (B, T, V)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxlab.checks import is_int
from ctxlab.errors import CtxlabError
from ctxlab.models.cache import KVCache, Mask, Step, plan_step
from ctxlab.models.layers import GatedMLP, RMSNorm, RoPE, apply_rope, cached_attention, rope_from_hf
from ctxlab.models.validate import validate_config


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    torch_dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # unrecognised HF keys, kept on save

    model_type = "llama"
    architecture = "LlamaForCausalLM"

    def __post_init__(self) -> None:
        validate_config(self, self.model_type, divisible=(("num_heads", "num_kv_heads"),))

    # Maps our field names to HF config keys (the rest are HF-identical).
    HF_KEYS = {
        "num_layers": "num_hidden_layers",
        "num_heads": "num_attention_heads",
        "num_kv_heads": "num_key_value_heads",
    }

    @classmethod
    def from_hf_config(cls, d: dict) -> LlamaConfig:
        theta, scaling = rope_from_hf(d)
        kw: dict[str, Any] = {"rope_theta": theta, "rope_scaling": scaling}
        names = {f for f in cls.__dataclass_fields__ if f not in ("extra", "rope_theta", "rope_scaling")}
        for f in names:
            key = cls.HF_KEYS.get(f, f)
            if key in d and d[key] is not None:
                kw[f] = d[key]
        if "torch_dtype" not in kw and d.get("dtype"):
            kw["torch_dtype"] = d["dtype"]
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads")
        missing = [f for f in required if f not in kw]
        if missing:
            raise CtxlabError(f"config.json lacks {', '.join(cls.HF_KEYS.get(m, m) for m in missing)}")
        if "head_dim" not in kw:  # (nonsense sizes are reported by validate_config, not divided by)
            h, n = d["hidden_size"], d["num_attention_heads"]
            kw["head_dim"] = h // n if is_int(h) and is_int(n) and n > 0 else 0
        if "num_kv_heads" not in kw:
            kw["num_kv_heads"] = d["num_attention_heads"]
        kw.setdefault("hidden_act", d.get("hidden_activation") or "silu")
        kw.setdefault("max_position_embeddings", 2048)
        used = {cls.HF_KEYS.get(f, f) for f in cls.__dataclass_fields__} | {"rope_parameters", "dtype"}
        kw["extra"] = {k: v for k, v in d.items() if k not in used and k not in ("model_type", "architectures")}
        return cls(**kw)

    def to_hf_config(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("extra", "rope_scaling")}
        d = {self.HF_KEYS.get(k, k): v for k, v in d.items()}
        d["rope_scaling"] = self.rope_scaling
        return {**self.extra, **d, "model_type": self.model_type, "architectures": [self.architecture]}

    def with_(self, **changes: Any) -> LlamaConfig:
        return type(self)(**{**asdict(self), **changes})


# HF checkpoint key → ctxlab parameter name ("{}" is the layer index). None = known, deliberately ignored.
HF_WEIGHT_MAP: dict[str, str | None] = {
    "model.embed_tokens.weight": "tok_emb.weight",
    "model.layers.{}.input_layernorm.weight": "blocks.{}.attn_norm.weight",
    "model.layers.{}.self_attn.q_proj.weight": "blocks.{}.attn.wq.weight",
    "model.layers.{}.self_attn.k_proj.weight": "blocks.{}.attn.wk.weight",
    "model.layers.{}.self_attn.v_proj.weight": "blocks.{}.attn.wv.weight",
    "model.layers.{}.self_attn.o_proj.weight": "blocks.{}.attn.wo.weight",
    "model.layers.{}.self_attn.q_proj.bias": "blocks.{}.attn.wq.bias",
    "model.layers.{}.self_attn.k_proj.bias": "blocks.{}.attn.wk.bias",
    "model.layers.{}.self_attn.v_proj.bias": "blocks.{}.attn.wv.bias",
    "model.layers.{}.self_attn.o_proj.bias": "blocks.{}.attn.wo.bias",
    "model.layers.{}.self_attn.rotary_emb.inv_freq": None,  # recomputed from the config
    "model.layers.{}.post_attention_layernorm.weight": "blocks.{}.ffn_norm.weight",
    "model.layers.{}.mlp.gate_proj.weight": "blocks.{}.ffn.w_gate.weight",
    "model.layers.{}.mlp.up_proj.weight": "blocks.{}.ffn.w_up.weight",
    "model.layers.{}.mlp.down_proj.weight": "blocks.{}.ffn.w_down.weight",
    "model.layers.{}.mlp.gate_proj.bias": "blocks.{}.ffn.w_gate.bias",
    "model.layers.{}.mlp.up_proj.bias": "blocks.{}.ffn.w_up.bias",
    "model.layers.{}.mlp.down_proj.bias": "blocks.{}.ffn.w_down.bias",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
}


class Attention(nn.Module):
    """GQA attention. Variants override the hooks, not `forward`: `qk_transform` (rotation, QK-norm, query scaling),
    `mask_key` (which of the model's step masks this layer uses; None = the plain causal one), `scale` (None =
    hd^-0.5) and `attend` (the attention over the cache: Gemma 3's local layers use a sliding window)."""

    mask_key: int | None = None
    scale: float | None = None

    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.layer, self.nh, self.nkv, self.hd = layer, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.hidden_size, self.nh * self.hd, bias=cfg.attention_bias)
        self.wk = nn.Linear(cfg.hidden_size, self.nkv * self.hd, bias=cfg.attention_bias)
        self.wv = nn.Linear(cfg.hidden_size, self.nkv * self.hd, bias=cfg.attention_bias)
        self.wo = nn.Linear(self.nh * self.hd, cfg.hidden_size, bias=cfg.attention_bias)

    def qk_transform(
        self, q: Tensor, k: Tensor | None, rope: tuple[Tensor, Tensor], step: Step
    ) -> tuple[Tensor, Tensor | None]:
        """Llama: rotate-half RoPE on q (B, nh, T, hd) and k (B, nkv, T, hd; None on a frozen call)."""
        cos, sin = rope
        return apply_rope(q, cos, sin), None if k is None else apply_rope(k, cos, sin)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], step: Step, cache: KVCache | None,
                masks: dict[int | None, Mask]) -> Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.nh, self.hd).transpose(1, 2)  # (B, nh, T, hd)
        k = v = None
        if step.write:  # a frozen-cache call (qTTT) reuses the stored keys/values and computes only queries
            k = self.wk(x).view(B, T, self.nkv, self.hd).transpose(1, 2)  # (B, nkv, T, hd)
            v = self.wv(x).view(B, T, self.nkv, self.hd).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = self.qk_transform(q, k, rope, step)
        o = self.attend(q, k, v, step, cache, masks)  # (B, nh, T, hd)
        return self.wo(o.transpose(1, 2).reshape(B, T, self.nh * self.hd))  # (B, T, nh*hd) → (B, T, H)

    def attend(self, q: Tensor, k: Tensor | None, v: Tensor | None, step: Step, cache: KVCache | None,
               masks: dict[int | None, Mask]) -> Tensor:
        """Store this call's k/v (unless frozen) and attend over the cache with this layer's step mask."""
        mask, causal = masks[self.mask_key]
        return cached_attention(q, k, v, cache, self.layer, step.start, mask, causal, self.scale)


class Block(nn.Module):
    """x += attn(norm(x)); x += ffn(norm(x)). `ffn` defaults to the config's gated MLP (Llama 4 passes its MoE)."""

    def __init__(self, cfg: LlamaConfig, layer: int, attn_cls: type[Attention], norm_cls: type[nn.Module],
                 ffn: nn.Module | None = None):
        super().__init__()
        self.attn_norm = norm_cls(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = attn_cls(cfg, layer)
        self.ffn_norm = norm_cls(cfg.hidden_size, cfg.rms_norm_eps)
        self.ffn = ffn if ffn is not None else GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act,
                                                        bias=cfg.mlp_bias)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], step: Step, cache: KVCache | None,
                masks: dict[int | None, Mask]) -> Tensor:
        x = x + self.attn(self.attn_norm(x), rope, step, cache, masks)
        return x + self.ffn(self.ffn_norm(x))


class LlamaModel(nn.Module):
    """Causal LM. `forward(ids, cache, valid)` → (logits, cache); see `plan_step` for the cache protocol."""

    config_cls: type[LlamaConfig] = LlamaConfig
    attn_cls: type[Attention] = Attention
    norm_cls: type[nn.Module] = RMSNorm
    hf_weight_map = HF_WEIGHT_MAP

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.blocks = nn.ModuleList(self.make_block(cfg, i) for i in range(cfg.num_layers))
        self.norm = self.norm_cls(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rope = RoPE(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)

    def make_block(self, cfg: LlamaConfig, layer: int) -> nn.Module:
        return Block(cfg, layer, self.attn_cls, self.norm_cls)

    @property
    def max_context(self) -> int:
        return self.cfg.max_position_embeddings

    def embed(self, ids: Tensor) -> Tensor:
        return self.tok_emb(ids)  # (B, T, H)

    def head(self, h: Tensor) -> Tensor:
        w = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, w)  # (B, T, V)

    def rope_tables(self, pos: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos, sin for the RoPE positions pos (B, T) of this call."""
        return self.rope.cos_sin(pos, dtype)

    def step_masks(self, step: Step) -> dict[int | None, Mask]:
        """One (mask, is_causal) per attention kind (`Attention.mask_key`), built once per call."""
        return {None: step.mask()}

    def forward(
        self,
        ids: Tensor,
        cache: KVCache | None = None,
        valid: Tensor | None = None,
        *,
        start: int | None = None,
        frozen: bool = False,
        last_only: bool = False,
    ) -> tuple[Tensor, KVCache | None]:
        """ids (B, T); valid (B, T) False on left padding; `frozen` = qTTT pass over existing cache slots
        [start, start+T) that computes queries only; `last_only` returns logits (B, 1, V) of the last token."""
        step = plan_step(ids, cache, valid, start, frozen)
        x = self.embed(ids)
        rope = self.rope_tables(step.pos, x.dtype)
        masks = self.step_masks(step)
        for block in self.blocks:
            x = block(x, rope, step, cache, masks)
        if last_only:
            x = x[:, -1:]
        return self.head(self.norm(x)), cache

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None, device=None, *,
                  rewindable: bool = False) -> KVCache:
        """A preallocated KV cache; KV caches always rewind (`rewindable` is part of the cache protocol)."""
        p = self.tok_emb.weight
        return KVCache.allocate(
            self.cfg.num_layers, batch, max_len, self.cfg.num_kv_heads, self.cfg.head_dim,
            dtype or p.dtype, device or p.device,
        )

    def query_weights(self) -> list[nn.Parameter]:
        """The attention query projections (what qTTT adapts), one per layer."""
        return [b.attn.wq.weight for b in self.blocks]

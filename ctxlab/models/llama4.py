"""Llama 4 text model (Scout 17B-16E, Maverick 17B-128E): a Llama decoder with MoE, NoPE layers and chunked attention.

Differences from Llama (shared docs, architectures.md §C):
- RoPE is *interleaved* (channel pairs (2i, 2i+1), Meta's complex layout; checkpoints are not permuted), with optional
  llama3 frequency scaling, and is applied only on RoPE layers. Every `no_rope_layer_interval`-th layer (layers 3, 7,
  … by default; `no_rope_layers[i] == 0`) is a NoPE layer: no rotation, full causal attention, and, with
  `attn_temperature_tuning`, queries scaled by log(1 + floor((pos+1)/floor_scale))·attn_scale + 1 (absolute
  positions; ours come from the Step, so left padding and frozen cache passes see the right positions).
- RoPE layers attend causally *within* chunks of `attention_chunk_size` positions, and with `use_qk_norm` RMS-normalise
  q and k after the rotation (fp32, no weight).
- Feed-forward: MoE on layers step-1, 2·step-1, … (`interleave_moe_layer_step`, or an explicit `moe_layers`), a dense
  SwiGLU of width `intermediate_size_mlp` elsewhere. MoE = always-on shared SwiGLU expert + top-k routed experts whose
  *input* is scaled by sigmoid(router logit) (no softmax, no renormalisation). Routed experts are stored stacked in
  HF's x@W orientation with gate|up fused (split at run time: one matmul per expert; it also keeps this module free
  of loading.Split, whose module imports the model registry); dispatch groups the token→expert assignments by
  expert (one sort, a loop over experts).
- Multimodal checkpoints (Llama4ForConditionalGeneration) load too: `language_model.` is stripped, the vision tower
  and projector are skipped (reported as loader notices).

Shapes:  B batch · T new tokens · S visible key slots · H hidden · nh / nkv query / kv heads · hd head dim ·
         N = B·T flattened tokens · E routed experts · k experts per token · I expert / shared width ·
         Im dense-MLP width · V vocab.
Forward: ids (B, T) → embed (B, T, H) → L × [x += attn(norm(x)); x += ffn(norm(x))] → norm → logits (B, T, V)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ctxlab.errors import CtxlabError
from ctxlab.models.cache import Mask, Step
from ctxlab.models.layers import (
    GatedMLP,
    RMSNorm,
    activation,
    apply_rope_interleaved,
)
from ctxlab.models.llama import Attention, Block, LlamaConfig, LlamaModel


@dataclass(frozen=True)
class Llama4Config(LlamaConfig):
    """Llama4TextConfig. `moe_layers`, `no_rope_layers` and `layer_types` are derived when left empty (as in HF) and
    then stored explicitly; pass them empty again to re-derive after changing the step/interval/chunk size."""

    rope_theta: float = 500000.0
    intermediate_size_mlp: int = 16384
    num_local_experts: int = 16
    num_experts_per_tok: int = 1
    interleave_moe_layer_step: int = 1
    moe_layers: tuple[int, ...] = ()
    no_rope_layers: tuple[int, ...] = ()  # 1 = RoPE layer, 0 = NoPE layer
    no_rope_layer_interval: int = 4
    layer_types: tuple[str, ...] = ()  # "chunked_attention" | "full_attention"
    attention_chunk_size: int | None = 8192
    attn_temperature_tuning: bool = True
    floor_scale: int = 8192
    attn_scale: float = 0.1
    use_qk_norm: bool = True

    model_type = "llama4_text"
    architecture = "Llama4ForCausalLM"

    def __post_init__(self) -> None:
        super().__post_init__()
        L = self.num_layers
        step, interval = self.interleave_moe_layer_step, self.no_rope_layer_interval
        if step < 1 or interval < 1:
            raise CtxlabError("interleave_moe_layer_step and no_rope_layer_interval must be >= 1")
        moe = tuple(self.moe_layers) if self.moe_layers else tuple(range(step - 1, L, step))
        default_nope = tuple(int((i + 1) % interval != 0) for i in range(L))  # an empty list means the default
        nope = tuple(self.no_rope_layers) or default_nope
        if len(nope) < L:
            raise CtxlabError(f"no_rope_layers has {len(nope)} entries for {L} layers")
        chunked = self.attention_chunk_size is not None
        types = tuple(self.layer_types) or tuple(
            "chunked_attention" if r and chunked else "full_attention" for r in nope[:L]
        )
        if len(types) < L or any(t not in ("chunked_attention", "full_attention") for t in types):
            raise CtxlabError(f"layer_types must name chunked_attention/full_attention for all {L} layers")
        if not chunked and "chunked_attention" in types[:L]:
            raise CtxlabError("layer_types asks for chunked attention but attention_chunk_size is null")
        if any(not 0 <= i < L for i in moe):
            raise CtxlabError(f"moe_layers {list(moe)} out of range for {L} layers")
        if not 1 <= self.num_experts_per_tok <= self.num_local_experts:
            raise CtxlabError(
                f"num_experts_per_tok {self.num_experts_per_tok} must be in 1..{self.num_local_experts}"
            )
        if self.mlp_bias:
            raise CtxlabError("Llama 4 has no MLP biases (mlp_bias must be false)")
        activation(self.hidden_act)  # fail early on unsupported activations
        object.__setattr__(self, "moe_layers", moe)
        object.__setattr__(self, "no_rope_layers", tuple(int(r) for r in nope))
        object.__setattr__(self, "layer_types", types)
        object.__setattr__(self, "attn_temperature_tuning", bool(self.attn_temperature_tuning))

    @classmethod
    def from_hf_config(cls, d: dict) -> Llama4Config:
        if "text_config" in d:  # a full Llama4Config (multimodal): the text model's part
            d = d["text_config"]
        d = {k: v for k, v in d.items() if not k.startswith("_")}  # loader markers like _multimodal
        if "attn_temperature_tuning" in d:  # 4.51-era hub configs say 4; transformers 5 wants a bool
            d["attn_temperature_tuning"] = bool(d["attn_temperature_tuning"])
        d.setdefault("max_position_embeddings", 4096 * 32)  # HF defaults (LlamaConfig's differ)
        if "rope_theta" not in (d.get("rope_parameters") or {}):
            d.setdefault("rope_theta", 500000.0)
        cfg = super().from_hf_config(d)
        if cfg.rope_scaling and "rope_theta" in cfg.rope_scaling:  # transformers 5 may fold θ into rope_scaling
            cfg = cfg.with_(rope_scaling={k: v for k, v in cfg.rope_scaling.items() if k != "rope_theta"})
        if "attention_chunk_size" in d and d["attention_chunk_size"] is None:  # explicit null = no chunking
            cfg = cfg.with_(attention_chunk_size=None, layer_types=tuple(d.get("layer_types") or ()))
        return cfg

    def to_hf_config(self) -> dict:
        d = super().to_hf_config()
        d.pop("mlp_bias", None)  # not a Llama4TextConfig field
        for key in ("moe_layers", "no_rope_layers", "layer_types"):
            d[key] = list(d[key])
        return d


# HF checkpoint key → ctxlab parameter name ("{}" = layer index). A key whose target does not exist in a given layer
# (a router key on a dense layer, say) is reported as unexpected by the loader, so the accounting stays strict.
_ATTN = "model.layers.{}.self_attn."
_FF = "model.layers.{}.feed_forward."
HF_WEIGHT_MAP: dict[str, str | None] = {
    "model.embed_tokens.weight": "tok_emb.weight",
    "model.layers.{}.input_layernorm.weight": "blocks.{}.attn_norm.weight",
    **{f"{_ATTN}{p}_proj.{w}": f"blocks.{{}}.attn.w{p}.{w}" for p in "qkvo" for w in ("weight", "bias")},
    "model.layers.{}.post_attention_layernorm.weight": "blocks.{}.ffn_norm.weight",
    # dense layers
    **{f"{_FF}{p}_proj.weight": f"blocks.{{}}.ffn.w_{p}.weight" for p in ("gate", "up", "down")},
    # MoE layers: router, stacked routed experts (gate | up fused along the last dim), shared expert
    f"{_FF}router.weight": "blocks.{}.ffn.router.weight",
    f"{_FF}experts.gate_up_proj": "blocks.{}.ffn.experts.w_gate_up",  # (E, H, 2I): [..., :I] gate, [..., I:] up
    f"{_FF}experts.down_proj": "blocks.{}.ffn.experts.w_down",  # (E, I, H)
    **{f"{_FF}shared_expert.{p}_proj.weight": f"blocks.{{}}.ffn.shared.w_{p}.weight" for p in ("gate", "up", "down")},
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
    "model.rotary_emb.inv_freq": None,  # recomputed from the config
}
SKIPPED_TOWERS = ("vision_model.", "multi_modal_projector.")


def hf_key_rename(key: str) -> str | None:
    """Multimodal checkpoints: `language_model.model.X` → `model.X`, `language_model.lm_head.weight` →
    `lm_head.weight`; vision tower and projector tensors → None (skipped, reported by the loader)."""
    if key.startswith("language_model."):
        return key.removeprefix("language_model.")
    if key.startswith(SKIPPED_TOWERS):
        return None
    return key


def parameter_counts(cfg: Llama4Config) -> tuple[int, int]:
    """(total, active-per-token) parameter counts from the config alone (no weights). Active = embeddings + head +
    norms + attention + dense MLPs + per MoE layer (router + shared expert + top-k routed experts)."""
    H, hd, nh, nkv = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    attn = 2 * H * nh * hd + 2 * H * nkv * hd
    if cfg.attention_bias:
        attn += nh * hd + 2 * nkv * hd + H
    swiglu = 3 * H * cfg.intermediate_size  # one routed expert, or the shared expert
    per_layer = attn + 2 * H  # attention + its two RMSNorm weights
    total = active = cfg.vocab_size * H * (1 if cfg.tie_word_embeddings else 2) + H  # embedding, head, final norm
    moe = set(cfg.moe_layers)
    for i in range(cfg.num_layers):
        if i in moe:
            common = per_layer + cfg.num_local_experts * H + swiglu  # + router + shared expert
            total += common + cfg.num_local_experts * swiglu
            active += common + cfg.num_experts_per_tok * swiglu
        else:
            total += per_layer + 3 * H * cfg.intermediate_size_mlp
            active += per_layer + 3 * H * cfg.intermediate_size_mlp
    return total, active


# ------------------------------------------------------------------------------------------------------ model


def qk_rms(x: Tensor, eps: float) -> Tensor:
    """HF Llama4TextL2Norm: weightless RMS normalisation over hd in fp32, cast back."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class Llama4Attention(Attention):
    """GQA attention; RoPE layers: interleaved RoPE → optional QK-norm → chunked causal mask; NoPE layers: optional
    temperature tuning of the queries → full causal mask."""

    def __init__(self, cfg: Llama4Config, layer: int):
        super().__init__(cfg, layer)
        self.use_rope = bool(cfg.no_rope_layers[layer])
        self.qk_norm = cfg.use_qk_norm and self.use_rope
        self.temperature = cfg.attn_temperature_tuning and not self.use_rope
        self.mask_key = cfg.attention_chunk_size if cfg.layer_types[layer] == "chunked_attention" else None
        self.eps, self.floor_scale, self.attn_scale = cfg.rms_norm_eps, cfg.floor_scale, cfg.attn_scale

    def qk_transform(
        self, q: Tensor, k: Tensor | None, rope: tuple[Tensor, Tensor], step: Step
    ) -> tuple[Tensor, Tensor | None]:
        if self.use_rope:
            cos, sin = rope
            q = apply_rope_interleaved(q, cos, sin)
            k = None if k is None else apply_rope_interleaved(k, cos, sin)
            if self.qk_norm:
                q = qk_rms(q, self.eps)
                k = None if k is None else qk_rms(k, self.eps)
        elif self.temperature:
            # fp32 scale per token from its absolute position; pos (B, T) → (B, 1, T, 1)
            scale = torch.log1p(torch.floor((step.pos.float() + 1.0) / self.floor_scale)) * self.attn_scale + 1.0
            q = (q * scale[:, None, :, None]).to(q.dtype)
        return q, k


class Experts(nn.Module):
    """E routed SwiGLU experts, stacked in x@W orientation (HF layout): w_gate_up (E, H, 2I) = [gate | up],
    w_down (E, I, H)."""

    def __init__(self, n_experts: int, dim: int, hidden: int, act: str):
        super().__init__()
        self.w_gate_up = nn.Parameter(torch.empty(n_experts, dim, 2 * hidden))
        self.w_down = nn.Parameter(torch.empty(n_experts, hidden, dim))
        for w in (self.w_gate_up, self.w_down):
            nn.init.normal_(w, std=0.02)  # HF's init; checkpoints overwrite it
        self.act = activation(act)

    def forward(self, h: Tensor, idx: Tensor, score: Tensor) -> Tensor:
        """h (N, H) tokens; idx/score (N, k) chosen experts and their sigmoid scores → (N, H) summed outputs."""
        N, k = idx.shape
        flat = idx.reshape(-1)  # (N·k,) expert of each assignment, token-major
        order = flat.argsort(stable=True)  # assignments grouped by expert
        token = order // k  # (N·k,) source token of each sorted assignment
        z_all = h[token] * score.reshape(-1)[order, None]  # (N·k, H) expert inputs, scaled by their scores
        counts = torch.bincount(flat, minlength=self.w_down.shape[0]).tolist()
        out = torch.zeros_like(h)
        lo = 0
        for e, n in enumerate(counts):
            if n:
                z = z_all[lo : lo + n]  # (n, H) every token routed to expert e
                gate, up = (z @ self.w_gate_up[e]).chunk(2, dim=-1)  # (n, 2I) → 2 × (n, I)
                y = (self.act(gate) * up) @ self.w_down[e]  # (n, H)
                out.index_add_(0, token[lo : lo + n], y)
                lo += n
        return out


class MoE(nn.Module):
    """Shared expert (always on) + top-k routed experts with sigmoid scores on the *inputs*."""

    def __init__(self, cfg: Llama4Config):
        super().__init__()
        self.k = cfg.num_experts_per_tok
        self.router = nn.Linear(cfg.hidden_size, cfg.num_local_experts, bias=False)
        self.experts = Experts(cfg.num_local_experts, cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)
        self.shared = GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, x: Tensor) -> Tensor:
        h = x.reshape(-1, x.shape[-1])  # (B, T, H) → (N, H)
        top_v, top_i = self.router(h).topk(self.k, dim=-1)  # (N, k) from logits (N, E)
        score = torch.sigmoid(top_v.float()).to(h.dtype)  # (N, k); unselected experts score sigmoid(-inf) = 0
        return (self.shared(h) + self.experts(h, top_i, score)).view_as(x)  # (N, H) → (B, T, H)


class Llama4Model(LlamaModel):
    """Llama 4 text causal LM: LlamaModel's forward, embedding, final norm, head and cache over Llama blocks with
    Llama 4 attention and MoE, through the hooks: interleaved rotation tables and one mask per attention kind."""

    config_cls = Llama4Config
    hf_weight_map = HF_WEIGHT_MAP
    hf_key_rename = staticmethod(hf_key_rename)

    def make_block(self, cfg: Llama4Config, layer: int) -> nn.Module:
        dense = GatedMLP(cfg.hidden_size, cfg.intermediate_size_mlp, cfg.hidden_act)
        return Block(cfg, layer, Llama4Attention, RMSNorm, ffn=MoE(cfg) if layer in cfg.moe_layers else dense)

    def rope_tables(self, pos: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """pos (B, T) → fp32 cos, sin (B, 1, T, hd/2) for the interleaved rotation (HF keeps freqs_cis in fp32)."""
        freqs = pos[..., None].float() * self.rope.inv_freq(pos.device)  # (B, T, hd/2)
        return freqs.cos()[:, None], freqs.sin()[:, None]

    def step_masks(self, step: Step) -> dict[int | None, Mask]:
        """One mask per attention kind: chunked (RoPE layers) and full causal (NoPE layers)."""
        return {c: step.mask(chunk=c) for c in {b.attn.mask_key for b in self.blocks}}

    def active_parameters(self) -> int:
        """Parameters used per token (read by ctxlab.modelinfo); see `parameter_counts`."""
        return parameter_counts(self.cfg)[1]

"""RecurrentGemma / Griffin (2B, 9B): RG-LRU recurrences interleaved with local MQA attention (architectures.md §B).

Shapes:  B batch · T new tokens · S visible key slots · H hidden · L lru width · nh heads (also the RG-LRU gate
         blocks) · bw = L/nh gate block width · nkv kv heads (1) · hd = H/nh head dim · W attention window ·
         cw conv width · K kept slots (span history) · I MLP width (intermediate_size / 2) · V vocab.
Forward: ids (B, T) → E[ids]·bf16(√H) → per layer [x += Temporal(norm(x)); x += MLP(norm(x))] → norm → x Eᵀ
         → 30·tanh(logits/30). Temporal = block_types[i % len] (recurrent, recurrent, attention).
         Recurrent: out(RG-LRU(conv4(in_x(h))) ⊙ gelu(in_y(h))). Attention: MQA, RoPE on the first half of each
         head, key j visible to query i iff i − W < j ≤ i (HF 5.x), o_proj with bias.

Prefill scan. h_t = a_t·h_{t−1} + x_t is solved by `linear_scan`, a two-pass chunked scan: the T steps are cut
into ≈√T chunks of ≈√T steps. Pass 1 runs all chunks at once from a zero state (√T vectorised steps over
(B, chunks, L)) and keeps each chunk's end state and total decay Π a; the same recurrence one level up (recursive)
gives the true state entering every chunk; pass 2 reruns all chunks from those states. No logs or divisions, so
resets (a_t = 0) and tiny a_t are exact and nothing can overflow; Python steps are ≈2√T instead of T. (Log-space
cumsum and Hillis–Steele variants were measured 5-30x slower on CPU at L = 2560.) `scan_loop` is the reference.

Cache (`GriffinCache` in cache.py, fixed size): per recurrent layer the last cw−1 conv inputs (B, L, cw−1) in the
activation dtype and the RG-LRU state (B, L) in fp32; per attention layer a ring buffer of the last W keys/values
(slot s at s % W) with real-token flags. Its size does not depend on the sequence length. Calls append; `rewind` can
go back only to a slot whose entering state is still in the span history (below).

qTTT (`frozen=True`). A span pass over slots [start, start+T) needs what the prefill saw there: the recurrent
state entering `start` and the keys/values of slots [start−W+1, start+T). `new_cache(..., keep_states=N)` therefore
also records, for the last N slots (ring buffer; True = all max_len slots), per-slot conv inputs and RG-LRU states of
the recurrent layers and keys/values of the attention layers. A frozen call recomputes the recurrent blocks over the
span from the stored state (gradients reach them only through the residual stream) and attends to the stored keys;
it writes nothing. `cache.frozen_range()` says which spans are possible. Memory per kept slot is
n_rec·L·(act bytes + 4) + n_attn·2·nkv·hd·(act bytes) + 9 bytes: ≈278 KiB for the 2B model in bf16 (1.1 GiB for
4k slots, 8.7 GiB for 32k), so keep only what the span sampler needs.

Left padding (`valid` False) is skipped exactly: pads feed zeros to the conv (its zero padding), leave the RG-LRU
state unchanged (a_t = 1, x_t = 0) and are masked as keys; positions start at 0 at the first real token.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxlab.errors import CtxlabError
from ctxlab.models.cache import GriffinCache, ring_read, token_positions
from ctxlab.models.layers import (
    GatedMLP,
    GemmaRMSNorm,
    RoPE,
    activation,
    apply_rope,
    attend,
    rope_from_hf,
)
from ctxlab.models.validate import validate_config

BLOCK_TYPES = ("recurrent", "attention")


@dataclass(frozen=True)
class GriffinConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # HF convention: the MLP width is intermediate_size // 2
    num_layers: int
    num_heads: int
    num_kv_heads: int
    lru_width: int
    attention_window_size: int = 2048
    conv1d_width: int = 4
    logits_soft_cap: float = 30.0
    partial_rotary_factor: float = 0.5
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    hidden_activation: str = "gelu_pytorch_tanh"
    block_types: tuple[str, ...] = ("recurrent", "recurrent", "attention")
    attention_bias: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 2
    eos_token_id: int | list[int] | None = 1
    pad_token_id: int | None = 0
    torch_dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # unrecognised HF keys, kept on save

    model_type = "recurrent_gemma"
    architecture = "RecurrentGemmaForCausalLM"
    HF_KEYS = {
        "num_layers": "num_hidden_layers",
        "num_heads": "num_attention_heads",
        "num_kv_heads": "num_key_value_heads",
    }

    def __post_init__(self) -> None:
        if isinstance(self.block_types, list):
            object.__setattr__(self, "block_types", tuple(self.block_types))
        validate_config(self, "RecurrentGemma", ranges={"partial_rotary_factor": (0.0, 1.0, False)})
        checks = [
            (self.hidden_size % self.num_heads == 0, f"hidden_size {self.hidden_size} not divisible by heads"),
            (self.lru_width % self.num_heads == 0, f"lru_width {self.lru_width} not divisible by heads"),
            (self.num_heads % self.num_kv_heads == 0, f"heads {self.num_heads} not divisible by kv heads"),
            (self.intermediate_size % 2 == 0, f"intermediate_size {self.intermediate_size} must be even"),
            (self.rotary_dim % 2 == 0, f"rotary dims {self.rotary_dim} (head_dim·partial_rotary_factor) must be even"),
            (self.attention_window_size >= 1 and self.conv1d_width >= 1, "window and conv width must be positive"),
            (0 < len(self.block_types) and set(self.block_types) <= set(BLOCK_TYPES), f"types {self.block_types}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise CtxlabError(f"invalid RecurrentGemma config: {msg}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def layer_types(self) -> tuple[str, ...]:
        return tuple(self.block_types[i % len(self.block_types)] for i in range(self.num_layers))

    @classmethod
    def from_hf_config(cls, d: dict) -> GriffinConfig:
        theta, scaling = rope_from_hf(d)
        if scaling is not None:
            raise CtxlabError(f"RecurrentGemma supports only default RoPE, got rope scaling {scaling}")
        kw: dict[str, Any] = {"rope_theta": theta}
        kw["partial_rotary_factor"] = (d.get("rope_parameters") or {}).get(
            "partial_rotary_factor", d.get("partial_rotary_factor", 0.5)
        )
        for f in cls.__dataclass_fields__:
            key = cls.HF_KEYS.get(f, f)
            if f not in ("extra", "rope_theta", "partial_rotary_factor") and d.get(key) is not None:
                kw[f] = d[key]
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads")
        missing = [k for k in required if k not in kw]
        if missing:
            raise CtxlabError(f"config.json lacks {', '.join(cls.HF_KEYS.get(m, m) for m in missing)}")
        kw.setdefault("num_kv_heads", kw["num_heads"])
        kw.setdefault("lru_width", kw["hidden_size"])
        if "torch_dtype" not in kw and d.get("dtype"):
            kw["torch_dtype"] = d["dtype"]
        if d.get("hidden_act") and "hidden_activation" not in kw:
            kw["hidden_activation"] = d["hidden_act"]
        used = {cls.HF_KEYS.get(f, f) for f in cls.__dataclass_fields__}
        used |= {"rope_parameters", "rope_scaling", "dtype", "head_dim", "hidden_act", "model_type", "architectures"}
        kw["extra"] = {k: v for k, v in d.items() if k not in used}
        return cls(**kw)

    def to_hf_config(self) -> dict:
        d = {self.HF_KEYS.get(k, k): v for k, v in asdict(self).items() if k != "extra"}
        d["block_types"] = list(self.block_types)  # rope_theta / partial_rotary_factor: legacy keys, read by v4 and v5
        return {**self.extra, **d, "model_type": self.model_type, "architectures": [self.architecture]}

    def with_(self, **changes: Any) -> GriffinConfig:
        return type(self)(**{**asdict(self), **changes})


_T = "model.layers.{}.temporal_block."
HF_WEIGHT_MAP: dict[str, str | None] = {
    "model.embed_tokens.weight": "tok_emb.weight",
    "model.normalizer": None,  # bf16(√H), recomputed
    "model.layers.{}.temporal_pre_norm.weight": "blocks.{}.temporal_norm.weight",
    "model.layers.{}.channel_pre_norm.weight": "blocks.{}.channel_norm.weight",
    **{f"{_T}{hf}.{p}": f"blocks.{{}}.rec.{ours}.{p}"
       for hf, ours in (("linear_x", "in_x"), ("linear_y", "in_y"), ("linear_out", "out")) for p in ("weight", "bias")},
    _T + "conv_1d.weight": "blocks.{}.rec.conv_w",
    _T + "conv_1d.bias": "blocks.{}.rec.conv_b",
    _T + "rg_lru.recurrent_param": "blocks.{}.rec.lru.a_param",
    _T + "rg_lru.input_gate_weight": "blocks.{}.rec.lru.gate_x_w",
    _T + "rg_lru.input_gate_bias": "blocks.{}.rec.lru.gate_x_b",
    _T + "rg_lru.recurrent_gate_weight": "blocks.{}.rec.lru.gate_a_w",
    _T + "rg_lru.recurrent_gate_bias": "blocks.{}.rec.lru.gate_a_b",
    **{f"{_T}{n}_proj.{p}": f"blocks.{{}}.attn.w{n}.{p}" for n in "qkvo" for p in ("weight", "bias")},
    _T + "rotary_emb.inv_freq": None,  # recomputed from the config
    **{f"model.layers.{{}}.mlp_block.{n}_proj.{p}": f"blocks.{{}}.mlp.w_{n}.{p}"
       for n in ("gate", "up", "down") for p in ("weight", "bias")},
    "model.final_norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
}


# ------------------------------------------------------------------------------------------------------- scan


def scan_loop(a: Tensor, x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """Reference linear recurrence h_t = a_t·h_{t−1} + x_t, one step at a time. a, x (B, T, L); h0 (B, L).
    Returns all states (B, T, L) and the last one (B, L)."""
    h, out = h0, []
    for t in range(x.shape[1]):
        h = a[:, t] * h + x[:, t]
        out.append(h)
    return torch.stack(out, dim=1), h


def linear_scan(a: Tensor, x: Tensor, h0: Tensor, base: int = 16) -> tuple[Tensor, Tensor]:
    """Same result as `scan_loop` in O(√T) Python steps: a two-pass chunked scan (see the module docstring)."""
    B, T, L = x.shape
    if T <= base:
        return scan_loop(a, x, h0)
    C = math.isqrt(T - 1) + 1  # chunk length ⌈√T⌉
    n = -(-T // C)  # number of chunks
    if n * C > T:  # padded steps have a = 1, x = 0: the state passes through unchanged
        a, x = F.pad(a, (0, 0, 0, n * C - T), value=1.0), F.pad(x, (0, 0, 0, n * C - T))
    a4, x4 = a.reshape(B, n, C, L), x.reshape(B, n, C, L)  # (B, n, C, L)
    # pass 1, all chunks at once: each chunk's end state from a zero start and its total decay Π a
    h, decay = x4[:, :, 0], a4[:, :, 0]  # (B, n, L)
    for i in range(1, C):
        h = torch.addcmul(x4[:, :, i], a4[:, :, i], h)
        decay = decay * a4[:, :, i]
    # the same recurrence one level up, over the n chunk summaries: the true state after every chunk
    ends, last = linear_scan(decay, h, h0, base)  # (B, n, L)
    # pass 2: rerun every chunk from its true entering state (the plain loop's arithmetic)
    h, out = torch.cat([h0[:, None], ends[:, :-1]], dim=1), []  # (B, n, L)
    for i in range(C):
        h = torch.addcmul(x4[:, :, i], a4[:, :, i], h)
        out.append(h)
    return torch.stack(out, dim=2).view(B, n * C, L)[:, :T], last  # (B, n, C, L) → (B, T, L), (B, L)


class _SqrtBounded(torch.autograd.Function):
    """sqrt with the backward clipped at 1000 (HF / DeepMind): a_t → 1 must not give infinite gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.sqrt(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad / torch.sqrt(torch.clip(4.0 * x, min=1e-6))


# ------------------------------------------------------------------------------------------------------ cache


@dataclass(frozen=True)
class _Step:
    """One model call: slots [start, start+T), their positions and real-token flags, and the cache mode."""

    cache: GriffinCache | None
    start: int
    pos: Tensor  # (B, T)
    valid: Tensor | None  # (B, T); None = no padding in this call
    frozen: bool
    rope: tuple[Tensor, Tensor] | None = None  # cos, sin (B, 1, T, hd·partial)


# ----------------------------------------------------------------------------------------------------- blocks


class RGLRU(nn.Module):
    """Real-gated linear recurrent unit: block-diagonal input/recurrence gates (x @ W, [nh, bw, bw]), c = 8."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.nh, self.bw = heads, width // heads
        self.a_param = nn.Parameter(torch.zeros(width))
        self.gate_x_w = nn.Parameter(torch.zeros(heads, self.bw, self.bw))
        self.gate_x_b = nn.Parameter(torch.zeros(heads, self.bw))
        self.gate_a_w = nn.Parameter(torch.zeros(heads, self.bw, self.bw))
        self.gate_a_b = nn.Parameter(torch.zeros(heads, self.bw))

    def _gate(self, ub: Tensor, w: Tensor, b: Tensor) -> Tensor:
        B, T = ub.shape[:2]
        return torch.sigmoid(torch.einsum("bthi,hij->bthj", ub, w) + b).reshape(B, T, self.nh * self.bw)  # (B, T, L)

    def forward(self, u: Tensor, pos: Tensor, valid: Tensor | None, h0: Tensor) -> tuple[Tensor, Tensor]:
        """u (B, T, L), pos (B, T), h0 (B, L) fp32 → output (B, T, L) in u's dtype, states (B, T, L) fp32."""
        B, T, L = u.shape
        ub = u.view(B, T, self.nh, self.bw)  # (B, T, nh, bw)
        gate_x = self._gate(ub, self.gate_x_w, self.gate_x_b)
        gate_a = self._gate(ub, self.gate_a_w, self.gate_a_b)
        log_a = -8.0 * gate_a * F.softplus(self.a_param)  # (B, T, L)
        reset = (pos == 0)[..., None]  # (B, T, 1) document start: the state is not carried over
        mult = torch.where(reset, 1.0, _SqrtBounded.apply(1 - torch.exp(2 * log_a)))
        x = u * gate_x * mult.to(u.dtype)
        a = torch.exp(log_a).masked_fill(reset, 0.0)
        if valid is not None:  # left padding: the state passes through unchanged
            a = torch.where(valid[..., None], a, 1.0)
            x = torch.where(valid[..., None], x, 0.0)
        h, _ = linear_scan(a.float(), x.float(), h0.float())  # (B, T, L) accumulated in fp32
        return h.to(u.dtype), h


class RecurrentBlock(nn.Module):
    def __init__(self, cfg: GriffinConfig):
        super().__init__()
        H, L, cw = cfg.hidden_size, cfg.lru_width, cfg.conv1d_width
        self.in_y = nn.Linear(H, L)
        self.in_x = nn.Linear(H, L)
        self.out = nn.Linear(L, H)
        self.conv_w = nn.Parameter(torch.zeros(L, 1, cw))  # [c, 0, k]: k = cw−1 multiplies the current token
        self.conv_b = nn.Parameter(torch.zeros(L))
        self.lru = RGLRU(L, cfg.num_heads)
        self.act = activation(cfg.hidden_activation)

    def forward(self, x: Tensor, step: _Step, layer: int) -> Tensor:
        B, T, _ = x.shape
        y = self.act(self.in_y(x))  # (B, T, L)
        u = self.in_x(x)  # (B, T, L)
        if step.valid is not None:
            u = u * step.valid[..., None].to(u.dtype)  # pads act as the conv's zero padding
        L, cw1 = u.shape[2], self.conv_w.shape[2] - 1
        if step.cache is None:
            prev, h0 = u.new_zeros(B, L, cw1), u.new_zeros(B, L, dtype=torch.float32)
        else:
            prev, h0 = step.cache.read_state(layer, step.start, step.frozen)
        seq = torch.cat([prev.to(u.dtype), u.transpose(1, 2)], dim=2)  # (B, L, cw−1+T)
        uc = F.conv1d(seq, self.conv_w, self.conv_b, groups=L).transpose(1, 2)  # (B, L, T) → (B, T, L)
        r, h = self.lru(uc, step.pos, step.valid, h0)
        if step.cache is not None and not step.frozen:
            step.cache.write_state(layer, step.start, u, seq[:, :, seq.shape[2] - cw1 :], h)
        return self.out(r * y)


def local_attention(
    q: Tensor, k: Tensor, v: Tensor, q0: int, k0: int, k_valid: Tensor | None, window: int, block: int = 1024
) -> Tensor:
    """q (B, nh, T, hd) for slots [q0, q0+T); k, v (B, nkv, S, hd) for slots [k0, k0+S); k_valid (B, S) or None.
    Query slot i sees key slot j iff i − W < j ≤ i and j is real (a query always sees itself, so pad rows stay
    finite). Queries go in blocks so a mask is at most (block × (block + W)). Returns (B, nh, T, hd)."""
    T, out = q.shape[2], []
    block = max(block, window)
    for i in range(0, T, block):
        j = min(T, i + block)
        lo, hi = max(0, q0 + i - window + 1 - k0), q0 + j - k0  # key columns this query block can see
        q_slot = torch.arange(q0 + i, q0 + j, device=q.device)[:, None]  # (Tb, 1)
        k_slot = torch.arange(k0 + lo, k0 + hi, device=q.device)[None, :]  # (1, Sb)
        allowed = ((k_slot <= q_slot) & (k_slot > q_slot - window))[None]  # (1, Tb, Sb)
        if k_valid is not None:
            allowed = (allowed & k_valid[:, None, lo:hi]) | (k_slot == q_slot)  # (B, Tb, Sb)
        out.append(attend(q[:, :, i:j], k[:, :, lo:hi], v[:, :, lo:hi], allowed[:, None], False, None))
    return torch.cat(out, dim=2)


class LocalAttention(nn.Module):
    def __init__(self, cfg: GriffinConfig):
        super().__init__()
        self.nh, self.nkv, self.hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.rot, self.window = cfg.rotary_dim, cfg.attention_window_size
        H = cfg.hidden_size
        self.wq = nn.Linear(H, self.nh * self.hd, bias=cfg.attention_bias)
        self.wk = nn.Linear(H, self.nkv * self.hd, bias=cfg.attention_bias)
        self.wv = nn.Linear(H, self.nkv * self.hd, bias=cfg.attention_bias)
        self.wo = nn.Linear(self.nh * self.hd, H, bias=True)

    def _rope(self, t: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        """Rotate-half RoPE on the first `rot` dims of each head; the rest pass through."""
        return torch.cat([apply_rope(t[..., : self.rot], *rope), t[..., self.rot :]], dim=-1)

    def forward(self, x: Tensor, step: _Step, layer: int) -> Tensor:
        B, T, _ = x.shape
        q = self._rope(self.wq(x).view(B, T, self.nh, self.hd).transpose(1, 2), step.rope)  # (B, nh, T, hd)
        cache = step.cache
        if step.frozen:  # qTTT: queries only, against the prefill's keys
            k, v, k_valid, k0 = cache.stored_kv(layer, step.start, step.start + T)
        else:
            k = self._rope(self.wk(x).view(B, T, self.nkv, self.hd).transpose(1, 2), step.rope)  # (B, nkv, T, hd)
            v = self.wv(x).view(B, T, self.nkv, self.hd).transpose(1, 2)  # (B, nkv, T, hd)
            k_valid, k0 = step.valid, step.start
            if cache is not None:
                k, v, k_valid, k0 = cache.append_kv(layer, step.start, k, v, step.valid)
        o = local_attention(q, k, v, step.start, k0, k_valid, self.window)  # (B, nh, T, hd)
        return self.wo(o.transpose(1, 2).reshape(B, T, self.nh * self.hd))  # (B, T, nh·hd) → (B, T, H)


class ResidualBlock(nn.Module):
    def __init__(self, cfg: GriffinConfig, layer: int):
        super().__init__()
        self.layer = layer
        recurrent = cfg.layer_types[layer] == "recurrent"
        self.temporal_norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rec = RecurrentBlock(cfg) if recurrent else None
        self.attn = None if recurrent else LocalAttention(cfg)
        self.channel_norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size // 2, cfg.hidden_activation, bias=True)

    def forward(self, x: Tensor, step: _Step) -> Tensor:
        temporal = self.rec if self.rec is not None else self.attn
        x = x + temporal(self.temporal_norm(x), step, self.layer)
        return x + self.mlp(self.channel_norm(x))


# ------------------------------------------------------------------------------------------------------ model


class GriffinModel(nn.Module):
    """RecurrentGemma causal LM. `forward(ids, cache, valid)` → (logits, cache); see the module docstring."""

    config_cls = GriffinConfig
    hf_weight_map = HF_WEIGHT_MAP

    def __init__(self, cfg: GriffinConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.blocks = nn.ModuleList(ResidualBlock(cfg, i) for i in range(cfg.num_layers))
        self.norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rope = RoPE(cfg.rotary_dim, cfg.rope_theta)

    @property
    def max_context(self) -> int:
        return 1 << 30  # fixed-size state: no architectural limit

    def forward(
        self,
        ids: Tensor,
        cache: GriffinCache | None = None,
        valid: Tensor | None = None,
        *,
        start: int | None = None,
        frozen: bool = False,
        last_only: bool = False,
    ) -> tuple[Tensor, GriffinCache | None]:
        """ids (B, T); valid (B, T) False on left padding; `frozen` = qTTT pass over kept slots [start, start+T)
        that writes nothing; `last_only` returns logits (B, 1, V) of the last token."""
        step = self._plan(ids, cache, valid, start, frozen)
        x = self.tok_emb(ids)  # (B, T, H)
        x = x * torch.tensor(math.sqrt(self.cfg.hidden_size), dtype=torch.bfloat16).to(x.dtype)  # always bf16-rounded
        step = replace(step, rope=self.rope.cos_sin(step.pos, x.dtype))
        for block in self.blocks:
            x = block(x, step)
        if cache is not None and not frozen:
            cache.commit(step.start, step.pos, step.valid)
        if last_only:
            x = x[:, -1:]
        h = self.norm(x)
        logits = F.linear(h, self.tok_emb.weight if self.lm_head is None else self.lm_head.weight)  # (B, T, V)
        cap = self.cfg.logits_soft_cap
        return torch.tanh(logits / cap) * cap, cache

    def _plan(self, ids: Tensor, cache: GriffinCache | None, valid: Tensor | None, start: int | None, frozen: bool):
        B, T = ids.shape
        if valid is not None and valid.all():
            valid = None
        if cache is None:
            if start not in (None, 0) or frozen:
                raise ValueError("start/frozen need a cache")
            return _Step(None, 0, token_positions(valid, None, B, T, ids.device), valid, False)
        if cache.batch != B:
            raise CtxlabError(f"batch size {B} does not match the cache's batch size {cache.batch}")
        if frozen:
            if cache.hist is None:
                raise CtxlabError("frozen (qTTT) calls need a cache made with new_cache(..., rewindable=True) or "
                                  "keep_states=N")
            start = cache.length - T if start is None else start
            lo, hi = cache.frozen_range()
            if start < lo or start + T > hi or T < 1:
                raise CtxlabError(f"frozen call over slots [{start}, {start + T}) outside the kept range [{lo}, {hi})")
            pos = ring_read(cache.hist.pos, 1, start, start + T)
            flags = ring_read(cache.hist.valid, 1, start, start + T) if cache.padded else None
            return _Step(cache, start, pos, flags, True)
        start = cache.length if start is None else start
        if start != cache.length:
            raise CtxlabError(f"a RecurrentGemma cache only appends (next slot {cache.length}, got start={start})")
        if start + T > cache.capacity:
            raise CtxlabError(f"context limit exceeded: {start + T} tokens do not fit the cache of {cache.capacity}")
        return _Step(cache, start, token_positions(valid, cache.seen, B, T, ids.device), valid, False)

    def new_cache(
        self, batch: int, max_len: int, dtype: torch.dtype | None = None, device=None, *, rewindable: bool = False,
        keep_states: bool | int = False,
    ) -> GriffinCache:
        """A fixed-size cache for `batch` rows and up to `max_len` slots. keep_states: record per-slot states of the
        last N slots for frozen (qTTT) span calls (True = all max_len slots; see the module docstring for the cost);
        rewindable=True is keep_states=True (the cache protocol's request, ctxlab/models/cache.py)."""
        if not 0 < max_len <= self.max_context:
            raise CtxlabError(f"max_len must be in [1, {self.max_context}], got {max_len}")
        keep = max_len if keep_states is True or rewindable else int(keep_states)
        if keep < 0:
            raise CtxlabError(f"keep_states must be >= 0, got {keep_states}")
        p = self.tok_emb.weight
        return GriffinCache.allocate(self.cfg, batch, max_len, dtype or p.dtype, device or p.device, min(keep, max_len))

    def query_weights(self) -> list[nn.Parameter]:
        """The attention layers' query projections (what qTTT adapts)."""
        return [b.attn.wq.weight for b in self.blocks if b.attn is not None]

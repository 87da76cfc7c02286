"""Analytic compute model for comparing qTTT with thinking tokens at equal cost (shared docs qttt.md §4, App. C).

Unit: the paper's. C_tok = (4+2r)·L·d² charges one unit per weight per token, i.e. one multiply–accumulate (MAC);
multiply by 2 for hardware FLOPs. Every number here is in that unit, so ratios and matched budgets are unaffected.

`PaperCost(L, d, r)` is the paper's dense model, formula for formula:
    C_quad = 2·L·d            C_tok = (4+2r)·L·d²
    prefill(T)     = C_quad·T² + C_tok·T
    think(T, n)    = F_gen = C_quad·(n·T + n(n−1)/2) + C_tok·n          (n = T_think generated tokens)
    qttt_step(T,k) = G     = 2·(C_quad·k·T + (2+2r)·L·k·d²)              (forward + backward; no K/V projections)
    qTTT total     = prefill(T) + N·G
Setting F_gen = N·G (the prefill is shared) gives T_think ≈ 2·N·k for T ≫ d, k ≪ T (Eq. 3.2).

`ArchCost.from_config(cfg)` generalises the same accounting to a ctxlab model config (any family, read through
`cfg.to_hf_config()`): per layer, the exact projection widths (GQA/MQA k/v, head_dim ≠ H/nh), gated MLPs (3 matrices),
MoE *active* weights (router + shared expert + top-k routed experts, Llama 4), dense-vs-MoE layers, RG-LRU recurrent
layers (Griffin), a per-(query, key) cost 2·nh·hd on attention layers whose key count is capped by a sliding window
or an attention chunk, and the LM head (d·V per token whose logits are computed). With a dense 2-matrix MLP, MHA,
no head and no caps it reduces to PaperCost term by term (except `prefill`, which ArchCost counts causally,
T(T+1)/2 pairs, where the paper charges the full T² square).

Conventions shared by both (so that matched budgets agree with the paper):
- think(T, n): generated token j is charged C_tok plus T+j keys (capped), as in F_gen.
- qttt_step(T, k): every span query is charged min(T, cap) keys, as the paper's C_quad·k·T. ArchCost.qttt_step takes
  an optional span start t for the exact causal count of an actual step (queries at t..t+k−1 see t+1..t+k keys).
- match / think_budget round *down*: the matched strategy never spends more than the budget it is matched to
  (N = 10 at k = 400 for the App. C example, whose exact ratio is 10.7; N = 32 at k = 128 for 8192 tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ctxlab.checks import is_int
from ctxlab.errors import CtxlabError

DEFAULT_SPAN = 128


def _check_T(T: float, name: str = "T") -> None:
    if not isinstance(T, (int, float)) or isinstance(T, bool) or T < 1:
        raise CtxlabError(f"{name} must be a number >= 1, got {T!r}")


class CostModel:
    """Shared matching logic; subclasses define prefill / think / qttt_step in the paper's unit."""

    def prefill(self, T: float) -> float:
        raise NotImplementedError

    def think(self, T: float, n: float) -> float:
        raise NotImplementedError

    def qttt_step(self, T: float, k: int) -> float:
        raise NotImplementedError

    def qttt(self, T: float, k: int, N: int) -> float:
        """N qTTT steps (the prefill, shared with every strategy, excluded)."""
        return N * self.qttt_step(T, k)

    def match(self, T: float, think_tokens: int, k: int | None = None) -> tuple[int, int]:
        """(k, N): the most qTTT steps of span k (default 128) whose cost does not exceed `think_tokens` thinking
        tokens after a T-token prompt (at least 1 step)."""
        _check_T(T)
        k = DEFAULT_SPAN if k is None else k
        if not is_int(k) or k < 1:
            raise CtxlabError(f"span k must be an integer >= 1, got {k!r}")
        if not is_int(think_tokens) or think_tokens < 1:
            raise CtxlabError(f"the thinking budget must be an integer >= 1 tokens, got {think_tokens!r}")
        ratio = self.think(T, think_tokens) / self.qttt_step(T, k)
        return k, max(1, math.floor(ratio * (1 + 1e-12)))

    def think_budget(self, T: float, k: int, N: int) -> int:
        """The most thinking tokens whose cost does not exceed N qTTT steps of span k (0 if not even one fits)."""
        _check_T(T)
        if not is_int(N) or N < 0:
            raise CtxlabError(f"N must be an integer >= 0, got {N!r}")
        budget = self.qttt(T, k, N) * (1 + 1e-12)
        lo, hi = 0, 1
        while self.think(T, hi) <= budget:  # think() is increasing in n: gallop, then bisect
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.think(T, mid) <= budget:
                lo = mid
            else:
                hi = mid
        return lo


@dataclass(frozen=True)
class PaperCost(CostModel):
    """The paper's dense transformer: L layers, width d, MLP ratio r (2-matrix MLP, MHA, no LM head)."""

    L: int
    d: int
    r: float = 4.0

    @classmethod
    def from_config(cls, cfg: Any) -> PaperCost:
        """The paper's view of a ctxlab/HF config: L layers, d = hidden size, r = MLP width / d, with a gated MLP
        (3 matrices) counted as a 2-matrix MLP of the same weight count (r = 1.5·I/d)."""
        d = cfg.to_hf_config() if hasattr(cfg, "to_hf_config") else cfg
        d = d.get("text_config", d)
        H, L, I = int(d["hidden_size"]), int(d["num_hidden_layers"]), int(d["intermediate_size"])
        if d.get("model_type") == "recurrent_gemma":
            I //= 2  # HF convention: the MLP width is intermediate_size / 2
        return cls(L, H, 1.5 * I / H)

    @property
    def c_quad(self) -> float:
        return 2 * self.L * self.d

    @property
    def c_tok(self) -> float:
        return (4 + 2 * self.r) * self.L * self.d**2

    def prefill(self, T: float) -> float:
        return self.c_quad * T**2 + self.c_tok * T

    def think(self, T: float, n: float) -> float:
        return self.c_quad * (n * T + n * (n - 1) / 2) + self.c_tok * n

    def qttt_step(self, T: float, k: int) -> float:
        return 2 * (self.c_quad * k * T + (2 + 2 * self.r) * self.L * k * self.d**2)


# --------------------------------------------------------------------------------------------- architectures


@dataclass(frozen=True)
class LayerCost:
    """One layer: MACs per token (all weights a token touches), per token in a frozen qTTT pass (no K/V
    projections; recurrent layers are recomputed in full), per visible (query, key) pair, and the key cap."""

    token: float
    token_frozen: float
    pair: float = 0.0  # QKᵀ + AV = 2·nh·hd on attention layers, 0 on recurrent ones
    window: int | None = None  # a query sees at most `window` keys, itself included
    chunk: int | None = None  # a query sees the keys of its own chunk of `chunk` positions

    def keys_before(self, n: int) -> float:
        """Σ over query positions p < n of the keys each sees (causal, capped)."""
        if n <= 0:
            return 0.0
        if self.chunk:
            q, rem = divmod(n, self.chunk)
            return q * self.chunk * (self.chunk + 1) / 2 + rem * (rem + 1) / 2
        if self.window and n > self.window:
            W = self.window
            return W * (W + 1) / 2 + (n - W) * W
        return n * (n + 1) / 2

    def cap(self, T: float) -> float:
        caps = [c for c in (self.window, self.chunk) if c]
        return min([T, *caps])


@dataclass(frozen=True)
class ArchCost(CostModel):
    """Per-layer costs of a concrete architecture plus the LM head (d·V per token with logits)."""

    layers: tuple[LayerCost, ...]
    head: float
    name: str = ""
    notes: tuple[str, ...] = field(default=(), compare=False)

    # ---- construction

    @classmethod
    def from_config(cls, cfg: Any) -> ArchCost:
        """From a ctxlab config (anything with `to_hf_config()`) or an HF config dict."""
        d = cfg.to_hf_config() if hasattr(cfg, "to_hf_config") else cfg
        if not isinstance(d, dict):
            raise CtxlabError(f"cannot read a model config from {type(cfg).__name__}")
        return cls.from_hf(d)

    @classmethod
    def from_hf(cls, d: dict) -> ArchCost:
        if "text_config" in d:
            d = {**d["text_config"], "model_type": "llama4_text"}
        try:
            H, L, V = int(d["hidden_size"]), int(d["num_hidden_layers"]), int(d["vocab_size"])
            nh = int(d["num_attention_heads"])
        except KeyError as e:
            raise CtxlabError(f"model config lacks {e.args[0]}") from None
        nkv = int(d.get("num_key_value_heads") or nh)
        kind = d.get("model_type", "")
        hd = int(H // nh if kind == "recurrent_gemma" or not d.get("head_dim") else d["head_dim"])
        q_o, kv, pair = 2 * H * nh * hd, 2 * H * nkv * hd, 2 * nh * hd
        layers: list[LayerCost] = []
        if kind == "recurrent_gemma":
            mlp = 3 * H * (int(d["intermediate_size"]) // 2)
            lru, cw = int(d.get("lru_width") or H), int(d.get("conv1d_width", 4))
            rec = 3 * H * lru + lru * cw + 2 * lru * (lru // nh)  # in_x, in_y, out; depthwise conv; 2 block-diag gates
            types = list(d.get("block_types") or d.get("layers_block_type") or ("recurrent", "recurrent", "attention"))
            window = int(d.get("attention_window_size") or d.get("sliding_window") or 2048)
            for i in range(L):
                if types[i % len(types)] == "attention":
                    layers.append(LayerCost(q_o + kv + mlp, q_o + mlp, pair, window=window))
                else:
                    layers.append(LayerCost(rec + mlp, rec + mlp))
        elif kind.startswith("llama4"):
            I, I_mlp = int(d["intermediate_size"]), int(d.get("intermediate_size_mlp") or d["intermediate_size"])
            E, top = int(d.get("num_local_experts", 1)), int(d.get("num_experts_per_tok", 1))
            step = int(d.get("interleave_moe_layer_step", 1))
            moe = set(d.get("moe_layers") or range(step - 1, L, step))
            interval = int(d.get("no_rope_layer_interval", 4))
            rope = list(d.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(L)])
            chunk = d.get("attention_chunk_size")
            types = list(d.get("layer_types") or
                         ["chunked_attention" if rope[i] and chunk else "full_attention" for i in range(L)])
            for i in range(L):
                mlp = H * E + (top + 1) * 3 * H * I if i in moe else 3 * H * I_mlp
                c = int(chunk) if types[i] == "chunked_attention" and chunk else None
                layers.append(LayerCost(q_o + kv + mlp, q_o + mlp, pair, chunk=c))
        else:  # llama / qwen3 / gemma / gemma3: dense decoders with a gated MLP, global or sliding-window attention
            mlp = 3 * H * int(d["intermediate_size"])
            types, W = list(d.get("layer_types") or ["full_attention"] * L), d.get("sliding_window")
            layers = [LayerCost(q_o + kv + mlp, q_o + mlp, pair,
                                window=int(W) if W and types[i] == "sliding_attention" else None) for i in range(L)]
        return cls(tuple(layers), float(H * V), kind)

    @classmethod
    def dense(cls, L: int, d: int, r: float = 4.0, *, gated: bool = False, vocab: int = 0) -> ArchCost:
        """The paper's dense MHA model as an ArchCost (for checks and what-ifs)."""
        mlp = (3 if gated else 2) * r * d * d
        layer = LayerCost(4 * d * d + mlp, 2 * d * d + mlp, 2 * d)
        return cls((layer,) * L, float(d * vocab), "dense")

    # ---- costs

    def pairs(self, start: float, n: float) -> float:
        """(query, key) pair MACs of queries at positions [start, start+n), each seeing itself and what precedes."""
        return sum(lc.pair * (lc.keys_before(int(start + n)) - lc.keys_before(int(start))) for lc in self.layers)

    @property
    def token(self) -> float:
        return sum(lc.token for lc in self.layers)

    @property
    def token_frozen(self) -> float:
        return sum(lc.token_frozen for lc in self.layers)

    def prefill(self, T: float, logits: int = 1) -> float:
        """A causal prefill of T tokens that computes the logits of the last `logits` positions."""
        return self.token * T + self.pairs(0, T) + self.head * logits

    def decode(self, T: float, n: float) -> float:
        """Feeding n tokens at positions [T, T+n) (each with logits): the exact cost of decode steps."""
        return (self.token + self.head) * n + self.pairs(T, n)

    def think(self, T: float, n: float) -> float:
        """n generated tokens after a T-token prompt, charged as F_gen: token j sees T+j keys (capped)."""
        return (self.token + self.head) * n + self.pairs(T - 1, n)

    def qttt_step(self, T: float, k: int, t: int | None = None) -> float:
        """One qTTT step (forward + backward = 2× forward) over a k-token span. t=None: the paper's convention
        (every span query charged min(T, cap) keys); t: the exact causal count for a span starting at slot t."""
        if t is None:
            pairs = sum(lc.pair * k * lc.cap(T) for lc in self.layers)
        else:
            pairs = self.pairs(t, k)
        return 2 * ((self.token_frozen + self.head) * k + pairs)

    def frozen_forward(self, t: int, n: int) -> float:
        """A frozen (queries-only) forward without backward over slots [t, t+n), e.g. the post-adaptation refresh
        of the last prompt position's logits."""
        return (self.token_frozen + self.head) * n + self.pairs(t, n)

    def active_params(self) -> float:
        """Weights one token touches (attention, active MLP experts, recurrence, head): a sanity check."""
        return self.token + self.head

"""The qTTT/thinking cost model (ctxlab.strategies.flops): the paper's formulas, their limits, and the per-architecture
generalisation checked against hand counts and the models' own weights."""

from __future__ import annotations

import pytest
import torch

from ctxlab.errors import CtxlabError
from ctxlab.strategies.flops import ArchCost, LayerCost, PaperCost


def test_paper_formulas_by_hand():
    c = PaperCost(L=2, d=3, r=4)
    assert c.c_quad == 12  # 2·L·d
    assert c.c_tok == 216  # (4+2r)·L·d² = 12·2·9
    assert c.prefill(5) == 12 * 25 + 216 * 5 == 1380
    assert c.think(5, 4) == 12 * (4 * 5 + 4 * 3 / 2) + 216 * 4 == 1176  # C_quad(nT + n(n−1)/2) + C_tok·n
    assert c.qttt_step(5, 2) == 2 * (12 * 2 * 5 + 10 * 2 * 2 * 9) == 960  # 2(C_quad·k·T + (2+2r)L·k·d²)
    assert c.qttt(5, 2, 3) == 3 * 960


def test_think_tokens_equal_2Nk_in_the_limit():
    c = PaperCost(L=32, d=4096, r=4)
    T = 1e9  # T ≫ d, k ≪ T
    assert c.match(T, 8192, 128) == (128, 32)  # the paper's experimental point
    for k, N in [(128, 32), (512, 8), (64, 100), (400, 10)]:
        assert c.think_budget(T, k, N) == pytest.approx(2 * N * k, rel=1e-3)
        assert c.match(T, 2 * N * k, k) == (k, N)
    # corrections are O(T_think/T + d/T): at T = 1e6 still within a few percent
    assert c.think_budget(1e6, 128, 32) == pytest.approx(8192, rel=0.05)


def test_app_c_example():
    c = PaperCost(L=32, d=4096, r=4)
    ratio = c.think(1e5, 8000) / c.qttt_step(1e5, 400)
    assert 10 <= ratio < 11  # "8000 thinking tokens ↔ N = 10, k = 400"
    assert c.match(1e5, 8000, 400) == (400, 10)
    n = c.think_budget(1e5, 400, 10)
    assert 7000 < n <= 8000
    assert c.think(1e5, n) <= c.qttt(1e5, 400, 10) < c.think(1e5, n + 1)  # the largest budget that fits


def test_match_validation():
    c = PaperCost(L=2, d=8)
    with pytest.raises(CtxlabError):
        c.match(100, 0, 16)
    with pytest.raises(CtxlabError):
        c.match(100, 64, 0)
    with pytest.raises(CtxlabError):
        c.think_budget(0, 16, 1)
    assert c.match(100, 1, 64)[1] == 1  # at least one step
    assert c.match(100, 64)[0] == 128  # default span


def test_dense_arch_reduces_to_paper():
    L, d, r, T, n, k = 3, 16, 4, 1000, 37, 8
    a, p = ArchCost.dense(L, d, r), PaperCost(L, d, r)
    assert a.think(T, n) == p.think(T, n)
    assert a.qttt_step(T, k) == p.qttt_step(T, k)
    assert a.match(T, 512, k) == p.match(T, 512, k)
    assert a.think_budget(T, k, 5) == p.think_budget(T, k, 5)
    assert a.prefill(T) == p.c_quad * T * (T + 1) / 2 + p.c_tok * T  # causal count (the paper charges T²)
    assert a.decode(T, n) == a.think(T, n) + p.c_quad * n  # exact decode: each token also sees itself
    assert a.qttt_step(T, k, t=T - k) < a.qttt_step(T, k)  # exact count ≤ the paper's k·T convention


@pytest.mark.parametrize("window,chunk", [(None, None), (4, None), (None, 5), (7, 3)])
def test_capped_key_counts_brute_force(window, chunk):
    lc = LayerCost(token=0, token_frozen=0, pair=1, window=window, chunk=chunk)

    def keys(p):
        lo = 0
        if window:
            lo = max(lo, p - window + 1)
        if chunk:
            lo = max(lo, p // chunk * chunk)
        return p + 1 - lo

    for n in range(0, 30):
        assert lc.keys_before(n) == sum(keys(p) for p in range(n))
    a = ArchCost((lc,), head=0.0)
    assert a.pairs(11, 6) == sum(keys(p) for p in range(11, 17))


QWEN_TINY = dict(model_type="qwen3", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True)


def test_gqa_head_dim_and_gated_mlp_by_hand():
    a = ArchCost.from_hf(QWEN_TINY)
    q_o, kv, mlp = 2 * 64 * 4 * 32, 2 * 64 * 2 * 32, 3 * 64 * 128  # head_dim 32 ≠ 64/4; 2 kv heads; 3 matrices
    assert a.token == 2 * (q_o + kv + mlp)
    assert a.token_frozen == 2 * (q_o + mlp)
    assert a.head == 64 * 256
    assert a.pairs(0, 10) == 2 * (2 * 4 * 32) * 55
    assert a.qttt_step(100, 8) == 2 * ((a.token_frozen + a.head) * 8 + 2 * 256 * 8 * 100)


def _matmul_weights(model: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() >= 2)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma"])
def test_dense_families_match_their_weights(family):
    from ctxlab.models import model_class

    hf = {**QWEN_TINY, "model_type": family, "num_key_value_heads": 1 if family == "gemma" else 2}
    cls = model_class(family)
    with torch.device("meta"):
        model = cls(cls.config_cls.from_hf_config(hf))
    a = ArchCost.from_config(model.cfg)
    assert a.token == _matmul_weights(model)  # every weight a token multiplies, once
    assert a.head == model.tok_emb.weight.numel()


LLAMA4_TINY = dict(model_type="llama4_text", vocab_size=256, hidden_size=64, intermediate_size=32,
                   intermediate_size_mlp=48, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=16, num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=2,
                   no_rope_layer_interval=4, attention_chunk_size=8, floor_scale=4, max_position_embeddings=128,
                   tie_word_embeddings=False)


def test_llama4_moe_active_weights_and_chunks():
    from ctxlab.models.llama4 import Llama4Config, parameter_counts

    cfg = Llama4Config.from_hf_config(dict(LLAMA4_TINY))
    a = ArchCost.from_config(cfg)
    H, V, L = 64, 256, 4
    _, active = parameter_counts(cfg)
    norms = H + 2 * H * L
    assert a.token + a.head == active - V * H - norms  # active weights minus the embedding lookup and norms
    attn = 2 * H * 4 * 16 + 2 * H * 2 * 16
    moe = H * 4 + 2 * 3 * H * 32  # router + shared expert + 1 routed expert
    assert [lc.token for lc in a.layers] == [attn + 3 * H * 48, attn + moe, attn + 3 * H * 48, attn + moe]
    assert [lc.chunk for lc in a.layers] == [8, 8, 8, None]  # layer 3 is NoPE: global attention
    pair = 2 * 4 * 16
    assert a.pairs(0, 24) == pair * (3 * (3 * 36) + 24 * 25 / 2)


def test_recurrent_gemma_by_hand():
    hf = dict(model_type="recurrent_gemma", vocab_size=256, hidden_size=64, intermediate_size=192,
              num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1, lru_width=64,
              attention_window_size=16, conv1d_width=4, block_types=["recurrent", "recurrent", "attention"])
    a = ArchCost.from_hf(hf)
    mlp = 3 * 64 * 96
    rec = 3 * 64 * 64 + 64 * 4 + 2 * 64 * 16
    attn = 2 * 64 * 64 + 2 * 64 * 16  # hd = 64/4 = 16, one kv head
    assert [lc.token for lc in a.layers] == [rec + mlp, rec + mlp, attn + mlp]
    assert [lc.token_frozen for lc in a.layers] == [rec + mlp, rec + mlp, 2 * 64 * 64 + mlp]
    assert a.layers[2].window == 16 and a.layers[0].pair == 0
    assert a.pairs(0, 40) == 2 * 64 * (16 * 17 / 2 + 24 * 16)
    assert a.qttt_step(1000, 8) == 2 * ((a.token_frozen + a.head) * 8 + 2 * 64 * 8 * 16)  # window caps the keys


def test_griffin_config_matches_its_weights():
    from ctxlab.models.griffin import GriffinConfig, GriffinModel

    hf = dict(model_type="recurrent_gemma", vocab_size=256, hidden_size=64, intermediate_size=192,
              num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1, lru_width=96,
              attention_window_size=16, conv1d_width=4)
    cfg = GriffinConfig.from_hf_config(hf)
    with torch.device("meta"):
        model = GriffinModel(cfg)
    a = ArchCost.from_config(cfg)
    weights = sum(p.numel() for n, p in model.named_parameters()
                  if n.startswith("blocks.") and p.dim() >= 2 and not n.endswith("_b"))  # gate biases are (nh, bw)
    assert a.token == weights
    assert [lc.window for lc in a.layers] == [None, None, 16, None]


def test_paper_view_of_a_config():
    p = PaperCost.from_config({**QWEN_TINY, "hidden_size": 2560, "num_hidden_layers": 36, "intermediate_size": 9728})
    assert (p.L, p.d, p.r) == (36, 2560, 1.5 * 9728 / 2560)  # gated MLP → the 2-matrix MLP of equal weight count
    dense = ArchCost.from_hf({**QWEN_TINY, "num_key_value_heads": 4, "head_dim": 16})  # MHA, nh·hd = H
    assert PaperCost.from_config({**QWEN_TINY}).c_tok == dense.token  # same weights per token

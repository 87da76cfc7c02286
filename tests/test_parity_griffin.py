"""RecurrentGemma (Griffin): parity with transformers 5.x on tiny random configs (fp32), the fast scan, the fixed-size
cache, left padding and frozen (qTTT) span calls."""

from __future__ import annotations

import pytest
import torch

from ctxlab.errors import CtxlabError
from ctxlab.models.griffin import GriffinConfig, linear_scan, scan_loop
from ctxlab.models.loading import load_model, save_model
from tests.hf_utils import randomize

tf = pytest.importorskip("transformers")

W = 16  # attention window of the tiny configs
TOL = 1e-4
BASE = dict(
    vocab_size=256, hidden_size=64, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=1, lru_width=64, attention_window_size=W, conv1d_width=4, logits_soft_cap=30.0,
    partial_rotary_factor=0.5, rope_theta=1e4,
)
# √80 = 8.944 → 8.9375 in bf16 (the base config's √64 = 8 would hide a missing rounding); L ≠ H; 4th layer recurrent.
VARIANT = dict(hidden_size=80, lru_width=96, intermediate_size=160, num_hidden_layers=4)


def make_hf(seed: int = 0, **overrides):
    cfg = tf.RecurrentGemmaConfig(**{**BASE, **overrides})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = tf.RecurrentGemmaForCausalLM(cfg).eval()
    randomize(model, seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # a wide spread of decay rates, down to a ≈ e^-17 per step
        for name, p in model.named_parameters():
            if name.endswith("recurrent_param"):
                p.copy_(torch.rand(p.shape, generator=g) * 4 - 2)
    return model


def _ids(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    path = tmp_path_factory.mktemp("griffin")
    hf = make_hf()
    hf.save_pretrained(path / "hf")
    return hf, load_model(path / "hf").model, path


# ------------------------------------------------------------------------------------------- HF parity


@pytest.mark.parametrize("T", [12, 40], ids=["T<=window", "T>window"])
def test_logits_match_hf(pair, T):
    hf, ours, _ = pair
    ids = _ids(2, T)
    with torch.no_grad():
        ref = hf(ids, use_cache=T > W).logits  # 5.x: the cached path applies the sliding-window mask
        got, _ = ours(ids)
    assert _diff(got, ref) <= TOL


def test_variant_config_matches_hf(tmp_path):
    hf = make_hf(seed=3, **VARIANT)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").model
    assert ours.cfg.layer_types == ("recurrent", "recurrent", "attention", "recurrent")
    ids = _ids(2, 14, seed=4)
    with torch.no_grad():
        assert _diff(ours(ids)[0], hf(ids, use_cache=False).logits) <= TOL


def test_hf_decoding_matches_ours(pair):
    """HF decoding driven by hand (explicit position_ids: its cache length reads a recurrent layer, i.e. 0)."""
    hf, ours, _ = pair
    ids = _ids(2, 30, seed=5)
    cache = tf.DynamicCache(config=hf.config)
    hf._setup_cache(hf.config, 2, ids.device, torch.float32)
    ref = [hf(ids[:, :10], cache=cache, use_cache=True, position_ids=torch.arange(10)[None].expand(2, -1)).logits]
    ours_cache = ours.new_cache(2, 30)
    got = [ours(ids[:, :10], ours_cache)[0]]
    with torch.no_grad():
        for t in range(10, 30):
            ref.append(hf(ids[:, t : t + 1], cache=cache, use_cache=True, position_ids=torch.full((2, 1), t)).logits)
            got.append(ours(ids[:, t : t + 1], ours_cache)[0])
    assert _diff(torch.cat(got, 1), torch.cat(ref, 1).detach()) <= TOL


def test_save_then_transformers_load(pair, tmp_path):
    hf, ours, src = pair
    save_model(ours, tmp_path / "ours", source_dir=src / "hf")
    back = tf.RecurrentGemmaForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    ids = _ids(2, 20, seed=6)
    with torch.no_grad():
        assert _diff(back(ids, use_cache=True).logits, hf(ids, use_cache=True).logits) <= TOL
        assert torch.equal(load_model(tmp_path / "ours").model(ids)[0], ours(ids)[0])


def test_config_round_trip(pair):
    _, ours, _ = pair
    cfg = ours.cfg
    assert GriffinConfig.from_hf_config(cfg.to_hf_config()) == cfg
    assert (cfg.head_dim, cfg.rotary_dim, cfg.num_kv_heads) == (16, 8, 1)
    assert cfg.to_hf_config()["model_type"] == "recurrent_gemma"
    assert len(ours.query_weights()) == 1 and ours.max_context >= 1 << 30
    legacy = {  # a v4-style hub config.json (recurrentgemma-2b shape, fewer layers)
        "model_type": "recurrent_gemma", "vocab_size": 256000, "hidden_size": 2560, "intermediate_size": 15360,
        "num_hidden_layers": 5, "num_attention_heads": 10, "num_key_value_heads": 1, "lru_width": None,
        "head_dim": 256, "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "attention_window_size": 2048,
        "block_types": ["recurrent", "recurrent", "attention"], "final_w_init_variance_scale": 0.07,
    }
    c = GriffinConfig.from_hf_config(legacy)
    assert (c.lru_width, c.rotary_dim, c.layer_types[2:4]) == (2560, 128, ("attention", "recurrent"))
    assert "head_dim" not in c.to_hf_config() and c.to_hf_config()["final_w_init_variance_scale"] == 0.07


# ------------------------------------------------------------------------------------------------- scan


@pytest.mark.parametrize("T", [1, 7, 17, 100, 1000, 4099])
def test_fast_scan_matches_loop(T):
    g = torch.Generator().manual_seed(T)
    B, L = 2, 24
    softplus = torch.nn.functional.softplus(torch.rand(L, generator=g) * 4 - 2)
    a = torch.exp(-8 * torch.rand(B, T, L, generator=g) * softplus)
    a[..., L // 2 :] = 1 - 0.01 * torch.rand(B, T, L - L // 2, generator=g)  # slow channels carry across chunks
    a[torch.rand(B, T, 1, generator=g).expand(B, T, L) < 0.01] = 0.0  # resets
    a[:, 0, :3] = 1.0  # some channels pass the initial state through untouched
    x, h0 = torch.randn(B, T, L, generator=g), torch.randn(B, L, generator=g)
    ref, ref_last = scan_loop(a, x, h0)
    got, last = linear_scan(a, x, h0)
    scale = ref.abs().max()
    assert (got - ref).abs().max() / scale <= 1e-5 and (last - ref_last).abs().max() / scale <= 1e-5


def test_fast_scan_gradients_match_loop():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 90, 8, generator=g).requires_grad_()
    x, h0 = torch.randn(1, 90, 8, generator=g).requires_grad_(), torch.randn(1, 8, generator=g).requires_grad_()
    w = torch.randn(1, 90, 8, generator=g)
    grads = [torch.autograd.grad((f(a, x, h0)[0] * w).sum(), (a, x, h0)) for f in (scan_loop, linear_scan)]
    for ref, got in zip(*grads, strict=True):
        assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()


# ------------------------------------------------------------------------------------------------ cache


def test_cached_decode_equals_full_forward(pair):
    """Chunked prefill (7 + 9 slots) then 24 single steps, crossing the window boundary twice."""
    _, ours, _ = pair
    ids = _ids(2, 40, seed=7)
    with torch.no_grad():
        full, _ = ours(ids)
        cache = ours.new_cache(2, 40)
        outs = [ours(ids[:, :7], cache)[0], ours(ids[:, 7:16], cache)[0]]
        outs += [ours(ids[:, t : t + 1], cache)[0] for t in range(16, 40)]
    assert cache.length == 40
    assert _diff(torch.cat(outs, 1), full) <= TOL


def test_cache_size_is_independent_of_length(pair):
    _, ours, _ = pair
    sizes = []
    with torch.no_grad():
        for T in (1024, 8192):
            ids = _ids(1, T, seed=8)
            cache = ours.new_cache(1, T + 1)
            _, cache = ours(ids, cache, last_only=True)
            step, _ = ours(_ids(1, 1, seed=9), cache)
            sizes.append((cache.nbytes(), [tuple(t.shape) for t in (*cache.conv, *cache.k) if t is not None]))
            assert cache.length == T + 1 and torch.isfinite(step).all()
    assert sizes[0] == sizes[1]


def test_left_padded_batch_equals_single_prompts(pair):
    _, ours, _ = pair
    lens = [30, 13, 7]  # the longest prompt exceeds the window
    prompts = [_ids(1, n, seed=10 + i)[0] for i, n in enumerate(lens)]
    T = max(lens)
    ids = torch.zeros(len(lens), T, dtype=torch.long)
    valid = torch.zeros(len(lens), T, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = p
        valid[i, T - len(p) :] = True
    nxt = _ids(len(lens), 3, seed=20)
    with torch.no_grad():
        cache = ours.new_cache(len(lens), T + 3)
        batched, cache = ours(ids, cache, valid)
        steps = torch.cat([ours(nxt[:, t : t + 1], cache)[0] for t in range(3)], 1)
        chunked = ours.new_cache(len(lens), T)  # the engine's chunked prefill: pads can fill a whole chunk
        parts = [ours(ids[:, s : s + 8], chunked, valid[:, s : s + 8])[0] for s in range(0, T, 8)]
        for i, p in enumerate(prompts):
            c1 = ours.new_cache(1, T + 3)
            single, c1 = ours(p[None], c1)
            assert _diff(batched[i, T - len(p) :], single[0]) <= TOL
            assert _diff(torch.cat(parts, 1)[i, T - len(p) :], single[0]) <= TOL
            one = torch.cat([ours(nxt[i : i + 1, t : t + 1], c1)[0] for t in range(3)], 1)
            assert _diff(steps[i], one[0]) <= TOL


def test_cache_errors(pair):
    _, ours, _ = pair
    cache = ours.new_cache(1, 8)
    ours(_ids(1, 5), cache)
    with pytest.raises(CtxlabError, match="only appends"):
        ours(_ids(1, 2), cache, start=2)
    with pytest.raises(CtxlabError, match="context limit"):
        ours(_ids(1, 4), cache)
    with pytest.raises(CtxlabError, match="keep_states"):
        ours(_ids(1, 2), cache, start=0, frozen=True)
    with pytest.raises(CtxlabError, match="batch size"):
        ours(_ids(2, 1), cache)
    with pytest.raises(CtxlabError, match="cannot rewind"):
        cache.rewind(3)


# ------------------------------------------------------------------------------------------------- qTTT


def _snapshot(cache) -> list[torch.Tensor]:
    h = cache.hist
    ts = [*cache.conv, *cache.lru, *cache.k, *cache.v, cache.ring_valid, cache.seen, *h.u, *h.h, *h.k, *h.v, h.valid]
    return [t.clone() for t in ts if t is not None]


def test_frozen_spans_reproduce_prefill(pair):
    _, ours, _ = pair
    ids = _ids(2, 40, seed=30)
    with torch.no_grad():
        cache = ours.new_cache(2, 48, keep_states=True)
        prefill, cache = ours(ids, cache)
        before = _snapshot(cache)
        assert cache.frozen_range() == (0, 40)
        for s, e in [(28, 40), (10, 22), (0, 5)]:  # last span, a middle span past the window, the very start
            out, _ = ours(ids[:, s:e], cache, start=s, frozen=True)
            assert _diff(out, prefill[:, s:e]) <= TOL
        assert cache.length == 40 and all(torch.equal(a, b) for a, b in zip(before, _snapshot(cache), strict=True))
        nxt, _ = ours(_ids(2, 1, seed=31), cache)  # decoding continues from the untouched state
        ref, _ = ours(torch.cat([ids, _ids(2, 1, seed=31)], 1))
    assert _diff(nxt[:, 0], ref[:, -1]) <= TOL


def test_frozen_span_with_bounded_history_and_padding(pair):
    _, ours, _ = pair
    ids, valid = _ids(2, 40, seed=32), torch.ones(2, 40, dtype=torch.bool)
    valid[1, :9] = False
    with torch.no_grad():
        cache = ours.new_cache(2, 40, keep_states=24)  # the last 24 slots only
        prefill, cache = ours(ids, cache, valid)
        lo, hi = cache.frozen_range()
        assert (lo, hi) == (40 - 24 + W - 1, 40)
        out, _ = ours(ids[:, lo:], cache, start=lo, frozen=True)
        assert _diff(out, prefill[:, lo:]) <= TOL
        with pytest.raises(CtxlabError, match="outside the kept range"):
            ours(ids[:, lo - 1 : lo + 4], cache, start=lo - 1, frozen=True)


def test_frozen_span_trains_query_weights(pair):
    _, ours, _ = pair
    ids = _ids(1, 40, seed=33)
    with torch.no_grad():
        cache = ours.new_cache(1, 40, keep_states=True)
        prefill, cache = ours(ids, cache)
    wq = ours.query_weights()
    original = wq[0].detach().clone()
    for p in ours.parameters():
        p.requires_grad_(False)
    try:
        for p in wq:
            p.requires_grad_(True)
        logits, _ = ours(ids[:, 20:36], cache, start=20, frozen=True)
        torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 21:36]).backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in wq)
        with torch.no_grad():
            wq[0].add_(0.5 * torch.randn(wq[0].shape, generator=torch.Generator().manual_seed(0)))
            moved, _ = ours(ids[:, 20:36], cache, start=20, frozen=True)
        assert _diff(moved, prefill[:, 20:36]) > 1e-3  # the span pass really depends on the adapted queries
    finally:
        with torch.no_grad():
            wq[0].copy_(original)
        for p in ours.parameters():
            p.requires_grad_(True)
            p.grad = None


def test_truncate_rewinds_like_the_qttt_driver(pair):
    """qttt_answer: prefill, frozen pass at slot T−1, decode answer tokens, truncate back to T, decode again."""
    _, ours, _ = pair
    ids, ans = _ids(2, 40, seed=34), _ids(2, 5, seed=35)
    valid = torch.ones(2, 40, dtype=torch.bool)
    valid[1, :9] = False
    with torch.no_grad():
        for keep in (True, 24):
            cache = ours.new_cache(2, 45, keep_states=keep)
            prefill, cache = ours(ids, cache, valid)
            last, _ = ours(ids[:, 39:], cache, start=39, frozen=True)
            assert _diff(last, prefill[:, 39:]) <= TOL
            first = torch.cat([ours(ans[:, t : t + 1], cache)[0] for t in range(5)], 1)
            cache.rewind(40)
            again = torch.cat([ours(ans[:, t : t + 1], cache)[0] for t in range(5)], 1)
            assert _diff(first, again) <= TOL and cache.length == 45
            if keep is True:  # rewind into the prompt and replay it token by token
                cache.rewind(30)
                replay = torch.cat([ours(ids[:, t : t + 1], cache)[0] for t in range(30, 40)], 1)
                assert _diff(replay, prefill[:, 30:]) <= TOL
            else:  # 24 kept slots: after 5 more tokens the history no longer reaches slot 30 − W
                with pytest.raises(CtxlabError, match="cannot rewind"):
                    cache.rewind(30)
                cache.rewind(40)  # the decoded tokens overwrote slots 16..20 of the history ring
                assert cache.frozen_range() == (45 - 24 + W - 1, 40)

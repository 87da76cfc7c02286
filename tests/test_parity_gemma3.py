"""Gemma 3 text parity against transformers on tiny random configs (fp32, every weight randomised): sequences
longer than the sliding window, cached decoding across the window boundary (ring and full caches), left-padded
batches, save → transformers load, and qTTT's frozen passes honouring the window."""

from __future__ import annotations

import pytest
import torch

from ctxlab.errors import CtxlabError
from ctxlab.models.gemma3 import WindowedKVCache
from ctxlab.models.loading import load_model, save_model
from tests.hf_utils import randomize

TOL = 1e-4
WINDOW = 8
TINY = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6, sliding_window=WINDOW, query_pre_attn_scalar=24,
    max_position_embeddings=256, layer_types=["sliding_attention", "full_attention", "sliding_attention",
                                              "sliding_attention"],
    rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                     "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
    hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
)


def make_hf(seed: int = 0, **overrides):
    import transformers as tf

    cfg = tf.Gemma3TextConfig(**{**TINY, **overrides})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = tf.Gemma3ForCausalLM(cfg).eval()
    randomize(model, seed)
    return model


def _ids(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=[{}, {"final_logit_softcapping": 3.0, "num_key_value_heads": 1}],
                ids=["base", "softcap-mqa"])
def pair(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("g3")
    hf = make_hf(**request.param)
    hf.save_pretrained(tmp / "hf", safe_serialization=True)
    return hf, load_model(tmp / "hf").model, tmp


def test_logits_match_beyond_the_window(pair):
    hf, ours, _ = pair
    ids = _ids(2, 5 * WINDOW + 3)
    with torch.no_grad():
        ref = hf(ids).logits
        got, _ = ours(ids)
    assert (got - ref).abs().max().item() <= TOL


def test_blocked_prefill_equals_one_block(pair, monkeypatch):
    from ctxlab.models import gemma3

    _, ours, _ = pair
    ids = _ids(1, 6 * WINDOW)
    with torch.no_grad():
        ref, _ = ours(ids)
        monkeypatch.setattr(gemma3, "QUERY_BLOCK", 5)  # blocks of 5 queries: several blocks per call
        got, _ = ours(ids)
    assert (got - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("keep", [False, True], ids=["ring", "full"])
def test_cached_decode_across_the_window_equals_full_forward(pair, keep):
    _, ours, _ = pair
    T, P = 4 * WINDOW + 5, 5  # 5-token prefill, then 32 single steps crossing the window boundary 4 times
    ids = _ids(2, T)
    with torch.no_grad():
        full, _ = ours(ids)
        cache = ours.new_cache(2, T + 4, rewindable=keep)
        assert isinstance(cache, WindowedKVCache)
        ring_layers = [r for r in cache.ring if r is not None]
        assert (len(ring_layers) == 3) != keep  # 3 local layers bounded unless rewindable
        out, cache = ours(ids[:, :P], cache)
        steps = [out]
        for t in range(P, T):
            out, cache = ours(ids[:, t : t + 1], cache)
            steps.append(out)
    assert (torch.cat(steps, 1) - full).abs().max().item() <= TOL


def test_chunked_prefill_through_the_ring_equals_full_forward(pair):
    _, ours, _ = pair
    ids = _ids(1, 40)
    with torch.no_grad():
        full, _ = ours(ids)
        cache = ours.new_cache(1, 48)
        parts = []
        for a, b in ((0, 3), (3, 17), (17, 18), (18, 40)):  # chunks shorter and longer than the ring
            out, cache = ours(ids[:, a:b], cache)
            parts.append(out)
    assert (torch.cat(parts, 1) - full).abs().max().item() <= TOL


def test_left_padded_batch_matches_transformers(pair):
    hf, ours, _ = pair
    lens = [3 * WINDOW, 2 * WINDOW - 3, 5]
    T = max(lens)
    ids = torch.zeros(len(lens), T, dtype=torch.long)
    valid = torch.zeros(len(lens), T, dtype=torch.bool)
    for i, n in enumerate(lens):
        ids[i, T - n :] = _ids(1, n, seed=10 + i)[0]
        valid[i, T - n :] = True
    with torch.no_grad():
        ref = hf(ids, attention_mask=valid.long()).logits
        cache = ours.new_cache(len(lens), T + 4)
        got, cache = ours(ids, cache, valid)
        for i, n in enumerate(lens):  # HF measures the window in slots, pads included: compare real tokens
            assert (got[i, T - n :] - ref[i, T - n :]).abs().max().item() <= TOL
        nxt = torch.randint(0, 256, (len(lens), 1))
        step, _ = ours(nxt, cache)
        ref2 = hf(torch.cat([ids, nxt], 1), attention_mask=torch.cat([valid, torch.ones(3, 1, dtype=torch.bool)],
                                                                      1).long()).logits[:, -1]
    assert (step[:, 0] - ref2).abs().max().item() <= TOL


def test_save_then_transformers_load(pair):
    import transformers as tf

    hf, ours, tmp = pair
    out = tmp / "ours"
    save_model(ours, out, source_dir=tmp / "hf")
    back = tf.Gemma3ForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = _ids(1, 3 * WINDOW)
    with torch.no_grad():
        assert (back(ids).logits - hf(ids).logits).abs().max().item() <= TOL
        assert torch.equal(load_model(out).model(ids)[0], ours(ids)[0])


def test_ring_cache_refuses_inexact_rewind_and_frozen_passes(pair):
    _, ours, _ = pair
    ids = _ids(1, 3 * WINDOW)
    with torch.no_grad():
        cache = ours.new_cache(1, 4 * WINDOW)
        ours(ids, cache)
        with pytest.raises(CtxlabError, match="rewindable"):
            cache.rewind(WINDOW)
        with pytest.raises(CtxlabError, match="rewindable"):
            ours(ids[:, 2:6], cache, start=2, frozen=True)
        full = ours.new_cache(1, 4 * WINDOW, rewindable=True)
        ours(ids, full)
        full.rewind(WINDOW)  # exact with every slot kept
        assert full.length == WINDOW


def test_frozen_pass_reads_the_window_the_prefill_saw(pair):
    """A frozen span pass over old context equals the prefill's logits there (queries see (t - W, t])."""
    _, ours, _ = pair
    ids = _ids(1, 5 * WINDOW)
    with torch.no_grad():
        full, _ = ours(ids)
        cache = ours.new_cache(1, 5 * WINDOW, rewindable=True)
        ours(ids, cache)
        t, k = 2 * WINDOW + 3, WINDOW + 2
        span, _ = ours(ids[:, t : t + k], cache, start=t, frozen=True)
    assert (span - full[:, t : t + k]).abs().max().item() <= TOL


def test_qttt_adapts_every_query_projection_and_restores(pair):
    from ctxlab.strategies.qttt import QTTTConfig, qttt_answer

    _, ours, _ = pair
    before = [w.detach().clone() for w in ours.query_weights()]
    assert len(before) == TINY["num_hidden_layers"]
    ids = _ids(1, 4 * WINDOW)[0]
    res = qttt_answer(ours, ids, QTTTConfig(steps=3, span=WINDOW + 4, lr=1e-2), max_new_tokens=4)
    assert res.report.steps == 3 and len(res.ids) >= 1
    assert all(torch.equal(a, b) for a, b in zip(before, ours.query_weights(), strict=True))


def test_ring_snapshot_restore_is_exact_after_wrapping(pair):
    """The cache protocol on a bounded cache: appends wrap the rings, restore() brings the prompt state back."""
    _, ours, _ = pair
    ids = _ids(1, 2 * WINDOW)
    cont = _ids(1, 3 * WINDOW, seed=7)
    with torch.no_grad():
        cache = ours.new_cache(1, 6 * WINDOW)
        ours(ids, cache)
        snap = cache.snapshot()
        first, _ = ours(cont, cache)  # 3 windows of appends: every ring entry overwritten
        cache.restore(snap)
        again, _ = ours(cont, cache)
        other = ours.new_cache(1, 6 * WINDOW)
        cache.restore(snap)
        other.copy_prefix(cache, 2 * WINDOW)
        copied, _ = ours(cont, other)
        cache.restore(snap)
        cache.rewind(2 * WINDOW - 1)  # one slot back is within the ring (this rewrites a slot below the snapshot)
        ours(ids[:, -1:], cache)
        again2, _ = ours(cont, cache)
    assert torch.equal(first, again) and torch.equal(first, copied)
    assert (first - again2).abs().max().item() <= TOL  # the re-fed slot came from a 1-token call (other kernel)

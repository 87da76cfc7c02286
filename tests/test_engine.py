"""Generation engine: sampling functions, stopping, context limits and streaming on a mock model; greedy parity of
batched generation with single-prompt generation and with transformers' generate on a tiny random Qwen3."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctxlab.engine import (
    Generation,
    GenerationBatch,
    SamplingParams,
    StopCriteria,
    decode_step,
    generate,
    generate_from_cache,
    left_pad,
    logits_to_probs,
    make_generator,
    prefill,
    sample,
    stream,
    trim_at_stop,
)
from ctxlab.errors import CtxlabError

V = 16


class ToyCache:
    """Records which ids went into which slot; refuses to overflow (so the engine must size it exactly)."""

    def __init__(self, batch: int, max_len: int):
        self.ids = torch.full((batch, max_len), -1, dtype=torch.long)
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.ids.shape[1]


class MockModel(nn.Module):
    """Implements the model protocol; logits prefer (last id + 1) % V by `gap` nats over every other id."""

    def __init__(self, max_context: int = 64, gap: float = 10.0):
        super().__init__()
        self.gap = nn.Parameter(torch.tensor(float(gap)))
        self._max_context = max_context
        self.cfg = SimpleNamespace(vocab_size=V)
        self.calls: list[dict] = []

    @property
    def max_context(self) -> int:
        return self._max_context

    def new_cache(self, batch: int, max_len: int, dtype=None, device=None) -> ToyCache:
        return ToyCache(batch, max_len)

    def forward(self, ids, cache=None, valid=None, *, start=None, frozen=False, last_only=False):
        B, T = ids.shape
        self.calls.append({"T": T, "last_only": last_only, "valid": None if valid is None else valid.clone(),
                           "ids": ids.clone(), "inference": torch.is_inference_mode_enabled()})
        if cache is not None:
            start = cache.length if start is None else start
            end = start + T
            assert end <= cache.capacity, f"cache overflow: slots [{start}, {end}) > {cache.capacity}"
            cache.ids[:, start:end] = ids
            cache.valid[:, start:end] = True if valid is None else valid
            cache.length = end
        logits = F.one_hot((ids + 1) % V, V).float() * self.gap  # (B, T, V)
        return (logits[:, -1:] if last_only else logits), cache


def _abc(ids) -> str:
    return "".join(chr(ord("a") + i) for i in ids)


# ------------------------------------------------------------------------------------------------ sampling


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": True}, "max_new_tokens"),
        ({"seed": -3}, "seed"),
    ],
)
def test_sampling_params_validation(kw, needle):
    with pytest.raises(CtxlabError) as e:
        SamplingParams(**kw)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_sampling_params_from_generation_config():
    gc = {"do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95}
    p = SamplingParams.from_generation_config(gc, max_new_tokens=7, seed=None)
    assert (p.temperature, p.top_k, p.top_p, p.max_new_tokens, p.seed) == (0.6, 20, 0.95, 7, None)
    assert SamplingParams.from_generation_config({"temperature": 0.6}).greedy  # do_sample absent → greedy
    with pytest.raises(CtxlabError, match="unknown sampling option"):
        SamplingParams.from_generation_config({}, temprature=1.0)


def test_greedy_is_argmax_and_ignores_filters():
    logits = torch.randn(5, 40, generator=torch.Generator().manual_seed(0))
    p = SamplingParams(temperature=0.0, top_k=3, top_p=0.5)
    assert torch.equal(sample(logits, p), logits.argmax(-1))
    probs = logits_to_probs(logits, temperature=0.0)
    assert torch.equal(probs.argmax(-1), logits.argmax(-1)) and torch.equal(probs.sum(-1), torch.ones(5))


def test_temperature_scales_logits():
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0]])
    for t in (0.5, 1.0, 2.0):
        torch.testing.assert_close(logits_to_probs(logits, temperature=t), torch.softmax(logits / t, -1))


def test_top_k_mask_on_known_logits():
    probs = logits_to_probs(torch.tensor([[1.0, 4.0, 2.0, 3.0]]), temperature=1.0, top_k=2)
    assert probs[0, 0] == 0 and probs[0, 2] == 0
    torch.testing.assert_close(probs[0, [1, 3]], torch.softmax(torch.tensor([4.0, 3.0]), -1))


@pytest.mark.parametrize("top_p, kept", [(0.3, [1]), (0.7, [1, 2]), (0.8, [1, 2, 3]), (0.95, [0, 1, 2, 3])])
def test_top_p_keeps_smallest_set_reaching_p(top_p, kept):
    base = torch.tensor([[0.1, 0.5, 0.25, 0.15]])
    probs = logits_to_probs(base.log(), temperature=1.0, top_p=top_p)
    assert (probs[0] > 0).nonzero().flatten().tolist() == kept
    torch.testing.assert_close(probs[0, kept], base[0, kept] / base[0, kept].sum())


def test_top_k_top_p_match_transformers_warpers():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(8, 64, generator=torch.Generator().manual_seed(1)) * 3
    for t, k, p in [(0.7, 10, 0.9), (1.3, 0, 0.5), (1.0, 5, 1.0), (0.6, 20, 0.95)]:
        ref = TemperatureLogitsWarper(t)(None, logits.clone())
        if k:
            ref = TopKLogitsWarper(k)(None, ref)
        if p < 1:
            ref = TopPLogitsWarper(p)(None, ref)
        torch.testing.assert_close(logits_to_probs(logits, t, k, p), ref.softmax(-1))


def test_seeded_sampling_is_deterministic_and_follows_probs():
    logits = torch.zeros(64, 50)
    p = SamplingParams(temperature=1.0)
    a = sample(logits, p, make_generator(7))
    assert torch.equal(a, sample(logits, p, make_generator(7)))
    assert not torch.equal(a, sample(logits, p, make_generator(8)))
    target = torch.tensor([0.1, 0.5, 0.25, 0.15])
    draws = sample(target.log().expand(20000, 4), p, make_generator(0))
    freq = torch.bincount(draws, minlength=4).float() / 20000
    assert (freq - target).abs().max() < 0.015
    masked = sample(target.log().expand(2000, 4), SamplingParams(temperature=1.0, top_k=2), make_generator(0))
    assert set(masked.tolist()) == {1, 2}


# ------------------------------------------------------------------------------------- generate on a mock


def test_greedy_left_padded_batch_and_exact_cache_size():
    m = MockModel()
    out = generate(m, [[1, 2, 3], [7]], SamplingParams(max_new_tokens=5))
    assert isinstance(out, GenerationBatch) and len(out) == 2
    assert out[0] == Generation([4, 5, 6, 7, 8], "length", 3, 0)
    assert out[1] == Generation([8, 9, 10, 11, 12], "length", 1, 0)
    first = m.calls[0]
    assert first["last_only"] and first["inference"] and first["T"] == 3
    assert first["valid"].tolist() == [[True, True, True], [False, False, True]]
    assert [c["T"] for c in m.calls[1:]] == [1] * 4  # the last sampled token is never fed back
    assert out.stats.steps == 5 and out.stats.new_tokens == 10 and out.stats.prompt_tokens == 4


def test_eos_stops_each_sequence_on_its_own():
    m = MockModel()
    prompts = [[1, 2, 13], [5], [9]]
    out = generate(m, prompts, SamplingParams(max_new_tokens=8), eos_ids=[0])
    assert out[0] == Generation([14, 15], "eos", 3, 0)
    assert out[1] == Generation([6, 7, 8, 9, 10, 11, 12, 13], "length", 1, 0)
    assert out[2] == Generation([10, 11, 12, 13, 14, 15], "eos", 1, 0)
    assert out.stats.new_tokens == 3 + 8 + 7  # EOS tokens are counted as sampled


def test_generation_ends_when_every_row_finished():
    m = MockModel()
    out = generate(m, [[13], [14]], SamplingParams(max_new_tokens=50), eos_ids=0)
    assert [g.ids for g in out] == [[14, 15], [15]] and {g.finish_reason for g in out} == {"eos"}
    assert len(m.calls) == 3  # prefill + 2 decode steps, not 50


def test_stop_strings_via_decode_callback():
    m = MockModel()
    stop = StopCriteria.from_strings(["fgh"], _abc)
    out = generate(m, [[3], [10]], SamplingParams(max_new_tokens=6), stop=stop)
    assert out[0] == Generation([4, 5, 6, 7], "stop", 1, 0)  # "efgh": the ids that completed the string are kept
    assert out[1].finish_reason == "length" and _abc(out[1].ids) == "lmnopa"
    assert stop.trim_text(_abc(out[0].ids)) == "e"
    assert trim_at_stop("xx STOP yy END", ["END", "STOP"]) == "xx " and trim_at_stop("abc", ["z"]) == "abc"


def test_stop_window_only_decodes_the_tail():
    seen: list[int] = []

    def decode(ids):
        seen.append(len(ids))
        return _abc(ids)

    stop = StopCriteria.from_strings(["zz", "klm"], decode)  # window = 3 + 8
    out = generate(MockModel(max_context=128), [[0]], SamplingParams(max_new_tokens=40), stop=stop)
    assert _abc(out[0].ids).endswith("klm") and out[0].finish_reason == "stop" and max(seen) == 11
    plain = generate(MockModel(), [[0]], SamplingParams(max_new_tokens=5), stop=lambda ids: ids[-1] == 3)
    assert plain[0] == Generation([1, 2, 3], "stop", 1, 0)
    with pytest.raises(CtxlabError, match="non-empty"):
        StopCriteria.from_strings([""], _abc)


def test_context_limit_error_and_explicit_truncation():
    m = MockModel(max_context=16)
    prompt = list(range(14))
    with pytest.raises(CtxlabError) as e:
        generate(m, [prompt], SamplingParams(max_new_tokens=4))
    msg = str(e.value)
    assert "prompt of 14 tokens + 4 new tokens exceeds the model's context of 16 tokens; pass --truncate" in msg
    out = generate(m, [prompt, [3]], SamplingParams(max_new_tokens=4), truncate=True)
    assert out[0] == Generation([14, 15, 0, 1], "length", 12, 2)
    assert out[1] == Generation([4, 5, 6, 7], "length", 1, 0)
    assert m.calls[-4]["ids"][0].tolist() == list(range(2, 14))  # the prefill saw the last 12 prompt tokens
    ok = generate(m, [prompt], SamplingParams(max_new_tokens=4), max_context=18)  # explicit override
    assert ok[0].truncated == 0 and ok[0].prompt_tokens == 14
    with pytest.raises(CtxlabError, match="leave no room"):
        generate(m, [[1]], SamplingParams(max_new_tokens=16), truncate=True)


@pytest.mark.parametrize(
    "prompts, needle", [([], "no prompts"), ([[1], []], "prompt 1 is empty"), ([[1, V]], "vocabulary")]
)
def test_bad_prompts_fail_before_any_model_call(prompts, needle):
    m = MockModel()
    with pytest.raises(CtxlabError, match=needle):
        generate(m, prompts, SamplingParams(max_new_tokens=2))
    assert m.calls == []


def test_seeded_generation_is_reproducible():
    m = MockModel(gap=0.5)  # nearly flat logits: sampling really samples
    p = SamplingParams(max_new_tokens=12, temperature=1.0, seed=3)
    a = generate(m, [[1], [2, 3]], p)
    assert [g.ids for g in a] == [g.ids for g in generate(m, [[1], [2, 3]], p)]
    b = generate(m, [[1], [2, 3]], SamplingParams(max_new_tokens=12, temperature=1.0, seed=4))
    assert [g.ids for g in a] != [g.ids for g in b]
    top1 = generate(m, [[1], [2, 3]], SamplingParams(max_new_tokens=12, temperature=1.0, top_k=1, seed=5))
    assert [g.ids for g in top1] == [g.ids for g in generate(m, [[1], [2, 3]], SamplingParams(max_new_tokens=12))]


def test_stream_yields_lazily_and_matches_generate():
    m = MockModel()
    params = SamplingParams(max_new_tokens=10)
    ts = stream(m, [9], params, eos_ids=[0])
    assert m.calls == []  # nothing runs before the first next()
    assert next(ts) == 10 and len(m.calls) == 1
    assert not torch.is_inference_mode_enabled()  # the engine's inference_mode does not leak across yields
    rest = list(ts)
    assert [10, *rest] == [10, 11, 12, 13, 14, 15]  # EOS (0) is not yielded
    assert ts.generation == generate(m, [[9]], params, eos_ids=[0])[0] == Generation([10, *rest], "eos", 1, 0)
    assert ts.stats.new_tokens == 7 and ts.stats.steps == 7
    early = stream(m, [1], params)
    next(early)
    early.close()
    assert early.generation is None
    with pytest.raises(CtxlabError, match="exceeds the model's context"):
        stream(MockModel(max_context=8), list(range(6)), SamplingParams(max_new_tokens=4))


def test_stats_report_rates():
    out = generate(MockModel(), [[1, 2]], SamplingParams(max_new_tokens=3))
    d = out.stats.as_dict()
    assert d["prompt_tokens"] == 2 and d["new_tokens"] == 3 and d["prefill_s"] > 0 and d["decode_s"] > 0
    assert math.isclose(d["decode_tok_per_s"], 3 / d["decode_s"]) and "tok/s" in out.stats.summary()


# ------------------------------------------------------------------------------------ tiny real Qwen3 model

PROMPT_LENS = (11, 5, 8)
NEW = 12


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    from ctxlab.models.loading import load_model
    from tests.hf_utils import make_hf, save_hf

    hf = make_hf("qwen3")
    path = save_hf(hf, tmp_path_factory.mktemp("qwen3"))
    ours = load_model(path).model
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in PROMPT_LENS]
    return hf, ours, prompts


def test_batched_greedy_equals_single_prompts_and_transformers(qwen):
    hf, ours, prompts = qwen
    params = SamplingParams(max_new_tokens=NEW)
    batched = generate(ours, prompts, params)
    singles = [generate(ours, [p], params)[0] for p in prompts]
    assert [g.ids for g in batched] == [g.ids for g in singles]
    assert all(g.finish_reason == "length" and len(g.ids) == NEW for g in batched)
    ids, valid = left_pad(prompts)
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=valid.long(), max_new_tokens=NEW, do_sample=False, pad_token_id=0)
        for p, g in zip(prompts, batched, strict=True):
            one = hf.generate(torch.tensor([p]), max_new_tokens=NEW, do_sample=False, pad_token_id=0)
            assert one[0, len(p):].tolist() == g.ids
    assert ref[:, ids.shape[1]:].tolist() == [g.ids for g in batched]


def test_real_model_eos_chunked_prefill_stream_and_external_cache(qwen):
    _, ours, prompts = qwen
    params = SamplingParams(max_new_tokens=NEW)
    full = [g.ids for g in generate(ours, prompts, params)]
    eos = full[0][3]
    out = generate(ours, prompts, params, eos_ids=[eos])
    for g, ids in zip(out, full, strict=True):
        cut = ids.index(eos) if eos in ids else None
        assert g.ids == ids[:cut] and g.finish_reason == ("eos" if cut is not None else "length")
    assert [g.ids for g in generate(ours, prompts, params, prefill_chunk=3)] == full
    assert list(stream(ours, prompts[1], params)) == full[1]
    ids, valid = left_pad(prompts)
    with torch.no_grad():  # qTTT-style: the caller owns the cache, the engine only decodes
        cache = ours.new_cache(len(prompts), ids.shape[1] + NEW - 1)
        logits, cache = prefill(ours, ids, valid, cache)
        step_logits, _ = decode_step(ours, logits.argmax(-1), ours.new_cache(len(prompts), 4))
    assert step_logits.shape == (len(prompts), 256)
    assert [g.ids for g in generate_from_cache(ours, logits, cache, params, prompt_tokens=PROMPT_LENS)] == full
    sampled = SamplingParams(max_new_tokens=NEW, temperature=0.8, top_k=40, top_p=0.9, seed=11)
    assert [g.ids for g in generate(ours, prompts, sampled)] == [g.ids for g in generate(ours, prompts, sampled)]

"""qTTT (ctxlab.strategies.qttt) on tiny random checkpoints of every family: only W_Q moves, bit-exact restore (also
after an exception or KeyboardInterrupt mid-adaptation), frozen cache, one prefill, learning on a real context, and the
evidence-attention diagnostic; plus the strategies and the CLI body on a scratch checkpoint."""

from __future__ import annotations

import functools
import io
import random

import pytest
import torch

from ctxlab.engine import SamplingParams, generate, generate_from_cache
from ctxlab.errors import CtxlabError
from ctxlab.models import layers as model_layers
from ctxlab.models.cache import KVCache
from ctxlab.models.layers import GemmaRMSNorm
from ctxlab.models.loading import load_model
from ctxlab.strategies.diagnostics import (
    attention_probe,
    attention_probs,
    char_spans_to_tokens,
    diagnose,
    probe_answer,
)
from ctxlab.strategies.flops import ArchCost, PaperCost
from ctxlab.strategies.qttt import QTTTConfig, QuerySnapshot, adapt, adapted, qttt_answer
from tests.hf_utils import make_hf, randomize, save_hf

FAMILIES = ["qwen3", "llama", "gemma", "llama4_text", "recurrent_gemma"]
# Tiny configs of the families hf_utils does not cover (architectures.md §E); chunk 8 / window 16 so that chunked
# and sliding-window attention are exercised by the ~250-token prompts below.
EXTRA = {
    "llama4_text": dict(
        vocab_size=256, hidden_size=64, intermediate_size=32, intermediate_size_mlp=48, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=1,
        interleave_moe_layer_step=2, no_rope_layer_interval=4, attention_chunk_size=8, floor_scale=4,
        attn_scale=0.1, attn_temperature_tuning=True, use_qk_norm=True, rope_theta=5e5, rms_norm_eps=1e-5,
        tie_word_embeddings=False, pad_token_id=None, bos_token_id=1, eos_token_id=2,
    ),
    "recurrent_gemma": dict(
        vocab_size=256, hidden_size=64, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=1, lru_width=64, attention_window_size=16, conv1d_width=4, logits_soft_cap=30.0,
        partial_rotary_factor=0.5, rope_theta=1e4,
    ),
}


def _make(family: str, **overrides):
    if family not in EXTRA:
        return make_hf(family, max_position_embeddings=512, **overrides)
    import transformers as tf

    cfg_cls, model_cls = {"llama4_text": (tf.Llama4TextConfig, tf.Llama4ForCausalLM),
                          "recurrent_gemma": (tf.RecurrentGemmaConfig, tf.RecurrentGemmaForCausalLM)}[family]
    cfg = cfg_cls(**{**EXTRA[family], "max_position_embeddings": 512, **overrides})
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = model_cls(cfg).eval()
    randomize(model, 0)
    return model


TEXT = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. He trimmed the wick, polished the "
    "lens and wound the clockwork that turned the great light. Ships far out at sea watched for its beam, and "
    "the keeper wrote each passing vessel into a leather log: its name, its flag and the hour it passed. "
)
PROMPT = list((TEXT + "Question: what did the keeper polish? Answer:").encode())  # byte ids < 256
CONTEXT_LEN = len(TEXT.encode())


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("qttt")
    paths = {}
    for family in FAMILIES:
        paths[family] = save_hf(_make(family), root / family)
        # MHA with nh·hd = H: lets the retrieval test give attention an identity value/output path
        mha = dict(num_attention_heads=4, num_key_value_heads=4)
        if family == "recurrent_gemma":
            mha["attention_window_size"] = 512  # the needles lie further back than the tiny window / chunk
        else:
            mha["head_dim"] = 16
        if family == "llama4_text":
            mha["attention_chunk_size"] = 512
        paths[family + "-mha"] = save_hf(_make(family, **mha), root / (family + "-mha"))
    return paths


@pytest.fixture(params=FAMILIES)
def model(request, checkpoints):
    return load_model(checkpoints[request.param]).model


def _prefilled(model, ids, extra=8):
    cache = model.new_cache(1, len(ids) + extra, rewindable=True)
    with torch.no_grad():
        model(torch.tensor([ids]), cache)
    return cache


def _state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _query_names(model):
    ids = {id(p) for p in model.query_weights()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def _assert_same(model, state):
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), state[n]), n


def _cache_copy(cache, T):
    """Every tensor of the cache that describes the prompt slots [0, T)."""
    if isinstance(cache, KVCache):
        return [t[:, :, :T].clone() for t in (*cache.k, *cache.v)] + [cache.valid[:, :T].clone(),
                                                                        cache.pos[:, :T].clone()]
    h = cache.hist  # Griffin: the fixed-size decode state, plus the prompt slots of the span history
    state = [t.clone() for t in (*cache.conv, *cache.lru, *cache.k, *cache.v) if t is not None]
    hist = [t[:, :T].clone() for t in (*h.u, *h.h, h.valid, h.pos) if t is not None]
    hist += [t[:, :, :T].clone() for t in (*h.k, *h.v) if t is not None]
    return state + [cache.ring_valid.clone(), cache.seen.clone()] + hist


def _assert_cache_same(cache, copy, T):
    assert cache.length == T
    now = _cache_copy(cache, T)
    assert len(now) == len(copy) and all(torch.equal(a, b) for a, b in zip(now, copy, strict=True))


FAST = QTTTConfig(steps=4, span=16, lr=1e-2, seed=1)


def test_only_query_weights_change_and_cache_is_frozen(model):
    T = len(PROMPT)
    cache = _prefilled(model, PROMPT)
    before, cache_before = _state(model), _cache_copy(cache, T)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    snap = QuerySnapshot(model)
    report = adapt(model, cache, PROMPT, FAST, snapshot=snap)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == _query_names(model)  # every W_Q moved, nothing else did
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    _assert_cache_same(cache, cache_before, T)
    assert report.steps == 4 and report.span == 16
    snap.restore()
    _assert_same(model, before)


def test_adapted_restores_bit_exactly(model):
    T = len(PROMPT)
    cache = _prefilled(model, PROMPT)
    before, cache_before = _state(model), _cache_copy(cache, T)
    with adapted(model, cache, PROMPT, FAST) as report:
        assert all(not torch.equal(p.detach(), before[n]) for n, p in _queries(model))
    assert len(report.losses) == FAST.steps
    _assert_same(model, before)
    _assert_cache_same(cache, cache_before, T)


def _queries(model):
    names = {id(p): n for n, p in model.named_parameters()}
    return [(names[id(p)], p) for p in model.query_weights()]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_restore_after_interrupt_mid_adaptation(model, exc, monkeypatch):
    cache = _prefilled(model, PROMPT)
    before = _state(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    forward = model.forward
    calls = {"frozen": 0}

    def flaky(ids, cache=None, valid=None, **kw):
        if kw.get("frozen"):
            calls["frozen"] += 1
            if calls["frozen"] == 4:  # probe + 2 updated steps, then the 3rd step's forward fails
                raise exc("injected")
        return forward(ids, cache, valid, **kw)

    monkeypatch.setattr(model, "forward", flaky)
    with pytest.raises(exc):
        adapt(model, cache, PROMPT, QTTTConfig(steps=6, span=16, lr=1e-2))
    _assert_same(model, before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())

    calls["frozen"] = 0  # same through qttt_answer (its own prefill and cache)
    with pytest.raises(exc):
        qttt_answer(model, PROMPT, QTTTConfig(steps=6, span=16, lr=1e-2), max_new_tokens=4)
    _assert_same(model, before)


def test_interrupt_during_answer_decoding_restores(model, monkeypatch):
    before = _state(model)
    forward = model.forward

    def fails_in_decode(ids, cache=None, valid=None, **kw):
        if not kw.get("frozen") and ids.shape[1] == 1 and cache is not None and cache.length > 0:
            raise KeyboardInterrupt
        return forward(ids, cache, valid, **kw)

    monkeypatch.setattr(model, "forward", fails_in_decode)
    with pytest.raises(KeyboardInterrupt):
        qttt_answer(model, PROMPT, FAST, max_new_tokens=4)
    _assert_same(model, before)


def test_answer_path_has_one_prefill_and_frozen_cache(model, monkeypatch):
    T = len(PROMPT)
    before = _state(model)
    forward, new_cache = model.forward, model.new_cache
    calls, caches, snapshots = [], [], []

    def spy(ids, cache=None, valid=None, **kw):
        calls.append((ids.shape[1], bool(kw.get("frozen")), kw.get("start")))
        out = forward(ids, cache, valid, **kw)
        if len(calls) == 1:
            snapshots.append(_cache_copy(cache, T))  # the prompt slots right after the prefill
        return out

    monkeypatch.setattr(model, "forward", spy)
    @functools.wraps(new_cache)  # keeps the signature (qTTT asks for a rewindable cache)
    def spy_cache(*a, **k):
        caches.append(new_cache(*a, **k))
        return caches[-1]

    monkeypatch.setattr(model, "new_cache", spy_cache)
    cfg = QTTTConfig(steps=5, span=16, lr=1e-2, seed=3)
    res = qttt_answer(model, PROMPT, cfg, max_new_tokens=6, context_len=CONTEXT_LEN)
    assert len(caches) == 1
    prefills = [c for c in calls if not c[1] and c[0] > 1]
    assert prefills == [(T, False, None)]  # exactly one call carries the prompt
    assert calls[0] == (T, False, None)
    frozen = [c for c in calls if c[1]]
    assert [c[0] for c in frozen] == [16] * (1 + 5 + 1) + [1]  # probe, 5 steps, probe, last-slot refresh
    assert frozen[-1][2] == T - 1
    decodes = [c for c in calls if not c[1] and c[0] == 1]
    assert len(decodes) == res.fed_tokens == len(res.ids) - 1 and res.finish_reason == "length"
    _assert_cache_same(caches[0], snapshots[0], T)
    _assert_same(model, before)
    assert all(t + 16 + 1 <= CONTEXT_LEN for t in res.report.starts)  # spans drawn from the context only
    assert res.report.region == (0, CONTEXT_LEN)


def test_answer_is_decoded_by_the_adapted_model(model):
    cfg = QTTTConfig(steps=4, span=16, lr=3e-2, seed=5)
    res = qttt_answer(model, PROMPT, cfg, max_new_tokens=6)
    T = len(PROMPT)
    cache = _prefilled(model, PROMPT, extra=6)
    with adapted(model, cache, PROMPT, cfg), torch.no_grad():
        logits, _ = model(torch.tensor([PROMPT[-1:]]), cache, start=T - 1, frozen=True)
        manual = generate_from_cache(model, logits[:, -1], cache, SamplingParams(max_new_tokens=6))[0].ids
    assert res.ids == manual
    plain = qttt_answer(model, PROMPT, QTTTConfig(steps=0), max_new_tokens=6)  # no steps = the original model
    assert plain.ids == generate(model, [PROMPT], SamplingParams(max_new_tokens=6))[0].ids


def test_seeded_and_sampled(model):
    cfg = QTTTConfig(steps=3, span=8, lr=1e-2, seed=7)
    params = SamplingParams(temperature=1.0, seed=11)
    a = qttt_answer(model, PROMPT, cfg, max_new_tokens=5, params=params)
    b = qttt_answer(model, PROMPT, cfg, max_new_tokens=5, params=params)
    assert a.ids == b.ids and a.report.losses == b.report.losses and a.report.starts == b.report.starts
    c = qttt_answer(model, PROMPT, QTTTConfig(steps=3, span=8, lr=1e-2, seed=8), max_new_tokens=5, params=params)
    assert c.report.starts != a.report.starts


def test_span_loss_decreases_on_a_real_context(model):
    cache = _prefilled(model, PROMPT)
    one_span = QTTTConfig(steps=10, span=32, lr=1e-2, region=(100, 133))  # every step on the same span
    with adapted(model, cache, PROMPT, one_span) as r:
        pass
    assert set(r.starts) == {100}
    assert all(b < a for a, b in zip(r.losses, r.losses[1:], strict=False)) and r.probe_loss_after < r.losses[-1]
    random_spans = QTTTConfig(steps=24, span=32, lr=1e-2, seed=0, region="prompt")
    with adapted(model, cache, PROMPT, random_spans) as r:
        pass
    assert r.probe_loss_after < r.probe_loss_before - 0.01  # the fixed probe span (the prompt's last 33 tokens)
    assert r.region == (0, len(PROMPT)) and r.probe_start == len(PROMPT) - 33 and len(set(r.starts)) > 10


def test_low_precision_weights_use_fp32_masters(checkpoints):
    model = load_model(checkpoints["qwen3"], dtype="bfloat16").model
    before = _state(model)
    cache = _prefilled(model, PROMPT)
    with adapted(model, cache, PROMPT, QTTTConfig(steps=8, span=16, lr=2e-4, probe=False)):
        moved = sum((p.detach() != before[n]).sum().item() for n, p in _queries(model))
        assert moved > 100  # tiny steps accumulate in fp32 and reach the bf16 weights
    _assert_same(model, before)


def test_config_and_region_validation(model):
    for bad in [dict(steps=-1), dict(span=0), dict(lr=0), dict(clip=0), dict(region="question"), dict(region=(5, 2))]:
        with pytest.raises(CtxlabError):
            QTTTConfig(**bad)
    cache = _prefilled(model, PROMPT)
    with pytest.raises(CtxlabError):
        adapt(model, cache, PROMPT, QTTTConfig(region=(0, 10_000)))
    with adapted(model, cache, PROMPT, QTTTConfig(steps=3, span=64, region=(100, 120))) as r:
        assert r.span == 19 and all(t == 100 for t in r.starts)  # short region: the span shrinks to fit
    if model.max_context < 10_000:  # (Griffin has no architectural limit)
        with pytest.raises(CtxlabError):
            qttt_answer(model, PROMPT, FAST, max_new_tokens=1000)  # beyond max_position_embeddings


# ------------------------------------------------------------------------------------------------ diagnostics


def _copy_model(path):
    """A tiny random model whose attention copies what it attends to (identity value/output maps, identity norms,
    no MLP or recurrent-block output, tied head), so that attending to a token raises that token's logit: NTP on
    the context then has a reason to re-aim the queries, and the evidence-attention diagnostic a direction."""
    model = load_model(path).model
    with torch.no_grad():
        for name, mod in model.named_modules():
            if name.split(".")[-1].endswith("norm"):
                mod.weight.fill_(0.0 if isinstance(mod, GemmaRMSNorm) else 1.0)
            if hasattr(mod, "wv") and hasattr(mod, "wo"):
                mod.wv.weight.copy_(torch.eye(64))
                mod.wo.weight.copy_(torch.eye(64))
                if mod.wo.bias is not None:
                    mod.wo.bias.zero_()
        for name, p in model.named_parameters():
            if "w_down" in name or ".rec.out." in name:  # MLPs / experts / Griffin recurrences add nothing
                p.zero_()
        if model.lm_head is not None:
            model.lm_head.weight.copy_(model.tok_emb.weight)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_mass_on_the_needle_rises(family, checkpoints):
    model = _copy_model(checkpoints[family + "-mha"])
    rng = random.Random(0)
    key, value = 7, 9
    context, evidence = [], []
    for i in range(60):  # repeated-key context: "key value" every sixth pair, random filler elsewhere
        if i % 6 == 2:
            context += [key, value]
            evidence.append(len(context) - 1)
        else:
            context += [rng.randrange(100, 200), rng.randrange(100, 200)]
    before = _state(model)
    d = diagnose(model, context + [key], evidence, [value], QTTTConfig(steps=32, span=16, lr=1e-2),
                 context_len=len(context))
    assert d.after.mass > d.before.mass + 0.05, d.summary()
    assert d.after.margin > d.before.margin
    assert len(d.before.mass_per_layer) == len(model.query_weights())
    _assert_same(model, before)


def test_probe_mass_counts_exactly_the_visible_slots(model):
    T = len(PROMPT)
    cache = _prefilled(model, PROMPT, extra=2)
    copy = _cache_copy(cache, T)
    n_attn = len(model.query_weights())
    chunk = getattr(model.cfg, "attention_chunk_size", None)
    if not isinstance(cache, KVCache):  # Griffin: every attention layer sees its window only
        visible, local = model.cfg.attention_window_size, [True] * n_attn
    elif chunk:  # Llama 4: chunked layers see the last chunk only, NoPE layers everything
        visible, local = T - (T - 1) // chunk * chunk, [t == "chunked_attention" for t in model.cfg.layer_types]
    else:
        visible, local = 16, [False] * n_attn
    recent = probe_answer(model, cache, PROMPT, range(T - visible, T), [65])
    older = probe_answer(model, cache, PROMPT, range(0, T - visible), [65])
    for r, o, is_local in zip(recent.mass_per_layer, older.mass_per_layer, local, strict=True):
        assert r + o == pytest.approx(1.0, abs=1e-5)  # step 0 sees prompt slots only: a distribution over them
        if is_local:
            assert o == 0.0 and r == pytest.approx(1.0, abs=1e-5)
    every = probe_answer(model, cache, PROMPT, range(T), [65, 66])
    assert 0 < every.mass < 1  # step 1 (the appended answer token) also attends to itself
    _assert_cache_same(cache, copy, T)


def test_attention_probs_match_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, T, 8, generator=g) for n, T in ((4, 5), (2, 9), (2, 9)))
    mask = torch.rand(1, 1, 5, 9, generator=g) > 0.3
    mask[..., 0] = True
    for m, causal in ((mask, False), (None, False)):
        probs = attention_probs(q, k, m, causal, None)
        out = probs @ v.repeat_interleave(2, dim=1)
        assert torch.allclose(out, model_layers.attend(q, k, v, m, causal, None), atol=1e-5)
    qs = torch.randn(1, 4, 9, 8, generator=g)
    out = attention_probs(qs, k, None, True, 0.3) @ v.repeat_interleave(2, dim=1)
    assert torch.allclose(out, model_layers.attend(qs, k, v, None, True, 0.3), atol=1e-5)


def test_probe_sees_every_layer_and_unwraps(model):
    seen = []
    original = model_layers.attend
    with attention_probe(lambda q, k, mask, causal, scale: seen.append(k.shape[2])), torch.no_grad():
        model(torch.tensor([PROMPT[:20]]))
    assert seen == [20] * len(model.query_weights())  # one probe call per attention layer
    assert model_layers.attend is original


def test_char_spans_to_tokens(tmp_path):
    from ctxlab.tokenizer import Tokenizer
    from ctxlab.train.scratch import build_checkpoint

    tok = Tokenizer.from_dir(build_checkpoint(tmp_path / "ck", max_len=512))
    text = "Account A sends 120 to account B. The key is 7f3a and the value is 1942. Done."
    s = text.index("1942")
    ids = tok.encode(text, add_special_tokens=False)
    pos = char_spans_to_tokens(lambda t: tok.encode(t, add_special_tokens=False), text, [(s, s + 4)], offset=3)
    assert "1942" in tok.decode([ids[p - 3] for p in pos]).strip()
    assert len(pos) <= 3


# ------------------------------------------------------------------------------------- strategies and the CLI


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    from ctxlab.tokenizer import Tokenizer
    from ctxlab.train.scratch import build_checkpoint

    path = build_checkpoint(tmp_path_factory.mktemp("scratch") / "ck", max_len=2048)
    return path, load_model(path).model, Tokenizer.from_dir(path)


CONTEXT = "The key is 7f3a and the value is 1942.\n" + "Account A sends 120 to account B.\n" * 8


def test_strategies_account_flops(scratch):
    from ctxlab.strategies import LM, QTTT, InContext, Prompt, Request, SelfConsistency, Thinking

    _, model, tok = scratch
    lm = LM(model, tok)
    cost = ArchCost.from_config(model.cfg)
    prompt = Prompt(CONTEXT, "What is the value for key 7f3a?")

    r = InContext().run(lm, Request(prompt, max_new_tokens=6))
    T = r.diagnostics["prompt_tokens"]
    fed = r.diagnostics["generated_tokens"] - (r.diagnostics["generated_tokens"] == 6)
    assert r.flops == cost.prefill(T) + cost.decode(T, fed) and r.wall_s > 0

    r = Thinking(think_tokens=12).run(lm, Request(prompt, max_new_tokens=4))
    assert r.diagnostics["format"] == "template" and r.diagnostics["think_tokens"] <= 12
    assert "</think>" in r.generation  # closed by the model or forced when the budget ran out
    if r.diagnostics["forced"]:
        assert "</think>\n\nFinal:" in r.generation

    r = SelfConsistency(think_tokens=24, samples=3).run(lm, Request(prompt, max_new_tokens=4, parse=lambda s: "X"))
    assert r.diagnostics["winner"] == "X" and r.diagnostics["votes"] == {"X": 3}
    assert r.diagnostics["per_sample_budget"] == 8

    budget = 64
    r = QTTT(think_tokens=budget, span=16, lr=1e-3).run(lm, Request(prompt, max_new_tokens=4))
    T = r.diagnostics["prompt_tokens"]
    assert r.diagnostics["N"] == cost.match(T, budget, 16)[1] == len(r.diagnostics["losses"])
    assert cost.qttt(T, 16, r.diagnostics["N"]) <= cost.think(T, budget)  # never more than the matched budget
    enc = lm.encode(prompt, thinking=False)
    assert r.diagnostics["context_tokens"] == enc.context_len < T
    assert r.flops == r.diagnostics["flops_parts"]["total"]
    r = QTTT(think_tokens=budget, span=16, matching="paper").run(lm, Request(prompt, max_new_tokens=2))
    assert r.diagnostics["N"] == PaperCost.from_config(model.cfg).match(T, budget, 16)[1]


def test_strategy_probe_matches_a_direct_probe(scratch):
    """An AnswerProbe on a request measures what probe_answer measures on the same prompt (in-context: with the
    model's weights; qTTT with zero steps: the same weights, so the same numbers), and costs no FLOPs."""
    from ctxlab.strategies import LM, QTTT, AnswerProbe, InContext, Prompt, Request
    from ctxlab.strategies.diagnostics import probe_answer

    _, model, tok = scratch
    lm = LM(model, tok)
    prompt = Prompt(CONTEXT, "What is the value for key 7f3a?")
    ids = lm.encode(prompt, thinking=False).ids
    answer = tuple(lm.encode_plain(" 1942"))
    probe = AnswerProbe(evidence=(3, 4, 5), answer=answer)
    plain = InContext().run(lm, Request(prompt, max_new_tokens=3))
    r = InContext().run(lm, Request(prompt, max_new_tokens=3, probe=probe))
    assert r.probe is not None and r.flops == plain.flops and r.generation == plain.generation
    cache = model.new_cache(1, len(ids) + len(answer))
    with torch.no_grad():
        model(torch.tensor([ids]), cache)
    want = probe_answer(model, cache, ids, probe.evidence, probe.answer)
    assert r.probe.mass == pytest.approx(want.mass, abs=1e-6) and r.probe.margin == pytest.approx(want.margin, abs=1e-5)
    q = QTTT(steps=0, span=16).run(lm, Request(prompt, max_new_tokens=3, probe=probe))
    assert q.probe.mass == pytest.approx(want.mass, abs=1e-6)


def test_answer_text():
    from ctxlab.strategies.base import default_parse
    from ctxlab.tasks.format import answer_text

    assert answer_text("<think>so Final: 7?</think>\n\nFinal: 42\nmore") == "42\nmore"
    assert default_parse(answer_text("<think>so Final: 7?</think>\n\nFinal: 42\nmore")) == "42"
    assert answer_text("step 1\nfinal: NEGATIVE_BAL TX0042") == "NEGATIVE_BAL TX0042"
    assert answer_text(" plain ") == "plain"


def test_scratchpad_thinking_without_template(scratch):
    from ctxlab.strategies import LM, Prompt, Request, Thinking

    path, model, tok = scratch
    for lm in (LM(model, tok, chat=False), LM(model, _no_template(path))):  # raw text, or a base model's tokenizer
        r = Thinking(think_tokens=6).run(lm, Request(Prompt(CONTEXT, "What is the value?"), max_new_tokens=3))
        assert r.diagnostics["format"] == "scratchpad" and "Final:" in r.generation


def _no_template(path):
    from ctxlab.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(path)
    tok.chat_template = None  # a base model: no chat template → scratchpad prompt with a "Final:" marker
    return tok


def test_run_ttt_cli(scratch):
    from ctxlab.commands.ttt import answer_with_qttt

    path, _, _ = scratch
    out = io.StringIO()
    rep = answer_with_qttt(str(path), CONTEXT, "What is the value for key 7f3a?", steps=3, span=16, lr=1e-3,
                      max_new_tokens=4, out=out)
    text = out.getvalue()
    assert "span loss" in text and "thinking tokens" in text and rep["steps"] == 3
    assert rep["matched_thinking_tokens"] > 0 and rep["flops"]["total"] > rep["flops"]["prefill"]
    with pytest.raises(CtxlabError, match="steps"):
        answer_with_qttt("/nonexistent/model", CONTEXT, "q?", steps=-1)  # validated before loading


class ByteTokenizer:
    """Bytes as token ids (the tiny HF models' 256-token vocabulary); no chat template → scratchpad thinking."""

    has_chat_template = False
    eos_token_ids = ()

    def encode(self, text, add_special_tokens=True):
        return list(text.encode())

    def decode(self, ids, skip_special_tokens=False):
        return bytes(ids).decode(errors="replace")


@pytest.mark.parametrize("family", ["llama4_text", "recurrent_gemma"])
def test_strategies_on_other_families(family, checkpoints):
    from ctxlab.strategies import LM, QTTT, AnswerProbe, Prompt, Request, SelfConsistency, Thinking

    model = load_model(checkpoints[family]).model
    lm, prompt = LM(model, ByteTokenizer()), Prompt(TEXT, "What did the keeper polish?")
    r = SelfConsistency(think_tokens=8, samples=2).run(lm, Request(prompt, max_new_tokens=3))
    assert r.diagnostics["format"] == "scratchpad" and len(r.diagnostics["answers"]) == 2 and r.flops > 0
    before = _state(model)
    r = QTTT(think_tokens=32, span=8, lr=1e-2).run(lm, Request(prompt, max_new_tokens=3))
    assert r.diagnostics["N"] == 2 and r.diagnostics["context_tokens"] == len(TEXT.encode())
    _assert_same(model, before)
    probe = AnswerProbe(evidence=(1, 2), answer=tuple(b" tiles"), marker=tuple(b"Final:"), marker_tail=(32,))
    r = Thinking(think_tokens=4).run(lm, Request(prompt, max_new_tokens=2, probe=probe))  # rewinds past thinking
    assert r.probe is not None and 0 <= r.probe.mass <= 1


def test_inference_mode_caches_are_refused_and_callers_in_inference_mode_work(model):
    with torch.inference_mode():
        cache = model.new_cache(1, len(PROMPT) + 4, rewindable=True)  # inference tensors: autograd cannot save them
        model(torch.tensor([PROMPT]), cache)
        with pytest.raises(CtxlabError, match="inference_mode"):
            adapt(model, cache, PROMPT, FAST)
        res = qttt_answer(model, PROMPT, FAST, max_new_tokens=3)  # makes its own (normal) cache
    assert len(res.report.losses) == FAST.steps
    cache = model.new_cache(1, len(PROMPT) + 4, rewindable=True)
    with torch.inference_mode():
        model(torch.tensor([PROMPT]), cache)
        if isinstance(cache, KVCache):  # preallocated buffers written in place stay normal tensors: fine
            with adapted(model, cache, PROMPT, FAST) as r:
                assert len(r.losses) == FAST.steps
        else:  # Griffin replaces its state tensors: they become inference tensors → the clear error
            with pytest.raises(CtxlabError, match="inference_mode"):
                adapt(model, cache, PROMPT, FAST)

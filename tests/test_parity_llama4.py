"""Llama 4 text model vs transformers (Llama4ForCausalLM) on tiny random configs, fp32; loading, config, counts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from ctxlab.errors import CtxlabError
from ctxlab.models import model_class
from ctxlab.models.llama4 import Llama4Config, Llama4Model, parameter_counts
from ctxlab.models.loading import load_model, save_model
from tests.hf_utils import randomize

TOL = 1e-4
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
# architectures.md §E: chunk 8 and floor_scale 4, so chunking and temperature tuning both fire at T ≈ 24.
TINY = dict(
    vocab_size=256, hidden_size=64, intermediate_size=32, intermediate_size_mlp=48, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=1,
    interleave_moe_layer_step=2, no_rope_layer_interval=4, attention_chunk_size=8, floor_scale=4, attn_scale=0.1,
    attn_temperature_tuning=True, use_qk_norm=True, rope_theta=5e5, rms_norm_eps=1e-5, max_position_embeddings=128,
    tie_word_embeddings=False, pad_token_id=None, bos_token_id=1, eos_token_id=2,
)
CASES = {
    "top1-step2-qknorm": {},  # layers 1, 3 MoE; layer 3 NoPE
    "top2-step1-llama3": {"num_experts_per_tok": 2, "interleave_moe_layer_step": 1, "rope_scaling": dict(LLAMA3)},
    "top1-step1-noqknorm-nope2": {"interleave_moe_layer_step": 1, "use_qk_norm": False, "no_rope_layer_interval": 2},
}


def _ids(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


def make_hf(seed: int = 0, **overrides):
    import transformers as tf

    cfg = tf.Llama4TextConfig(**{**TINY, **overrides})  # note: transformers mutates a passed rope_scaling dict
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = tf.Llama4ForCausalLM(cfg).eval()
    randomize(model, seed)
    return model


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def pair(request, tmp_path_factory):
    hf = make_hf(**CASES[request.param])
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path / "hf", safe_serialization=True)
    ours = load_model(path / "hf").model
    return hf, ours, path


def test_logits_match(pair):
    hf, ours, _ = pair
    ids = _ids(2, 24)
    with torch.no_grad():
        ref = hf(ids).logits
        got, _ = ours(ids)
    print(f"max |ctxlab - HF| = {_diff(got, ref):.2e}")
    assert ref.abs().max() > 0.5  # logits are O(1): the tolerance means something
    assert _diff(got, ref) <= TOL


def test_cached_decode_across_chunks_equals_full_forward(pair):
    _, ours, _ = pair
    ids = _ids(2, 28)
    with torch.no_grad():
        full, _ = ours(ids)
        cache = ours.new_cache(2, 32)
        out, cache = ours(ids[:, :5], cache)
        steps = [out]
        for t in range(5, 12):  # single tokens across the first chunk boundary (8)
            out, cache = ours(ids[:, t : t + 1], cache)
            steps.append(out)
        out, cache = ours(ids[:, 12:19], cache)  # a block straddling the boundary at 16
        steps.append(out)
        for t in range(19, 28):  # … and 24
            out, cache = ours(ids[:, t : t + 1], cache)
            steps.append(out)
    assert cache.length == 28
    assert _diff(torch.cat(steps, 1), full) <= TOL


def test_frozen_pass_reads_cache_and_writes_nothing(pair):
    _, ours, _ = pair
    ids = _ids(2, 24, seed=3)
    with torch.no_grad():
        cache = ours.new_cache(2, 32)
        full, cache = ours(ids, cache)
        k0 = [k.clone() for k in cache.k]
        frozen, _ = ours(ids[:, 6:20], cache, start=6, frozen=True)
    assert cache.length == 24 and all(torch.equal(a, b) for a, b in zip(k0, cache.k, strict=True))
    assert _diff(frozen, full[:, 6:20]) <= TOL


def test_left_padded_batch_equals_single_prompts(pair):
    _, ours, _ = pair
    lens = [20, 13, 7]
    prompts = [_ids(1, n, seed=10 + i)[0] for i, n in enumerate(lens)]
    T = max(lens)
    ids = torch.zeros(len(lens), T, dtype=torch.long)
    valid = torch.zeros(len(lens), T, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = p
        valid[i, T - len(p) :] = True
    with torch.no_grad():
        cache = ours.new_cache(len(lens), T + 8)
        batched, cache = ours(ids, cache, valid)
        frozen, _ = ours(ids, cache, start=0, frozen=True)
        nxt = torch.randint(0, 256, (len(lens), 1), generator=torch.Generator().manual_seed(5))
        step, _ = ours(nxt, cache)
        for i, p in enumerate(prompts):
            single, c1 = ours(p[None], ours.new_cache(1, T + 8))
            assert _diff(batched[i, T - len(p) :], single[0]) <= TOL
            assert _diff(frozen[i, T - len(p) :], single[0]) <= TOL
            one, _ = ours(nxt[i : i + 1], c1)
            assert _diff(step[i], one[0]) <= TOL


def test_save_then_transformers_load(pair):
    import transformers as tf

    hf, ours, path = pair
    save_model(ours, path / "ours")
    back = tf.Llama4ForCausalLM.from_pretrained(path / "ours", dtype=torch.float32).eval()
    for key in ("moe_layers", "no_rope_layers", "layer_types", "num_experts_per_tok", "use_qk_norm", "rope_parameters"):
        assert getattr(back.config, key) == getattr(hf.config, key), key
    ids = _ids(2, 20)
    with torch.no_grad():
        assert _diff(back(ids).logits, hf(ids).logits) <= TOL
        assert torch.equal(load_model(path / "ours").model(ids)[0], ours(ids)[0])


def test_query_weights_cover_every_layer(pair):
    _, ours, _ = pair
    qw = ours.query_weights()
    assert len(qw) == ours.cfg.num_layers == 4
    assert 0 in ours.cfg.no_rope_layers  # a NoPE layer is among them
    assert all(w is b.attn.wq.weight for w, b in zip(qw, ours.blocks, strict=True))


# ----------------------------------------------------------------------------------------- checkpoint layouts


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    hf = make_hf()
    path = tmp_path_factory.mktemp("base") / "hf"
    hf.save_pretrained(path, safe_serialization=True)
    return hf, path


def _rewrite(src, dst, tensors: dict, config: dict) -> None:
    dst.mkdir(parents=True)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(config))


def test_multimodal_checkpoint_loads_text_model_with_notice(base_ckpt, tmp_path):
    hf, src = base_ckpt
    tensors = {f"language_model.{k}": v for k, v in load_file(str(src / "model.safetensors")).items()}
    tensors["vision_model.x.weight"] = torch.randn(3, 4)
    tensors["multi_modal_projector.linear_1.weight"] = torch.randn(64, 8)
    text_cfg = json.loads((src / "config.json").read_text())
    mm_cfg = {"model_type": "llama4", "architectures": ["Llama4ForConditionalGeneration"],
              "text_config": text_cfg, "vision_config": {"hidden_size": 8}}
    _rewrite(src, tmp_path / "mm", tensors, mm_cfg)
    loaded = load_model(tmp_path / "mm")
    assert isinstance(loaded.model, Llama4Model)
    print(loaded.notices)
    assert any("vision_model" in n for n in loaded.notices)
    assert any("multi_modal_projector" in n for n in loaded.notices)
    ids = _ids(2, 20)
    with torch.no_grad():
        assert _diff(loaded.model(ids)[0], hf(ids).logits) <= TOL
    assert "_multimodal" not in loaded.model.cfg.to_hf_config()


def test_weight_accounting_is_strict(base_ckpt, tmp_path):
    _, src = base_ckpt
    tensors = load_file(str(src / "model.safetensors"))
    cfg = json.loads((src / "config.json").read_text())
    extra = dict(tensors)
    extra["model.layers.0.feed_forward.router.weight"] = torch.randn(4, 64)  # layer 0 is dense
    _rewrite(src, tmp_path / "extra", extra, cfg)
    with pytest.raises(CtxlabError, match="unexpected tensors.*layers.0.feed_forward.router"):
        load_model(tmp_path / "extra")
    missing = {k: v for k, v in tensors.items() if k != "model.layers.1.feed_forward.experts.down_proj"}
    _rewrite(src, tmp_path / "missing", missing, cfg)
    with pytest.raises(CtxlabError, match="missing tensors.*blocks.1.ffn.experts.w_down"):
        load_model(tmp_path / "missing")


# ------------------------------------------------------------------------------------------------ config


def _hf_dict(**overrides) -> dict:
    return {**{k: v for k, v in TINY.items() if k != "rope_theta"}, "model_type": "llama4_text", **overrides}


def test_config_rope_formats_and_legacy_values():
    v4 = Llama4Config.from_hf_config(_hf_dict(rope_theta=5e5, rope_scaling=dict(LLAMA3), attn_temperature_tuning=4,
                                              no_rope_layers=[]))
    v5 = Llama4Config.from_hf_config(_hf_dict(rope_parameters={**LLAMA3, "rope_theta": 5e5}))
    assert v4 == v5
    assert v4.attn_temperature_tuning is True and v4.rope_theta == 5e5 and v4.rope_scaling["factor"] == 8.0
    assert v4.no_rope_layers == (1, 1, 1, 0) and v4.moe_layers == (1, 3)
    assert v4.layer_types == ("chunked_attention",) * 3 + ("full_attention",)
    assert Llama4Config.from_hf_config(_hf_dict()).rope_theta == 5e5  # Llama 4's default θ, not Llama's 1e4
    no_chunk = Llama4Config.from_hf_config(_hf_dict(attention_chunk_size=None))
    assert no_chunk.attention_chunk_size is None and set(no_chunk.layer_types) == {"full_attention"}
    assert model_class("llama4") is model_class("llama4_text") is Llama4Model
    with pytest.raises(CtxlabError, match="num_experts_per_tok"):
        Llama4Config.from_hf_config(_hf_dict(num_experts_per_tok=5))


def test_to_hf_config_loads_in_transformers():
    import transformers as tf

    cfg = Llama4Config.from_hf_config(_hf_dict(rope_theta=5e5, rope_scaling=dict(LLAMA3), interleave_moe_layer_step=1))
    d = cfg.to_hf_config()
    assert d["model_type"] == "llama4_text" and d["architectures"] == ["Llama4ForCausalLM"]
    hf = tf.Llama4TextConfig.from_dict(json.loads(json.dumps(d)))
    assert hf.moe_layers == [0, 1, 2, 3] and hf.no_rope_layers == [1, 1, 1, 0]
    assert hf.rope_parameters["rope_type"] == "llama3" and hf.rope_parameters["rope_theta"] == 5e5
    assert Llama4Config.from_hf_config(hf.to_dict()) == cfg


# ------------------------------------------------------------------------------------------ parameter counts


def test_parameter_counts_tiny_by_hand():
    cfg = Llama4Config.from_hf_config(_hf_dict())  # layers 1, 3 MoE (4 experts, top-1); 0, 2 dense
    model = Llama4Model(cfg)
    total, active = parameter_counts(cfg)
    assert total == sum(p.numel() for p in model.parameters())
    assert model.active_parameters() == active
    emb = head = 256 * 64
    attn = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 2 * 64  # q, k, v, o + the two norms
    dense = 3 * 64 * 48
    moe_active = 4 * 64 + 3 * 64 * 32 + 1 * 3 * 64 * 32  # router + shared + one routed expert
    assert active == emb + head + 64 + 4 * attn + 2 * dense + 2 * moe_active
    assert total - active == 2 * 3 * (3 * 64 * 32)  # the 3 unused experts in each of the 2 MoE layers


def _published(**overrides) -> dict:  # architectures.md §C (text config; RoPE scaling does not change counts)
    return {"model_type": "llama4_text", "vocab_size": 202048, "hidden_size": 5120, "intermediate_size": 8192,
            "intermediate_size_mlp": 16384, "num_hidden_layers": 48, "num_attention_heads": 40,
            "num_key_value_heads": 8, "head_dim": 128, "num_experts_per_tok": 1, "rope_theta": 500000.0,
            "attention_chunk_size": 8192, "attn_temperature_tuning": 4, "tie_word_embeddings": False, **overrides}


def test_parameter_counts_match_published_scout_and_maverick():
    scout = Llama4Config.from_hf_config(_published(num_local_experts=16, interleave_moe_layer_step=1))
    maverick = Llama4Config.from_hf_config(
        _published(num_local_experts=128, interleave_moe_layer_step=2, use_qk_norm=False)
    )
    assert parameter_counts(scout) == (107_769_861_120, 17_172_894_720)
    assert parameter_counts(maverick) == (400_711_848_960, 17_184_691_200)
    assert len(maverick.moe_layers) == 24 and maverick.moe_layers[:2] == (1, 3)
    assert scout.no_rope_layers.count(0) == 12

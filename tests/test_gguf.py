"""GGUF checkpoints: config from metadata, every supported tensor type, the converter's transforms undone, tokenizers
equal to transformers' GGUF tokenizers, `ctxlab convert` round trips, and one-line errors on bad files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from ctxlab.errors import CtxlabError
from ctxlab.gguf_file import open_gguf
from ctxlab.models.gguf import SUPPORTED_TYPES
from ctxlab.models.loading import load_model
from ctxlab.tokenizer import Tokenizer
from tests.gguf_utils import gpt2_vocab, rewrite_gguf, spm_vocab, torch_ids, write_gguf
from tests.hf_utils import randomize

TOL = 1e-4
TEXT = "hello the  a\nthe ab — naïve Straße Москва 東京 🦊 <think> x<|im_end|>"


def tiny_hf(family: str, seed: int = 0, **overrides):
    import transformers as tf

    base = dict(vocab_size=len(gpt2_vocab()[0]), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=128,
                tie_word_embeddings=False)
    kinds = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(rope_theta=5e4)),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, dict(head_dim=128, rope_theta=1e6, tie_word_embeddings=True)),
        "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM, dict(vocab_size=len(spm_vocab()[0]), head_dim=32,
                                                            hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True)),
        "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, dict(
            vocab_size=len(spm_vocab()[0]), num_hidden_layers=6, num_attention_heads=2, num_key_value_heads=1,
            head_dim=256, query_pre_attn_scalar=256, sliding_window=8, tie_word_embeddings=True,
            hidden_activation="gelu_pytorch_tanh",
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})),
    }
    cfg_cls, model_cls, extra = kinds[family]
    cfg = cfg_cls(**{**base, **extra, **overrides})
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    randomize(model, seed)
    return model


ARCH = {"llama": "llama", "qwen3": "qwen3", "gemma": "gemma", "gemma3": "gemma3"}
TOKENIZER = {"llama": "gpt2", "qwen3": "gpt2", "gemma": "spm", "gemma3": "spm"}


@pytest.fixture(scope="module", params=list(ARCH))
def f32_pair(request, tmp_path_factory):
    family = request.param
    hf = tiny_hf(family)
    path = write_gguf(hf, tmp_path_factory.mktemp(family) / "m.gguf", ARCH[family], tokenizer=TOKENIZER[family])
    return family, hf, path


def test_f32_gguf_equals_the_original_model(f32_pair):
    """The converter's transforms (q/k permutation, 1 + w norms) are undone: logits equal the HF model's."""
    family, hf, path = f32_pair
    ours = load_model(path).model
    ids = torch_ids(2, 20, hf.config.vocab_size)
    with torch.no_grad():
        assert (ours(ids)[0] - hf(ids).logits).abs().max().item() <= TOL


def test_f32_gguf_config_from_metadata(f32_pair):
    family, hf, path = f32_pair
    cfg = load_model(path).model.cfg
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (
        hf.config.num_hidden_layers, hf.config.hidden_size, hf.config.num_attention_heads,
        hf.config.num_key_value_heads)
    assert cfg.tie_word_embeddings == hf.config.tie_word_embeddings
    if family == "gemma3":
        assert cfg.layer_types == tuple(hf.config.layer_types) and cfg.sliding_window == 8


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
def test_gguf_matches_transformers_gguf_loader(family, tmp_path):
    """Same GGUF bytes through transformers' GGUF loader and ours (transformers has no Gemma 1 GGUF support and
    reads Qwen3's head_dim as its 128 default, so the Qwen3 fixture uses 128)."""
    import transformers as tf

    hf = tiny_hf(family)
    path = write_gguf(hf, tmp_path / "m.gguf", ARCH[family], tokenizer=TOKENIZER[family])
    ref = tf.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    ours = load_model(path).model
    ids = torch_ids(1, 24, hf.config.vocab_size)
    with torch.no_grad():
        assert (ours(ids)[0] - ref(ids).logits).abs().max().item() <= TOL


def test_every_supported_tensor_type_dequantizes_like_transformers(tmp_path):
    """One tensor per type (K-quants as random valid blocks): our logits equal transformers' on the same file."""
    import transformers as tf

    hf = tiny_hf("llama", hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=4,
                 num_hidden_layers=2)
    slots = ["token_embd.weight", "output.weight"] + [f"blk.{i}.{n}" for i in range(2) for n in (
        "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight", "ffn_gate.weight", "ffn_up.weight",
        "ffn_down.weight")]
    types = dict(zip(slots, [t for t in SUPPORTED_TYPES if t != "F32"] * 2, strict=False))
    assert set(types.values()) == set(SUPPORTED_TYPES) - {"F32"}
    path = write_gguf(hf, tmp_path / "q.gguf", "llama", types=types)
    assert {t.tensor_type.name for t in open_gguf(path).tensors.values()} == set(SUPPORTED_TYPES)
    ref = tf.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q.gguf", dtype=torch.float32).eval()
    ours = load_model(path).model
    ids = torch_ids(1, 16, hf.config.vocab_size)
    with torch.no_grad():
        a, b = ours(ids)[0], ref(ids).logits
    assert torch.isfinite(a).all() and (a - b).abs().max().item() <= TOL * max(1.0, b.abs().max().item())


def test_bf16_target_dtype(f32_pair):
    family, hf, path = f32_pair
    m = load_model(path, dtype="bfloat16").model
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_tokenizer_equals_transformers_gguf_tokenizer(family, tmp_path):
    import transformers as tf

    hf = tiny_hf(family)
    path = write_gguf(hf, tmp_path / "t.gguf", ARCH[family], tokenizer=TOKENIZER[family])
    ref = tf.AutoTokenizer.from_pretrained(tmp_path, gguf_file="t.gguf")
    ours = Tokenizer.from_dir(path)
    for text in (TEXT, " hello", "  ab", "", "\n\nhell"):
        ids = ref(text)["input_ids"]
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == ref.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
    assert (ours.bos_id, ours.eos_token_ids[0], ours.pad_id) == (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)
    if family == "llama":
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
        assert ours.apply_chat_template(msgs) == ref.apply_chat_template(msgs, tokenize=False,
                                                                          add_generation_prompt=True)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_convert_writes_a_directory_transformers_loads(family, tmp_path):
    import transformers as tf

    hf = tiny_hf(family)
    path = write_gguf(hf, tmp_path / "c.gguf", ARCH[family], tokenizer=TOKENIZER[family])
    out = tmp_path / "hf-out"
    r = subprocess.run([sys.executable, "-m", "ctxlab", "convert", str(path), str(out)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    back = tf.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch_ids(1, 20, hf.config.vocab_size)
    with torch.no_grad():
        assert (back(ids).logits - load_model(path).model(ids)[0]).abs().max().item() <= TOL
    tok = tf.AutoTokenizer.from_pretrained(out)
    ours = Tokenizer.from_dir(path)
    assert tok(TEXT)["input_ids"] == ours.encode(TEXT)
    assert Tokenizer.from_dir(out).encode(TEXT) == ours.encode(TEXT)


def test_llama3_rope_freqs_tensor_becomes_rope_scaling(tmp_path):
    from ctxlab.models.layers import rope_inv_freq

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    hf = tiny_hf("llama", rope_parameters={"rope_theta": 5e5, **scaling}, max_position_embeddings=131072)
    path = tmp_path / "r.gguf"
    write_gguf(hf, path, "llama")  # llama.cpp writes llama3 scaling as a rope_freqs tensor: add it
    freqs = (rope_inv_freq(16, 5e5) / rope_inv_freq(16, 5e5, scaling)).numpy().astype(np.float32)
    rewrite_gguf(path, tmp_path / "r3.gguf", add={"rope_freqs.weight": freqs})
    cfg = load_model(tmp_path / "r3.gguf").model.cfg
    assert cfg.rope_scaling == scaling
    ids = torch_ids(1, 12, hf.config.vocab_size)
    with torch.no_grad():
        assert (load_model(tmp_path / "r3.gguf").model(ids)[0] - hf(ids).logits).abs().max().item() <= TOL


# ------------------------------------------------------------------------------------------- bad input


def _ctxlab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctxlab", *args], capture_output=True, text=True)


def _one_line_error(r: subprocess.CompletedProcess, pattern: str) -> None:
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert pattern in lines[0], lines[0]


@pytest.fixture(scope="module")
def good_gguf(tmp_path_factory):
    return write_gguf(tiny_hf("llama"), tmp_path_factory.mktemp("good") / "good.gguf", "llama")


def test_truncated_gguf(good_gguf, tmp_path):
    bad = tmp_path / "trunc.gguf"
    bad.write_bytes(good_gguf.read_bytes()[: good_gguf.stat().st_size // 2])
    _one_line_error(_ctxlab("info", str(bad)), "truncated")
    head = tmp_path / "head.gguf"
    head.write_bytes(good_gguf.read_bytes()[:100])  # cut inside the metadata
    _one_line_error(_ctxlab("info", str(head)), "corrupt or truncated GGUF")


def test_garbage_gguf(tmp_path):
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _one_line_error(_ctxlab("generate", str(bad), "--prompt", "x"), "not a GGUF file")


def test_unsupported_architecture(tmp_path):
    path = write_gguf(tiny_hf("llama"), tmp_path / "rwkv.gguf", "rwkv6")
    _one_line_error(_ctxlab("info", str(path)), "unsupported GGUF architecture 'rwkv6'")
    assert "supported: gemma, gemma3, llama, qwen3" in _ctxlab("info", str(path)).stderr


def test_unsupported_tensor_type(tmp_path):
    import gguf

    hf = tiny_hf("llama")
    path = write_gguf(hf, tmp_path / "iq.gguf", "llama")
    v = np.zeros(tuple(hf.model.layers[0].self_attn.v_proj.weight.shape), dtype=np.int8)
    rewrite_gguf(path, tmp_path / "i8.gguf", replace={"blk.0.attn_v.weight": (v, gguf.GGMLQuantizationType.I8)})
    _one_line_error(_ctxlab("generate", str(tmp_path / "i8.gguf"), "--prompt", "x"), "has type I8")


def test_metadata_contradicting_tensor_shapes(tmp_path):
    path = write_gguf(tiny_hf("llama"), tmp_path / "lie.gguf", "llama",
                      meta={"llama.feed_forward_length": ("uint32", 96)})
    _one_line_error(_ctxlab("generate", str(path), "--prompt", "x"), "shape mismatch for blk.0.ffn_gate.weight")
    missing = write_gguf(tiny_hf("llama"), tmp_path / "miss.gguf", "llama", drop=("blk.1.ffn_up.weight",))
    _one_line_error(_ctxlab("generate", str(missing), "--prompt", "x"), "missing tensors in checkpoint")


def test_missing_gguf_path():
    _one_line_error(_ctxlab("info", "/nonexistent/model.gguf"), "GGUF file not found")


def test_open_gguf_on_a_directory(tmp_path):
    with pytest.raises(CtxlabError, match="not a file"):
        open_gguf(tmp_path)

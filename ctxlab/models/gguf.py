"""GGUF checkpoints (llama.cpp, Ollama, LM Studio) as a first-class format: config, weights and tokenizer metadata.

A GGUF file carries its config as `<arch>.*` metadata keys and its weights under llama.cpp's tensor names, some
transformed by llama.cpp's converter. This module turns both into the Hugging Face form the model files already
declare (`from_hf_config`, `hf_weight_map`), so loading goes through the same strict accounting as safetensors:
    GGUF metadata  → HF config dict (`hf_config`)          → ModelConfig.from_hf_config
    GGUF tensors   → dequantized, un-transformed, HF names → model.hf_weight_map → parameters
Reading uses the `gguf` package (GGUFReader over a memory map; `gguf.quants.dequantize` for every block format).

What llama.cpp's converter changes, and we undo (per architecture, declared in `ARCHS`):
- llama: q_proj/k_proj rows are permuted from HF's rotate-half RoPE layout to GGML's interleaved one;
- gemma, gemma3: RMSNorm weights are stored as 1 + w (GGML multiplies by the weight; HF's Gemma norms use 1 + w);
- llama 3.1+: llama3 RoPE scaling is stored as a `rope_freqs` tensor of per-frequency divisors, not as metadata.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ctxlab.errors import CtxlabError
from ctxlab.gguf_file import GGUFFile

# Tensor types we read (everything `gguf.quants` dequantizes that llama.cpp writes for these models' weights).
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                   "Q6_K")

_LLAMA_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{}.attn_norm.weight": "model.layers.{}.input_layernorm.weight",
    "blk.{}.attn_q.weight": "model.layers.{}.self_attn.q_proj.weight",
    "blk.{}.attn_k.weight": "model.layers.{}.self_attn.k_proj.weight",
    "blk.{}.attn_v.weight": "model.layers.{}.self_attn.v_proj.weight",
    "blk.{}.attn_output.weight": "model.layers.{}.self_attn.o_proj.weight",
    "blk.{}.attn_q.bias": "model.layers.{}.self_attn.q_proj.bias",
    "blk.{}.attn_k.bias": "model.layers.{}.self_attn.k_proj.bias",
    "blk.{}.attn_v.bias": "model.layers.{}.self_attn.v_proj.bias",
    "blk.{}.ffn_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
    "blk.{}.ffn_gate.weight": "model.layers.{}.mlp.gate_proj.weight",
    "blk.{}.ffn_up.weight": "model.layers.{}.mlp.up_proj.weight",
    "blk.{}.ffn_down.weight": "model.layers.{}.mlp.down_proj.weight",
}
_QK_NORM_NAMES = {
    "blk.{}.attn_q_norm.weight": "model.layers.{}.self_attn.q_norm.weight",
    "blk.{}.attn_k_norm.weight": "model.layers.{}.self_attn.k_norm.weight",
}
_GEMMA3_NAMES = {
    **_LLAMA_NAMES,
    **_QK_NORM_NAMES,
    "blk.{}.post_attention_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
    "blk.{}.ffn_norm.weight": "model.layers.{}.pre_feedforward_layernorm.weight",
    "blk.{}.post_ffw_norm.weight": "model.layers.{}.post_feedforward_layernorm.weight",
}


@dataclass(frozen=True)
class Arch:
    """How one llama.cpp architecture maps to an HF model_type: tensor names and the converter's transforms."""

    model_type: str
    names: dict[str, str]
    permute_qk: bool = False  # undo the rotate-half → interleaved row permutation of q/k (llama only)
    norm_offset: bool = False  # norms stored as 1 + w
    hf_defaults: dict[str, Any] = field(default_factory=dict)


ARCHS: dict[str, Arch] = {
    "llama": Arch("llama", _LLAMA_NAMES, permute_qk=True, hf_defaults={"hidden_act": "silu"}),
    "qwen3": Arch("qwen3", {**_LLAMA_NAMES, **_QK_NORM_NAMES}, hf_defaults={"hidden_act": "silu"}),
    "gemma": Arch("gemma", _LLAMA_NAMES, norm_offset=True, hf_defaults={"hidden_act": "gelu_pytorch_tanh"}),
    "gemma3": Arch("gemma3_text", _GEMMA3_NAMES, norm_offset=True,
                   hf_defaults={"hidden_activation": "gelu_pytorch_tanh"}),
}

# `<arch>.<suffix>` metadata → HF config key.
_CONFIG_KEYS = {
    "block_count": "num_hidden_layers",
    "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "attention.key_length": "head_dim",
    "attention.sliding_window": "sliding_window",
    "rope.freq_base": "rope_theta",
    "vocab_size": "vocab_size",
}
_TOKEN_IDS = {"bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id", "padding_token_id": "pad_token_id"}
_LAYER = re.compile(r"^blk\.(\d+)\.")
CONFIG_TENSORS = ("rope_freqs.weight",)  # read into the config (`_rope_scaling`), not into a parameter


def arch_of(g: GGUFFile) -> Arch:
    if g.arch not in ARCHS:
        raise CtxlabError(
            f"unsupported GGUF architecture {g.arch!r} in {g.path.name}; supported: {', '.join(sorted(ARCHS))}"
        )
    return ARCHS[g.arch]


# -------------------------------------------------------------------------------------------------- config


def hf_config(g: GGUFFile) -> dict[str, Any]:
    """The HF config.json this GGUF's metadata describes (what transformers' GGUF loader builds, plus the
    llama.cpp conventions it leaves implicit)."""
    arch = arch_of(g)
    d: dict[str, Any] = {"model_type": arch.model_type, **arch.hf_defaults, "torch_dtype": "float32"}
    for suffix, key in _CONFIG_KEYS.items():
        value = g.arch_key(suffix)
        if value is not None:
            d[key] = value
    if isinstance(d.get("num_key_value_heads"), list):  # per-layer kv heads (hybrid models): not these families
        raise CtxlabError(f"{g.path.name}: per-layer attention.head_count_kv is not supported for {g.arch}")
    for meta_key, key in _TOKEN_IDS.items():
        value = g.get(f"tokenizer.ggml.{meta_key}")
        if value is not None:
            d[key] = int(value)
    if "vocab_size" not in d:
        tokens = g.get("tokenizer.ggml.tokens")
        emb = g.tensors.get("token_embd.weight")
        d["vocab_size"] = len(tokens) if tokens is not None else int(emb.shape[1]) if emb is not None else None
    d["tie_word_embeddings"] = "output.weight" not in g.tensors
    d["attention_bias"] = "blk.0.attn_q.bias" in g.tensors
    heads, hidden = d.get("num_attention_heads"), d.get("hidden_size")
    rope_dims = g.arch_key("rope.dimension_count")
    if "head_dim" not in d and isinstance(heads, int) and heads > 0 and isinstance(hidden, int):
        d["head_dim"] = hidden // heads
    if rope_dims is not None and rope_dims != d.get("head_dim"):
        raise CtxlabError(f"{g.path.name}: partial rotary ({rope_dims} of {d.get('head_dim')} dims) is not supported")
    scaling = _rope_scaling(g)
    if scaling is not None:
        d["rope_scaling"] = scaling
    if arch.model_type == "gemma3_text":
        _gemma3_config(g, d)
    return d


def _rope_scaling(g: GGUFFile) -> dict | None:
    kind = g.arch_key("rope.scaling.type")
    if kind in (None, "none"):
        if "rope_freqs.weight" in g.tensors:
            return _llama3_from_freqs(g)
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(g.arch_key("rope.scaling.factor"))}
    raise CtxlabError(f"{g.path.name}: rope scaling {kind!r} is not supported (supported: linear, llama3)")


def _llama3_from_freqs(g: GGUFFile) -> dict:
    """llama.cpp stores llama3 RoPE scaling as per-frequency divisors. Recover the HF parameters by matching the
    divisors against the published Llama 3.1/3.2 settings (factor = the largest divisor), exactly or not at all."""
    from ctxlab.models.layers import rope_inv_freq

    freqs = torch.from_numpy(np.array(_dequantize(g, g.tensors["rope_freqs.weight"]), dtype=np.float32)).flatten()
    dim, theta = 2 * freqs.numel(), float(g.arch_key("rope.freq_base", 10000.0))
    base = rope_inv_freq(dim, theta)
    factor = float(freqs.max())
    for low, high, orig in ((1.0, 4.0, 8192), (1.0, 4.0, 4096), (1.0, 4.0, 16384)):
        cand = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                "original_max_position_embeddings": orig}
        if torch.allclose(base / rope_inv_freq(dim, theta, cand), freqs, rtol=1e-4, atol=1e-4):
            return cand
    raise CtxlabError(f"{g.path.name}: its rope_freqs tensor matches no llama3 RoPE scaling ctxlab knows")


def _gemma3_config(g: GGUFFile, d: dict[str, Any]) -> None:
    """Gemma 3 keys GGUF leaves implicit: llama.cpp fixes the 5-local-1-global layer pattern, a 10k local RoPE
    base (unless `rope.freq_base_swa` says otherwise), linear scaling on global layers only, and the attention
    scale 1/sqrt(head_dim), except for the 27B model (62 layers), which uses 1/sqrt(hidden/heads)."""
    n = d.get("num_hidden_layers")
    if not isinstance(n, int) or n < 1:
        raise CtxlabError(f"{g.path.name}: gemma3.block_count must be a positive integer, got {n!r}")
    d["layer_types"] = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]
    global_rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(d.pop("rope_theta", 1e6))}
    if "rope_scaling" in d:
        global_rope.update(d.pop("rope_scaling"))
    local_theta = float(g.arch_key("rope.freq_base_swa", 10000.0))
    d["rope_parameters"] = {"full_attention": global_rope,
                            "sliding_attention": {"rope_type": "default", "rope_theta": local_theta}}
    heads, hidden = d.get("num_attention_heads"), d.get("hidden_size")
    d["query_pre_attn_scalar"] = hidden // heads if n == 62 and heads else d.get("head_dim")


# ------------------------------------------------------------------------------------------------- weights


def _template(name: str) -> tuple[str, tuple[str, ...]]:
    m = _LAYER.match(name)
    return (_LAYER.sub("blk.{}.", name), (m.group(1),)) if m else (name, ())


def _dequantize(g: GGUFFile, t: Any) -> np.ndarray:
    """fp32 numpy array in PyTorch's (out, in) orientation: GGUF lists dims innermost first."""
    from gguf import dequantize

    kind = t.tensor_type.name
    if kind not in SUPPORTED_TYPES:
        raise CtxlabError(f"{g.path.name}: tensor {t.name} has type {kind}, which ctxlab does not read "
                          f"(supported: {', '.join(SUPPORTED_TYPES)})")
    shape = tuple(int(s) for s in reversed(t.shape.tolist()))
    try:
        arr = dequantize(t.data, t.tensor_type)
    except Exception as e:  # noqa: BLE001
        raise CtxlabError(f"{g.path.name}: cannot dequantize {t.name} ({kind}): {e}") from None
    if arr.size != int(np.prod(shape)):
        raise CtxlabError(f"{g.path.name}: tensor {t.name} holds {arr.size} values but declares shape {shape}")
    if np.may_share_memory(arr, t.data):  # F32 comes back as a view of the memory map: never keep those
        arr = np.array(arr, dtype=np.float32)
    return arr.astype(np.float32, copy=False).reshape(shape)


CHUNK_ROWS = 4096  # rows dequantized at a time: the fp32 transient stays small next to the weights


def dequantize_tensor(g: GGUFFile, t: Any, dtype: torch.dtype, device: str | torch.device) -> torch.Tensor:
    """A tensor dequantized by row chunks straight into a preallocated `dtype` tensor on `device`, so peak memory is
    the dequantized weights plus one chunk; the file pages a chunk read are dropped again (they are re-readable)."""
    from gguf import dequantize

    kind = t.tensor_type.name
    if kind not in SUPPORTED_TYPES:
        raise CtxlabError(f"{g.path.name}: tensor {t.name} has type {kind}, which ctxlab does not read "
                          f"(supported: {', '.join(SUPPORTED_TYPES)})")
    shape = tuple(int(s) for s in reversed(t.shape.tolist()))
    if len(shape) != 2 or t.data.ndim != 2 or t.data.shape[0] != shape[0]:
        return torch.from_numpy(np.ascontiguousarray(_dequantize(g, t))).to(device=device, dtype=dtype)
    out = torch.empty(shape, dtype=dtype, device=device)
    for a in range(0, shape[0], CHUNK_ROWS):
        b = min(shape[0], a + CHUNK_ROWS)
        try:
            rows = dequantize(t.data[a:b], t.tensor_type)
        except Exception as e:  # noqa: BLE001
            raise CtxlabError(f"{g.path.name}: cannot dequantize {t.name} ({kind}): {e}") from None
        if rows.size != (b - a) * shape[1]:
            raise CtxlabError(f"{g.path.name}: tensor {t.name} holds rows of {rows.size // (b - a)} values but "
                              f"declares shape {shape}")
        rows = np.ascontiguousarray(rows, dtype=np.float32).reshape(b - a, shape[1])
        if not rows.flags.writeable:  # F32 rows are views of the read-only memory map
            rows = rows.copy()
        out[a:b] = torch.from_numpy(rows)
    g.drop_pages(t.data_offset, t.n_bytes)
    return out


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of llama.cpp's `permute`: rows (n_head, 2, hd/2) interleaved back to rotate-half (n_head, hd/2, 2)."""
    if w.shape[0] % (2 * n_head):
        raise CtxlabError(f"cannot un-permute a q/k weight of {w.shape[0]} rows over {n_head} heads")
    hd2 = w.shape[0] // n_head // 2
    return w.reshape(n_head, hd2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)  # (nh, 2, hd/2, ...) → rows


def hf_tensors(g: GGUFFile, config: dict[str, Any], dtype: torch.dtype,
               device: str | torch.device = "cpu") -> Iterator[tuple[str, str | None, Callable[[], torch.Tensor]]]:
    """(GGUF name, HF name or None when unknown, loader) per weight tensor; the loader dequantizes straight into
    `dtype` on `device` and undoes the converter's transforms. Tensors folded into the config are skipped."""
    arch = arch_of(g)
    for name, t in g.tensors.items():
        if name in CONFIG_TENSORS:
            continue
        template, idx = _template(name)
        hf = arch.names.get(template)

        def load(t=t, template=template) -> torch.Tensor:
            offset = arch.norm_offset and template.endswith("norm.weight")
            w = dequantize_tensor(g, t, torch.float32 if offset else dtype, device)
            if arch.permute_qk and template == "blk.{}.attn_q.weight":
                w = unpermute_qk(w, config["num_attention_heads"])
            elif arch.permute_qk and template == "blk.{}.attn_k.weight":
                w = unpermute_qk(w, config.get("num_key_value_heads", config["num_attention_heads"]))
            elif offset:
                w = (w - 1.0).to(dtype)  # in fp32, then cast: 1 + w rounded to bf16 would lose w
            return w.contiguous()

        yield name, None if hf is None else hf.format(*idx), load

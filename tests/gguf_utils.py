"""Tiny GGUF fixtures written the way llama.cpp's converter writes them (gguf.GGUFWriter): config as `<arch>.*`
metadata, q/k rows permuted for llama, Gemma norms stored as 1 + w, a byte-level (gpt2) or SentencePiece-style
tokenizer, and any tensor type (K-quants as random blocks with valid fp16 scales: gguf-py cannot quantize them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ctxlab.tokenizer_gguf import bytes_to_unicode

# fp16 fields (byte offsets) inside one block of each quantized type; the rest of the block is free bits.
BLOCK_FP16 = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "Q2_K": (80, 82),
              "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}

GGUF_NAMES = {  # HF suffix → GGUF suffix per layer (llama/qwen3/gemma; gemma3 overrides the norms)
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
GEMMA3_NORMS = {
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}


def gpt2_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges): the byte alphabet, three merges, control tokens and one user-defined token."""
    byte_chars = list(bytes_to_unicode().values())
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a"]
    tokens = byte_chars + ["Ġt", "he", "Ġthe", "Ġa"] + ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>"]
    types = [1] * (len(tokens) - 4) + [3, 3, 3, 4]
    return tokens, types, merges


def spm_vocab() -> tuple[list[str], list[int], list[float]]:
    """(tokens, token types, scores) of a Gemma-style SentencePiece vocabulary (byte fallback, a run of spaces
    stored as real spaces, a user-defined newline)."""
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [3, 3, 3, 2] + [6] * 256
    pieces = ["▁", "a", "b", "c", "h", "e", "l", "o", "▁a", "ab", "▁ab", "he", "ll", "hell", "hello", "▁hello", "  ",
              "\n", "<start_of_turn>"]
    tokens += pieces
    types += [1] * (len(pieces) - 3) + [1, 4, 3]
    return tokens, types, [0.0] * len(tokens)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter permutation (rotate-half → interleaved rows)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _encode(w: np.ndarray, kind: str, rng: np.random.Generator):
    """(data, raw_dtype) for GGUFWriter: float types quantized by gguf-py, block types as random valid blocks."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    qt = GGMLQuantizationType[kind]
    if kind == "F32":
        return w.astype(np.float32), None
    if kind in ("F16", "BF16"):
        return quants.quantize(w.astype(np.float32), qt), qt
    block, nbytes = GGML_QUANT_SIZES[qt]
    rows, cols = w.shape
    assert cols % block == 0, f"{kind} needs rows of a multiple of {block}"
    blocks = rng.integers(0, 256, size=(rows * cols // block, nbytes), dtype=np.uint8)
    for off in BLOCK_FP16[kind]:
        d = (rng.random(blocks.shape[0]) * 0.02 + 0.005).astype(np.float16)
        blocks[:, off : off + 2] = d.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, cols // block * nbytes), qt


def write_gguf(hf_model, path: Path, arch: str, types: dict[str, str] | None = None, tokenizer: str = "gpt2",
               seed: int = 0, meta: dict | None = None, drop: tuple[str, ...] = ()) -> Path:
    """Write `hf_model` (a tiny transformers model) as a GGUF of architecture `arch`. `types`: GGUF tensor name →
    type (default F32); `meta`: metadata overrides (value None deletes a key); `drop`: tensor names to leave out."""
    import gguf

    cfg = hf_model.config
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_meta = {
        f"{arch}.block_count": ("uint32", cfg.num_hidden_layers),
        f"{arch}.context_length": ("uint32", cfg.max_position_embeddings),
        f"{arch}.embedding_length": ("uint32", cfg.hidden_size),
        f"{arch}.feed_forward_length": ("uint32", cfg.intermediate_size),
        f"{arch}.attention.head_count": ("uint32", heads),
        f"{arch}.attention.head_count_kv": ("uint32", kv),
        f"{arch}.attention.layer_norm_rms_epsilon": ("float32", cfg.rms_norm_eps),
        f"{arch}.rope.freq_base": ("float32", cfg.rope_parameters["full_attention"]["rope_theta"]
                                   if arch == "gemma3" else cfg.rope_parameters["rope_theta"]),
    }
    if arch == "llama":
        kv_meta[f"{arch}.rope.dimension_count"] = ("uint32", head_dim)
    else:
        kv_meta[f"{arch}.attention.key_length"] = ("uint32", head_dim)
        kv_meta[f"{arch}.attention.value_length"] = ("uint32", head_dim)
    if arch == "gemma3":
        kv_meta[f"{arch}.attention.sliding_window"] = ("uint32", cfg.sliding_window)
    for key, value in (meta or {}).items():
        if value is None:
            kv_meta.pop(key, None)
        else:
            kv_meta[key] = value
    for key, (kind, value) in kv_meta.items():
        getattr(w, f"add_{kind}")(key, value)
    if tokenizer == "gpt2":
        tokens, ttypes, merges = gpt2_vocab()
        w.add_string("tokenizer.ggml.model", "gpt2")
        w.add_string("tokenizer.ggml.pre", "default")
        w.add_array("tokenizer.ggml.tokens", tokens)
        w.add_array("tokenizer.ggml.token_type", ttypes)
        w.add_array("tokenizer.ggml.merges", merges)
        w.add_uint32("tokenizer.ggml.bos_token_id", tokens.index("<|im_start|>"))
        w.add_uint32("tokenizer.ggml.eos_token_id", tokens.index("<|im_end|>"))
        w.add_uint32("tokenizer.ggml.padding_token_id", tokens.index("<|endoftext|>"))
        w.add_bool("tokenizer.ggml.add_bos_token", False)
        w.add_string("tokenizer.chat_template", "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                     "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                     "{% endif %}")
    else:
        tokens, ttypes, scores = spm_vocab()
        w.add_string("tokenizer.ggml.model", "llama")
        w.add_string("tokenizer.ggml.pre", "default")
        w.add_array("tokenizer.ggml.tokens", tokens)
        w.add_array("tokenizer.ggml.token_type", ttypes)
        w.add_array("tokenizer.ggml.scores", scores)
        w.add_uint32("tokenizer.ggml.bos_token_id", 2)
        w.add_uint32("tokenizer.ggml.eos_token_id", 1)
        w.add_uint32("tokenizer.ggml.unknown_token_id", 3)
        w.add_uint32("tokenizer.ggml.padding_token_id", 0)
        w.add_bool("tokenizer.ggml.add_bos_token", True)
    assert len(tokens) == cfg.vocab_size, f"vocab_size must be {len(tokens)} for this tokenizer"
    names = {**GGUF_NAMES, **(GEMMA3_NORMS if arch == "gemma3" else {})}
    for hf_name, t in hf_model.state_dict().items():
        if hf_name == "model.embed_tokens.weight":
            name = "token_embd.weight"
        elif hf_name == "model.norm.weight":
            name = "output_norm.weight"
        elif hf_name == "lm_head.weight":
            if cfg.tie_word_embeddings:
                continue
            name = "output.weight"
        else:
            layer, suffix = hf_name.split(".")[2], ".".join(hf_name.split(".")[3:])
            name = f"blk.{layer}.{names[suffix]}"
        if name in drop:
            continue
        arr = t.detach().float().numpy()
        if arch == "llama" and name.endswith("attn_q.weight"):
            arr = _permute(arr, heads)
        elif arch == "llama" and name.endswith("attn_k.weight"):
            arr = _permute(arr, kv)
        if arch in ("gemma", "gemma3") and name.endswith("norm.weight"):
            arr = arr + 1.0
        kind = (types or {}).get(name, "F32") if arr.ndim == 2 else "F32"
        data, raw = _encode(arr, kind, rng)
        if raw is None:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def rewrite_gguf(src: Path, dst: Path, replace: dict | None = None, add: dict | None = None) -> Path:
    """Copy a GGUF with some tensors replaced (name → (array, raw_dtype or None)) and others added (name → array)."""
    import gguf

    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(str(dst), str(r.fields["general.architecture"].contents()))
    for key, f in r.fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture":
            w.add_key_value(key, f.contents(), f.types[0], sub_type=f.types[-1] if len(f.types) > 1 else None)
    for name, arr in (add or {}).items():
        w.add_tensor(name, arr)
    for t in r.tensors:
        arr, raw = (replace or {}).get(t.name, (np.array(t.data), None))
        w.add_tensor(t.name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def torch_ids(B: int, T: int, vocab: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))

"""Tiny random Hugging Face checkpoints for parity tests (transformers is a test-only dependency)."""

from __future__ import annotations

from pathlib import Path

import torch

TINY = {
    "qwen3": dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True,
        max_position_embeddings=128,
    ),
    "llama": dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=5e5, tie_word_embeddings=False,
        max_position_embeddings=128,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16},
    ),
    "gemma": dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=32, hidden_act="gelu_pytorch_tanh", rms_norm_eps=1e-6, rope_theta=1e4,
        tie_word_embeddings=True, max_position_embeddings=128,
    ),
}


def hf_classes(family: str):
    import transformers as tf

    return {
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM),
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
        "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM),
    }[family]


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Re-randomise every parameter (norm weights and biases included) so offset/bias bugs cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def make_hf(family: str, seed: int = 0, **overrides):
    cfg_cls, model_cls = hf_classes(family)
    cfg = cfg_cls(**{**TINY[family], **overrides})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    randomize(model, seed)
    return model


def save_hf(model, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    return path

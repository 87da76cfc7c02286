"""Llama 4 (MoE, chunked attention) and Griffin vs transformers on the same weights, fp32 CPU.

Run: `.venv/bin/python bench/bench_arch.py`. Writes the "Llama 4 and Griffin" section of bench/RESULTS.md.
Prefill tokens/s at 1024 tokens and greedy decode tokens/s over 128 new tokens, batch 1, best of repeats.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import best_of, machine_limits, table, write_section  # noqa: E402
from ctxlab.engine.generate import generate  # noqa: E402
from ctxlab.engine.sampling import SamplingParams  # noqa: E402
from ctxlab.models.loading import load_model  # noqa: E402

PREFILL, NEW = 1024, 128


def configs():
    import transformers as tf

    return {
        "llama4-moe (16 experts top-1, 8 layers)": (
            tf.Llama4TextConfig(
                vocab_size=8192, hidden_size=256, intermediate_size=512, intermediate_size_mlp=1024,
                num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2, head_dim=32,
                num_local_experts=16, num_experts_per_tok=1, interleave_moe_layer_step=1, no_rope_layer_interval=4,
                attention_chunk_size=256, floor_scale=64, attn_scale=0.1, attn_temperature_tuning=True,
                use_qk_norm=True, rope_theta=5e5, max_position_embeddings=4096, tie_word_embeddings=False,
                pad_token_id=None, bos_token_id=1, eos_token_id=2,
            ),
            tf.Llama4ForCausalLM,
        ),
        "griffin (6 layers, window 256)": (
            tf.RecurrentGemmaConfig(
                vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=4,
                num_key_value_heads=1, lru_width=256, attention_window_size=256, conv1d_width=4,
                logits_soft_cap=30.0, partial_rotary_factor=0.5, rope_theta=1e4,
            ),
            tf.RecurrentGemmaForCausalLM,
        ),
    }


def bench(name, cfg, cls, out: Path) -> dict:
    torch.manual_seed(0)
    hf = cls(cfg).eval()
    hf.save_pretrained(out / "m")
    ours = load_model(out / "m").model
    ids = torch.randint(0, cfg.vocab_size, (1, PREFILL), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        t_ours = best_of(lambda: ours(ids, ours.new_cache(1, PREFILL), last_only=True), repeat=3)
        t_hf = best_of(lambda: hf(ids, use_cache=True, logits_to_keep=1), repeat=3)
    prompt = ids[0, :16].tolist()
    params = SamplingParams(temperature=0.0, max_new_tokens=NEW)
    d_ours = best_of(lambda: generate(ours, [prompt], params, eos_ids=()), repeat=2)

    def hf_decode():
        with torch.inference_mode():
            hf.generate(torch.tensor([prompt]), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                        pad_token_id=0)

    d_hf = best_of(hf_decode, repeat=2)
    return {
        "model": name,
        "params (M)": round(sum(p.numel() for p in ours.parameters()) / 1e6, 1),
        "prefill tok/s ctxlab": round(PREFILL / t_ours),
        "prefill tok/s HF": round(PREFILL / t_hf),
        "prefill ratio": round(t_hf / t_ours, 2),
        "decode tok/s ctxlab": round(NEW / d_ours, 1),
        "decode tok/s HF": round(NEW / d_hf, 1),
        "decode ratio": round(d_hf / d_ours, 2),
    }


def main() -> None:
    limits = machine_limits()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for i, (name, (cfg, cls)) in enumerate(configs().items()):
            out = Path(d) / str(i)
            rows.append(bench(name, cfg, cls, out))
            print(rows[-1])
    body = (
        "Command: `.venv/bin/python bench/bench_arch.py` (fp32, CPU, batch 1, prefill "
        f"{PREFILL} tokens; greedy decode of {NEW} tokens after a 16-token prompt; ratios = transformers time / "
        "ctxlab time; transformers runs every expert on every token, ctxlab dispatches tokens to their experts).\n\n"
        f"Machine: {limits}\n\n" + table(rows, list(rows[0]))
    )
    write_section("Llama 4 and Griffin vs transformers", body)
    print(body)


if __name__ == "__main__":
    main()

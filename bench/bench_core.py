"""ctxlab vs transformers on the same weights, fp32 CPU: prefill tokens/s, greedy decode tokens/s, load RSS.

Run: `make bench` or `.venv/bin/python bench/bench_core.py [--quick]`. Writes the "Core" section of
bench/RESULTS.md. Not a test: timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import best_of, machine_limits, peak_rss_of, table, write_section  # noqa: E402
from ctxlab.engine.generate import generate  # noqa: E402
from ctxlab.engine.sampling import SamplingParams  # noqa: E402
from ctxlab.models.loading import load_model  # noqa: E402

CONFIGS = {
    # ~54M parameters (untied 32000-token embedding and head: 32.8M; 8 layers: 21M)
    "llama-54M": dict(vocab_size=32000, hidden_size=512, intermediate_size=1024, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096,
                      tie_word_embeddings=False),
    # ~5M parameters (tied embedding 4.1M)
    "llama-5M": dict(vocab_size=32000, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                     tie_word_embeddings=True),
}


def build(name: str, out: Path) -> Path:
    import transformers

    cfg = transformers.LlamaConfig(**CONFIGS[name])
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(out / name)
    return out / name


def bench_one(name: str, path: Path, prefill_len: int, new_tokens: int) -> dict:
    import transformers

    hf = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ours = load_model(path).model
    n_params = sum(p.numel() for p in ours.parameters())
    ids = torch.randint(0, 32000, (1, prefill_len), generator=torch.Generator().manual_seed(0))

    with torch.inference_mode():
        def ours_prefill():
            ours(ids, ours.new_cache(1, prefill_len), last_only=True)

        def hf_prefill():
            hf(ids, use_cache=True, logits_to_keep=1)

        t_ours_pf = best_of(ours_prefill, repeat=3)
        t_hf_pf = best_of(hf_prefill, repeat=3)

    prompt = ids[0, :16].tolist()
    params = SamplingParams(temperature=0.0, max_new_tokens=new_tokens)

    def ours_decode():
        generate(ours, [prompt], params, eos_ids=())

    def hf_decode():
        with torch.inference_mode():
            hf.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                        do_sample=False, pad_token_id=0)

    t_ours_dec = best_of(ours_decode, repeat=2)
    t_hf_dec = best_of(hf_decode, repeat=2)
    # check: same greedy tokens
    with torch.inference_mode():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                          pad_token_id=0)[0, 16:].tolist()
    got = generate(ours, [prompt], SamplingParams(temperature=0.0, max_new_tokens=32), eos_ids=())[0].ids
    rss_ours = peak_rss_of(f"ctxlab.models.loading.load_model({str(path)!r})")
    rss_hf = peak_rss_of(
        f"transformers.LlamaForCausalLM.from_pretrained({str(path)!r}, dtype=torch.float32)"
    )
    return {
        "model": name,
        "params (M)": round(n_params / 1e6, 1),
        "prefill tok/s ctxlab": round(prefill_len / t_ours_pf),
        "prefill tok/s HF": round(prefill_len / t_hf_pf),
        "prefill ratio": round(t_hf_pf / t_ours_pf, 2),
        "decode tok/s ctxlab": round(new_tokens / t_ours_dec, 1),
        "decode tok/s HF": round(new_tokens / t_hf_dec, 1),
        "decode ratio": round(t_hf_dec / t_ours_dec, 2),
        "load RSS MB ctxlab": round(rss_ours),
        "load RSS MB HF": round(rss_hf),
        "weights MB": round(n_params * 4 / 2**20),
        "same greedy tokens": got == ref,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter runs (512-token prefill, 64 new tokens)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prefill_len, new_tokens = (512, 64) if args.quick else (2048, 256)
    limits = machine_limits()
    print("machine:", limits)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in CONFIGS:
            t0 = time.time()
            row = bench_one(name, build(name, Path(d)), prefill_len, new_tokens)
            rows.append(row)
            print(row, f"({time.time() - t0:.0f}s)")
    cols = list(rows[0])
    ceilings = []
    for r in rows:
        weight_bytes = r["params (M)"] * 1e6 * 4
        decode_ceiling = limits["mem_bandwidth_gbs"] * 1e9 / weight_bytes
        prefill_ceiling = limits["matmul_gflops"] * 1e9 / (2 * r["params (M)"] * 1e6)
        ceilings.append(f"- {r['model']}: decode ceiling ≈ {decode_ceiling:.0f} tok/s (bandwidth / weight bytes), "
                        f"prefill ceiling ≈ {prefill_ceiling:.0f} tok/s (matmul GFLOP/s / 2·params, "
                        "attention excluded)")
    body = (
        f"Command: `.venv/bin/python bench/bench_core.py{' --quick' if args.quick else ''}"
        f"{f' --threads {args.threads}' if args.threads else ''}` "
        f"(fp32, CPU, batch 1, prefill {prefill_len} tokens, greedy decode of {new_tokens} new tokens after a "
        f"16-token prompt; best of repeats; ratios = transformers time / ctxlab time).\n\n"
        f"Machine: {limits}\n\n" + table(rows, cols) + "\n\nCeilings from the measured machine limits:\n"
        + "\n".join(ceilings)
    )
    write_section("Core: dense Llama-style models vs transformers", body)
    print(body)


if __name__ == "__main__":
    main()

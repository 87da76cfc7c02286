"""RecurrentGemma benchmarks: the chunked prefill scan vs the per-step loop, and decode-state memory vs length.

Run: .venv/bin/python bench/bench_griffin_scan.py [--threads N]  (CPU; default 1 thread: on a shared 2-core machine,
multi-threaded small ops stall on descheduled OpenMP workers and the timings become noise)
Prints (1) linear_scan vs scan_loop at T=4096 for several widths (fp32, B=1), (2) GriffinCache bytes and decode-step
time after 1k and 8k-token prefills of a small random model, and (3) the 2B model's cache sizes (meta tensors).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import best_of, machine_limits  # noqa: E402
from ctxlab.models.griffin import GriffinCache, GriffinConfig, GriffinModel, linear_scan, scan_loop  # noqa: E402


def bench_scan(T: int = 4096) -> None:
    print(f"machine: {machine_limits()}")
    print(f"== scan: h_t = a_t*h_(t-1) + x_t, T={T}, B=1, fp32, best of repeats")
    print(f"{'L':>6} {'loop ms':>9} {'chunked ms':>11} {'speedup':>8} {'max rel err':>12}")
    for L in (64, 256, 1024, 2560):
        g = torch.Generator().manual_seed(L)
        a = torch.exp(-8 * torch.rand(1, T, L, generator=g) * torch.rand(L, generator=g))
        a[:, ::997] = 0.0  # resets
        x, h0 = torch.randn(1, T, L, generator=g), torch.randn(1, L, generator=g)
        with torch.no_grad():
            ref, _ = scan_loop(a, x, h0)
            got, _ = linear_scan(a, x, h0)
            t_loop = best_of(partial(scan_loop, a, x, h0), repeat=3)
            t_fast = best_of(partial(linear_scan, a, x, h0), repeat=5)
        err = ((got - ref).abs().max() / ref.abs().max()).item()
        print(f"{L:>6} {t_loop * 1e3:>9.1f} {t_fast * 1e3:>11.1f} {t_loop / t_fast:>7.1f}x {err:>12.1e}")


def bench_decode_memory() -> None:
    cfg = GriffinConfig(vocab_size=1024, hidden_size=256, intermediate_size=768, num_layers=6, num_heads=4,
                        num_kv_heads=1, lru_width=256, attention_window_size=256)
    torch.manual_seed(0)
    model = GriffinModel(cfg).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    n_attn = cfg.layer_types.count("attention")
    print(f"\n== decode state, small random model (H=L=256, {cfg.num_layers} layers, W=256, fp32, B=1)")
    print(f"{'prompt':>7} {'cache bytes':>12} {'full-KV bytes*':>15} {'prefill s':>10} {'decode ms/tok':>14}")
    for T in (1024, 8192):
        ids = torch.randint(0, cfg.vocab_size, (1, T))
        with torch.inference_mode():
            cache = model.new_cache(1, T + 32)
            t0 = time.perf_counter()
            _, cache = model(ids, cache, last_only=True)
            prefill = time.perf_counter() - t0
            tok = ids[:, -1:]
            t0 = time.perf_counter()
            for _ in range(32):
                _, cache = model(tok, cache)
            step = (time.perf_counter() - t0) / 32
        full_kv = 2 * n_attn * cfg.num_kv_heads * cfg.head_dim * (T + 32) * 4
        print(f"{T:>7} {cache.nbytes():>12,} {full_kv:>15,} {prefill:>10.2f} {step * 1e3:>14.2f}")
    print("  * what an unwindowed KV cache of the same attention layers would hold")


def bench_2b_sizes() -> None:
    cfg = GriffinConfig(vocab_size=256000, hidden_size=2560, intermediate_size=15360, num_layers=26, num_heads=10,
                        num_kv_heads=1, lru_width=2560, attention_window_size=2048)
    print("\n== recurrentgemma-2b cache sizes (bf16, B=1, meta tensors)")
    for T in (1024, 8192, 32768):
        c = GriffinCache.allocate(cfg, 1, T, torch.bfloat16, "meta")
        print(f"  decode state at {T:>6} tokens: {c.nbytes() / 2**20:8.2f} MiB")
    c = GriffinCache.allocate(cfg, 1, 4096, torch.bfloat16, "meta", keep=4096)
    per_slot = (c.nbytes() - c.nbytes(history=False)) / 4096
    print(f"  qTTT span history: {per_slot / 1024:.1f} KiB per kept slot ({per_slot * 4096 / 2**30:.2f} GiB for 4096)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    torch.set_num_threads(ap.parse_args().threads)
    bench_scan()
    bench_decode_memory()
    bench_2b_sizes()


if __name__ == "__main__":
    main()

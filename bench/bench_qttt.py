"""qTTT cost in practice on the ~54M Llama-style config (random weights, fp32): one qTTT step vs a k-token cached
forward at several context lengths, and qTTT(N=32, k=128) vs FLOP-matched thinking (8192 tokens) at T = 4096,
with memory. Compares measured time with the analytic model in ctxlab/strategies/flops.py.

Run: `.venv/bin/python bench/bench_qttt.py [--quick] [--device cuda]`. Writes bench/results_qttt.md (a section for
bench/RESULTS.md; the lead merges it). Not a test: timings are reported, never asserted.

Thinking is not run for all 8192 tokens (minutes on 2 cores): decode steps are timed at three cache lengths (512
steps from the main T, 64 from the others), a per-token time a + b·(cache length) is fitted, and the 8192-token
total is its sum over cache lengths T … T+8191. The fit and the measured 512-step time are both printed.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine_limits, table  # noqa: E402
from ctxlab.models.llama import LlamaConfig, LlamaModel  # noqa: E402
from ctxlab.strategies.flops import ArchCost  # noqa: E402
from ctxlab.strategies.qttt import QTTTConfig, QuerySnapshot, adapt, span_loss, train_only  # noqa: E402
from ctxlab.train.scratch import init_weights  # noqa: E402

OUT = Path(__file__).resolve().parent / "results_qttt.md"
# bench_core's "llama-54M": untied 32000-token embedding and head (32.8M) + 8 layers (21M)
CONFIG = dict(vocab_size=32000, hidden_size=512, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=8,
              num_key_value_heads=8, max_position_embeddings=16384, tie_word_embeddings=False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int = 3, warmup: int = 1) -> float:
    """Median wall time (s) of `repeat` runs after `warmup`."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process high-water mark (Linux: kB)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def saved_activation_bytes(model, cache, ids, t: int, k: int) -> int:
    """Bytes autograd keeps for one qTTT step's backward, excluding the cache and the weights (which it only
    references): unique storages seen by the saved-tensor hook."""
    exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
    exclude |= {x.untyped_storage().data_ptr() for x in (*cache.k, *cache.v)}
    seen: dict[int, int] = {}

    def pack(x):
        s = x.untyped_storage()
        if s.data_ptr() not in exclude:
            seen[s.data_ptr()] = s.nbytes()
        return x

    params = model.query_weights()
    with train_only(model, params), torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        span_loss(model, cache, ids, t, k).backward()
    return sum(seen.values())


def forwards(model, cache, span_ids, T: int):
    """(k-token cached forward appended at slot T, frozen k-token forward over slots [T-k, T)) as thunks."""
    k = span_ids.shape[1]

    def cached_forward():
        with torch.inference_mode():
            model(span_ids, cache)
        cache.rewind(T)

    def frozen_forward():
        with torch.no_grad():
            model(span_ids, cache, start=T - k, frozen=True)

    return cached_forward, frozen_forward


def decode_tokens(model, cache, n: int, device: torch.device) -> float:
    """Seconds for n greedy decode steps appended to the cache (truncated back afterwards)."""
    T = cache.length
    tok = torch.zeros(1, 1, dtype=torch.long, device=device)
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(n):
            logits, _ = model(tok, cache)
            tok = logits[:, -1].argmax(-1, keepdim=True)
    sync(device)
    dt = time.perf_counter() - t0
    cache.rewind(T)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short contexts and few steps (a smoke run)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    lengths = [256, 512, 1024] if args.quick else [1024, 4096, 8192]
    main_T = lengths[1]
    k, N, think = (32, 4, 256) if args.quick else (128, 32, 8192)
    dec_main, dec_other = (64, 16) if args.quick else (512, 64)

    torch.manual_seed(0)
    cfg = LlamaConfig.from_hf_config(CONFIG)
    model = LlamaModel(cfg)
    init_weights(model, seed=0)
    model.to(device).eval()
    cost = ArchCost.from_config(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    limits = machine_limits() if device.type == "cpu" else {"device": torch.cuda.get_device_name(device)}
    limits["load average (1 min) at start"] = round(os.getloadavg()[0], 1)
    print("machine:", limits, f"params {n_params / 1e6:.1f}M")

    step_rows, decode_points, main = [], [], {}
    g = torch.Generator().manual_seed(0)
    for T in lengths:
        t_start = time.time()
        ids = torch.randint(0, cfg.vocab_size, (1, T), generator=g).to(device)
        cache = model.new_cache(1, T + max(k, dec_main) + 64)
        reset_peak(device)
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            model(ids, cache, last_only=True)
        sync(device)
        t_prefill = time.perf_counter() - t0
        span_ids = ids[:, T - k :]
        cached_forward, frozen_forward = forwards(model, cache, span_ids, T)
        t_fwd = timed(cached_forward, device)
        t_frozen = timed(frozen_forward, device)
        reps = 3
        snap = QuerySnapshot(model)
        adapt(model, cache, ids, QTTTConfig(steps=1, span=k, probe=False, region="prompt"), snapshot=snap)  # warmup
        rep = adapt(model, cache, ids, QTTTConfig(steps=reps, span=k, probe=False, region="prompt", seed=1),
                    snapshot=snap)
        snap.restore()
        t_step = rep.wall_time / reps
        mean_t = sum(rep.starts) / reps
        n_dec = dec_main if T == main_T else dec_other
        t_dec = decode_tokens(model, cache, n_dec, device)
        decode_points.append((T + (n_dec - 1) / 2, t_dec / n_dec))
        step_rows.append({
            "T": T,
            "prefill s": f"{t_prefill:.2f}",
            f"cached fwd k={k} s": f"{t_fwd:.3f}",
            f"frozen fwd k={k} s": f"{t_frozen:.3f}",
            "qTTT step s": f"{t_step:.3f}",
            "step / cached fwd": f"{t_step / t_fwd:.2f}",
            "analytic step / fwd": f"{cost.qttt_step(T, k, int(mean_t)) / cost.decode(T, k):.2f}",
            "decode ms/token": f"{1000 * t_dec / n_dec:.1f}",
        })
        if T == main_T:
            reset_peak(device)
            rss0 = peak_mb(device)
            rep = adapt(model, cache, ids, QTTTConfig(steps=N, span=k, probe=False, region="prompt", seed=2),
                        snapshot=snap)
            snap.restore()
            main = {"ids": ids, "cache": cache, "adapt_s": rep.wall_time, "prefill_s": t_prefill,
                    "peak_mb": peak_mb(device), "peak_before_mb": rss0,
                    "saved_bytes": saved_activation_bytes(model, cache, ids, T - k - 1, k),
                    "dec_s": t_dec, "dec_n": n_dec}
        print(step_rows[-1], f"({time.time() - t_start:.0f}s)")
        if T != main_T:
            del cache

    # thinking: fit per-token decode time = a + b·L over the measured cache lengths, sum over L = T … T+think-1
    xs, ys = zip(*decode_points, strict=True)
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    a = my - b * mx
    T = main_T
    think_fit = think * a + b * (think * T + think * (think - 1) / 2)
    # cross-check: the measured per-token time at T, grown with the cache as the analytic decode MACs grow
    L_bar = T + (main["dec_n"] - 1) / 2
    think_scaled = main["dec_s"] / main["dec_n"] * cost.decode(T, think) / cost.decode(L_bar, 1)
    exact_budget = cost.think_budget(T, k, N)
    matched_N = cost.match(T, think, k)[1]
    slot_bytes = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4
    wq_bytes = sum(p.numel() * p.element_size() for p in model.query_weights())
    answer = 64
    qttt_mem = {
        "kv cache MB": slot_bytes * (T + answer) / 2**20,
        "extra MB": (main["saved_bytes"] + 4 * wq_bytes) / 2**20,  # activations + snapshot, grad, 2 AdamW states
    }
    think_mem = {"kv cache MB": slot_bytes * (T + think + answer) / 2**20, "extra MB": 0.0}
    f_q, f_t = cost.qttt(T, k, N), cost.think(T, think)
    cmp_rows = [
        {"strategy": f"qTTT N={N}, k={k}", "adaptation / thinking s": f"{main['adapt_s']:.1f}",
         "+ prefill s": f"{main['adapt_s'] + main['prefill_s']:.1f}", "analytic MAC": f"{f_q:.3e}",
         "KV cache MB": f"{qttt_mem['kv cache MB']:.0f}", "extra MB": f"{qttt_mem['extra MB']:.0f}"},
        *({"strategy": f"thinking {think} tokens ({how})", "adaptation / thinking s": f"{t:.1f}",
           "+ prefill s": f"{t + main['prefill_s']:.1f}", "analytic MAC": f"{f_t:.3e}",
           "KV cache MB": f"{think_mem['kv cache MB']:.0f}", "extra MB": "0"}
          for how, t in (("fit a + b·L", think_fit), ("measured at T, analytic growth", think_scaled))),
    ]
    step_table = table(step_rows, list(step_rows[0]))
    cmp_table = table(cmp_rows, list(cmp_rows[0]))
    r_fit, r_scaled = think_fit / main["adapt_s"], think_scaled / main["adapt_s"]
    mem_kind = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS (ru_maxrss)"
    limits["load average (1 min) at end"] = round(os.getloadavg()[0], 1)
    flags = (" --quick" if args.quick else "") + (f" --threads {args.threads}" if args.threads else "")
    note = (f"\nIntra-op threads pinned to {args.threads}: on cores shared with other jobs (see the load average), "
            "spinning OpenMP workers made 2-thread timings swing several-fold between runs." if args.threads else "")
    body = f"""Command: `.venv/bin/python bench/bench_qttt.py{flags}` (device {device},
fp32, batch 1, random weights, {n_params / 1e6:.1f}M-parameter Llama-style config: hidden 512, 8 layers, 8 heads,
MLP 1024, vocab 32000 untied). Machine: {limits}{note}

One qTTT step (frozen forward of k={k} span queries against the T cached keys + backward into W_Q + AdamW) vs a
k-token cached forward (the same k tokens appended to the cache, inference mode). "analytic" = ctxlab.strategies.flops
ArchCost (qTTT step at its span start vs a k-token decode; MAC ratio). Decode = one greedy token at cache length T.

{step_table}

qTTT vs FLOP-matched thinking at T = {T} (the shared prefill, {main['prefill_s']:.1f} s, excluded in the first
time column). Thinking time is extrapolated, two ways: (1) per-token decode time fitted as a + b·L over the cache
lengths above (a = {1000 * a:.2f} ms, b = {1e6 * b:.3f} µs per cached token) and summed over L = T … T+{think - 1};
(2) the measured per-token time of {main['dec_n']} steps from T = {T} ({main['dec_s']:.1f} s) scaled by the analytic
decode MACs over the same cache lengths. Budget matching: the paper's 2·N·k = {2 * N * k}
tokens; the exact ArchCost budget for N = {N} steps is {exact_budget} tokens (and {think} thinking tokens buy
N = {matched_N} steps).

{cmp_table}

Reading: the analytic MACs of {think} thinking tokens are {f_t / f_q:.2f}× those of qTTT(N={N}, k={k}) here (the
paper's 2·N·k rule assumes T ≫ d and ignores the LM head; at T_think/T = {think / T:.2g} and a 32000-token head on
d = 512 it undercounts thinking), but the wall time differs by {r_fit:.0f}–{r_scaled:.0f}×: thinking is {think}
sequential one-token decode steps (latency/bandwidth-bound on a CPU), qTTT is {N} steps of {k}-token matmuls.

Memory: KV cache for the prompt plus a {answer}-token answer (qTTT) or plus the thinking tokens too (thinking),
{slot_bytes} bytes per slot. qTTT extra = activations saved for one step's backward
({main['saved_bytes'] / 2**20:.1f} MB, measured with a saved-tensor hook) + W_Q snapshot, gradients and two AdamW
states ({4 * wq_bytes / 2**20:.0f} MB). Peak memory ({mem_kind}): {main['peak_before_mb']:.0f} MB before the
{N}-step run, {main['peak_mb']:.0f} MB after it.
"""
    Path(args.out).write_text("## qTTT: step cost and matched-compute comparison\n\n" + body)
    print(body)


if __name__ == "__main__":
    main()

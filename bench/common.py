"""Shared benchmark helpers: machine limits, timing, peak RSS in a child process, markdown tables."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"


def best_of(fn: Callable[[], object], repeat: int = 3, warmup: int = 1) -> float:
    """Best wall time of `repeat` runs after `warmup` runs (seconds)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def machine_limits() -> dict[str, float | str | int]:
    """Measured fp32 matmul throughput and memory bandwidth: the ceilings for prefill and decode."""
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = best_of(lambda: torch.mm(a, b), repeat=5)
    gflops = 2 * n**3 / t / 1e9
    x = torch.ones(512 * 1024 * 1024 // 4)  # 512 MB: far larger than any last-level cache
    y = torch.empty_like(x)
    t = best_of(lambda: y.copy_(x), repeat=5)
    bandwidth = 2 * x.numel() * 4 / t / 1e9  # read + write
    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "matmul_gflops": round(gflops, 1),
        "mem_bandwidth_gbs": round(bandwidth, 1),
        "torch": torch.__version__,
    }


def peak_rss_of(code: str) -> float:
    """Peak RSS growth (MB) of a fresh Python process while running `code`, after its imports (the kernel's
    high-water mark is reset through /proc/self/clear_refs so import-time peaks do not hide the load)."""
    prog = (
        "import json, torch, transformers, ctxlab.models.loading\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key):\n"
        "            return int(line.split()[1])\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "base = status('VmRSS:')\n"
        f"obj = {code}\n"
        "print(json.dumps({'base': base, 'peak': status('VmHWM:')}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, env=env, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return (r["peak"] - r["base"]) / 1024  # kB → MB


def table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def write_section(name: str, body: str) -> None:
    """Replace (or append) the `## name` section of bench/RESULTS.md."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nWritten by the scripts in bench/.\n"
    header = f"## {name}"
    parts = text.split("\n## ")
    kept = [parts[0]] + [p for p in parts[1:] if not p.startswith(name + "\n")]
    RESULTS.write_text("\n## ".join(kept).rstrip() + f"\n\n{header}\n\n{body.strip()}\n")

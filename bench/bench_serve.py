"""Load figures of `ctxlab serve`: requests/s, latency (p50/p99) and time to first token at 1, 4 and 16 concurrent
clients, and the server's memory under load, for any model name.

Run: `.venv/bin/python bench/bench_serve.py [--model bundled] [--max-batch 8,1] [--requests 48] [--update-results]`.
The server is a real `ctxlab serve` process on 127.0.0.1 (a free port); clients are threads sending streamed chat
completions (distinct prompts of --prompt-tokens tokens, greedy, --max-tokens answer tokens, a fixed answer length:
requests finish on length, not on EOS) over keep-alive HTTP. Loops are bounded: --requests per level, and no new
request after --level-seconds. Memory: the server's RSS sampled every 50 ms (peak during the level) and its
kernel high-water mark. Writes bench/out/serve-<model>.json and .md; bench/RESULTS.md only with --update-results.
Not a test: figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, table, write_section  # noqa: E402

OUT = ROOT / "bench" / "out"
WORDS = ("the ledger lists a transfer from account seven to the harbour office on the second day while the "
         "clerk records every balance in a bound book kept under the counter").split()


def prompts(model: str, n: int, tokens: int) -> list[str]:
    """n distinct user messages of about `tokens` tokens under the model's own tokenizer."""
    from ctxlab.models.loading import resolve_model_path
    from ctxlab.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(resolve_model_path(model))
    out = []
    for i in range(n):
        words = [f"Request {i}:"]
        j = i
        while tok.count_tokens(" ".join(words)) < tokens:
            words.append(WORDS[j % len(WORDS)])
            j += 7
        out.append(" ".join(words))
    return out


def rss_kb(pid: int, key: str = "VmRSS:") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


class ServeProcess:
    def __init__(self, model: str, threads: int, max_batch: int):
        cmd = [sys.executable, "-m", "ctxlab", "serve", model, "--port", "0", "--threads", str(threads),
               "--max-batch", str(max_batch), "--name", "bench"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        banner = self.proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", banner)
        if m is None:
            self.proc.kill()
            raise SystemExit(f"ctxlab serve did not start: {banner!r} {self.proc.stderr.read()[-2000:]}")
        self.port = int(m.group(1))
        self.banner = banner.strip()

    def get(self, path: str) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("GET", path)
        body = json.loads(conn.getresponse().read())
        conn.close()
        return body

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def one_request(conn: http.client.HTTPConnection, prompt: str, max_tokens: int) -> dict:
    """A streamed chat completion; returns latency, time to first token and completion tokens."""
    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    first = None
    usage = None
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
            first = time.perf_counter() - t0
        if chunk.get("usage"):
            usage = chunk["usage"]
    latency = time.perf_counter() - t0
    return {"latency": latency, "ttft": first if first is not None else latency,
            "completion_tokens": usage["completion_tokens"] if usage else 0}


def run_level(server: ServeProcess, texts: list[str], clients: int, requests: int, max_tokens: int,
              level_seconds: float) -> dict:
    todo = list(range(max(requests, clients)))
    lock = threading.Lock()
    results: list[dict] = []
    errors: list[str] = []
    deadline = time.perf_counter() + level_seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
        while True:
            with lock:
                if not todo or time.perf_counter() > deadline:
                    break
                i = todo.pop(0)
            try:
                r = one_request(conn, texts[i % len(texts)], max_tokens)
            except Exception as e:  # noqa: BLE001 - reported, not fatal to the bench
                errors.append(f"{type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
                continue
            with lock:
                results.append(r)
        conn.close()

    peak = [rss_kb(server.proc.pid)]
    stop = threading.Event()

    def sampler() -> None:
        while not stop.wait(0.05):
            peak.append(rss_kb(server.proc.pid))

    before = server.get("/v1/ctxlab/stats")
    watch = threading.Thread(target=sampler, daemon=True)
    watch.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stop.set()
    watch.join()
    after = server.get("/v1/ctxlab/stats")
    lat = sorted(r["latency"] for r in results)
    ttft = sorted(r["ttft"] for r in results)
    toks = sum(r["completion_tokens"] for r in results)
    batches = after["batches"] - before["batches"]

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")

    return {
        "clients": clients, "requests": len(results), "errors": len(errors), "first_error": errors[:1],
        "wall_s": round(wall, 2), "req_per_s": round(len(results) / wall, 3),
        "completion_tok_per_s": round(toks / wall, 1),
        "p50_latency_s": round(pct(lat, 0.5), 3), "p99_latency_s": round(pct(lat, 0.99), 3),
        "mean_latency_s": round(statistics.fmean(lat), 3) if lat else None,
        "p50_ttft_s": round(pct(ttft, 0.5), 3), "p99_ttft_s": round(pct(ttft, 0.99), 3),
        "mean_batch": round((after["rows"] - before["rows"]) / batches, 2) if batches else None,
        "peak_rss_mb": round(max(peak) / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bundled", help="any name `ctxlab serve` accepts")
    ap.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels")
    ap.add_argument("--max-batch", default="8", help="comma-separated server --max-batch values (one server each)")
    ap.add_argument("--requests", type=int, default=48, help="requests per level (at least one per client)")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="server torch threads")
    ap.add_argument("--level-seconds", type=float, default=300.0, help="no new request after this long per level")
    ap.add_argument("--out", type=Path, default=OUT, help="directory for serve-<model>.json/.md (untracked)")
    ap.add_argument("--update-results", action="store_true", help="also write the section of bench/RESULTS.md")
    args = ap.parse_args()
    levels = [int(x) for x in args.clients.split(",")]
    batches = [int(x) for x in args.max_batch.split(",")]
    texts = prompts(args.model, max(levels) * 4, args.prompt_tokens)
    rows = []
    env: dict = {}
    for mb in batches:
        server = ServeProcess(args.model, args.threads, mb)
        try:
            env.setdefault("banner", server.banner)
            env[f"idle_rss_mb_max_batch_{mb}"] = round(rss_kb(server.proc.pid) / 1024, 1)
            for i in range(2):  # warm-up: first-call allocations and lazy inits out of the figures
                one_request(http.client.HTTPConnection("127.0.0.1", server.port, timeout=600), texts[i], 4)
            for c in levels:
                r = {"max_batch": mb, **run_level(server, texts, c, args.requests, args.max_tokens,
                                                  args.level_seconds)}
                rows.append(r)
                print(json.dumps(r), flush=True)
            env[f"rss_high_water_mb_max_batch_{mb}"] = round(rss_kb(server.proc.pid, "VmHWM:") / 1024, 1)
        finally:
            server.close()
    load = os.getloadavg()[0]
    cols = ["max_batch", "clients", "requests", "errors", "req_per_s", "completion_tok_per_s", "p50_latency_s",
            "p99_latency_s", "p50_ttft_s", "p99_ttft_s", "mean_batch", "peak_rss_mb"]
    command = "`.venv/bin/python bench/bench_serve.py " + " ".join(sys.argv[1:]) + "`"
    body = (f"Command: {command} (model `{args.model}`, {args.threads} server torch thread(s), prompts of "
            f"{args.prompt_tokens} tokens, {args.max_tokens} greedy answer tokens, streamed chat completions over "
            f"loopback, {args.requests} requests per level; load average at the end {load:.1f}).\n\n"
            f"{table(rows, cols)}\n\nLatency = request sent → last byte; TTFT = request sent → first content "
            f"chunk; p99 of a level is about its slowest request; mean_batch = choices per batch from the server's "
            f"/v1/ctxlab/stats; peak_rss_mb = the server's RSS sampled every 50 ms during the level (the KV caches of "
            f"a batch are allocated per batch and freed after it).\n\nServer: {env}\n")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"serve-{re.sub(r'[^A-Za-z0-9_.-]+', '_', args.model)}"
    stem.with_suffix(".json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                     "rows": rows, "server": env}, indent=2))
    stem.with_suffix(".md").write_text(body)
    print(body)
    if args.update_results:
        write_section(f"Serve: load on {args.model}", body)


if __name__ == "__main__":
    main()

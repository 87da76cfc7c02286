"""Real models (SmolLM2-135M-Instruct, Gemma 3 270M): ctxlab vs transformers on the same GGUF weights, fp32 CPU.

Per model and thread count, the engines are interleaved in one process (each repeat runs every engine once, so
load drift on a shared machine hits them alike) and medians are reported: prefill tok/s at 512 and 2048 tokens,
greedy decode tok/s over 128 new tokens after a 512-token prompt. Peak RSS is measured in fresh processes, after the
load and again after a first 16-token forward (weights stay memory-mapped until touched, so the load figure alone
understates memory). Prints the machine's measured limits and the decode bandwidth ceiling.

Run:  .venv/bin/python bench/bench_real.py [--models smollm2-135m-instruct,gemma-3-270m] [--threads 1,2]
      [--repeats 3] [--quick] [--update-results]
Writes bench/out/real.md (untracked); --update-results also replaces the section in bench/RESULTS.md.
Not a test: timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, machine_limits, table, write_section  # noqa: E402
from ctxlab.engine import SamplingParams, generate  # noqa: E402
from ctxlab.models.loading import load_model  # noqa: E402
from ctxlab.realmodels import locate  # noqa: E402

OUT = ROOT / "bench" / "out"


class Engine:
    """One way of running a model: prefill(ids) and decode(prompt, n) → new ids."""

    name = ""

    def prefill(self, ids: torch.Tensor) -> None:
        raise NotImplementedError

    def decode(self, prompt: list[int], n: int) -> list[int]:
        raise NotImplementedError


class Ctxlab(Engine):
    name = "ctxlab fp32"

    def __init__(self, model_name: str):
        self.model = load_model(model_name).model

    def prefill(self, ids: torch.Tensor) -> None:
        with torch.inference_mode():
            self.model(ids, self.model.new_cache(1, ids.shape[1]), last_only=True)

    def decode(self, prompt: list[int], n: int) -> list[int]:
        return generate(self.model, [prompt], SamplingParams(max_new_tokens=n), eos_ids=())[0].ids


class Transformers(Engine):
    name = "transformers fp32"

    def __init__(self, model_name: str):
        import transformers

        path = locate(model_name)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32).eval()

    def prefill(self, ids: torch.Tensor) -> None:
        with torch.inference_mode():
            self.model(ids, use_cache=True, logits_to_keep=1)

    def decode(self, prompt: list[int], n: int) -> list[int]:
        with torch.inference_mode():
            out = self.model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                      eos_token_id=None, pad_token_id=0)
        return out[0, len(prompt):].tolist()


ENGINES: list[type[Engine]] = [Ctxlab, Transformers]


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per function; each repeat runs every function once, in rotating order."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for name in names:  # warm-up
        fns[name]()
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_rss(engine: str, model: str, threads: int) -> dict[str, float]:
    """Peak RSS (MB, whole process) after loading and after a first 16-token forward, in a fresh process."""
    prog = f"""
import json, torch, sys
sys.path.insert(0, {str(ROOT)!r})
torch.set_num_threads({threads})
from bench.bench_real import ENGINES
def hwm():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')) / 1024
base = hwm()
eng = next(e for e in ENGINES if e.name == {engine!r})({model!r})
load = hwm()
eng.prefill(torch.ones(1, 16, dtype=torch.long))
print(json.dumps({{"base": base, "load": load, "forward": hwm()}}))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_model(model: str, threads: int, repeats: int, lengths: list[int], new_tokens: int) -> list[dict]:
    torch.set_num_threads(threads)
    engines = [cls(model) for cls in ENGINES]
    vocab = engines[0].model.cfg.vocab_size
    g = torch.Generator().manual_seed(0)
    rows = {e.name: {"model": model, "threads": threads, "engine": e.name} for e in engines}
    for T in lengths:
        ids = torch.randint(10, vocab, (1, T), generator=g)
        med = interleaved({e.name: (lambda e=e, ids=ids: e.prefill(ids)) for e in engines}, repeats)
        for name, t in med.items():
            rows[name][f"prefill {T} tok/s"] = round(T / t, 1)
    prompt = torch.randint(10, vocab, (512,), generator=g).tolist()
    outs: dict[str, list[int]] = {}

    def dec(e: Engine) -> None:
        outs[e.name] = e.decode(prompt, new_tokens)

    med = interleaved({e.name: (lambda e=e: dec(e)) for e in engines}, max(1, repeats - 1))
    ref = outs[engines[0].name]
    for name, t in med.items():
        rows[name][f"decode tok/s ({new_tokens} after 512)"] = round(new_tokens / t, 2)
        rows[name]["same greedy ids"] = outs[name] == ref
    del engines
    for name, row in rows.items():
        rss = peak_rss(name, model, threads)
        row["peak RSS MB after load"] = round(rss["load"])
        row["peak RSS MB after 1st forward"] = round(rss["forward"])
    return list(rows.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2-135m-instruct,gemma-3-270m")
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="prefill 512 only, 32 new tokens, 2 repeats")
    ap.add_argument("--update-results", action="store_true", help="also replace the section in bench/RESULTS.md")
    args = ap.parse_args()
    lengths, new_tokens, repeats = ([512], 32, 2) if args.quick else ([512, 2048], 128, args.repeats)
    torch.set_num_threads(1)
    limits = machine_limits()
    print("machine:", limits, "load average:", os.getloadavg())
    rows = []
    for model in args.models.split(","):
        for threads in (int(t) for t in args.threads.split(",")):
            t0 = time.time()
            for row in bench_model(model, threads, repeats, lengths, new_tokens):
                rows.append(row)
                print(row)
            print(f"({model}, {threads} threads: {time.time() - t0:.0f}s)")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    ceilings = []
    for model in args.models.split(","):
        m = load_model(model).model
        # every layer weight and the head stream once per token; an untied embedding is only a row lookup
        per_token = (sum(p.numel() for p in m.parameters()) - (m.tok_emb.weight.numel() if m.lm_head is not None
                                                                else 0)) * 4
        ceilings.append(f"- {model}: {per_token / 1e6:.0f} MB of fp32 weights streamed per decoded token → decode "
                        f"ceiling ≈ {limits['mem_bandwidth_gbs'] * 1e9 / per_token:.1f} tok/s at the measured "
                        f"{limits['mem_bandwidth_gbs']} GB/s copy bandwidth")
    cmd = " ".join(["bench/bench_real.py", *sys.argv[1:]])
    body = (f"Command: `.venv/bin/python {cmd}` (fp32, CPU, batch 1, engines interleaved in one process, medians; "
            f"load average at start {os.getloadavg()[0]:.1f}).\n\nMachine: {limits}\n\n" + table(rows, cols)
            + "\n\nCeilings:\n" + "\n".join(ceilings))
    OUT.mkdir(exist_ok=True)
    (OUT / "real.md").write_text(body + "\n")
    print(body)
    if args.update_results:
        write_section("Real models: ctxlab vs transformers on the same GGUF weights", body)


if __name__ == "__main__":
    main()

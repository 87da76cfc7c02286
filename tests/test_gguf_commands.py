"""A .gguf path works wherever a model is accepted: every model-running command, as a user runs it (console)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.gguf_utils import write_gguf
from tests.test_gguf import tiny_hf


@pytest.fixture(scope="module")
def gguf_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("ggufcmd")
    return write_gguf(tiny_hf("llama", max_position_embeddings=4096), d / "tiny.gguf", "llama"), d


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "ctxlab", *args], capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    return r


def test_generate_info_card(gguf_model):
    path, _ = gguf_model
    assert run("generate", str(path), "--prompt", "hello", "--max-new-tokens", "3").stderr.strip()
    assert '"format": "gguf"' in run("info", str(path), "--json").stdout
    assert "| format | gguf |" in run("card", str(path)).stdout


def test_ttt(gguf_model):
    path, d = gguf_model
    (d / "ctx.txt").write_text("The grass is green. The pass key is 4217. The sky is blue.")
    r = run("ttt", str(path), "--context", str(d / "ctx.txt"), "--question", "What is the pass key?", "--steps", "2",
            "--span", "4", "--max-new-tokens", "3")
    assert "span loss" in r.stdout + r.stderr


def test_eval_and_demo(gguf_model):
    path, d = gguf_model
    run("eval", str(path), "--tasks", "sandbox:kv", "--limit", "1", "--out", str(d / "run"), "--task-opt",
        "n_tokens=200", "--no-progress")
    assert json.loads((d / "run" / "results.json").read_text())
    run("demo", "--model", str(path), "--quick", "--lengths", "128", "--n", "1", "--out-dir", str(d / "demo"))
    assert (d / "demo" / "results.json").is_file()


def test_chat_and_synth_qa(gguf_model):
    path, d = gguf_model
    (d / "user.txt").write_text("hello\n")
    run("chat", "tickets", str(path), "--user-script", str(d / "user.txt"), "--max-turns", "1", "--transcript",
        str(d / "t"))
    (d / "c.jsonl").write_text(json.dumps({"context": "Paris is the capital of France.", "lang": "en"}) + "\n")
    run("synth-qa", str(path), "--contexts", str(d / "c.jsonl"), "--out", str(d / "s.json"), "--no-roundtrip",
        "--max-new-tokens", "4")
    assert (d / "s.stats.json").is_file()


def test_train_from_a_gguf_and_export(gguf_model):
    path, d = gguf_model
    rows = [{"prompt": f"Q: {i}+{i}?\nA:", "completion": f" {2 * i}"} for i in range(4)]
    (d / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "sft.toml").write_text(
        f'seed = 0\nout_dir = "{d / "sftrun"}"\n[model]\ninit = "{path}"\n[data]\nseq_len = 32\nheldout = 0.0\n'
        f'jsonl = "{d / "sft.jsonl"}"\n[optim]\nlr = 1e-3\nmax_steps = 2\nbatch_size = 2\n'
        f'[export]\ndir = "{d / "export"}"\n')
    run("train", "sft", "--config", str(d / "sft.toml"))
    assert (d / "export" / "tokenizer.json").is_file() and (d / "export" / "model.safetensors").is_file()
    run("generate", str(d / "export"), "--prompt", "Q: 1+1?", "--max-new-tokens", "2")

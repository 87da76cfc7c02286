"""Every bad input gives one clear line on stderr and a non-zero exit — never a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from ctxlab.train.scratch import build_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("ck") / "tiny", max_len=64)


def copy(ckpt: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "m"
    shutil.copytree(ckpt, dst)
    return dst


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctxlab", *args], capture_output=True, text=True, timeout=120)


def assert_one_line_error(r: subprocess.CompletedProcess, needle: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert any(needle in ln for ln in lines), r.stderr
    assert lines[-1].startswith("error:") or "Usage" in r.stderr or "Invalid value" in r.stderr, r.stderr


def test_missing_directory(tmp_path):
    assert_one_line_error(run("info", str(tmp_path / "nope")), "model not found")


def test_missing_config(ckpt, tmp_path):
    m = copy(ckpt, tmp_path)
    (m / "config.json").unlink()
    assert_one_line_error(run("info", str(m)), "missing config.json")


def test_corrupt_config(ckpt, tmp_path):
    m = copy(ckpt, tmp_path)
    (m / "config.json").write_text("{not json")
    assert_one_line_error(run("info", str(m)), "corrupt config.json")


def test_unknown_model_type(ckpt, tmp_path):
    m = copy(ckpt, tmp_path)
    cfg = json.loads((m / "config.json").read_text())
    (m / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt_neox"}))
    r = run("info", str(m))
    assert_one_line_error(r, "unsupported model_type 'gpt_neox'")
    assert "qwen3" in r.stderr and "llama" in r.stderr


def test_truncated_safetensors(ckpt, tmp_path):
    m = copy(ckpt, tmp_path)
    data = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_line_error(run("generate", str(m), "--prompt", "hi", "--max-new-tokens", "2"), "safetensors")


def test_garbage_safetensors(ckpt, tmp_path):
    m = copy(ckpt, tmp_path)
    (m / "model.safetensors").write_bytes(b"\x00" * 64)
    assert_one_line_error(run("generate", str(m), "--prompt", "hi", "--max-new-tokens", "2"), "corrupt safetensors")


def _rewrite(m: Path, fn) -> None:
    sd = load_file(str(m / "model.safetensors"))
    save_file(fn(sd), str(m / "model.safetensors"), metadata={"format": "pt"})


def test_missing_tensor(ckpt, tmp_path):
    m = copy(ckpt, tmp_path)
    _rewrite(m, lambda sd: {k: v for k, v in sd.items() if "layers.1.mlp.up_proj" not in k})
    assert_one_line_error(run("generate", str(m), "--prompt", "hi"), "missing tensors in checkpoint")


def test_unexpected_tensor(ckpt, tmp_path):
    m = copy(ckpt, tmp_path)
    _rewrite(m, lambda sd: {**sd, "model.layers.0.mlp.extra.weight": sd["model.norm.weight"].clone()})
    assert_one_line_error(run("generate", str(m), "--prompt", "hi"), "unexpected tensors")


def test_shape_mismatch(ckpt, tmp_path):
    m = copy(ckpt, tmp_path)
    _rewrite(m, lambda sd: {**sd, "model.norm.weight": sd["model.norm.weight"][:-1].clone()})
    assert_one_line_error(run("generate", str(m), "--prompt", "hi"), "shape mismatch for model.norm.weight")


def test_pickled_only(ckpt, tmp_path):
    m = copy(ckpt, tmp_path)
    (m / "model.safetensors").rename(m / "pytorch_model.bin")
    assert_one_line_error(run("generate", str(m), "--prompt", "hi"), "pickled weights")


def test_missing_tokenizer(ckpt, tmp_path):
    m = copy(ckpt, tmp_path)
    (m / "tokenizer.json").unlink()
    assert_one_line_error(run("generate", str(m), "--prompt", "hi"), "tokenizer.json")


@pytest.mark.parametrize(
    "opts,needle",
    [
        (["--temperature", "-1"], "temperature"),
        (["--top-p", "0"], "top_p"),
        (["--top-p", "1.5"], "top_p"),
        (["--top-k", "-3"], "top_k"),
    ],
)
def test_invalid_sampling_options(ckpt, opts, needle):
    assert_one_line_error(run("generate", str(ckpt), "--prompt", "hi", *opts), needle)


def test_prompt_longer_than_context(ckpt):
    long = "account balance " * 200
    r = run("generate", str(ckpt), "--prompt", long, "--max-new-tokens", "4")
    assert_one_line_error(r, "context")
    ok = run("generate", str(ckpt), "--prompt", long, "--max-new-tokens", "4", "--truncate")
    assert ok.returncode == 0, ok.stderr


def test_offline_hub_id_not_cached(monkeypatch, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "ctxlab", "info", "nobody-here/not-a-model"],
        capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)},
    )
    assert_one_line_error(r, "not cached locally")

"""`ctxlab demo`: option validation (before any model is loaded), the results.json schema, the PNG, matched
compute, partial runs, and `--quick` end to end on a tiny scratch checkpoint (and on the bundled model when built)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ctxlab.apps.demo import records
from ctxlab.apps.demo import sweep as demo
from ctxlab.errors import CtxlabError
from ctxlab.train.scratch import build_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("demo") / "tiny", max_len=2048)


def run_cli(*args: str, timeout: float = 170) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctxlab", "demo", *args], capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    for needle in needles:
        assert needle in lines[0], r.stderr


# ------------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("kw, needle", [
    ({"tasks": "kv,nope"}, "unknown task 'nope'; valid: bank, code, kv"),
    ({"strategies": "thinking,beam"}, "unknown strategy 'beam'; valid: in-context, thinking, qttt"),
    ({"tasks": " , "}, "no tasks given"),
    ({"lengths": "256,abc"}, "lengths must be integers >= 64"),
    ({"lengths": [32]}, "lengths must be integers >= 64"),
    ({"n": 0}, "n must be an integer >= 1"),
    ({"think_budget": 0}, "think_budget must be an integer >= 1"),
    ({"qttt_steps": -1}, "qttt_steps must be an integer >= 1"),
    ({"qttt_span": 0}, "qttt_span must be an integer >= 1"),
    ({"qttt_lr": 0.0}, "qttt_lr must be a number > 0"),
    ({"qttt_lr": float("nan")}, "qttt_lr must be a number > 0"),
    ({"threads": 0}, "threads must be an integer >= 1"),
    ({"qttt_region": "question"}, "qttt_region must be one of context, prompt, got 'question'"),
    ({"seed": -3}, "seed must be an integer >= 0"),
])
def test_config_validation(kw, needle):
    with pytest.raises(CtxlabError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        demo.make_config(**kw)


def test_config_defaults_and_matching_modes():
    full, quick = demo.make_config(), demo.make_config(quick=True)
    assert full.lengths == (256, 512, 1024, 2048, 4096) and quick.lengths == (256, 1024)
    assert quick.n < full.n and quick.think_budget < full.think_budget
    assert full.tasks == ("kv", "bank", "code") and full.strategies == ("in-context", "thinking", "qttt")
    assert demo.make_config(lengths="1024, 256,256").lengths == (256, 1024)
    assert full.matching == "qttt-from-thinking"
    rev = demo.make_config(qttt_steps=4)
    assert rev.matching == "thinking-from-qttt" and rev.think_budget is None
    assert "4 qTTT steps" in rev.describe_matching()
    assert demo.make_config(qttt_steps=4, think_budget=64).matching == "none"
    assert full.qttt_region == "context" and demo.make_config(qttt_region="prompt").qttt_region == "prompt"


def test_cli_errors_are_one_line_and_come_before_the_model(tmp_path):
    missing = str(tmp_path / "no-such-model")
    # a bad task is reported even though the model does not exist: options are checked first
    assert_one_line_error(run_cli("--model", missing, "--tasks", "kv,bogus"), "unknown task 'bogus'",
                          "bank, code, kv")
    assert_one_line_error(run_cli("--model", missing, "--strategies", "qttt,cot"), "unknown strategy 'cot'",
                          "in-context, thinking, qttt")
    assert_one_line_error(run_cli("--model", missing, "--out-dir", str(tmp_path / "o")), "model not found")
    assert not (tmp_path / "o").exists()


def test_bundled_missing_is_a_clear_error(tmp_path, monkeypatch):
    import ctxlab.assets as assets

    monkeypatch.setattr(assets, "BUNDLED", tmp_path / "bundled")
    with pytest.raises(CtxlabError, match="bundled model is missing"):
        demo.resolve_model("bundled")
    assert demo.resolve_model("some/dir") == "some/dir"


def test_context_limit_checked_before_the_sweep(tiny, tmp_path):
    with pytest.raises(CtxlabError, match="exceed the model's context of 2048"):
        demo.run_demo(demo.make_config(model=str(tiny), lengths=[2048], n=1, out_dir=str(tmp_path / "o")))
    assert not (tmp_path / "o" / "results.json").exists()


def test_wilson():
    lo, hi = records.wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = records.wilson(0, 6)
    assert lo == 0.0 and hi == pytest.approx(0.3903, abs=1e-4)
    assert records.wilson(6, 6)[1] == 1.0


# ------------------------------------------------------------------------------------------------ running


def test_partial_run_leaves_valid_results(tiny, tmp_path, monkeypatch):
    """Interrupted after two examples: results.json is valid, says so, and holds what was measured."""
    calls = {"n": 0}
    real = demo.Runner.run

    def flaky(self, item):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, item)

    monkeypatch.setattr(demo.Runner, "run", flaky)
    out = tmp_path / "partial"
    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(demo.make_config(model=str(tiny), tasks="kv", lengths=[128], n=4, strategies="in-context,qttt",
                      think_budget=16, out_dir=str(out)))
    d = json.loads((out / "results.json").read_text())
    assert d["status"] == "interrupted"
    assert len(d["samples"]) == 4 and {s["strategy"] for s in d["samples"]} == {"in-context", "qttt"}
    assert [p["n"] for p in d["points"]] == [2, 2]
    assert (out / "demo.png").is_file()


def test_thinking_from_qttt_matching(tiny, tmp_path):
    from ctxlab.models.loading import load_model
    from ctxlab.strategies.flops import ArchCost

    r = demo.run_demo(demo.make_config(model=str(tiny), tasks="kv", lengths=[128], n=1, qttt_steps=3, qttt_span=8,
                      out_dir=str(tmp_path / "rev")))
    cost = ArchCost.from_config(load_model(tiny).model.cfg)
    q = next(s for s in r.samples if s.strategy == "qttt")
    t = next(s for s in r.samples if s.strategy == "thinking")
    assert q.qttt_steps == 3 and q.qttt_span == 8
    assert t.think_budget == cost.think_budget(q.prompt_tokens, 8, 3) and t.think_tokens <= t.think_budget
    assert "thinking budget chosen per example" in r.matching


def check_results(out: Path, tasks: list[str], lengths: list[int], n: int) -> dict:
    from ctxlab.models.loading import load_model
    from ctxlab.strategies.flops import ArchCost

    d = json.loads((out / "results.json").read_text())
    assert d["schema"] == "ctxlab.apps.demo.sweep/1" and d["status"] == "complete"
    assert d["config"]["tasks"] == tasks and d["config"]["lengths"] == lengths and d["config"]["n"] == n
    assert d["config"]["quick"] is True
    assert {"python", "packages", "git", "torch_threads"} <= set(d["env"]) and "torch" in d["env"]["packages"]
    assert d["model"]["parameters"] > 0 and "multiply-accumulates" in d["flops_unit"]
    assert "ArchCost.match" in d["matching"] and d["elapsed_s"] > 0
    strategies = ["in-context", "thinking", "qttt"]
    assert len(d["points"]) == len(tasks) * len(lengths) * 3
    assert len(d["samples"]) == len(tasks) * len(lengths) * 3 * n
    cost = ArchCost.from_config(load_model(d["model"]["path"]).model.cfg)
    budget = d["config"]["think_budget"]
    for p in d["points"]:
        assert p["task"] in tasks and p["target_tokens"] in lengths and p["strategy"] in strategies
        assert p["n"] == n and 0 <= p["ci_low"] <= p["accuracy"] <= p["ci_high"] <= 1
        assert p["accuracy"] == pytest.approx(p["correct"] / n)
        assert 0 < p["attn_mass"] <= 1 and p["flops"] > 0 and p["wall_s"] > 0 and 0 < p["chance"] <= 1
        assert abs(p["mean_prompt_tokens"] - p["target_tokens"]) < 0.5 * p["target_tokens"]
    for s in d["samples"]:
        assert isinstance(s["correct"], bool) and isinstance(s["generation"], str) and s["reference"]
        assert s["prediction"] is None or isinstance(s["prediction"], str)
        assert s["correct"] == (s["prediction"] == s["reference"])
        assert 0 <= s["attn_mass"] <= 1 and s["evidence_tokens"] >= 1 and s["flops"] > 0
        if s["strategy"] == "thinking":
            assert 0 <= s["think_tokens"] <= budget == s["think_budget"]
        if s["strategy"] == "qttt":  # N steps of span k cost no more than the thinking budget, N + 1 would
            k, N, T = s["qttt_span"], s["qttt_steps"], s["prompt_tokens"]
            assert N == cost.match(T, budget, k)[1] >= 1
            assert N * cost.qttt_step(T, k) <= cost.think(T, budget) * (1 + 1e-9) or N == 1
            assert (N + 1) * cost.qttt_step(T, k) > cost.think(T, budget)
    # a point's numbers are its samples' numbers
    p = d["points"][0]
    mine = [s for s in d["samples"] if (s["task"], s["target_tokens"], s["strategy"]) ==
            (p["task"], p["target_tokens"], p["strategy"])]
    assert p["correct"] == sum(s["correct"] for s in mine)
    assert p["attn_mass"] == pytest.approx(sum(s["attn_mass"] for s in mine) / n)
    png = (out / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (out / "table.md").read_text().startswith("| task |")
    return d


@pytest.mark.slow
def test_quick_end_to_end_tiny(tiny, tmp_path):
    out = tmp_path / "quick"
    r = run_cli("--quick", "--model", str(tiny), "--out-dir", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "evidence mass" in r.stdout and "qTTT" in r.stdout and "results.json" in r.stdout
    check_results(out, ["kv", "bank", "code"], [256, 1024], demo.DEFAULTS["n"][1])


@pytest.mark.slow
def test_quick_on_bundled_model(tmp_path):
    from ctxlab.assets import BUNDLED

    if not (BUNDLED / "model.safetensors").is_file():
        pytest.skip("the bundled model is not built yet")
    out = tmp_path / "bundled"
    r = run_cli("--quick", "--n", "2", "--out-dir", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    check_results(out, ["kv", "bank", "code"], [256, 1024], 2)


@pytest.mark.parametrize("region", ["context", "prompt"])
def test_qttt_region_reaches_the_adaptation(tiny, tmp_path, monkeypatch, region):
    import ctxlab.strategies.qttt as qttt

    seen = []
    real = qttt.adapt

    def spy(model, cache, ids, cfg, **kw):
        seen.append((cfg.region, kw.get("context_len"), ids.shape[-1]))
        return real(model, cache, ids, cfg, **kw)

    monkeypatch.setattr(qttt, "adapt", spy)
    demo.run_demo(demo.make_config(model=str(tiny), tasks="kv", lengths=[128], n=1, strategies="qttt", qttt_steps=2,
                  qttt_span=8, qttt_region=region, out_dir=str(tmp_path / region)))
    assert [s[0] for s in seen] == [region] and seen[0][1] < seen[0][2]  # the question follows the context
    assert json.loads((tmp_path / region / "results.json").read_text())["config"]["qttt_region"] == region

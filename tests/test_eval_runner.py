"""The eval runner end to end: every task family on a tiny random checkpoint, every strategy, results files,
resume (in-process failure and SIGKILL), 2-process torchrun sharding, bad inputs (one clear error before the
model loads, nothing computed is lost), report, tasks and card commands.

The fake backends below are importable as `test_eval_runner:KVBackend` (the runner accepts module:Class)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ctxlab.commands import eval as eval_cmd
from ctxlab.commands.card import card as card_cli
from ctxlab.commands.report import compare_runs as report_cli
from ctxlab.commands.tasks import list_tasks as tasks_cli
from ctxlab.errors import CtxlabError
from ctxlab.eval.backends.base import BaseBackend, Option, pool_imap
from ctxlab.eval.results import load_results
from ctxlab.eval.runner import EvalConfig, plan, run_eval
from ctxlab.eval.store import RunStore

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures"
DATA = (f"longbench_v2={FIX / 'longbench_v2'}", f"zeroscrolls={FIX / 'zeroscrolls'}", f"xquad={FIX / 'xquad'}",
        f"tickettalk={FIX / 'tickettalk' / 'split.tsv'}")
KV = "test_eval_runner:KVBackend"


# ------------------------------------------------------------------------------------------------ fakes


class KVBackend(BaseBackend):
    """Answers sandbox:kv by looking the key up in the prompt, wrong on purpose when the value is divisible by 3
    (so accuracy is neither 0 nor 100). `delay` slows each request; `fail_after` raises after N requests."""

    name: ClassVar[str] = "fake-kv"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "delay": Option(float, 0.0, "seconds per request", identity=False),
        "concurrency": Option(int, 1, "requests in flight", identity=False),
        "fail_after": Option(int, 0, "raise after this many requests (0 = never)", identity=False),
    }

    def __init__(self, options):
        self.options = dict(options)
        self.calls = 0

    @classmethod
    def load(cls, model, options):
        return cls(options)

    def complete(self, prompt, max_new_tokens, temperature, stop):
        self.calls += 1
        if self.options["fail_after"] and self.calls > self.options["fail_after"]:
            raise CtxlabError("fake backend: connection lost")
        time.sleep(self.options["delay"])
        key = re.search(r"value of the key (\S+)\?", prompt).group(1)
        value = re.search(rf"^{re.escape(key)}: (\d+)$", prompt, re.M).group(1)
        return f"Final: {value if int(value) % 3 else '000000'}"

    def imap(self, prompts, max_new_tokens, temperature=0.0, stop=()):
        yield from pool_imap(lambda p: self.complete(p, max_new_tokens, temperature, stop), prompts,
                             self.options["concurrency"])


class ExplodingBackend(KVBackend):
    """Fails the test if anything tries to load it: bad input must be rejected before."""

    @classmethod
    def load(cls, model, options):
        raise AssertionError("the model was loaded despite bad input")


# ------------------------------------------------------------------------------------------------ fixtures


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from ctxlab.train.scratch import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("ev") / "tiny", max_len=320)


@pytest.fixture(scope="module")
def ckpt_long(tmp_path_factory) -> Path:
    """Context long enough that no strategy needs to cut the prompt (FLOPs then compare like for like)."""
    from ctxlab.train.scratch import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("ev") / "tiny1k", max_len=1024)


def cfg(out: Path, **kw: Any) -> EvalConfig:
    base: dict[str, Any] = {"model": "fake", "tasks": "sandbox:kv", "backend": KV, "out": str(out),
                            "task_options": (("n_tokens", "120"), ("n_samples", "12")), "bootstrap": 200}
    return EvalConfig(**{**base, **kw})


def metrics_of(run_dir: Path) -> dict:
    r = load_results(run_dir)
    return {t: {m: (v.value, v.stderr) for m, v in tr.metrics.items()} for t, tr in r.tasks.items()}


def samples_of(run_dir: Path) -> list[dict]:
    keep = ("task", "id", "index", "prompt_hash", "sample_hash", "prediction", "generation", "reference", "scores",
            "flops", "truncated_tokens")
    lines = (run_dir / "samples.jsonl").read_text().splitlines()
    return [{k: json.loads(line)[k] for k in keep} for line in lines]


def stored_rows(run_dir: Path) -> list[tuple[str, str]]:
    rows = []
    for shard in sorted((run_dir / "store").glob("rank-*.sqlite")):
        with sqlite3.connect(f"file:{shard}?mode=ro", uri=True) as conn:
            try:
                rows += conn.execute("SELECT task, sample_id FROM samples").fetchall()
            except sqlite3.OperationalError:  # the writer has not created its table yet
                pass
    return rows


def env_for_subprocess() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO), env.get("PYTHONPATH", "")])
    return env


# ------------------------------------------------------------------------------------------------ end to end


def test_every_task_family_end_to_end(ckpt, tmp_path):
    """All families on the tiny model, with a context small enough that every truncation policy is exercised."""
    tasks = ("longbench_v2,zeroscrolls:qasper,zeroscrolls:quality,zeroscrolls:gov_report,sandbox:kv,sandbox:bank,"
             "xquad:en,xquad:zh,tickettalk")
    out = tmp_path / "all"
    res = run_eval(EvalConfig(model=str(ckpt), tasks=tasks, limit=2, data_dirs=DATA, out=str(out),
                              task_options=(("n_tokens", "300"),), max_new_tokens=6, bootstrap=100))
    assert set(res.tasks) == set(tasks.split(","))
    assert res.n_samples == 18 and res.duplicates == 0
    assert res.tasks["tickettalk"].metrics.keys() == {"bleu", "api_exact_match", "api_arg_f1"}
    assert res.tasks["xquad:zh"].languages == ["zh"]
    assert res.tasks["longbench_v2"].truncation == "middle" and res.tasks["longbench_v2"].truncated_samples == 2
    assert res.tasks["zeroscrolls:quality"].truncation == "keep_query"
    assert res.tasks["sandbox:kv"].truncation == "left_context" and res.tasks["sandbox:kv"].truncated_samples == 2
    assert set(res.tasks["longbench_v2"].breakdown["accuracy"]) == {"difficulty", "length"}
    for tr in res.tasks.values():
        assert tr.n_samples == 2 and tr.flops_total > 0 and tr.version == "1.0"
        for m in tr.metrics.values():
            assert 0.0 <= m.value <= 100.0 and m.stderr >= 0.0
    assert res.model["config_hash"] and res.env["packages"]["torch"] and "hash" in res.env["git"]
    assert res.strategy["name"] == "in-context" and res.flops["total"] > 0
    rows = samples_of(out)
    assert len(rows) == 18 and all(len(r["prompt_hash"]) == 64 for r in rows)
    for line in (out / "samples.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert rec["prompt_tokens"] + 6 <= 320  # every prompt was fitted to the model's context
    assert load_results(out).to_dict() == res.to_dict()


def test_strategies_at_matched_budget(ckpt_long, tmp_path):
    results, prompts = {}, set()
    for name, opts in (("in-context", ()), ("thinking", ()), ("self-consistency", (("samples", "2"),)),
                       ("qttt", (("span", "16"),))):
        r = run_eval(EvalConfig(model=str(ckpt_long), tasks="sandbox:kv", strategy=name, budget_think_tokens=12,
                                limit=1, out=str(tmp_path / name), task_options=(("n_tokens", "120"),),
                                strategy_options=opts, max_new_tokens=4, bootstrap=50))
        assert r.strategy["name"] == name and r.strategy["budget_think_tokens"] == 12
        assert r.tasks["sandbox:kv"].truncated_samples == 0 and r.flops["total"] > 0
        results[name] = json.loads((tmp_path / name / "samples.jsonl").read_text())
        prompts.add(results[name]["sample_hash"])
    assert len(prompts) == 1  # the same sample for every strategy
    assert results["qttt"]["flops"] > results["in-context"]["flops"]  # adaptation steps on top of the answer
    assert results["qttt"]["extra"]["matched"] is True and results["qttt"]["extra"]["N"] >= 1
    assert results["thinking"]["extra"]["think_tokens"] <= 12
    assert results["self-consistency"]["extra"]["per_sample_budget"] == 6


def test_remote_backend_through_the_runner(tmp_path):
    res = run_eval(cfg(tmp_path / "kv", backend_options=(("concurrency", "3"),)))
    rows = samples_of(tmp_path / "kv")
    expected = sum(1 for r in rows if int(r["reference"]) % 3) / len(rows) * 100
    assert res.tasks["sandbox:kv"].metrics["accuracy"].value == pytest.approx(expected)
    assert 0 < expected < 100 and res.flops["total"] is None
    assert [r["index"] for r in rows] == list(range(12))


# ------------------------------------------------------------------------------------------------ resume


def test_failed_run_resumes_to_identical_results(tmp_path):
    ref = tmp_path / "ref"
    run_eval(cfg(ref))
    out = tmp_path / "broken"
    with pytest.raises(CtxlabError, match="connection lost"):
        run_eval(cfg(out, backend_options=(("fail_after", "5"),)))
    assert len(stored_rows(out)) == 5 and not (out / "results.json").exists()
    with pytest.raises(CtxlabError, match="already holds a run; pass --resume"):
        run_eval(cfg(out))
    p = plan(cfg(out, resume=True))
    assert p.stored == 5 and len(p.pending) == 7
    res = run_eval(cfg(out, resume=True))
    assert res.timings["computed_now"] == 7 and res.timings["resumed"] == 5
    assert metrics_of(out) == metrics_of(ref) and samples_of(out) == samples_of(ref)
    rows = stored_rows(out)
    assert len(rows) == len(set(rows)) == 12


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path):
    """A subprocess killed with SIGKILL mid-run, resumed: exactly the uninterrupted run's samples and metrics."""
    ref = tmp_path / "ref"
    run_eval(cfg(ref))
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "ctxlab", "eval", "fake", "--tasks", "sandbox:kv", "--backend", KV,
            "--task-opt", "n_tokens=120", "--task-opt", "n_samples=12", "--bootstrap", "200", "--out", str(out),
            "--backend-opt", "delay=0.25", "--backend-opt", "concurrency=2", "--no-progress"]
    proc = subprocess.Popen(args, env=env_for_subprocess(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 25
    while time.time() < deadline and proc.poll() is None:
        if (out / "store").is_dir() and len(stored_rows(out)) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    done = len(stored_rows(out))
    assert 4 <= done < 12 and not (out / "results.json").exists()
    r = subprocess.run(args + ["--resume"], env=env_for_subprocess(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert metrics_of(out) == metrics_of(ref) and samples_of(out) == samples_of(ref)
    rows = stored_rows(out)
    assert len(rows) == len(set(rows)) == 12
    assert load_results(out).timings["resumed"] == done


@pytest.mark.slow
def test_two_processes_match_one(ckpt, tmp_path):
    """torchrun with 2 CPU processes (gloo): each rank writes its own shard; rank 0 merges; identical results."""
    one, two = tmp_path / "one", tmp_path / "two"
    run_eval(EvalConfig(model=str(ckpt), tasks="sandbox:kv,xquad:en", limit=3, data_dirs=(DATA[2],), out=str(one),
                        task_options=(("n_tokens", "120"),), max_new_tokens=4, bootstrap=200))  # 1 process, 1 thread
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                         "-m", "ctxlab", "eval", str(ckpt), "--tasks", "sandbox:kv,xquad:en", "--limit", "3",
                         "--data-dir", DATA[2], "--task-opt", "n_tokens=120", "--max-new-tokens", "4",
                         "--bootstrap", "200", "--no-progress", "--out", str(two)],
                        env=env_for_subprocess(), capture_output=True, text=True, timeout=120)
    assert r2.returncode == 0, r2.stderr
    assert sorted(p.name for p in (two / "store").glob("rank-*.sqlite")) == ["rank-0.sqlite", "rank-1.sqlite"]
    assert metrics_of(two) == metrics_of(one) and samples_of(two) == samples_of(one)
    ranks = {json.loads(line)["rank"] for line in (two / "samples.jsonl").read_text().splitlines()}
    assert ranks == {0, 1} and load_results(two).env["world_size"] == 2


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("change, message", [
    ({"tasks": "sandbox:kvv"}, "unknown task 'sandbox:kvv'; valid tasks: longbench_v2,"),
    ({"metrics": ("acuracy",)}, "unknown metric 'acuracy'; valid metrics: "),
    ({"metrics": ("bleu",)}, "task sandbox:kv reports none of the requested metrics"),
    ({"strategy": "qttt"}, "strategy 'qttt' is not available on backend fake-kv"),
    ({"strategy": "tot"}, "unknown strategy 'tot'; valid strategies: in-context"),
    ({"backend": "vllm"}, "unknown backend 'vllm'; valid backends: native, hf, openai, gemini"),
    ({"backend_options": (("delayy", "1"),)}, "unknown option 'delayy' for backend fake-kv; valid options:"),
    ({"task_options": (("n_tokenz", "5"),)}, "unknown task option 'n_tokenz' for the selected tasks; valid"),
    ({"task_options": (("n_tokens", "many"),)}, "task option n_tokens must be int"),
    ({"tasks": "longbench_v2", "task_options": ()},
     "task longbench_v2 needs a data directory: pass --data-dir longbench_v2=PATH"),
    ({"tasks": "longbench_v2", "task_options": (), "data_dirs": ("longbench_v2=/no/such/dir",)},
     "data directory /no/such/dir"),
    ({"data_dirs": ("xquad=/tmp",)}, "--data-dir xquad=... matches no selected task"),
    ({"limit": 0}, "limit must be an integer >= 1"),
    ({"tasks": "zeroscrolls:qasper", "data_dirs": (DATA[1],), "task_options": (("split", "test"),)},
     "has no gold reference"),
])
def test_bad_input_fails_before_loading(tmp_path, change, message):
    with pytest.raises(CtxlabError) as e:
        run_eval(replace(cfg(tmp_path / "r", backend="test_eval_runner:ExplodingBackend"), **change))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "r").exists()


def test_unknown_strategy_on_native_lists_strategies(ckpt, tmp_path, monkeypatch):
    from ctxlab.eval.backends.native import NativeBackend

    monkeypatch.setattr(NativeBackend, "load", classmethod(lambda *a: pytest.fail("model loaded")))
    with pytest.raises(CtxlabError, match="unknown strategy 'tot'; valid strategies: in-context, thinking, "
                                          "self-consistency, qttt"):
        plan(EvalConfig(model=str(ckpt), tasks="sandbox:kv", strategy="tot", out=str(tmp_path / "r")))
    with pytest.raises(CtxlabError, match="unknown option 'sample' for strategy self-consistency; valid options"):
        plan(EvalConfig(model=str(ckpt), tasks="sandbox:kv", strategy="self-consistency",
                        strategy_options=(("sample", "2"),), out=str(tmp_path / "r")))


def test_malformed_rows_keep_computed_samples(tmp_path):
    """A malformed row is a one-line error naming file and row; samples already stored survive it."""
    data = tmp_path / "xq"
    data.mkdir()
    shutil.copy(FIX / "xquad" / "xquad.en.json", data / "xquad.en.json")
    out = tmp_path / "run"
    kw = {"model": "fake", "backend": "test_eval_runner:EchoBackend", "tasks": "xquad:en", "out": str(out),
          "data_dirs": (str(data),), "bootstrap": 50}
    first = run_eval(EvalConfig(**kw, limit=2))
    assert len(stored_rows(out)) == 2
    obj = json.loads((data / "xquad.en.json").read_text())
    del obj["data"][0]["paragraphs"][0]["qas"][1]["answers"]
    (data / "xquad.en.json").write_text(json.dumps(obj))
    with pytest.raises(CtxlabError, match=r"xquad.en.json: article 0 .*question 1 .*\"answers\" must be"):
        run_eval(EvalConfig(**kw, resume=True))
    (data / "xquad.en.json").write_text("{not json")
    with pytest.raises(CtxlabError, match="not valid UTF-8 JSON"):
        run_eval(EvalConfig(**kw, resume=True))
    assert len(stored_rows(out)) == 2 and load_results(out).to_dict() == first.to_dict()
    shutil.copy(FIX / "xquad" / "xquad.en.json", data / "xquad.en.json")
    obj = json.loads((data / "xquad.en.json").read_text())
    obj["data"][0]["paragraphs"][0]["qas"][0]["question"] += " (edited)"
    (data / "xquad.en.json").write_text(json.dumps(obj))
    with pytest.raises(CtxlabError, match="was computed from different data"):
        run_eval(EvalConfig(**kw, resume=True))
    with pytest.raises(CtxlabError, match="holds a run with different tasks"):
        run_eval(EvalConfig(**{**kw, "max_new_tokens": 3}, resume=True))


class EchoBackend(KVBackend):
    """Answers with the first word of the prompt's context (deterministic, task-agnostic)."""

    def complete(self, prompt, max_new_tokens, temperature, stop):
        return prompt.split("Context:", 1)[-1].split()[0]


def test_cli_one_line_error_and_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ctxlab", "eval", "fake", "--tasks", "xquad:xx,nope", "--backend", KV,
                        "--out", str(tmp_path / "r")], env=env_for_subprocess(), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "error: unknown task 'xquad:xx'" in r.stderr


# ------------------------------------------------------------------------------------------------ commands


def test_report_compares_runs(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    run_eval(cfg(a))
    run_eval(cfg(b, task_options=(("n_tokens", "120"), ("n_samples", "6"))))
    png = tmp_path / "cmp.png"
    c = report_cli([str(a), str(b)], str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert c.rows == [("sandbox:kv", "accuracy")] and len(c.labels) == 2
    text = capsys.readouterr().out
    assert "sandbox:kv" in text and "±" in text
    with pytest.raises(CtxlabError, match="no results.json in"):
        report_cli([str(tmp_path / "nope")], None)


def test_eval_cli_tasks_and_cards(tmp_path, capsys):
    res = eval_cmd.run("fake", "sandbox:kv", backend=KV, out=str(tmp_path / "e"), task_opt=["n_tokens=120",
                   "n_samples=3"], backend_opt=["concurrency=2"], bootstrap=50, progress=False)
    out = capsys.readouterr().out
    assert res.n_samples == 3 and "sandbox:kv" in out
    assert "think tokens" not in out  # the in-context table is not labelled with a thinking budget
    with pytest.raises(CtxlabError, match="KEY=VALUE"):
        eval_cmd.run("fake", "sandbox:kv", backend=KV, out=str(tmp_path / "f"), task_opt=["n_tokens"])
    rows = tasks_cli()
    by = {r["name"]: r for r in rows}
    assert by["xquad:zh"]["languages"] == ["zh"] and by["longbench_v2"]["needs_data_dir"]
    assert by["zeroscrolls:qasper"]["truncation"] == "keep_query" and all(r["version"] for r in rows)
    assert json.loads(card_cli("sandbox:kv", "json"))["card"]["overview"]
    assert card_cli("xquad:en", "html").lstrip().startswith("<")
    with pytest.raises(CtxlabError, match="unknown card format 'pdf'"):
        card_cli("sandbox:kv", "pdf")
    with pytest.raises(CtxlabError, match="unknown task 'nope'; valid tasks"):
        card_cli("nope")


def test_store_survives_half_created_shards_and_dedupes(tmp_path):
    from ctxlab.eval.store import SampleRecord

    store = RunStore(tmp_path / "run")
    (store.dir).mkdir(parents=True)
    (store.dir / "rank-3.sqlite").write_bytes(b"")  # a writer killed while creating its file
    rec = SampleRecord("t", "a", 0, "h", "p", "x", "x", "x", {"accuracy": 1.0})
    with store.shard(0) as s0, store.shard(1) as s1:
        assert s0.put(rec) and not s0.put(rec)  # one row per (task, id) within a shard
        s1.put(replace(rec, rank=1))  # the same sample in another shard (two writers on one directory)
        s1.put(replace(rec, sample_id="b", index=1, rank=1))
    merged = store.merged()
    assert [(r.sample_id, r.rank) for r in merged.records] == [("a", 0), ("b", 1)] and merged.duplicates == 1
    assert store.done() == {("t", "a"): "h", ("t", "b"): "h"}


def test_openai_backend_through_the_runner(tmp_path):
    """The real openai backend against the local fake server: prompts fitted to the served context (321 tokens
    from GET /models, approximate tokenizer), requests in parallel, every sample stored once."""
    from test_backends import FakeOpenAI

    from ctxlab.eval.backends import ApproxTokenizer

    server = FakeOpenAI()
    try:
        res = run_eval(EvalConfig(model="fake-model", tasks="sandbox:kv", backend="openai", out=str(tmp_path / "o"),
                                  backend_options=(("base_url", server.url), ("concurrency", "2")),
                                  task_options=(("n_tokens", "400"), ("n_samples", "4")), max_new_tokens=8,
                                  bootstrap=50))
    finally:
        server.close()
    assert res.n_samples == 4 and res.tasks["sandbox:kv"].truncated_samples == 4
    assert len(server.requests) == 4 and 1 <= server.max_in_flight <= 2
    tok = ApproxTokenizer()
    for req in server.requests:
        assert req["body"]["max_tokens"] == 8
        assert tok.count_tokens(req["body"]["messages"][-1]["content"]) + 8 <= 321
        assert req["body"]["messages"][-1]["content"].rstrip().endswith('after "Final:".')  # question kept

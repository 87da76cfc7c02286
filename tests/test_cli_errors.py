"""The bad-input table: every class of bad input, through the installed `ctxlab` console script, gives exactly one
line on stderr starting with "error:", exit status 2, no traceback, and (where it matters) nothing left behind.

Classes: usage errors of every command (missing/unknown option or argument, unknown command, non-integer values,
range violations), nonsensical checkpoint configs, unreadable files a user names (missing, directory, binary,
non-UTF-8, empty), non-finite or out-of-range numbers in options and TOML configs, absent devices, unwritable
output directories, budgets larger than the context, index files naming files outside the checkpoint, damaged run
records, runaway chat templates, unknown data. The cases run concurrently once (module fixture); each is a test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ctxlab.train.scratch import build_checkpoint

CTXLAB = Path(sys.executable).with_name("ctxlab")  # the console script pip installed next to this interpreter
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _write_config(ck: Path, dst: Path, **changes) -> Path:
    shutil.copytree(ck, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, **changes}))
    return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Files and checkpoints the cases point at."""
    t = tmp_path_factory.mktemp("bad")
    ck = build_checkpoint(t / "tiny", max_len=64)
    w = {"t": t, "ck": ck}
    (t / "binary.txt").write_bytes(b"\x00\x01\x02binary")
    (t / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (t / "empty.txt").write_text("  \n")
    (t / "adir").mkdir()
    (t / "text.txt").write_text("The key is 7f3a.\n")
    w["latin1-data"] = t / "lb"
    w["latin1-data"].mkdir()
    (w["latin1-data"] / "data.json").write_bytes('[{"_id": "caf\xe9"}]'.encode("latin-1"))
    for name, change in {"kv0": {"num_key_value_heads": 0}, "hid": {"hidden_size": "abc"},
                         "eps": {"rms_norm_eps": float("nan")}, "theta": {"rope_theta": "x"},
                         "eos": {"eos_token_id": 10**9}, "heads": {"num_attention_heads": 3},
                         "scaling": {"rope_scaling": 5}}.items():
        w[name] = _write_config(ck, t / f"cfg-{name}", **change)
    w["list"] = t / "cfg-list"
    shutil.copytree(ck, w["list"])
    (w["list"] / "config.json").write_text("[1, 2]")
    for name, shard in {"up": "../../elsewhere/x.safetensors", "abs": "/etc/passwd"}.items():
        d = t / f"index-{name}"
        shutil.copytree(ck, d)
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"model.norm.weight": shard}}))
        w[f"index-{name}"] = d
    w["template"] = t / "template"
    shutil.copytree(ck, w["template"])
    tc = json.loads((w["template"] / "tokenizer_config.json").read_text())
    (w["template"] / "tokenizer_config.json").write_text(json.dumps({**tc, "chat_template": "{{ 'x' * 10**10 }}"}))
    (w["template"] / "chat_template.jinja").unlink(missing_ok=True)
    w["corrupt"] = t / "corrupt"
    shutil.copytree(ck, w["corrupt"])
    (w["corrupt"] / "model.safetensors").write_bytes(b"\x00" * 64)
    for name, body in {"nan": "lr = nan", "inf": "heldout = inf"}.items():
        section = "optim" if name == "nan" else "data"
        p = t / f"train-{name}.toml"
        p.write_text(f'out_dir = "{t / ("train-out-" + name)}"\n[model]\ninit = "{ck}"\n[{section}]\n{body}\n')
        w[f"train-{name}"] = p
    for name, text in {"garbage": "{not json", "list": "[]"}.items():
        d = t / f"run-{name}"
        d.mkdir()
        (d / "run.json").write_text(text)
        w[f"run-{name}"] = d
    return w


# (class, id, args built from the world, the needle the one line must hold, paths that must not exist afterwards)
Case = tuple[str, str, Callable[[dict], list[str]], str, Callable[[dict], list[Path]]]
NONE: Callable[[dict], list[Path]] = lambda w: []  # noqa: E731

CASES: list[Case] = [
    # usage errors, every command
    ("usage", "no command", lambda w: ["nope"], "No such command", NONE),
    ("usage", "unknown option", lambda w: ["--bogus"], "No such option", NONE),
    *[("usage", f"{cmd} missing argument", lambda w, cmd=cmd: cmd.split(), "Missing", NONE)
      for cmd in ("info", "generate", "ttt", "train", "eval", "report", "card", "chat", "synth-qa",
                  "synth-qa-experiment", "tickets eval", "tickets selfplay", "tickets baseline", "tickets simulate")],
    ("usage", "generate non-integer", lambda w: ["generate", str(w["ck"]), "--prompt", "x", "--max-new-tokens", "x"],
     "Invalid value for '--max-new-tokens'", NONE),
    ("usage", "generate range", lambda w: ["generate", str(w["ck"]), "--prompt", "x", "--max-new-tokens", "0"],
     "Invalid value for '--max-new-tokens'", NONE),
    ("usage", "eval non-integer limit", lambda w: ["eval", "m", "--tasks", "sandbox:kv", "--limit", "many"],
     "Invalid value for '--limit'", NONE),
    ("usage", "demo non-integer", lambda w: ["demo", "--n", "x"], "Invalid value for '--n'", NONE),
    ("usage", "tickets prepare non-integer", lambda w: ["tickets", "prepare", "--n-sim", "x"], "Invalid value", NONE),
    ("usage", "chat max-turns range", lambda w: ["chat", "tickets", str(w["ck"]), "--max-turns", "0"],
     "Invalid value for '--max-turns'", NONE),
    ("usage", "unknown train kind", lambda w: ["train", "finetune", "--config", "x.toml"], "unknown training kind",
     NONE),
    ("usage", "unknown chat app", lambda w: ["chat", "pizza", str(w["ck"])], "unknown chat app", NONE),
    ("usage", "tickets replay", lambda w: ["tickets", "transcript", "--replay", "x", "--out", str(w["t"] / "t.md")],
     "--replay must be SEED:INDEX", NONE),
    # checkpoint configs
    *[("config", name, lambda w, name=name: ["info", str(w[name])], needle, NONE) for name, needle in {
        "kv0": "num_kv_heads must be an integer >= 1", "hid": "hidden_size must be an integer",
        "eps": "rms_norm_eps must be a finite number > 0", "theta": "rope_theta must be a finite number > 0",
        "eos": "eos_token_id must be a token id", "heads": "must be a multiple of num_kv_heads",
        "scaling": "rope_scaling must be JSON objects", "list": "expected a JSON object"}.items()],
    # files a user names
    *[("file", f"prompt {kind}", lambda w, f=f: ["generate", str(w["ck"]), "--prompt", f"@{f(w)}"], needle, NONE)
      for kind, f, needle in (("missing", lambda w: w["t"] / "nope.txt", "not found"),
                              ("directory", lambda w: w["t"] / "adir", "is a directory"),
                              ("binary", lambda w: w["t"] / "binary.txt", "binary"),
                              ("non-UTF-8", lambda w: w["t"] / "latin1.txt", "not UTF-8"),
                              ("empty", lambda w: w["t"] / "empty.txt", "is empty"))],
    *[("file", f"context {kind}", lambda w, f=f: ["ttt", str(w["ck"]), "--context", str(w["t"] / f),
                                                 "--question", "q?"], needle, NONE)
      for kind, f, needle in (("missing", "nope.txt", "not found"), ("directory", "adir", "is a directory"),
                              ("binary", "binary.txt", "binary"), ("non-UTF-8", "latin1.txt", "not UTF-8"),
                              ("empty", "empty.txt", "is empty"))],
    ("file", "user script binary", lambda w: ["chat", "tickets", str(w["ck"]), "--user-script",
                                              str(w["t"] / "binary.txt")], "binary", NONE),
    ("file", "train config missing", lambda w: ["train", "pretrain", "--config", str(w["t"] / "none.toml")],
     "not found", NONE),
    ("file", "train config non-UTF-8", lambda w: ["train", "pretrain", "--config", str(w["t"] / "latin1.txt")],
     "", NONE),
    ("file", "data file non-UTF-8", lambda w: ["eval", str(w["ck"]), "--tasks", "longbench_v2", "--data-dir",
                                               str(w["latin1-data"]), "--max-new-tokens", "4", "--out",
                                               str(w["t"] / "e-lb")], "not UTF-8", lambda w: [w["t"] / "e-lb"]),
    ("file", "report missing run", lambda w: ["report", str(w["t"] / "no-run"), "--out-png", ""], "no results.json",
     NONE),
    ("file", "synth-qa contexts binary", lambda w: ["synth-qa", str(w["ck"]), "--contexts", str(w["t"] / "binary.txt"),
                                                    "--out", str(w["t"] / "sq.json")], "", NONE),
    # numbers: NaN, infinity, sign, range
    ("number", "temperature nan", lambda w: ["generate", str(w["ck"]), "--prompt", "x", "--temperature", "nan"],
     "temperature", NONE),
    ("number", "top-p inf", lambda w: ["generate", str(w["ck"]), "--prompt", "x", "--top-p", "inf"], "top_p", NONE),
    ("number", "ttt lr nan", lambda w: ["ttt", str(w["ck"]), "--context", str(w["t"] / "text.txt"), "--question",
                                        "q?", "--lr", "nan"], "learning rate", NONE),
    ("number", "ttt lr inf", lambda w: ["ttt", str(w["ck"]), "--context", str(w["t"] / "text.txt"), "--question",
                                        "q?", "--lr", "inf"], "learning rate", NONE),
    ("number", "ttt steps negative", lambda w: ["ttt", str(w["ck"]), "--context", str(w["t"] / "text.txt"),
                                                "--question", "q?", "--steps", "-2"], "steps", NONE),
    ("number", "eval temperature inf", lambda w: ["eval", str(w["ck"]), "--tasks", "sandbox:kv", "--temperature",
                                                  "inf", "--out", str(w["t"] / "e-inf")], "temperature",
     lambda w: [w["t"] / "e-inf"]),
    ("number", "eval timeout nan", lambda w: ["eval", "m", "--backend", "openai", "--tasks", "sandbox:kv",
                                              "--timeout", "nan", "--out", str(w["t"] / "e-nan")], "timeout",
     lambda w: [w["t"] / "e-nan"]),
    ("number", "strategy option nan", lambda w: ["eval", str(w["ck"]), "--tasks", "sandbox:kv", "--strategy", "qttt",
                                                 "--strategy-opt", "lr=nan", "--out", str(w["t"] / "e-so")],
     "strategy option lr", lambda w: [w["t"] / "e-so"]),
    ("number", "task option text", lambda w: ["eval", str(w["ck"]), "--tasks", "sandbox:kv", "--task-opt",
                                              "n_tokens=many", "--out", str(w["t"] / "e-to")], "task option n_tokens",
     lambda w: [w["t"] / "e-to"]),
    ("number", "demo lr nan", lambda w: ["demo", "--qttt-lr", "nan", "--out-dir", str(w["t"] / "d-nan")], "qttt_lr",
     lambda w: [w["t"] / "d-nan"]),
    ("number", "synth-qa temperature nan", lambda w: ["synth-qa", str(w["ck"]), "--contexts", "xquad:en", "--out",
                                                      str(w["t"] / "s.json"), "--temperature", "nan"], "temperature",
     NONE),
    ("number", "toml lr nan", lambda w: ["train", "pretrain", "--config", str(w["train-nan"])],
     "must be a finite number", lambda w: [w["t"] / "train-out-nan"]),
    ("number", "toml heldout inf", lambda w: ["train", "pretrain", "--config", str(w["train-inf"])],
     "must be a finite number", lambda w: [w["t"] / "train-out-inf"]),
    # devices
    ("device", "cuda index", lambda w: ["generate", str(w["ck"]), "--prompt", "x", "--device", "cuda:7"], "cuda:7",
     NONE),
    ("device", "unknown device", lambda w: ["generate", str(w["ck"]), "--prompt", "x", "--device", "tpu"], "device",
     NONE),
    ("device", "eval cuda", lambda w: ["eval", str(w["ck"]), "--tasks", "sandbox:kv", "--device", "cuda:3", "--out",
                                       str(w["t"] / "e-dev")], "cuda:3", lambda w: [w["t"] / "e-dev"]),
    # output directories
    ("output", "eval out unwritable", lambda w: ["eval", str(w["ck"]), "--tasks", "sandbox:kv", "--out",
                                                 "/proc/ctxlab-run"], "not writable", NONE),
    ("output", "eval out under a file", lambda w: ["eval", str(w["ck"]), "--tasks", "sandbox:kv", "--out",
                                                   str(w["t"] / "text.txt" / "run")], "not a directory", NONE),
    ("output", "demo out unwritable", lambda w: ["demo", "--out-dir", "/proc/ctxlab-demo"], "not writable", NONE),
    ("output", "report png unwritable", lambda w: ["report", str(w["t"] / "adir"), "--out-png", "/proc/x/r.png"],
     "not writable", NONE),
    ("output", "experiment out unwritable", lambda w: ["synth-qa-experiment", "--out", "/proc/ctxlab-exp"],
     "not writable", NONE),
    ("output", "synth-qa out unwritable", lambda w: ["synth-qa", str(w["ck"]), "--contexts", "xquad:en", "--out",
                                                     "/proc/ctxlab/s.json"], "not writable", NONE),
    # budgets vs context; a failed start leaves nothing behind
    ("budget", "thinking budget over context", lambda w: ["eval", str(w["ck"]), "--tasks", "sandbox:kv",
                                                          "--strategy", "thinking", "--out", str(w["t"] / "e-b")],
     "context of 64 tokens", lambda w: [w["t"] / "e-b"]),
    ("budget", "prompt cannot fit leaves no run", lambda w: ["eval", str(w["ck"]), "--tasks", "sandbox:kv",
                                                             "--task-opt", "n_tokens=400", "--limit", "1",
                                                             "--max-new-tokens", "4", "--out", str(w["t"] / "e-f")],
     "does not fit", lambda w: [w["t"] / "e-f"]),
    ("budget", "failed load leaves no run", lambda w: ["eval", str(w["corrupt"]), "--tasks", "sandbox:kv", "--limit",
                                                       "1", "--max-new-tokens", "4", "--out", str(w["t"] / "e-c")],
     "corrupt safetensors", lambda w: [w["t"] / "e-c"]),
    # index files
    ("index", "shard outside (../)", lambda w: ["generate", str(w["index-up"]), "--prompt", "x"],
     "outside the checkpoint directory", NONE),
    ("index", "shard outside (absolute)", lambda w: ["generate", str(w["index-abs"]), "--prompt", "x"],
     "outside the checkpoint directory", NONE),
    # damaged run records
    ("resume", "run.json garbage", lambda w: ["eval", str(w["ck"]), "--tasks", "sandbox:kv", "--resume",
                                              "--max-new-tokens", "4", "--out", str(w["run-garbage"])],
     "corrupt", NONE),
    ("resume", "run.json not a record", lambda w: ["eval", str(w["ck"]), "--tasks", "sandbox:kv", "--resume",
                                                   "--max-new-tokens", "4", "--out", str(w["run-list"])],
     "not a run record", NONE),
    # chat templates
    ("template", "template output too large", lambda w: ["generate", str(w["template"]), "--prompt", "x", "--chat"],
     "chat template", NONE),
    # unknown data
    ("data", "xquad language without a file", lambda w: ["eval", str(w["ck"]), "--tasks", "xquad:th", "--data-dir",
                                                         str(w["t"] / "adir"), "--out", str(w["t"] / "e-x")],
     "xquad.th.json not found", lambda w: [w["t"] / "e-x"]),
    ("data", "unknown task", lambda w: ["eval", str(w["ck"]), "--tasks", "xquad:xx,nope", "--out",
                                        str(w["t"] / "e-u")], "unknown task 'xquad:xx'", lambda w: [w["t"] / "e-u"]),
]


@pytest.fixture(scope="module")
def results(world) -> dict[str, subprocess.CompletedProcess]:
    def run(case: Case) -> subprocess.CompletedProcess:
        return subprocess.run([str(CTXLAB), *case[2](world)], capture_output=True, text=True, timeout=180, env=ENV,
                              cwd=world["t"], stdin=subprocess.DEVNULL)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip((f"{c[0]}: {c[1]}" for c in CASES), pool.map(run, CASES), strict=True))


def test_table_covers_every_class():
    classes = {c[0] for c in CASES}
    assert classes == {"usage", "config", "file", "number", "device", "output", "budget", "index", "resume",
                       "template", "data"}
    assert len(CASES) >= 75


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_one_line_and_exit_2(case, results, world):
    r = results[f"{case[0]}: {case[1]}"]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
    assert "Traceback" not in r.stderr and len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-1500:]
    assert case[3] in lines[0], lines[0]
    for path in case[4](world):
        assert not path.exists(), f"{path} was left behind"

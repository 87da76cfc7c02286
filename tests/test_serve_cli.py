"""The `ctxlab serve` command end to end (a real process on a free port): `ctxlab eval --backend openai` against it
gives the native backend's metrics and generations; bad options are one-line errors; and `ctxlab chat MODEL`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ctxlab.engine import SamplingParams, generate
from ctxlab.serve.model import ServedModel
from ctxlab.serve.repl import chat_repl

pytestmark = pytest.mark.usefixtures("one_thread")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
EVAL = ["--tasks", "sandbox:kv", "--limit", "6", "--task-opt", "n_tokens=256", "--no-progress", "--bootstrap", "200"]


def ctxlab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctxlab", *args], capture_output=True, text=True, timeout=timeout,
                          env=ENV)


@pytest.fixture(scope="module")
def server_process():
    proc = subprocess.Popen([sys.executable, "-m", "ctxlab", "serve", "bundled", "--port", "0", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    line = proc.stdout.readline()  # the banner, printed once the model is loaded and the port is bound
    m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if m is None:
        proc.kill()
        pytest.fail(f"no banner from ctxlab serve: {line!r} {proc.stderr.read()}")
    assert "torch threads 1" in line
    yield proc, f"http://127.0.0.1:{m.group(1)}"
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def samples(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_eval_through_serve_matches_native(server_process, tmp_path):
    proc, url = server_process
    native = ctxlab("eval", "bundled", *EVAL, "--out", str(tmp_path / "native"))
    assert native.returncode == 0, native.stderr
    served = ctxlab("eval", "bundled", *EVAL, "--backend", "openai", "--base-url", url + "/v1",
                    "--out", str(tmp_path / "served"))
    assert served.returncode == 0, served.stderr
    a = json.loads((tmp_path / "native" / "results.json").read_text())["tasks"]["sandbox:kv"]
    b = json.loads((tmp_path / "served" / "results.json").read_text())["tasks"]["sandbox:kv"]
    assert a["metrics"] == b["metrics"] and a["n_samples"] == b["n_samples"] == 6
    sa = sorted(samples(tmp_path / "native"), key=lambda s: s["index"])
    sb = sorted(samples(tmp_path / "served"), key=lambda s: s["index"])
    assert [s["generation"] for s in sa] == [s["generation"] for s in sb]
    assert [s["prediction"] for s in sa] == [s["prediction"] for s in sb]
    proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean shutdown
    assert proc.wait(timeout=60) == 0


def test_serve_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    import socket

    from ctxlab.cli import main

    for args, needle in ((["--port", "70000"], "--port must be in [0, 65535]"),
                         (["--max-batch", "0"], "--max-batch must be >= 1"),
                         (["--threads", "0"], "--threads must be >= 1"),
                         (["--log-level", "loud"], "--log-level must be")):
        monkeypatch.setattr(sys, "argv", ["ctxlab", "serve", "bundled", *args])
        with pytest.raises(SystemExit) as e:
            main()  # validated before anything is bound or loaded
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = str(taken.getsockname()[1])
    for args, needle in ((["bundled", "--port", port], f"cannot listen on 127.0.0.1:{port}"),
                         ([str(tmp_path / "nope"), "--port", "0"], "model not found")):
        r = ctxlab("serve", *args, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    taken.close()


def test_chat_command_dispatch():
    r = ctxlab("chat", "tickets", timeout=120)
    assert r.returncode == 2 and "needs the agent's model" in r.stderr
    r = ctxlab("chat", "bundled", "--db", "x.db", timeout=120)
    assert r.returncode == 2 and "--db applies to `ctxlab chat tickets` only" in r.stderr
    r = ctxlab("chat", "tickets", "bundled", "--temperature", "0.5", timeout=120)
    assert r.returncode == 2 and "--temperature applies to `ctxlab chat MODEL`" in r.stderr


def test_chat_repl_keeps_history_in_the_chat_template(tmp_path):
    import io

    served = ServedModel.load("bundled")
    out = io.StringIO()
    said = ["key: alpha value: 17.", "/system Answer briefly.", "What is alpha?", "/reset", "hello"]
    res = chat_repl("bundled", utterances=said, max_new_tokens=12, temperature=0, served=served, out=out)
    assert res["turns"] == 3
    assert [m["role"] for m in res["history"]] == ["system", "user", "assistant"]  # /reset kept the system message
    assert res["history"][1]["content"] == "hello"
    # the second turn saw the first exchange and the system message, rendered with the template
    first = generate(served.model, [served.chat_ids([{"role": "user", "content": said[0]}])],
                     SamplingParams(max_new_tokens=12), served.eos_ids)[0]
    a1 = served.text(first.ids)
    msgs = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": said[0]},
            {"role": "assistant", "content": a1}, {"role": "user", "content": said[2]}]
    second = generate(served.model, [served.chat_ids(msgs)], SamplingParams(max_new_tokens=12), served.eos_ids)[0]
    text = out.getvalue()
    assert f"bot> {a1}\n" in text and f"bot> {served.text(second.ids)}\n" in text
    assert "(history cleared)" in text and "(system message set)" in text


def test_chat_repl_without_a_template_and_over_the_context(tmp_path):
    import io

    from ctxlab.train.scratch import build_checkpoint

    ckpt = build_checkpoint(tmp_path / "tiny", max_len=64)
    served = ServedModel.load(str(ckpt))
    served.tokenizer.chat_template = None  # a base model
    out = io.StringIO()
    res = chat_repl(str(ckpt), utterances=["hi there", "word " * 80, "again"], max_new_tokens=8, temperature=0,
                    served=served, out=out)
    assert res["turns"] == 2 and "does not fit the context of 64 tokens" in out.getvalue()
    ids = served.prompt_ids("User: hi there\nAssistant:")
    g = generate(served.model, [ids], SamplingParams(max_new_tokens=8), served.eos_ids,
                 served.stop_criteria(["\nUser:"]))[0]
    assert res["history"][1]["content"] == served.text(g.ids, ["\nUser:"]).strip()

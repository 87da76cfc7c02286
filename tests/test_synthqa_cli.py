"""`ctxlab synth-qa` end to end on tiny checkpoints, its one-line input errors, and the `--tiny` experiment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctxlab.apps.synthqa.generator import FILTERS, generation_prompt, generation_target
from ctxlab.apps.synthqa.run import generator_prompt, qa_prompt, synth_qa
from ctxlab.errors import CtxlabError
from ctxlab.tasks.xquad import load_squad
from ctxlab.train.scratch import build_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "xquad"
ROOT = Path(__file__).resolve().parents[1]
LANGS = ("en", "de", "zh")
# Two contexts a tiny model memorises (generator and QA rows), so the filters keep real pairs.
PAIRS = [("Bob lives in Berlin and works as a baker.", "Where does Bob live?", "Berlin", "en"),
         ("Anna wohnt in Wien und arbeitet als Lehrerin.", "Wo wohnt Anna?", "Wien", "de")]


def _fixture_contexts() -> list[tuple[str, str]]:
    return [(lang, p.context) for lang in LANGS for a in load_squad(FIXTURES / f"xquad.{lang}.json")
            for p in a.paragraphs]


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory) -> Path:
    texts = [c for _, c in _fixture_contexts()]
    return build_checkpoint(tmp_path_factory.mktemp("ck") / "random", texts, vocab_size=400, max_len=1024)


@pytest.fixture(scope="module")
def broken_ckpt(tmp_path_factory, random_ckpt) -> Path:
    """Valid config and tokenizer but garbage weights: any error that is not about the weights came first."""
    import shutil

    dst = tmp_path_factory.mktemp("ck") / "broken"
    shutil.copytree(random_ckpt, dst)
    (dst / "model.safetensors").write_bytes(b"not a safetensors file")
    return dst


@pytest.fixture
def contexts_file(tmp_path) -> Path:
    path = tmp_path / "contexts.jsonl"
    rows = [{"id": f"c{i}", "context": c, "lang": lang, "title": f"t{i}"}
            for i, (lang, c) in enumerate(_fixture_contexts()[:5])]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# One thread: on shared cores two OpenMP threads per process make these tiny models many times slower.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctxlab", "synth-qa", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=ENV)


def _check_stats(stats: dict, n_contexts: dict[str, int], per_context: int) -> None:
    assert set(stats) == set(n_contexts)
    for lang, s in stats.items():
        assert s["contexts"] == n_contexts[lang]
        assert s["generated"] == per_context * n_contexts[lang]
        assert s["generated"] == s["kept"] + sum(s["dropped"][f] for f in FILTERS)


# ------------------------------------------------------------------------------------------ end to end


def test_cli_random_checkpoint_end_to_end(random_ckpt, contexts_file, tmp_path):
    out = tmp_path / "out" / "synth.json"
    r = run_cli(str(random_ckpt), "--contexts", str(contexts_file), "--out", str(out), "--per-context", "2",
                "--seed", "3", "--max-new-tokens", "8", "--qa-max-new-tokens", "4")
    assert r.returncode == 0, r.stderr
    obj = json.loads(out.read_text(encoding="utf-8"))
    assert obj["version"] == "1.1" and isinstance(obj["data"], list)
    arts = load_squad(out)  # valid SQuAD v1.1 (spans checked)
    stats = json.loads(out.with_suffix(".stats.json").read_text(encoding="utf-8"))
    langs = [json.loads(ln)["lang"] for ln in contexts_file.read_text(encoding="utf-8").splitlines()]
    _check_stats(stats, {lang: langs.count(lang) for lang in set(langs)}, 2)
    assert sum(len(p.qas) for a in arts for p in a.paragraphs) == sum(s["kept"] for s in stats.values())
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["lang", "contexts", "generated", "kept", *FILTERS]
    assert {ln.split()[0] for ln in lines[1:-1]} == {*langs, "all"}
    assert "wrote" in lines[-1] and "T=1" in lines[-1]  # per_context 2 samples at temperature 1 by default


@pytest.fixture(scope="module")
def memorised_ckpt(tmp_path_factory) -> Path:
    """A tiny model trained with the training loop to answer PAIRS as generator and as QA model."""
    from ctxlab.train import run_training

    root = tmp_path_factory.mktemp("mem")
    texts = [f"{c} {q} {a}" for c, q, a, _ in PAIRS] + [generation_target("x", "y"), qa_prompt("x", "y")]
    init = build_checkpoint(root / "init", texts, vocab_size=300, max_len=256, hidden_size=64, num_hidden_layers=2)
    rows = []
    for c, q, a, _ in PAIRS:
        rows.append({"prompt": generator_prompt(generation_prompt(c)), "completion": generation_target(q, a)})
        rows.append({"prompt": qa_prompt(c, q), "completion": " " + a})
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    conf = {"out_dir": str(root / "run"), "threads": 1, "model": {"init": str(init)},
            "data": {"seq_len": 256, "heldout": 0.0, "jsonl": str(root / "rows.jsonl")},
            "optim": {"lr": 1e-2, "warmup_steps": 3, "max_steps": 30, "batch_size": 4, "weight_decay": 0.0},
            "eval": {"every": 0}, "checkpoint": {"every": 0, "keep": 1}}
    (root / "sft.json").write_text(json.dumps(conf))
    return run_training("sft", root / "sft.json").final_dir


@pytest.mark.slow
def test_cli_trained_checkpoint_keeps_pairs(memorised_ckpt, tmp_path, capsys):
    ctx = tmp_path / "pairs.jsonl"
    ctx.write_text("".join(json.dumps({"context": c, "lang": lang}) + "\n" for c, _, _, lang in PAIRS))
    out = tmp_path / "synth.json"
    stats = synth_qa(str(memorised_ckpt), str(ctx), str(out), max_new_tokens=24, min_roundtrip_f1=1.0)
    _check_stats(stats, {"en": 1, "de": 1}, 1)
    assert all(s["kept"] == 1 for s in stats.values()), stats
    arts = load_squad(out)
    got = {(p.context, q.question, q.answers[0][0]) for a in arts for p in a.paragraphs for q in p.qas}
    assert got == {(c, q, a) for c, q, a, _ in PAIRS}
    printed = capsys.readouterr().out
    assert "wrote 2 questions on 2 contexts" in printed and "round trip" in printed


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"contexts": "missing.jsonl"}, "no such file"),
        ({"contexts": "xquad:"}, "bad contexts spec"),
        ({"contexts": "xquad:en:test"}, "unknown split"),
        ({"out": "synth.txt"}, "ending in .json"),
        ({"per_context": 0}, "--per-context"),
        ({"per_context": 3, "temperature": 0.0}, "needs sampling"),
        ({"roundtrip": False, "qa_model": "x"}, "--no-roundtrip"),
        ({"min_roundtrip_f1": 1.5}, "--min-roundtrip-f1"),
        ({"temperature": -1.0}, "--temperature"),
        ({"top_p": 0.0}, "--top-p"),
        ({"seed": -1}, "--seed"),
        ({"batch_size": 0}, "--batch-size"),
        ({"dtype": "float8"}, "unknown dtype"),
        ({"lang": "English!"}, "invalid language code"),
        ({"qa_model": "/no/such/dir"}, "model not found"),
    ],
)
def test_bad_input_fails_before_loading_weights(broken_ckpt, contexts_file, tmp_path, kwargs, needle):
    args = {"contexts": str(contexts_file), "out": str(tmp_path / "o.json"), "data_dir": str(FIXTURES), **kwargs}
    if args["out"] == "synth.txt":
        args["out"] = str(tmp_path / "synth.txt")
    if args["contexts"] == "missing.jsonl":
        args["contexts"] = str(tmp_path / "missing.jsonl")
    with pytest.raises(CtxlabError) as e:
        synth_qa(str(broken_ckpt), args.pop("contexts"), args.pop("out"), **args)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
    assert not (tmp_path / "o.json").exists()


def test_out_path_checks(broken_ckpt, contexts_file, tmp_path):
    (tmp_path / "d.json").mkdir()
    with pytest.raises(CtxlabError, match="is a directory"):
        synth_qa(str(broken_ckpt), str(contexts_file), str(tmp_path / "d.json"))
    src = tmp_path / "in.json"
    src.write_text(json.dumps({"version": "1.1", "data": []}))
    with pytest.raises(CtxlabError, match="overwrite the input"):
        synth_qa(str(broken_ckpt), str(src), str(src))


def test_broken_weights_are_reported_after_validation(broken_ckpt, contexts_file, tmp_path):
    """Control for the test above: with valid options the (bad) weights are what fails."""
    with pytest.raises(CtxlabError) as e:
        synth_qa(str(broken_ckpt), str(contexts_file), str(tmp_path / "o.json"))
    assert "safetensors" in str(e.value) or "model.safetensors" in str(e.value)


def test_cli_one_line_errors(broken_ckpt, contexts_file, tmp_path):
    r = run_cli(str(broken_ckpt), "--contexts", "xquad:xx-!!", "--out", str(tmp_path / "o.json"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "language code" in lines[0], r.stderr
    r = run_cli(str(tmp_path / "nope"), "--contexts", str(contexts_file), "--out", str(tmp_path / "o.json"))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and len(lines) == 1 and "model not found" in lines[0], r.stderr


# ------------------------------------------------------------------------------------------ experiment


@pytest.mark.slow
def test_tiny_experiment_end_to_end(tmp_path):
    out = tmp_path / "exp"
    r = subprocess.run([sys.executable, "-m", "ctxlab", "synth-qa-experiment", "--out", str(out), "--tiny",
                        "--data-dir", str(FIXTURES)], capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    assert "|lang|n|baseline F1|system F1|gain|95% CI|p(gain<=0)|" in md
    assert (out / "gain_f1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {row["lang"] for row in results["gain_f1"]} == {*LANGS, "avg"}
    for name in ("pretrain", "generator", "qa_base", "qa_aug"):
        assert (out / "configs" / f"{name}.json").is_file()
        assert (out / "runs" / name / "final" / "model.safetensors").is_file()

    # No evaluated context in any training data: check the files actually written.
    eval_contexts = {p.context for lang in LANGS for a in load_squad(out / "data" / "eval" / f"xquad.{lang}.json")
                     for p in a.paragraphs}
    assert eval_contexts
    train_contexts: set[str] = set()
    for name in ("generator", "qa_base", "qa_aug"):
        for line in (out / "data" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines():
            prompt = json.loads(line)["prompt"]
            assert not any(c in prompt for c in eval_contexts), name
            train_contexts.add(prompt)
    corpus = (out / "data" / "train_contexts.txt").read_text(encoding="utf-8")
    assert not any(c in corpus for c in eval_contexts)
    synth = load_squad(out / "data" / "synthetic.json")
    assert not {p.context for a in synth for p in a.paragraphs} & eval_contexts
    # ... and the eval split is exactly the articles the manifest names, in every language
    split = json.loads((out / "data" / "split.json").read_text())
    assert set(split["eval"]).isdisjoint(split["generator"] + split["qa"])
    for lang in LANGS:
        assert [a.title for a in load_squad(out / "data" / "eval" / f"xquad.{lang}.json")] == split["eval"]
    gen_langs = {json.loads(ln)["lang"] for ln in (out / "data" / "generator.jsonl").read_text().splitlines()}
    assert gen_langs == set(LANGS)  # English gold plus the translated samples
    base_rows = [json.loads(ln) for ln in (out / "data" / "qa_base.jsonl").read_text().splitlines()]
    aug_rows = [json.loads(ln) for ln in (out / "data" / "qa_aug.jsonl").read_text().splitlines()]
    assert {r["lang"] for r in base_rows} == {"en"} and {r["source"] for r in base_rows} == {"gold"}
    # qa_aug = the same gold rows + one row per kept synthetic question
    assert [r for r in aug_rows if r["source"] == "gold"] == base_rows
    assert sum(r["source"] == "synthetic" for r in aug_rows) == sum(len(p.qas) for a in synth for p in a.paragraphs)
    assert results["synthetic_stats"].keys() == set(LANGS)


def test_check_disjoint_finds_escaped_contexts(tmp_path):
    from ctxlab.apps.synthqa.experiment import check_disjoint

    ctx = 'Er sagte "Nein".\nDann ging er — 东京 \\ weiter.'
    clean, leaky, text = tmp_path / "clean.jsonl", tmp_path / "leaky.jsonl", tmp_path / "corpus.txt"
    clean.write_text(json.dumps({"prompt": "Context: another paragraph"}) + "\n")
    leaky.write_text(json.dumps({"prompt": f"Context: {ctx}\n\nQuestion: ?"}) + "\n")  # ASCII-escaped on disk
    text.write_text(f"before\n\n{ctx}\n\nafter", encoding="utf-8")
    assert set(check_disjoint([ctx], [clean])) == {str(clean)}
    for f in (leaky, text):
        with pytest.raises(CtxlabError, match="leak"):
            check_disjoint([ctx], [clean, f])


def test_experiment_config_validation(tmp_path):
    from ctxlab.apps.synthqa.experiment import make_config, run_experiment

    with pytest.raises(CtxlabError, match="must include 'en'"):
        make_config(str(tmp_path / "x"), langs=("de", "zh"))
    with pytest.raises(CtxlabError, match="temperature > 0"):
        make_config(str(tmp_path / "x"), per_context=2, temperature=0.0)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    with pytest.raises(CtxlabError, match="not an empty directory"):
        run_experiment(make_config(str(tmp_path / "busy"), tiny=True, data_dir=str(FIXTURES)))
    with pytest.raises(CtxlabError, match="no xquad.el.json"):
        run_experiment(make_config(str(tmp_path / "new"), tiny=True, data_dir=str(FIXTURES), langs=("en", "el")))

"""LongBench-v2: loader on the hand-written fixture, official prompt, middle truncation, parsing, scoring, errors."""

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest

from ctxlab.errors import CtxlabError
from ctxlab.tasks.longbench_v2 import TASKS, TEMPLATE_0SHOT, extract_answer, load_samples, summary

FIXTURE = Path(__file__).parent / "fixtures" / "longbench_v2"
TASK = TASKS[0]


class WhitespaceTokenizer:
    """Toy tokenizer: one token per whitespace-separated word; decode joins with single spaces."""

    def __init__(self):
        self.vocab: dict[str, int] = {}
        self.words: list[str] = []

    def encode(self, text: str) -> list[int]:
        ids = []
        for w in text.split():
            if w not in self.vocab:
                self.vocab[w] = len(self.words)
                self.words.append(w)
            ids.append(self.vocab[w])
        return ids

    def decode(self, ids) -> str:
        return " ".join(self.words[i] for i in ids)


def _rows() -> list[dict]:
    return json.loads((FIXTURE / "data.json").read_text(encoding="utf-8"))


def _write(tmp_path: Path, rows, name: str = "data.json") -> Path:
    (tmp_path / name).write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return tmp_path


def test_task_identity():
    assert TASK.name == "longbench_v2" and TASK.metrics == ("accuracy",) and TASK.needs_data_dir
    assert TASK.max_new_tokens == 128 and TASK.truncation == "middle"


def test_load_fixture():
    samples = list(TASK.samples(FIXTURE))
    assert [s.id for s in samples] == ["fx-lb-0001", "fx-lb-0002", "fx-lb-0003", "fx-lb-0004"]
    s = samples[0]
    assert s.reference == "B" and s.question == "In which year was the audit report filed?"
    assert s.meta["difficulty"] == "easy" and s.meta["length"] == "short"
    assert s.meta["domain"] == "Single-Document QA" and s.meta["choices"]["B"] == "2001"
    assert samples[2].meta["choices"]["A"] == "火车"  # non-ASCII survives
    # data_dir may also be the file itself
    assert [s.id for s in TASK.samples(FIXTURE / "data.json")] == [s.id for s in samples]


def test_needs_data_dir():
    with pytest.raises(CtxlabError, match="data.json"):
        TASK.samples(None)


def test_prompt_is_official_template():
    s = next(TASK.samples(FIXTURE))
    row = _rows()[0]
    expected = TEMPLATE_0SHOT
    for ph, key in [("$DOC$", "context"), ("$Q$", "question")] + [(f"$C_{x}$", f"choice_{x}") for x in "ABCD"]:
        expected = expected.replace(ph, row[key].strip())
    prompt = TASK.prompt(s)
    assert prompt == expected
    assert prompt.startswith("Please read the following text and answer the question below.\n\n<text>\n")
    assert "\n(B) 2001\n" in prompt
    assert prompt.endswith('Format your response as follows: "The correct answer is (insert answer here)".')


@pytest.mark.parametrize("max_len", [20, 21, 64])
def test_middle_truncation_exact_token_counts(max_len):
    tok = WhitespaceTokenizer()
    base = next(TASK.samples(FIXTURE))
    s = dataclasses.replace(base, context=" ".join(f"w{i}" for i in range(500)))
    full = tok.encode(TASK.prompt(s))
    out = tok.encode(TASK.fit_prompt(s, tok, max_len))
    assert len(out) == max_len
    head, tail = max_len // 2, max_len - max_len // 2  # odd max_len keeps one more token from the end
    assert out[:head] == full[:head] and out[head:] == full[-tail:]
    assert tok.decode(out[-3:]) == '(insert answer here)".'  # the answer instruction at the end survives


def test_fitting_prompt_is_unchanged():
    tok = WhitespaceTokenizer()
    s = next(TASK.samples(FIXTURE))
    assert TASK.fit_prompt(s, tok, 10_000) == TASK.prompt(s)  # newlines kept: not re-decoded
    with pytest.raises(CtxlabError):
        TASK.fit_prompt(s, tok, 1)


@pytest.mark.parametrize(
    "text, letter",
    [
        ("The correct answer is (B)", "B"),
        ("**The correct answer is (C)**", "C"),
        ("Reasoning... The correct answer is D.", "D"),
        ("The correct answer is (A). Later: The correct answer is (B)", "A"),
        ("The correct answer is **(A)**", "A"),  # '*' are deleted first
        ("the correct answer is (A)", None),  # case-sensitive, as the official regex
        ("I would pick B", None),
        ("The correct answer is (E)", None),
        ("", None),
    ],
)
def test_answer_parsing(text, letter):
    assert extract_answer(text) == letter
    assert TASK.parse(f"  {text}\n") == letter


def test_score_and_compensated():
    s = next(TASK.samples(FIXTURE))
    assert TASK.score("B", s) == {"accuracy": 1.0}
    assert TASK.score("A", s) == {"accuracy": 0.0}
    assert TASK.score(None, s) == {"accuracy": 0.0}
    comp = dataclasses.replace(TASK, compensated=True)
    assert comp.score(None, s) == {"accuracy": 0.25} and comp.score("A", s) == {"accuracy": 0.0}


def test_summary_breakdown():
    samples = list(TASK.samples(FIXTURE))  # answers B, D, A, C
    generations = ["The correct answer is (B)", "The correct answer is (A)", "**The correct answer is (A)**", "?"]
    values = [TASK.score(TASK.parse(g), s)["accuracy"] for g, s in zip(generations, samples, strict=True)]
    assert values == [1.0, 0.0, 1.0, 0.0]
    out = summary(values, samples)
    assert list(out) == ["overall", "easy", "hard", "short", "medium", "long"]
    # "medium" is its own bucket (the official result.py files it under "long").
    assert out == {"overall": 50.0, "easy": 50.0, "hard": 50.0, "short": 100.0, "medium": 0.0, "long": 50.0}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r[1].pop("answer"), "row 2: missing field 'answer'"),
        (lambda r: r[2].update(answer="E"), "row 3: field 'answer' must be one of A/B/C/D"),
        (lambda r: r[0].update(difficulty="medium"), "row 1: field 'difficulty' must be one of easy/hard"),
        (lambda r: r[3].update(length="huge"), "row 4: field 'length' must be one of short/medium/long"),
        (lambda r: r[1].update(question=7), "row 2: field 'question' must be str, got int"),
        (lambda r: r[3].update(_id="fx-lb-0001"), "row 4: duplicate _id 'fx-lb-0001'"),
        (lambda r: r.append("not a record"), "row 5: expected a JSON object"),
    ],
)
def test_malformed_rows(tmp_path, mutate, message):
    rows = _rows()
    mutate(rows)
    _write(tmp_path, rows)
    with pytest.raises(CtxlabError) as e:
        load_samples(tmp_path)
    assert str(tmp_path / "data.json") in str(e.value) and message in str(e.value)


def test_bad_files(tmp_path):
    (tmp_path / "data.json").write_text('{"_id": "x"}', encoding="utf-8")
    with pytest.raises(CtxlabError, match="expected a JSON list"):
        load_samples(tmp_path)
    (tmp_path / "data.json").write_text("[{", encoding="utf-8")
    with pytest.raises(CtxlabError, match="invalid JSON"):
        load_samples(tmp_path)
    (tmp_path / "data.json").write_text("[]", encoding="utf-8")
    with pytest.raises(CtxlabError, match="no rows"):
        load_samples(tmp_path)
    with pytest.raises(CtxlabError, match="does not exist"):
        load_samples(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CtxlabError, match=r"expected data\.json"):
        load_samples(empty)


def test_parquet_without_pyarrow_or_pandas(tmp_path, monkeypatch):
    shard = tmp_path / "default" / "train" / "0000.parquet"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"PAR1 not really parquet")
    for mod in ("pyarrow", "pyarrow.parquet", "pandas"):
        monkeypatch.setitem(sys.modules, mod, None)  # makes `import mod` raise ImportError
    with pytest.raises(CtxlabError) as e:
        load_samples(tmp_path)
    msg = str(e.value)
    assert str(shard) in msg and "pip install pyarrow" in msg and "data.json" in msg


def test_parquet_with_pyarrow(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(_rows()), tmp_path / "train.parquet")
    assert [s.id for s in load_samples(tmp_path)] == [r["_id"] for r in _rows()]


def test_data_json_preferred_over_parquet(tmp_path):
    shutil.copy(FIXTURE / "data.json", tmp_path / "data.json")
    (tmp_path / "x.parquet").write_bytes(b"garbage")
    assert len(load_samples(tmp_path)) == 4

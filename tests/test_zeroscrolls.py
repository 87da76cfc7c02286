"""ZeroSCROLLS: configs and metrics, loaders on hand-written fixtures, query-preserving truncation, submission file."""

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest

from ctxlab.errors import CtxlabError
from ctxlab.tasks.metrics import get_metric
from ctxlab.tasks.zeroscrolls import CONFIGS, TASKS, config_name, load_samples, write_submission

FIXTURES = Path(__file__).parent / "fixtures" / "zeroscrolls"
BY_NAME = {t.name: t for t in TASKS}

# Official per-task metrics (benchmarks.md §3.2) and generation budgets (experiments/api/api.py).
EXPECTED = {
    "gov_report": ("rouge_geo", 1024),
    "summ_screen_fd": ("rouge_geo", 512),
    "qmsum": ("rouge_geo", 512),
    "squality": ("rouge_geo", 512),
    "qasper": ("zs_f1", 128),
    "narrative_qa": ("zs_f1", 64),
    "quality": ("zs_accuracy", 10),
    "musique": ("zs_f1", 32),
    "space_digest": ("exp_similarity", 36),
    "book_sum_sort": ("concordance_index", 256),
}


class WhitespaceTokenizer:
    def __init__(self):
        self.vocab: dict[str, int] = {}
        self.words: list[str] = []

    def encode(self, text: str) -> list[int]:
        ids = []
        for w in text.split():
            ids.append(self.vocab.setdefault(w, len(self.words)))
            if len(self.words) < len(self.vocab):
                self.words.append(w)
        return ids

    def decode(self, ids) -> str:
        return " ".join(self.words[i] for i in ids)


def _raw(config: str, split: str = "validation") -> list[dict]:
    lines = (FIXTURES / config / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _samples(config: str, split: str = "validation"):
    return list(BY_NAME[f"zeroscrolls:{config}"].with_split(split).samples(FIXTURES))


def test_ten_configs_with_official_metrics():
    assert list(CONFIGS) == list(EXPECTED)  # leaderboard order
    assert sorted(BY_NAME) == sorted(f"zeroscrolls:{c}" for c in EXPECTED)
    for cfg, (metric, budget) in EXPECTED.items():
        t = BY_NAME[f"zeroscrolls:{cfg}"]
        assert t.metrics == (metric,) and t.max_new_tokens == budget and t.config == cfg
        assert t.split == "validation" and t.needs_data_dir and t.truncation == "keep_query"
        get_metric(metric)


def test_config_names():
    assert config_name("zeroscrolls:qasper") == config_name("qasper") == "qasper"
    with pytest.raises(CtxlabError) as e:
        config_name("zeroscrolls:scrolls")
    assert "gov_report" in str(e.value) and "book_sum_sort" in str(e.value)


def test_load_qasper_merges_duplicate_ids():
    samples = _samples("qasper")
    raw = _raw("qasper")
    assert [s.id for s in samples] == ["fx-qa-1", "fx-qa-2"]
    s = samples[0]
    assert s.reference == ["English, Welsh and Basque", "three languages"]
    task = BY_NAME["zeroscrolls:qasper"]
    assert task.prompt(s) == raw[0]["input"]  # the prompt is the official input, untouched
    q0, q1 = s.meta["query_span"]
    assert s.question.startswith("Which languages are evaluated?") and s.question.endswith("\n\nAnswer:")
    assert raw[0]["input"][q0:q1] == "Which languages are evaluated?"
    d0, d1 = s.meta["document_span"]
    assert s.context[d0:d1].startswith("We train a small transformer")
    assert s.meta["split"] == "validation" and s.meta["pid"] == "fx-qa-1"


def test_load_other_layouts_and_meta():
    gov = _samples("gov_report")
    assert len(gov) == 2 and gov[0].question == "\n\nSummary:"
    sd = _samples("space_digest")[0]
    starts = sd.meta["inner_docs_start_indices"]
    assert len(starts) == 4 and sd.context[starts[1] :].startswith("Review 2:")
    # data_dir may be the config folder itself
    direct = list(BY_NAME["zeroscrolls:musique"].samples(FIXTURES / "musique"))
    assert [s.id for s in direct] == ["fx-mu-1"]


def test_test_split_has_no_gold():
    task = BY_NAME["zeroscrolls:qasper"].with_split("test")
    samples = list(task.samples(FIXTURES))
    assert [s.id for s in samples] == ["fx-qa-t1", "fx-qa-t2"] and all(s.reference == [] for s in samples)
    with pytest.raises(CtxlabError, match="write_submission"):
        task.score("a corpus", samples[0])
    with pytest.raises(CtxlabError, match="unknown ZeroSCROLLS split"):
        task.with_split("train")


def test_scores_per_config():
    def score(cfg, pred, i=0):
        t = BY_NAME[f"zeroscrolls:{cfg}"]
        return t.score(t.parse(pred), _samples(cfg)[i])

    assert score("qasper", " three languages ") == {"zs_f1": 1.0}  # the alternative reference counts
    # gold "byte-level tokens" normalises to [bytelevel, tokens]: P = 1, R = 1/2
    assert score("qasper", "tokens", 1)["zs_f1"] == pytest.approx(2 / 3)
    assert score("quality", "B") == {"zs_accuracy": 1.0}
    assert score("quality", "(B) the lighthouse lamp", 1) == {"zs_accuracy": 0.0}
    assert score("space_digest", "About 65% of reviews")["exp_similarity"] == pytest.approx(0.5)
    assert score("book_sum_sort", "2, 3, 1") == {"concordance_index": 1.0}
    assert score("musique", "Tamsund.") == {"zs_f1": 1.0}
    geo = score("gov_report", "Bridge inspections were late in four states.")["rouge_geo"]
    assert isinstance(geo, tuple) and len(geo) == 3 and all(0 < x < 1 for x in geo)
    task = BY_NAME["zeroscrolls:gov_report"]
    values = [task.score(s.reference[0], s)["rouge_geo"] for s in _samples("gov_report")]
    assert get_metric("rouge_geo").aggregate(values) == pytest.approx(100.0)


def test_truncation_keeps_query_with_exact_token_count():
    tok = WhitespaceTokenizer()
    task = BY_NAME["zeroscrolls:qasper"]
    s = _samples("qasper")[0]
    n_full = len(tok.encode(task.prompt(s)))
    max_tokens = task.max_new_tokens + 40  # far less than the prompt plus the 128-token answer budget
    out = task.fit_prompt(s, tok, max_tokens)
    suffix = s.meta["truncation_separator"] + s.question
    assert out.endswith(suffix) and "Which languages are evaluated?" in out
    assert out.startswith("You are given a scientific article")
    # document budget = max - |suffix| - generation - 1, so the prompt has max - generation - 1 tokens
    assert len(tok.encode(out)) == max_tokens - task.max_new_tokens - 1 < n_full
    # an explicit reserve replaces the official budget
    out2 = task.fit_prompt(s, tok, 45, reserve=0)
    assert len(tok.encode(out2)) == 44 and out2.endswith(suffix)


def test_truncation_summarization_and_edges():
    tok = WhitespaceTokenizer()
    task = BY_NAME["zeroscrolls:gov_report"]
    s = _samples("gov_report")[0]
    n_full = len(tok.encode(task.prompt(s)))
    assert task.fit_prompt(s, tok, n_full + task.max_new_tokens) == task.prompt(s)  # fits: unchanged
    out = task.fit_prompt(s, tok, n_full + task.max_new_tokens - 1)
    assert len(tok.encode(out)) == n_full - 2  # one token over: cut to the budget (the official -1 included)
    assert out.endswith("[The rest of the report is omitted]\n\n\n\nSummary:")
    with pytest.raises(CtxlabError, match="no room left"):
        task.fit_prompt(s, tok, task.max_new_tokens + 5)


def _preds(**extra):
    preds = {c: {} for c in CONFIGS}
    preds.update(extra)
    return preds


def test_write_submission(tmp_path):
    preds = _preds(
        qasper={"fx-qa-t1": "the Harbor corpus", "fx-qa-t2": 'no, "small", with a comma\nand a newline'},
        gov_report={"g1": "A summary."},
    )
    preds["zeroscrolls:quality"] = preds.pop("quality")  # prefixed names are accepted
    out = write_submission(preds, tmp_path / "sub" / "zero_scrolls_predictions.csv")
    raw = out.read_text(encoding="utf-8")
    assert raw.startswith("Task,ID,Prediction\ngov_report,g1,A summary.\nqasper,fx-qa-t1,the Harbor corpus\n")
    with open(out, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Task", "ID", "Prediction"]
    assert rows[1:] == [
        ["gov_report", "g1", "A summary."],
        ["qasper", "fx-qa-t1", "the Harbor corpus"],
        ["qasper", "fx-qa-t2", 'no, "small", with a comma\nand a newline'],
    ]


def test_submission_checks(tmp_path):
    path = tmp_path / "s.csv"
    with pytest.raises(CtxlabError, match="lacks configs: .*book_sum_sort"):
        write_submission({"qasper": {"a": "b"}}, path)
    partial = write_submission({"qasper": {"a": "b"}}, path, partial=True)
    assert partial.read_text() == "Task,ID,Prediction\nqasper,a,b\n"
    with pytest.raises(CtxlabError, match="unknown ZeroSCROLLS config"):
        write_submission(_preds(scrolls={}), path)
    with pytest.raises(CtxlabError, match="must be strings"):
        write_submission(_preds(qasper={"a": 1}), path)
    with pytest.raises(CtxlabError, match="given twice"):
        write_submission({**_preds(), "zeroscrolls:qasper": {}}, path)
    ids = {s.id for s in _samples("qasper", "test")}
    ok = _preds(qasper={i: "x" for i in ids})
    write_submission(ok, path, expected_ids={"qasper": ids})
    with pytest.raises(CtxlabError, match="qasper: 1 missing ids .*1 unexpected ids"):
        write_submission(_preds(qasper={"fx-qa-t1": "x", "other": "y"}), path, expected_ids={"qasper": ids})


def _copy_config(tmp_path: Path, config: str) -> Path:
    shutil.copytree(FIXTURES / config, tmp_path / config)
    return tmp_path / config / "validation.jsonl"


def _rewrite(path: Path, rows: list) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")


@pytest.mark.parametrize(
    "config, mutate, message",
    [
        ("qasper", lambda r: r.__setitem__(1, "{not json"), "row 2: invalid JSON"),
        ("qasper", lambda r: r[2].pop("truncation_seperator"), "row 3: missing field 'truncation_seperator'"),
        ("qasper", lambda r: r[0].update(query_end_index=10_000), "row 1: query span"),
        ("qasper", lambda r: r[0].update(document_start_index="3"), "row 1: field 'document_start_index' must be int"),
        ("qasper", lambda r: r[1].update(output=""), "row 2: field 'output' must be a non-empty str"),
        ("qasper", lambda r: r[0].update(id=""), "row 1: empty 'id'"),
        ("quality", lambda r: r[1].update(output="the lamp"), "row 2: QuALITY output has no standalone letter"),
        ("musique", lambda r: r[0].update(inner_docs_start_indices=[5, "x"]), "row 1: 'inner_docs_start_indices'"),
    ],
)
def test_malformed_rows(tmp_path, config, mutate, message):
    path = _copy_config(tmp_path, config)
    rows = _raw(config)
    mutate(rows)
    _rewrite(path, rows)
    with pytest.raises(CtxlabError) as e:
        load_samples(tmp_path, config, "validation")
    assert str(path) in str(e.value) and message in str(e.value)


def test_missing_data(tmp_path):
    task = BY_NAME["zeroscrolls:narrative_qa"]
    with pytest.raises(CtxlabError) as e:
        task.samples(tmp_path)
    assert "narrative_qa/validation.jsonl" in str(e.value) and "narrative_qa.zip" in str(e.value)
    with pytest.raises(CtxlabError, match="needs a data directory"):
        task.samples(None)
    with pytest.raises(CtxlabError, match="unknown ZeroSCROLLS split"):
        load_samples(FIXTURES, "qasper", "dev")
    empty = tmp_path / "qasper" / "validation.jsonl"
    empty.parent.mkdir(parents=True)
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(CtxlabError, match="no rows"):
        load_samples(tmp_path, "qasper")


def test_hf_parquet_layout_is_found(tmp_path, monkeypatch):
    shard = tmp_path / "qasper" / "validation" / "0000.parquet"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"PAR1")
    for mod in ("pyarrow", "pyarrow.parquet", "pandas"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(CtxlabError) as e:
        load_samples(tmp_path, "qasper")
    assert str(shard) in str(e.value) and "pip install pyarrow" in str(e.value)

"""Metric registry: data-driven known values (tests/data/metric_cases.json), aggregation and bootstrap errors."""

import json
from pathlib import Path

import pytest
import sacrebleu

from ctxlab.errors import CtxlabError
from ctxlab.tasks.metrics import (
    METRICS,
    UnicodeRougeTokenizer,
    aggregate_by,
    bootstrap_stderr,
    get_metric,
    metric_names,
)

CASES = json.loads((Path(__file__).parent / "data" / "metric_cases.json").read_text(encoding="utf-8"))["cases"]


@pytest.mark.parametrize("case", CASES, ids=[f"{c['metric']}-{i}" for i, c in enumerate(CASES)])
def test_known_values(case):
    m = get_metric(case["metric"])
    got = m.aggregate(predictions=case["predictions"], references=case["references"])
    assert got == pytest.approx(case["expected"], abs=case["tol"]), case["why"]
    # The same score from stored per-sample values (what the runner keeps).
    values = [m.per_sample(p, r) for p, r in zip(case["predictions"], case["references"], strict=True)]
    assert m.aggregate(values) == pytest.approx(got, abs=1e-9)


def test_cases_cover_every_metric():
    assert {c["metric"] for c in CASES} == set(METRICS)


def test_unknown_metric_lists_valid_names():
    with pytest.raises(CtxlabError) as e:
        get_metric("rouge-l")
    msg = str(e.value)
    assert "rouge-l" in msg and all(n in msg for n in metric_names())


def test_metric_flags():
    assert all(m.higher_is_better for m in METRICS.values())
    corpus = {"bleu", "bleu_zh", "rouge_geo", "api_exact_match", "api_arg_f1"}
    assert {n for n, m in METRICS.items() if m.corpus} == corpus


def test_unicode_tokenizer_matches_default_on_ascii():
    from rouge_score.tokenizers import DefaultTokenizer

    texts = [
        "The quick brown foxes were running over 3 lazy dogs' houses, didn't they?",
        "GAO-21-123: Inspections (FY2020) -- delayed_by staff shortages & budgets!",
    ]
    for t in texts:
        assert UnicodeRougeTokenizer(stem=True).tokenize(t) == DefaultTokenizer(use_stemmer=True).tokenize(t)


def test_unicode_tokenizer_non_latin():
    tok = UnicodeRougeTokenizer(stem=True)
    assert tok.tokenize("东京Tower在日本") == ["东", "京", "tower", "在", "日", "本"]
    assert tok.tokenize("Привет, мир!") == ["привет", "мир"]
    assert tok.tokenize("café_au-lait") == ["café", "au", "lait"]
    # Why it is needed: the default rouge-score tokenizer drops every non-[a-z0-9] character.
    from rouge_score.tokenizers import DefaultTokenizer

    assert DefaultTokenizer().tokenize("我喜欢猫") == []


def test_bleu_matches_sacrebleu_with_variable_reference_counts():
    preds = ["the cat is on the mat", "there is a cat here", "a dog barks"]
    refs = [["the cat is on the mat", "a cat sits on the mat"], ["a cat is here", None], ["the dog barks loudly", None]]
    m = get_metric("bleu")
    ours = m.aggregate(predictions=preds, references=[[r for r in rs if r is not None] for rs in refs])
    streams = [list(s) for s in zip(*refs, strict=True)]
    assert ours == pytest.approx(sacrebleu.corpus_bleu(preds, streams).score, abs=1e-9)


def test_bootstrap_stderr():
    assert bootstrap_stderr([0.7] * 30) == pytest.approx(0.0, abs=1e-12)
    values = [0.0, 1.0] * 50
    se = bootstrap_stderr(values, n=1000, seed=0)
    assert se == bootstrap_stderr(values, n=1000, seed=0)
    assert se != bootstrap_stderr(values, n=1000, seed=1)
    assert 0.04 < se < 0.06  # binomial: sqrt(0.25 / 100) = 0.05
    assert get_metric("accuracy").stderr(values) == pytest.approx(100 * se)
    with pytest.raises(CtxlabError):
        bootstrap_stderr([])
    with pytest.raises(CtxlabError):
        bootstrap_stderr([1.0], n=1)


def test_corpus_metric_stderr_resamples_statistics():
    m = get_metric("rouge_geo")
    values = [m.per_sample(p, r) for p, r in [("the cat sat", "the cat sat on the mat"), ("d c b a", "a b c d")] * 5]
    assert all(len(v) == 3 for v in values)
    se = m.stderr(values, n=200)
    assert se > 0 and se == m.stderr(values, n=200)


def test_aggregate_input_errors():
    m = get_metric("f1")
    with pytest.raises(CtxlabError, match="no samples"):
        m.aggregate([])
    with pytest.raises(CtxlabError, match="2 predictions but 1 references"):
        m.aggregate(predictions=["a", "b"], references=["a"])
    with pytest.raises(CtxlabError, match="either"):
        m.aggregate([1.0], predictions=["a"], references=["a"])
    with pytest.raises(CtxlabError, match="empty reference list"):
        m.per_sample("a", [])
    with pytest.raises(CtxlabError, match="no standalone letter"):
        get_metric("zs_accuracy").per_sample("A", "the lamp")


def test_aggregate_by_groups():
    out = aggregate_by("accuracy", [1.0, 0.0, 1.0, 1.0], ["easy", "hard", "easy", "hard"])
    assert out == {"easy": 100.0, "hard": 50.0}
    with pytest.raises(CtxlabError):
        aggregate_by("accuracy", [1.0], ["a", "b"])

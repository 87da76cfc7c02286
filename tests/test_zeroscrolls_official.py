"""ZeroSCROLLS metrics agree with the official scoring code, case by case.

tests/data/zeroscrolls_official_cases.json holds predictions, references and the values the official metric
functions (HF tau/zero_scrolls metrics: F1 with unidecode, the SCROLLS ROUGE with use_stemmer=False and the max
over references per key, exponential similarity, lifelines' concordance index, the A-D accuracy) returned for them,
computed once with the official code and its libraries (unidecode 1.4, rouge-score 0.1.2, lifelines). Where the
official code raises (`official_raises`: an id past the list length, no admissible pair) the expected value is the
0 that ctxlab scores instead.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ctxlab.tasks.metrics import get_metric

CASES = json.loads((Path(__file__).parent / "data" / "zeroscrolls_official_cases.json").read_text(encoding="utf-8"))


def test_case_counts():
    counts = Counter(c["metric"] for c in CASES)
    assert counts == {"zs_f1": 424, "concordance_index": 146, "rouge_geo": 120, "exp_similarity": 60,
                      "zs_accuracy": 40}


@pytest.mark.parametrize("metric", ["zs_f1", "concordance_index", "exp_similarity", "zs_accuracy"])
def test_per_sample_values_equal_the_official_ones(metric):
    m = get_metric(metric)
    cases = [c for c in CASES if c["metric"] == metric]
    bad = [(c["prediction"], c["references"], c["expected"], m.per_sample(c["prediction"], c["references"]))
           for c in cases if abs(m.per_sample(c["prediction"], c["references"]) - c["expected"]) > 1e-12]
    assert not bad, f"{len(bad)} of {len(cases)} differ, e.g. {bad[:3]}"


def test_rouge_triples_and_corpus_score_equal_the_official_ones():
    m = get_metric("rouge_geo")
    cases = [c for c in CASES if c["metric"] == "rouge_geo"]
    ours = [m.per_sample(c["prediction"], c["references"]) for c in cases]
    for c, triple in zip(cases, ours, strict=True):
        assert triple == pytest.approx(c["expected"], abs=1e-12), c
    want = np.array([c["expected"] for c in cases]).mean(axis=0) * 100  # SCROLLS: geometric mean of mean R1/R2/RL
    assert m.aggregate(ours) == pytest.approx(float(np.prod(want) ** (1 / 3)), abs=1e-9)


def test_the_documented_differences():
    """unidecode folds what NFKD alone would not; no stemming; duplicated ids are scored, not zeroed."""
    f1, ci = get_metric("zs_f1"), get_metric("concordance_index")
    assert f1.per_sample("Straße", ["strasse"]) == 1.0 and f1.per_sample("Москва", ["moskva"]) == 1.0
    rouge = get_metric("rouge_geo").per_sample("the reports were studied", ["they study the report"])
    assert rouge[0] == pytest.approx(1 / 4)  # "the" only: studied/study and reports/report do not match unstemmed
    assert ci.per_sample("1, 2, 2", ["2, 1, 2"]) == next(c["expected"] for c in CASES if c["metric"] ==
                                                          "concordance_index" and c["prediction"] == "1, 2, 2")
    raised = [c for c in CASES if "official_raises" in c]
    assert {c["official_raises"] for c in raised} <= {"IndexError", "ZeroDivisionError"} and raised
    assert all(ci.per_sample(c["prediction"], c["references"]) == 0.0 for c in raised)

"""Metric registry: per-sample scoring plus aggregation (mean or corpus-level) and bootstrap standard errors.

Every metric turns one (prediction, references) pair into a per-sample value with `Metric.per_sample`, and a list
of those values into one number with `Metric.aggregate`. A per-sample value is a float for mean-of-samples metrics
(accuracy, F1, ROUGE-n, ...) and a tuple of sufficient statistics for corpus-level metrics (BLEU n-gram counts,
the (R1, R2, RL) triple behind the ZeroSCROLLS ROUGE geometric mean), so corpus scores and their bootstrap
errors come from stored per-sample values without rescoring. References are a string or a list of strings
(alternatives; the best one counts, as in SQuAD and ZeroSCROLLS).

Aggregates are on a 0-100 scale, like the official reports of SQuAD, ZeroSCROLLS, LongBench-v2 and sacrebleu;
per-sample values of mean metrics stay in [0, 1].
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Any

import numpy as np

from ctxlab.errors import CtxlabError

SampleValue = float | tuple[float, ...]


# ----------------------------------------------------------------------------------------------------------------
# Bootstrap
# ----------------------------------------------------------------------------------------------------------------


def bootstrap_stderr(
    values: Sequence[SampleValue],
    n: int = 1000,
    seed: int = 0,
    statistic: Callable[[np.ndarray], float] | None = None,
) -> float:
    """Standard error of `statistic` (default: the mean) over `n` bootstrap resamples of the per-sample values.

    Returns the sample standard deviation (ddof=1) of the resampled statistics, as lm-eval does. Deterministic for
    a given seed. `statistic` receives an array of shape (m,) or (m, k) for tuple values.
    """
    arr = np.asarray(values, dtype=float)
    if arr.shape[0] == 0:
        raise CtxlabError("bootstrap_stderr needs at least one value")
    if n < 2:
        raise CtxlabError(f"bootstrap_stderr needs n >= 2 resamples, got {n}")
    stat = statistic if statistic is not None else (lambda a: float(a.mean(axis=0)))
    rng = np.random.default_rng(seed)
    m = arr.shape[0]
    out = np.empty(n)
    chunk = max(1, min(n, 2_000_000 // m))  # bound the (chunk, m) index matrix to a few MB
    for start in range(0, n, chunk):
        idx = rng.integers(0, m, size=(min(chunk, n - start), m))
        for j, row in enumerate(idx):
            out[start + j] = stat(arr[row])
    return float(out.std(ddof=1))


# ----------------------------------------------------------------------------------------------------------------
# The Metric type and aggregation helpers
# ----------------------------------------------------------------------------------------------------------------


def _mean_x100(arr: np.ndarray) -> float:
    return 100.0 * float(arr.mean())


@dataclass(frozen=True)
class Metric:
    """A named metric: `per_sample(pred, refs)` → value; `aggregate(values)` → 0-100 score; `stderr` via bootstrap.

    `corpus` is True when the aggregate is not a mean of per-sample values (BLEU, ROUGE geometric mean).
    """

    name: str
    higher_is_better: bool
    description: str
    sample_fn: Callable[[Any, list[Any]], SampleValue]
    combine_fn: Callable[[np.ndarray], float] = _mean_x100
    corpus: bool = False

    def per_sample(self, prediction: Any, references: Any) -> SampleValue:
        return self.sample_fn(prediction, _as_refs(references))

    def _values(
        self, values: Sequence[SampleValue] | None, predictions: Sequence[Any] | None, references: Sequence[Any] | None
    ) -> list[SampleValue]:
        if values is not None:
            if predictions is not None or references is not None:
                raise CtxlabError(f"metric {self.name}: pass either per-sample values or predictions+references")
            vals = list(values)
        else:
            if predictions is None or references is None:
                raise CtxlabError(f"metric {self.name}: pass per-sample values or both predictions and references")
            if len(predictions) != len(references):
                raise CtxlabError(
                    f"metric {self.name}: {len(predictions)} predictions but {len(references)} references"
                )
            vals = [self.per_sample(p, r) for p, r in zip(predictions, references, strict=True)]
        if not vals:
            raise CtxlabError(f"metric {self.name}: no samples to aggregate")
        return vals

    def aggregate(
        self,
        values: Sequence[SampleValue] | None = None,
        *,
        predictions: Sequence[Any] | None = None,
        references: Sequence[Any] | None = None,
    ) -> float:
        """The 0-100 score from per-sample values, or from predictions and references (scored here)."""
        return float(self.combine_fn(np.asarray(self._values(values, predictions, references), dtype=float)))

    def stderr(
        self,
        values: Sequence[SampleValue] | None = None,
        *,
        predictions: Sequence[Any] | None = None,
        references: Sequence[Any] | None = None,
        n: int = 1000,
        seed: int = 0,
    ) -> float:
        """Bootstrap standard error of `aggregate` (same 0-100 scale), resampling samples with replacement."""
        vals = self._values(values, predictions, references)
        return bootstrap_stderr(vals, n=n, seed=seed, statistic=self.combine_fn)


def _as_refs(references: Any) -> list[Any]:
    if isinstance(references, (list, tuple)):
        if not references:
            raise CtxlabError("empty reference list")
        return list(references)
    return [references]


def _text(x: Any) -> str:
    return "" if x is None else str(x)


# ----------------------------------------------------------------------------------------------------------------
# SQuAD-style normalisation, exact match and token F1 (also the ZeroSCROLLS F1, which adds unidecode)
# ----------------------------------------------------------------------------------------------------------------

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_squad(s: str) -> str:
    """SQuAD v1.1: lowercase, drop ASCII punctuation, drop English articles, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _ascii_fold(s: str) -> str:
    """`unidecode`, as the official ZeroSCROLLS F1 applies it after the SQuAD normalisation ("Straße" → "strasse",
    "Москва" → "moskva")."""
    from unidecode import unidecode

    return unidecode(s)


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _exact_match(pred: Any, refs: list[Any]) -> float:
    p = normalize_squad(_text(pred))
    return float(any(p == normalize_squad(_text(r)) for r in refs))


def _f1(pred: Any, refs: list[Any]) -> float:
    p = normalize_squad(_text(pred)).split()
    return max(_token_f1(p, normalize_squad(_text(r)).split()) for r in refs)


def _zs_f1(pred: Any, refs: list[Any]) -> float:
    p = _ascii_fold(normalize_squad(_text(pred))).split()
    return max(_token_f1(p, _ascii_fold(normalize_squad(_text(r))).split()) for r in refs)


def _accuracy(pred: Any, refs: list[Any]) -> float:
    return float(any(pred == r for r in refs))


# ----------------------------------------------------------------------------------------------------------------
# ROUGE via rouge-score, with a tokenizer that works for non-Latin scripts
# ----------------------------------------------------------------------------------------------------------------


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return (
        0x3040 <= o <= 0x30FF  # hiragana, katakana
        or 0x3400 <= o <= 0x4DBF  # CJK extension A
        or 0x4E00 <= o <= 0x9FFF  # CJK unified ideographs
        or 0xF900 <= o <= 0xFAFF  # CJK compatibility ideographs
        or 0x20000 <= o <= 0x2FA1F  # CJK extensions B-F and supplement
    )


class UnicodeRougeTokenizer:
    """rouge-score tokenizer for any script: the default one keeps only [a-z0-9], so e.g. Chinese scores 0.

    Lowercases; tokens are runs of Unicode letters, digits and combining marks (so Devanagari vowel signs stay
    inside words); each CJK ideograph or kana is its own token (no spaces between words in those scripts). With
    `stem`, ASCII alphanumeric tokens longer than 3 characters get the Porter stemmer exactly as the default
    tokenizer does, so pure-ASCII text tokenizes identically to `DefaultTokenizer(use_stemmer=True)`.
    """

    _ascii_token = re.compile(r"^[a-z0-9]+$")

    def __init__(self, stem: bool = True):
        from nltk.stem import porter

        self._stemmer = porter.PorterStemmer() if stem else None

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        cur: list[str] = []
        for ch in text.lower():
            if _is_cjk(ch):
                if cur:
                    tokens.append("".join(cur))
                    cur = []
                tokens.append(ch)
            elif ch != "_" and unicodedata.category(ch)[0] in "LNM":
                cur.append(ch)
            elif cur:
                tokens.append("".join(cur))
                cur = []
        if cur:
            tokens.append("".join(cur))
        if self._stemmer is not None:
            tokens = [self._stemmer.stem(t) if len(t) > 3 and self._ascii_token.match(t) else t for t in tokens]
        return tokens


@cache
def _rouge_scorer(official: bool):
    from rouge_score import rouge_scorer

    types = ["rouge1", "rouge2", "rougeL"]
    if official:  # ZeroSCROLLS/SCROLLS metric: the default tokenizer, `metric_fn_kwargs={"use_stemmer": False}`
        return rouge_scorer.RougeScorer(types, use_stemmer=False)
    return rouge_scorer.RougeScorer(types, tokenizer=UnicodeRougeTokenizer(stem=True))


def _rouge_triple(pred: Any, refs: list[Any], official: bool) -> tuple[float, float, float]:
    """(R1, R2, RL) F-measures, each maximised over the references independently (SCROLLS `agg_fn=max` per key)."""
    scorer = _rouge_scorer(official)
    scores = [scorer.score(_text(r), _text(pred)) for r in refs]
    return tuple(max(s[k].fmeasure for s in scores) for k in ("rouge1", "rouge2", "rougeL"))  # type: ignore[return-value]


def _rouge_n(key: int) -> Callable[[Any, list[Any]], float]:
    return lambda pred, refs: _rouge_triple(pred, refs, official=False)[key]


def _geometric_mean_x100(arr: np.ndarray) -> float:
    """ZeroSCROLLS: geometric mean of the corpus means of R1, R2 and RL (each ×100), not a mean of per-sample
    geometric means."""
    r1, r2, rl = (100.0 * arr.reshape(-1, 3).mean(axis=0)).tolist()
    return float((r1 * r2 * rl) ** (1.0 / 3.0))


# ----------------------------------------------------------------------------------------------------------------
# ZeroSCROLLS task metrics (semantics of the official metric scripts on HF tau/zero_scrolls)
# ----------------------------------------------------------------------------------------------------------------

_LETTER = re.compile(r"\b[A-D]\b")
_PERCENT = re.compile(r"\d+\.?\d*%")


def _zs_accuracy(pred: Any, refs: list[Any]) -> float:
    """QuALITY: first standalone capital A-D in the prediction vs in the gold (so a leading article "A" counts)."""
    best = 0.0
    for r in refs:
        gold = _LETTER.search(_text(r))
        if gold is None:
            raise CtxlabError(f"QuALITY reference has no standalone letter A-D: {_text(r)[:60]!r}")
        got = _LETTER.search(_text(pred))
        best = max(best, float(got is not None and got.group() == gold.group()))
    return best


def _percentage(s: str) -> float | None:
    m = _PERCENT.search(s)
    return None if m is None else float(m.group(0)[:-1])


def _exp_similarity(pred: Any, refs: list[Any]) -> float:
    """SpaceDigest: 0.5 ** (|gold% - pred%| / 10) on the first `\\d+\\.?\\d*%`; 0 without a predicted percentage;
    a gold without one counts as 0% (official behaviour)."""
    p = _percentage(_text(pred))
    if p is None:
        return 0.0
    return max(0.5 ** (abs((_percentage(_text(r)) or 0.0) - p) / 10) for r in refs)


def _int_list(s: str) -> list[int]:
    """Official BookSumSort normalisation: keep digits, whitespace and commas; commas → spaces; split into ints."""
    cleaned = re.sub(r"[^0-9\s,]", "", s).replace(",", " ").strip(string.punctuation)
    return [int(x) for x in cleaned.split()]


def _positions(ids: list[int]) -> list[int] | None:
    """The official `summ_id_per_location_to_pos_of_id`: entry id-1 holds the (1-based) position of `id`; a repeated
    id keeps its last position and leaves another entry at -1; Python indexing makes id 0 the last entry. None where
    the official code raises IndexError (an id above the list length)."""
    order = [-1] * len(ids)
    for pos, i in enumerate(ids, 1):
        if not -len(ids) <= i - 1 < len(ids):
            return None
        order[i - 1] = pos
    return order


def _harrell_c(times: list[int], scores: list[int]) -> float | None:
    """lifelines.utils.concordance_index(times, scores) with every event observed: over pairs with t_a < t_b,
    (pairs ordered alike by the scores + half the score ties) / pairs; None when there is no such pair (where
    lifelines raises ZeroDivisionError)."""
    right = ties = pairs = 0
    for ta, sa in zip(times, scores, strict=True):
        for tb, sb in zip(times, scores, strict=True):
            if ta < tb:
                pairs += 1
                right += sa < sb
                ties += sa == sb
    return None if pairs == 0 else (right + ties / 2) / pairs


def _concordance(gold: list[int], pred: list[int]) -> float:
    """BookSumSort, as the official script: 0 unless the ids are a permutation of the gold ids (sorted lists equal),
    else Harrell's C of the id positions. Where the official script crashes (an id past the list length, no
    admissible pair: a single id or nothing), the prediction scores 0."""
    if sorted(gold) != sorted(pred):
        return 0.0
    g, p = _positions(gold), _positions(pred)
    c = None if g is None or p is None else _harrell_c(g, p)
    return 0.0 if c is None else c


def _concordance_index(pred: Any, refs: list[Any]) -> float:
    return max(_concordance(_int_list(_text(r)), _int_list(_text(pred))) for r in refs)


# ----------------------------------------------------------------------------------------------------------------
# BLEU via sacrebleu (corpus-level, from per-sample n-gram statistics)
# ----------------------------------------------------------------------------------------------------------------


@cache
def _bleu(tokenize: str):
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize=tokenize)


def make_bleu(name: str, tokenize: str) -> Metric:
    """Corpus BLEU with a sacrebleu tokenizer ('13a', 'zh', 'intl', 'char', ...). Per-sample values are sacrebleu's
    segment statistics [hyp_len, ref_len, correct_1..4, total_1..4]; the aggregate sums them (= corpus_score)."""

    def sample(pred: Any, refs: list[Any]) -> tuple[float, ...]:
        stats = _bleu(tokenize)._extract_corpus_statistics([_text(pred)], [[_text(r)] for r in refs])[0]
        return tuple(float(x) for x in stats)

    def combine(arr: np.ndarray) -> float:
        totals = [int(round(x)) for x in arr.reshape(arr.shape[0], -1).sum(axis=0)]
        return float(_bleu(tokenize)._compute_score_from_stats(totals).score)

    return Metric(name, True, f"sacrebleu corpus BLEU, tokenize={tokenize}", sample, combine, corpus=True)


def _mlqa(pred: Any, refs: list[Any], em: bool) -> float:
    from ctxlab.tasks.xquad import exact_match, f1_score

    fn = exact_match if em else f1_score
    return fn(_text(pred), [_text(r) for r in refs], "xx")


def _ticket_metrics() -> list[Metric]:
    """TicketTalk's API-call metrics: per-sample count tuples, corpus aggregates (tasks/tickettalk/metrics.py)."""
    from ctxlab.tasks.tickettalk.metrics import METRIC_SPECS

    out = []
    for name in ("api_exact_match", "api_arg_f1"):
        desc, sample_fn, combine = METRIC_SPECS[name]
        out.append(Metric(name, True, desc, lambda p, r, f=sample_fn: f(p, r),
                          lambda arr, c=combine: float(c([tuple(row) for row in arr])), corpus=True))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------------

_ALL = [
    Metric("accuracy", True, "prediction equals a reference (exact, unnormalised)", _accuracy),
    Metric("exact_match", True, "SQuAD-normalised exact match, max over references", _exact_match),
    Metric("f1", True, "SQuAD-normalised bag-of-tokens F1, max over references", _f1),
    Metric("zs_f1", True, "ZeroSCROLLS F1: SQuAD normalisation + unidecode, max over references", _zs_f1),
    Metric("zs_accuracy", True, "ZeroSCROLLS QuALITY: first standalone A-D letter matches the gold's", _zs_accuracy),
    Metric("rouge1", True, "ROUGE-1 F (rouge-score, Unicode-aware tokenizer, Porter stem)", _rouge_n(0)),
    Metric("rouge2", True, "ROUGE-2 F (rouge-score, Unicode-aware tokenizer, Porter stem)", _rouge_n(1)),
    Metric("rougeL", True, "ROUGE-L F (rouge-score, Unicode-aware tokenizer, Porter stem)", _rouge_n(2)),
    Metric(
        "rouge_geo",
        True,
        "ZeroSCROLLS ROUGE: geometric mean of corpus R1/R2/RL (default rouge-score tokenizer, no stemming)",
        lambda pred, refs: _rouge_triple(pred, refs, official=True),
        _geometric_mean_x100,
        corpus=True,
    ),
    Metric("exp_similarity", True, "ZeroSCROLLS SpaceDigest: 0.5 ** (|gold% - pred%| / 10)", _exp_similarity),
    Metric("concordance_index", True, "ZeroSCROLLS BookSumSort: C-index of the predicted order", _concordance_index),
    make_bleu("bleu", "13a"),
    make_bleu("bleu_zh", "zh"),
    Metric("mlqa_em", True, "MLQA-normalised exact match (language-aware; XQuAD scores it with the sample's "
           "language, standalone use assumes no article list)", lambda p, r: _mlqa(p, r, em=True)),
    Metric("mlqa_f1", True, "MLQA-normalised token F1 (language-aware, CJK split per character)",
           lambda p, r: _mlqa(p, r, em=False)),
    *_ticket_metrics(),
]

METRICS: Mapping[str, Metric] = MappingProxyType({m.name: m for m in _ALL})


def metric_names() -> list[str]:
    return sorted(METRICS)


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise CtxlabError(f"unknown metric {name!r}; valid metrics: {', '.join(metric_names())}")
    return METRICS[name]


def aggregate_by(metric: Metric | str, values: Sequence[SampleValue], groups: Sequence[str]) -> dict[str, float]:
    """Aggregate per group label (e.g. LongBench-v2 difficulty or length), groups in first-seen order."""
    m = get_metric(metric) if isinstance(metric, str) else metric
    if len(values) != len(groups):
        raise CtxlabError(f"metric {m.name}: {len(values)} values but {len(groups)} group labels")
    buckets: dict[str, list[SampleValue]] = {}
    for v, g in zip(values, groups, strict=True):
        buckets.setdefault(g, []).append(v)
    return {g: m.aggregate(vs) for g, vs in buckets.items()}

"""XQuAD: cross-lingual extractive QA (SQuAD v1.1 format), scored with multilingual EM/F1.

Facts and formats: /work/shared/docs/data.md §3 and benchmarks.md §5, §7 ("Normalisation conventions").

Scoring. Two normalisers are provided and every sample reports both:
- `em`/`f1`: the MLQA normaliser (facebookresearch/MLQA `mlqa_evaluation_v1.py`), re-implemented with identical
  behaviour: lowercase → drop every Unicode category-P character and ASCII punctuation → drop language-specific
  articles → tokenise (whitespace; for zh each CJK char in U+4E00–U+9FA5 is its own token).
  Articles: en a|an|the; es un|una|unos|unas|el|la|los|las; de ein|eine|einen|einem|eines|einer|der|die|das|den|
  dem|des; vi của|là|cái|chiếc|những; ar: the official pattern `'\\sال^|ال'` removes *every* "ال" (also inside
  words; `\\sال^` can never match), which we keep bit-identical (lm-eval's `(?:^|\\s)ال` is a variant we don't use);
  hi, zh: none.
  Extension (not in MLQA, which raises on other languages): any other language code (el, ru, tr, th, ro, ...)
  gets whitespace tokenisation and no article removal. We deliberately add no article lists of our own
  (e.g. Greek) so that numbers stay comparable with the official script where it is defined.
- `exact_match`/`f1`: the English SQuAD v1.1 normaliser for every language — XQuAD's official protocol
  (ASCII punctuation, English articles, whitespace tokens; zh answers are then mostly one token).
Per-sample values are in [0, 1] (max over gold answers); reports conventionally show means × 100.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ctxlab.checks import is_int
from ctxlab.errors import CtxlabError
from ctxlab.tasks.base import DataCard, Sample, Task

# The official release (google-deepmind/xquad): 12 languages, Romanian added in 2021.
OFFICIAL_LANGS = ("ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh")
XQUAD_LANGS = ("ar", "de", "el", "en", "es", "hi", "ru", "tr", "vi", "zh")  # shipped in ../shared/data/xquad
MLQA_LANGS = ("en", "es", "hi", "vi", "de", "ar", "zh")  # languages the official MLQA script defines
METRICS = ("mlqa_em", "mlqa_f1", "exact_match", "f1")
SCHEMES = ("mlqa", "squad")

_ARTICLES = {
    "en": re.compile(r"\b(a|an|the)\b"),
    "es": re.compile(r"\b(un|una|unos|unas|el|la|los|las)\b"),
    "de": re.compile(r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b"),
    "vi": re.compile(r"\b(của|là|cái|chiếc|những)\b"),
    "ar": re.compile(r"\sال^|ال"),  # official pattern, kept verbatim (see module docstring)
}
_SQUAD_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SQUAD_PUNCT = frozenset(string.punctuation)
_CJK = re.compile(r"[\u4e00-\u9fa5]")  # the exact range of the official mixed segmentation
_MIXED_SEGMENTATION = ("zh",)
_LANG_CODE = re.compile(r"^[a-z]{2,3}([-_][A-Za-z0-9]{1,8})*$")


@lru_cache(maxsize=65536)
def is_punct(ch: str) -> bool:
    """MLQA's PUNCT set: every Unicode category-P character plus ASCII `string.punctuation` (e.g. $ + < = > ^ ` |)."""
    return ch in _SQUAD_PUNCT or unicodedata.category(ch).startswith("P")


def base_lang(lang: str) -> str:
    """'zh-CN' / 'pt_BR' → 'zh' / 'pt': normalisation depends only on the primary language subtag."""
    return re.split(r"[-_]", lang.strip().lower(), maxsplit=1)[0]


def check_lang(lang: str) -> str:
    if not isinstance(lang, str) or not _LANG_CODE.match(lang.strip()):
        raise CtxlabError(f"invalid language code {lang!r}; expected e.g. 'en', 'zh', 'pt-BR'")
    return lang.strip()


def _mixed_segmentation(text: str) -> list[str]:
    """Each CJK character (and punctuation mark) is a token; other runs are split on whitespace."""
    tokens: list[str] = []
    run: list[str] = []
    for ch in text:
        if _CJK.match(ch) or is_punct(ch):
            tokens.extend("".join(run).split())
            run = []
            tokens.append(ch)
        else:
            run.append(ch)
    tokens.extend("".join(run).split())
    return tokens


def answer_tokens(text: str, lang: str, *, scheme: str = "mlqa") -> list[str]:
    """Normalised tokens of an answer (what F1 counts)."""
    return normalize_answer(text, lang, scheme=scheme).split()


def normalize_answer(text: str, lang: str, *, scheme: str = "mlqa") -> str:
    """Normalised answer string (what EM compares). `scheme` is 'mlqa' (language-aware) or 'squad' (English)."""
    text = text.lower()
    if scheme == "squad":
        text = "".join(ch for ch in text if ch not in _SQUAD_PUNCT)
        return " ".join(_SQUAD_ARTICLES.sub(" ", text).split())
    if scheme != "mlqa":
        raise CtxlabError(f"unknown normalisation scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    lang = base_lang(lang)
    text = "".join(ch for ch in text if not is_punct(ch))
    if lang in _ARTICLES:
        text = _ARTICLES[lang].sub(" ", text)
    tokens = _mixed_segmentation(text) if lang in _MIXED_SEGMENTATION else text.split()
    return " ".join(t for t in tokens if t.strip())


def _golds(golds: Sequence[str] | str) -> list[str]:
    out = [golds] if isinstance(golds, str) else list(golds)
    if not out:
        raise ValueError("at least one gold answer is required")
    return out


def exact_match(prediction: str, golds: Sequence[str] | str, lang: str, *, scheme: str = "mlqa") -> float:
    """1.0 if the normalised prediction equals some normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction, lang, scheme=scheme)
    return float(any(pred == normalize_answer(g, lang, scheme=scheme) for g in _golds(golds)))


def _f1_one(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:  # also when both are empty, as in the official scripts
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds: Sequence[str] | str, lang: str, *, scheme: str = "mlqa") -> float:
    """Bag-of-tokens F1 between prediction and gold answer, max over gold answers."""
    pred = answer_tokens(prediction, lang, scheme=scheme)
    return max(_f1_one(pred, answer_tokens(g, lang, scheme=scheme)) for g in _golds(golds))


def qa_scores(prediction: str, golds: Sequence[str] | str, lang: str) -> dict[str, float]:
    """All four per-sample metrics (see module docstring)."""
    return {
        "mlqa_em": exact_match(prediction, golds, lang),
        "mlqa_f1": f1_score(prediction, golds, lang),
        "exact_match": exact_match(prediction, golds, lang, scheme="squad"),
        "f1": f1_score(prediction, golds, lang, scheme="squad"),
    }


# ---------------------------------------------------------------------------------------------------- loader


@dataclass(frozen=True)
class QA:
    id: str
    question: str
    answers: tuple[tuple[str, int], ...]  # (text, answer_start) with answer_start a code-point offset


@dataclass(frozen=True)
class Paragraph:
    context: str
    qas: tuple[QA, ...]


@dataclass(frozen=True)
class Article:
    title: str
    paragraphs: tuple[Paragraph, ...]


def _need(cond: bool, source: str, where: str, what: str) -> None:
    if not cond:
        raise CtxlabError(f"{source}: {where}: {what}")



def parse_squad(obj: Any, source: str = "<data>", *, check_spans: bool = True) -> list[Article]:
    """Validate a SQuAD v1.1 object and return its articles; errors name `source` and the offending item.

    With `check_spans`, `context[answer_start:answer_start+len(text)] == text` must hold (true for all XQuAD files).
    Extra keys are ignored; question ids must be unique within the file.
    """
    _need(isinstance(obj, dict) and isinstance(obj.get("data"), list), source, "top level",
          'expected an object with a "data" list (SQuAD v1.1 format)')
    version = obj.get("version", "1.1")
    _need(isinstance(version, str | int | float), source, "top level", f'"version" must be a string, got {version!r}')
    seen: dict[str, str] = {}
    articles: list[Article] = []
    for ai, art in enumerate(obj["data"]):
        where_a = f"article {ai}"
        _need(isinstance(art, dict), source, where_a, "expected an object")
        title = art.get("title")
        _need(isinstance(title, str), source, where_a, '"title" must be a string')
        _need(isinstance(art.get("paragraphs"), list), source, f"{where_a} ({title!r})", '"paragraphs" must be a list')
        paragraphs: list[Paragraph] = []
        for pi, par in enumerate(art["paragraphs"]):
            where_p = f"article {ai} ({title!r}) paragraph {pi}"
            _need(isinstance(par, dict), source, where_p, "expected an object")
            ctx = par.get("context")
            _need(isinstance(ctx, str) and ctx.strip() != "", source, where_p, '"context" must be a non-empty string')
            _need(isinstance(par.get("qas"), list), source, where_p, '"qas" must be a list')
            qas: list[QA] = []
            for qi, qa in enumerate(par["qas"]):
                where_q = f"{where_p} question {qi}"
                _need(isinstance(qa, dict), source, where_q, "expected an object")
                qid = qa.get("id")
                _need(isinstance(qid, str) and qid != "", source, where_q, '"id" must be a non-empty string')
                where_q = f"{where_q} (id {qid})"
                _need(qid not in seen, source, where_q, f"duplicate id (first seen at {seen.get(qid)})")
                seen[qid] = where_q
                question = qa.get("question")
                _need(isinstance(question, str) and question.strip() != "", source, where_q,
                      '"question" must be a non-empty string')
                answers = qa.get("answers")
                _need(isinstance(answers, list) and len(answers) > 0, source, where_q,
                      '"answers" must be a non-empty list')
                spans: list[tuple[str, int]] = []
                for k, ans in enumerate(answers):
                    where_k = f"{where_q} answer {k}"
                    _need(isinstance(ans, dict), source, where_k, "expected an object")
                    text, start = ans.get("text"), ans.get("answer_start")
                    _need(isinstance(text, str) and text != "", source, where_k, '"text" must be a non-empty string')
                    _need(is_int(start) and 0 <= start <= len(ctx) - len(text), source, where_k,
                          f'"answer_start" must be an int in [0, {len(ctx) - len(text)}], got {start!r}')
                    if check_spans:
                        _need(ctx[start:start + len(text)] == text, source, where_k,
                              f"context[{start}:{start + len(text)}] is {ctx[start:start + len(text)]!r}, "
                              f"not the answer {text!r}")
                    spans.append((text, start))
                qas.append(QA(qid, question, tuple(spans)))
            paragraphs.append(Paragraph(ctx, tuple(qas)))
        articles.append(Article(title, tuple(paragraphs)))
    return articles


def load_squad(path: str | Path, *, check_spans: bool = True) -> list[Article]:
    """Read and validate a SQuAD v1.1 JSON file (XQuAD, MLQA, synthetic output)."""
    path = Path(path)
    if not path.is_file():
        raise CtxlabError(f"{path}: file not found")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CtxlabError(f"{path}: not valid UTF-8 JSON ({e})") from None
    return parse_squad(obj, str(path), check_spans=check_spans)


def to_squad_json(articles: Sequence[Article], version: str = "1.1") -> dict[str, Any]:
    """Inverse of `parse_squad`: the SQuAD v1.1 object for these articles."""
    return {
        "version": version,
        "data": [
            {"title": a.title, "paragraphs": [
                {"context": p.context, "qas": [
                    {"id": q.id, "question": q.question,
                     "answers": [{"text": t, "answer_start": s} for t, s in q.answers]} for q in p.qas]}
                for p in a.paragraphs]}
            for a in articles
        ],
    }


def squad_samples(articles: Sequence[Article], lang: str) -> Iterator[Sample]:
    """One Sample per question; `reference` is the list of gold answer texts, `evidence` their spans."""
    for ai, art in enumerate(articles):
        for pi, par in enumerate(art.paragraphs):
            for qa in par.qas:
                yield Sample(
                    id=qa.id,
                    context=par.context,
                    question=qa.question,
                    reference=[t for t, _ in qa.answers],
                    meta={"lang": lang, "title": art.title, "article": ai, "paragraph": pi,
                          "answer_starts": [s for _, s in qa.answers]},
                    evidence=tuple((s, s + len(t)) for t, s in qa.answers),
                )


# ---------------------------------------------------------------------------------------------------- data dir

# ../shared/data/xquad relative to the repository root (data.md §1); only used when it exists.
SHARED_XQUAD_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "xquad"


def xquad_file(lang: str, data_dir: str | Path | None = None) -> Path:
    """Path of `xquad.LANG.json` in `data_dir` (or its `xquad/` subfolder), defaulting to the shared data."""
    lang = check_lang(lang)
    name = f"xquad.{lang}.json"
    if data_dir is None:
        if not SHARED_XQUAD_DIR.is_dir():
            raise CtxlabError(f"XQuAD data not found at {SHARED_XQUAD_DIR}; pass a data dir holding {name}")
        data_dir = SHARED_XQUAD_DIR
    data_dir = Path(data_dir)
    for cand in (data_dir / name, data_dir / "xquad" / name):
        if cand.is_file():
            return cand
    raise CtxlabError(f"{name} not found in {data_dir} (nor in {data_dir / 'xquad'})")


def find_xquad_langs(data_dir: str | Path | None = None) -> list[str]:
    """Language codes of the `xquad.LANG.json` files in `data_dir` (or its `xquad/` subfolder)."""
    base = Path(data_dir) if data_dir is not None else SHARED_XQUAD_DIR
    langs: set[str] = set()
    for d in (base, base / "xquad"):
        if d.is_dir():
            langs.update(p.name[len("xquad."):-len(".json")] for p in d.glob("xquad.*.json"))
    return sorted(lang for lang in langs if _LANG_CODE.match(lang))


def load_xquad(lang: str, data_dir: str | Path | None = None) -> list[Article]:
    return load_squad(xquad_file(lang, data_dir))


# ---------------------------------------------------------------------------------------------------- task

_CARD = DataCard(
    overview={
        "summary": "XQuAD: 240 paragraphs and 1,190 question-answer pairs from the SQuAD v1.1 dev set, professionally "
                   "translated; entirely parallel across languages. Extractive QA, scored generatively here.",
        "website": "https://github.com/google-deepmind/xquad",
        "data_url": "https://github.com/google-deepmind/xquad (commit 7d30520c717524000f0d9d2f9c10a069acd9d285)",
        "paper": "Artetxe, Ruder, Yogatama 2020, On the Cross-lingual Transferability of Monolingual "
                 "Representations, arXiv 1910.11856",
        "multilingual": "yes",
        "languages": "ar, de, el, en, es, hi, ru, tr, vi, zh shipped locally (upstream also th, ro)",
        "license": "CC BY-SA 4.0",
        "primary_task": "extractive question answering",
        "communicative_goal": "answer a question with a span copied from the given paragraph",
        "data_fields": "SQuAD v1.1 JSON: data[].title, paragraphs[].context, qas[].{id, question, "
                       "answers[].{text, answer_start}}; answer_start is a code-point offset into context",
        "example": '{"question": "How many points did the Panthers defense surrender?", '
                   '"answers": [{"answer_start": 34, "text": "308"}]}',
        "splits": "test only: 48 articles, 240 paragraphs (5 per article), 1,190 questions, one answer each, "
                  "per language",
    },
    context={
        "previous_work": "Cross-lingual transfer benchmark; part of XTREME. Used as a zero-shot target for "
                         "multilingual QA and for synthetic multilingual QA generation (Shakeri et al. 2020).",
        "underserved": "Covers several lower-resource languages (hi, vi, tr, el) at identical content.",
        "biases": "English-Wikipedia topics translated into other languages: culturally English-centric content.",
    },
    curation={
        "rationale": "Measure cross-lingual transfer with parallel content so languages are directly comparable.",
        "language_data": "SQuAD v1.1 dev paragraphs (English Wikipedia) translated by professional translators.",
        "annotations": "Answer spans re-marked in each translation; exactly one answer per question.",
        "pii": "Wikipedia content about public topics; no personal data collected.",
        "maintenance": "Static release; Romanian added upstream in 2021.",
    },
    gem={
        "rationale": "Multilingual, parallel, small: a cheap probe of multilingual reading comprehension.",
        "modifications": "None to the data. Answers are generated (prompt: Context/Question/Answer:) and scored by "
                         "MLQA-normalised EM/F1 (mlqa_em, mlqa_f1) plus the official English SQuAD normaliser "
                         "(exact_match, f1).",
        "getting_started": "ctxlab eval MODEL --tasks xquad:LANG (the 12 official languages; any other "
                           "xquad.LANG.json in --data-dir is found too); data dir defaults to ../shared/data/xquad.",
    },
    results={
        "metrics": "EM and F1, max over gold answers, averaged (x100 in reports).",
        "protocol": "Zero-shot: train on English SQuAD, evaluate on XQuAD only at the end; official scoring uses "
                    "the English SQuAD v1.1 script for all languages.",
        "previous_results": "README baselines, F1: mBERT avg 65.2 (en 83.5, zh 58.0); XLM-R Large avg 77.2 "
                            "(en 86.5, zh 59.3).",
    },
    considerations={
        "limitations": "Test-only and small (1,190 questions): per-language differences of a few F1 points need "
                       "confidence intervals. Translationese; answers may not be verbatim-alignable across languages.",
        "contamination": "SQuAD dev and XQuAD are widely published; pre-training data may contain them.",
        "licence": "CC BY-SA 4.0 (share-alike for derived data).",
        "unsuited": "Not a training set; not for open-domain QA.",
    },
)


@dataclass(frozen=True)
class XQuADTask(Task):
    """`xquad:LANG`: one language file; generation is cut at the first line break and scored against the golds."""

    lang: str = "en"

    def samples(self, data_dir: Path | None) -> Iterator[Sample]:
        yield from squad_samples(load_xquad(self.lang, data_dir), self.lang)

    def prompt(self, sample: Sample) -> str:
        return f"Context: {sample.context}\n\nQuestion: {sample.question}\n\nAnswer:"

    def parse(self, generation: str) -> str:
        for line in generation.splitlines():
            if line.strip():
                return line.strip()
        return ""

    def score(self, prediction: Any, sample: Sample) -> dict[str, float]:
        return qa_scores(str(prediction), sample.reference, self.lang)


def make_task(lang: str) -> XQuADTask:
    """An `xquad:LANG` task for any language code (its file must exist in the data dir at load time)."""
    lang = check_lang(lang)
    return XQuADTask(name=f"xquad:{lang}", version="1.0", card=_CARD, metrics=METRICS, languages=(lang,), lang=lang)


def tasks_for_dir(data_dir: str | Path | None = None) -> list[XQuADTask]:
    """One task per `xquad.LANG.json` found (e.g. th/ro files added to a private data dir)."""
    return [make_task(lang) for lang in find_xquad_langs(data_dir)]


TASKS: list[Task] = [make_task(lang) for lang in OFFICIAL_LANGS]

__all__ = [
    "METRICS", "MLQA_LANGS", "OFFICIAL_LANGS", "SHARED_XQUAD_DIR", "TASKS", "XQUAD_LANGS", "QA", "Article", "Paragraph",
    "XQuADTask",
    "answer_tokens", "base_lang", "check_lang", "exact_match", "f1_score", "find_xquad_langs", "is_punct",
    "load_squad", "load_xquad", "make_task", "normalize_answer", "parse_squad", "qa_scores", "squad_samples",
    "to_squad_json", "tasks_for_dir", "xquad_file",
]

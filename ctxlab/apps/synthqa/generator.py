"""Multilingual synthetic QA generation (after Shakeri et al. 2020, arXiv 2010.12008), model-agnostic.

One generative model turns a context in any language into a question-answer pair; filters keep pairs whose
answer is a span of the context and that a QA model answers consistently (round trip). Models are plain callables,
so this file never imports a model library:

- `generate(prompts: list[str]) -> list[str]`: one generation per prompt, same order.
- `answer(contexts: list[str], questions: list[str]) -> list[str]`: one predicted answer per pair (or None: the
  round-trip filter is skipped and counts no drops).

Generation format (the paper's exact serialisation is unverified, benchmarks.md §6; this is ours):
    input : "context: <context>"
    output: "question: <question> answer: <answer>"
The labels are English for every language. Parsing is lenient: labels are case-insensitive, a full-width colon
"：" is accepted, common end-of-sequence tokens (</s>, <pad>, <|...|>) are removed, whitespace inside the question
is collapsed, the answer ends at the first line break or at a second "question:" (a model that runs on and emits
further pairs), and text before "question:" is ignored. Anything else is *unparsable*.

Filters, applied in this order (a candidate is counted under the first filter that drops it):
1. `unparsable`: no "question: … answer: …" found, or the question/answer has no letter or digit.
2. `not_span`: the answer is not a span of the context. Matching ignores case, punctuation (Unicode category P),
   whitespace runs and NFKC differences, and must start/end at word boundaries (except between characters of
   scripts written without spaces: CJK, kana, Thai, Lao, Khmer, Myanmar). The kept answer text is the matching
   context substring, and answer_start its code-point offset, so the SQuAD invariant
   context[answer_start:answer_start+len(text)] == text always holds.
3. `duplicate`: same MLQA-normalised question and answer as an earlier kept candidate of the same context
   (dedup_scope="context", default) or of any context (dedup_scope="global").
4. `roundtrip`: MLQA F1 (language-aware, see ctxlab/tasks/xquad.py) between the QA model's answer and the kept
   answer is below `min_roundtrip_f1` (default 0.5: a partial-overlap variant of the exact-match round-trip
   consistency of Alberti et al. 2019; 1.0 recovers exact match).
The duplicate filter runs before the round trip so that the QA model is not called on duplicates.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctxlab.checks import check_int
from ctxlab.errors import CtxlabError
from ctxlab.fileio import read_text_file
from ctxlab.tasks.rows import read_jsonl
from ctxlab.tasks.xquad import (
    Article,
    check_lang,
    f1_score,
    is_punct,
    load_squad,
    load_xquad,
    normalize_answer,
    parse_squad,
)

Generate = Callable[[list[str]], list[str]]
Answer = Callable[[list[str], list[str]], list[str]]

FILTERS = ("unparsable", "not_span", "duplicate", "roundtrip")
DEFAULT_MIN_ROUNDTRIP_F1 = 0.5
SPLITS = ("generator", "qa", "eval")
DEFAULT_FRACTIONS = (0.5, 0.25, 0.25)  # 48 XQuAD articles → 24 / 12 / 12


@dataclass(frozen=True)
class Context:
    """One paragraph to generate from. `id` must be unique within a run; `title` groups paragraphs into articles."""

    id: str
    text: str
    lang: str = "und"  # 'und' (undetermined): whitespace tokens, no article removal
    title: str = ""


# ---------------------------------------------------------------------------------------------------- format


def generation_prompt(context: str) -> str:
    return f"context: {context}"


def generation_target(question: str, answer: str) -> str:
    """The training target for the generator (the inverse of `parse_generation`)."""
    return f"question: {question} answer: {answer}"


_SPECIAL_TOKENS = re.compile(r"</s>|<s>|<pad>|<eos>|<\|[^|<>\s]{1,40}\|>")
_QA_PATTERN = re.compile(r"\bquestion\s*[:：]\s*(?P<q>.*?)\s*\banswer\s*[:：]\s*(?P<a>.*)", re.IGNORECASE | re.DOTALL)
_NEXT_QUESTION = re.compile(r"\bquestion\s*[:：]", re.IGNORECASE)


def _has_content(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def parse_generation(text: str) -> tuple[str, str] | None:
    """'question: Q answer: A' → (Q, A); None when unparsable (see module docstring)."""
    m = _QA_PATTERN.search(_SPECIAL_TOKENS.sub(" ", text))
    if m is None:
        return None
    question = " ".join(m["q"].split())
    answer = _NEXT_QUESTION.split(m["a"], maxsplit=1)[0]
    answer = next((line.strip() for line in answer.splitlines() if line.strip()), "")
    if not (_has_content(question) and _has_content(answer)):
        return None
    return question, answer


# ---------------------------------------------------------------------------------------------------- spans

# Scripts written without spaces between words: a span may start/end between two of their characters.
_NO_SPACE_RANGES = (
    (0x0E00, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF), (0x20000, 0x3134F),
)


def _no_space_script(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _NO_SPACE_RANGES)


def _is_mark(ch: str) -> bool:
    return unicodedata.category(ch).startswith("M")


def _joined(left: str, right: str) -> bool:
    """True when a span boundary between `left` and `right` would cut a word (or a character and its marks)."""
    if _is_mark(right):
        return True
    if _no_space_script(left) or _no_space_script(right):
        return False
    return (left.isalnum() or _is_mark(left)) and right.isalnum()


def _at_boundaries(context: str, start: int, end: int) -> bool:
    return not ((start > 0 and _joined(context[start - 1], context[start]))
                or (end < len(context) and _joined(context[end - 1], context[end])))


@dataclass(frozen=True)
class _SpanKey:
    """Normalised text plus, per normalised char, the [start, end) of the source cluster it came from."""

    text: str
    starts: tuple[int, ...]
    ends: tuple[int, ...]


def span_key(text: str) -> _SpanKey:
    """Lowercase, NFKC per character cluster (base + combining marks), punctuation dropped, whitespace collapsed."""
    chars: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    i, n = 0, len(text)
    while i < n:
        j = i + 1
        while j < n and _is_mark(text[j]):
            j += 1
        if is_punct(text[i]):  # drop the mark together with its base
            i = j
            continue
        for ch in unicodedata.normalize("NFKC", text[i:j]).lower():
            if ch.isspace():
                if chars and chars[-1] != " ":
                    chars.append(" ")
                    starts.append(i)
                    ends.append(j)
            elif not is_punct(ch):
                chars.append(ch)
                starts.append(i)
                ends.append(j)
        i = j
    if chars and chars[-1] == " ":
        chars.pop()
        starts.pop()
        ends.pop()
    return _SpanKey("".join(chars), tuple(starts), tuple(ends))


def find_answer_span(context: str, answer: str, *, context_key: _SpanKey | None = None) -> tuple[int, int] | None:
    """[start, end) code-point span of `answer` in `context` (exact match first, then normalised); None if absent."""
    needle = answer.strip()
    if not needle:
        return None
    pos = context.find(needle)
    while pos >= 0:
        if _at_boundaries(context, pos, pos + len(needle)):
            return pos, pos + len(needle)
        pos = context.find(needle, pos + 1)
    key_a = span_key(needle).text
    if not key_a:
        return None
    key_c = context_key if context_key is not None else span_key(context)
    pos = key_c.text.find(key_a)
    while pos >= 0:
        start, end = key_c.starts[pos], key_c.ends[pos + len(key_a) - 1]
        if _at_boundaries(context, start, end):
            return start, end
        pos = key_c.text.find(key_a, pos + 1)
    return None


# ---------------------------------------------------------------------------------------------------- pipeline


@dataclass
class LangStats:
    contexts: int = 0
    generated: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILTERS, 0))

    def as_dict(self) -> dict[str, Any]:
        return {"contexts": self.contexts, "generated": self.generated, "kept": self.kept,
                "dropped": dict(self.dropped)}


@dataclass
class _Candidate:
    ctx: int
    question: str
    answer: str
    start: int


def _batched(fn: Callable[..., list[str]], name: str, batch_size: int, *columns: list[str]) -> list[str]:
    out: list[str] = []
    for b in range(0, len(columns[0]), batch_size):
        chunk = [col[b:b + batch_size] for col in columns]
        res = list(fn(*chunk))
        if len(res) != len(chunk[0]):
            raise CtxlabError(f"{name} returned {len(res)} outputs for {len(chunk[0])} inputs")
        if not all(isinstance(r, str) for r in res):
            raise CtxlabError(f"{name} must return strings")
        out.extend(res)
    return out


def _check_contexts(contexts: Sequence[Context]) -> None:
    if not contexts:
        raise CtxlabError("no contexts to generate from")
    seen: set[str] = set()
    for c in contexts:
        if not isinstance(c, Context):
            raise CtxlabError(f"contexts must be Context records, got {type(c).__name__}")
        if c.id in seen:
            raise CtxlabError(f"duplicate context id {c.id!r}")
        if not c.text.strip():
            raise CtxlabError(f"context {c.id!r} is empty")
        check_lang(c.lang)
        seen.add(c.id)


def run_synth_qa(
    generate: Generate,
    answer: Answer | None,
    contexts: Sequence[Context],
    per_context: int = 1,
    *,
    min_roundtrip_f1: float = DEFAULT_MIN_ROUNDTRIP_F1,
    dedup_scope: str = "context",
    batch_size: int = 32,
    version: str = "1.1",
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Generate `per_context` candidates per context, filter them, return (SQuAD v1.1 JSON, per-language stats).

    Each context is prompted `per_context` times (the generator should sample; with greedy decoding the repeats are
    dropped as duplicates). Calls are made in chunks of `batch_size`. Stats: {lang: {"contexts", "generated", "kept",
    "dropped": {filter: count}}}, with generated == kept + sum(dropped). Question ids are "<context id>-q<k>";
    contexts without kept questions are left out; articles group paragraphs by (lang, title) in input order.
    """
    _check_contexts(contexts)
    check_int("per_context", per_context, 1)
    if not 0.0 <= min_roundtrip_f1 <= 1.0:
        raise CtxlabError(f"min_roundtrip_f1 must be in [0, 1], got {min_roundtrip_f1}")
    if dedup_scope not in ("context", "global"):
        raise CtxlabError(f"dedup_scope must be 'context' or 'global', got {dedup_scope!r}")
    if batch_size < 1:
        raise CtxlabError(f"batch_size must be positive, got {batch_size}")

    stats: dict[str, LangStats] = {}
    for c in contexts:
        stats.setdefault(c.lang, LangStats()).contexts += 1
    prompts = [generation_prompt(c.text) for c in contexts for _ in range(per_context)]
    outputs = _batched(generate, "generate", batch_size, prompts)

    keys: dict[int, _SpanKey] = {}
    seen: set[tuple[str, str, str]] = set()
    candidates: list[_Candidate] = []
    for k, out in enumerate(outputs):
        ci = k // per_context
        ctx = contexts[ci]
        st = stats[ctx.lang]
        st.generated += 1
        parsed = parse_generation(out)
        if parsed is None:
            st.dropped["unparsable"] += 1
            continue
        question, ans = parsed
        if ci not in keys:
            keys[ci] = span_key(ctx.text)
        span = find_answer_span(ctx.text, ans, context_key=keys[ci])
        if span is None:
            st.dropped["not_span"] += 1
            continue
        text = ctx.text[span[0]:span[1]]
        dkey = (ctx.id if dedup_scope == "context" else "", normalize_answer(question, ctx.lang),
                normalize_answer(text, ctx.lang))
        if dkey in seen:
            st.dropped["duplicate"] += 1
            continue
        seen.add(dkey)
        candidates.append(_Candidate(ci, question, text, span[0]))

    if answer is not None and candidates:
        preds = _batched(answer, "answer", batch_size, [contexts[c.ctx].text for c in candidates],
                         [c.question for c in candidates])
        kept = []
        for cand, pred in zip(candidates, preds, strict=True):
            lang = contexts[cand.ctx].lang
            if f1_score(pred, [cand.answer], lang) < min_roundtrip_f1:
                stats[lang].dropped["roundtrip"] += 1
            else:
                kept.append(cand)
        candidates = kept
    for cand in candidates:
        stats[contexts[cand.ctx].lang].kept += 1
    return _to_squad(contexts, candidates, version), {lang: s.as_dict() for lang, s in stats.items()}


def _to_squad(contexts: Sequence[Context], kept: list[_Candidate], version: str) -> dict[str, Any]:
    by_ctx: dict[int, list[_Candidate]] = {}
    for cand in kept:
        by_ctx.setdefault(cand.ctx, []).append(cand)
    articles: dict[tuple[str, str], dict[str, Any]] = {}
    for ci, ctx in enumerate(contexts):
        if ci not in by_ctx:
            continue
        title = ctx.title or f"synthetic-{ctx.lang}"
        art = articles.setdefault((ctx.lang, title), {"title": title, "paragraphs": []})
        qas = [{"id": f"{ctx.id}-q{k}", "question": c.question,
                "answers": [{"text": c.answer, "answer_start": c.start}]} for k, c in enumerate(by_ctx[ci])]
        art["paragraphs"].append({"context": ctx.text, "qas": qas})
    return {"version": version, "data": list(articles.values())}


def format_stats(stats: Mapping[str, Mapping[str, Any]]) -> str:
    """A plain-text table: one row per language plus a total row."""
    cols = ("contexts", "generated", "kept", *FILTERS)
    rows = [[lang, *(str(s[c]) if c in s else str(s["dropped"][c]) for c in cols)] for lang, s in sorted(stats.items())]
    totals = [sum(int(r[i + 1]) for r in rows) for i in range(len(cols))]
    rows.append(["all", *map(str, totals)])
    head = ["lang", *cols]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), *(fmt.format(*r) for r in rows)])


def save_synth_qa(squad_json: dict[str, Any], stats: Mapping[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write OUT (SQuAD JSON, validated first) and OUT's `.stats.json` sidecar; returns both paths."""
    out = Path(out)
    parse_squad(squad_json, str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(squad_json, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    side = out.with_suffix(".stats.json")
    side.write_text(json.dumps(stats, ensure_ascii=False, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return out, side


# ---------------------------------------------------------------------------------------------------- splits


def split_article_indices(n_articles: int, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                          seed: int = 0) -> dict[str, tuple[int, ...]]:
    """Deterministic disjoint split of article indices into generator / qa / eval (sorted within each split).

    Sizes are round(n * fraction) for the first two splits and the remainder for eval; each must be non-empty.
    """
    if len(fractions) != len(SPLITS) or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise CtxlabError(f"fractions must be {len(SPLITS)} positive numbers summing to 1, got {tuple(fractions)}")
    order = list(range(n_articles))
    random.Random(seed).shuffle(order)
    n_gen = round(n_articles * fractions[0])
    n_qa = round(n_articles * fractions[1])
    parts = (order[:n_gen], order[n_gen:n_gen + n_qa], order[n_gen + n_qa:])
    if any(not p for p in parts):
        raise CtxlabError(f"cannot split {n_articles} articles into non-empty {'/'.join(SPLITS)} parts {fractions}")
    return {name: tuple(sorted(p)) for name, p in zip(SPLITS, parts, strict=True)}


def check_parallel(articles_by_lang: Mapping[str, Sequence[Article]]) -> int:
    """Number of articles, after checking every language has the same titles in the same order (XQuAD is parallel)."""
    if not articles_by_lang:
        raise CtxlabError("no languages given")
    ref_lang, ref = next(iter(articles_by_lang.items()))
    titles = [a.title for a in ref]
    for lang, arts in articles_by_lang.items():
        other = [a.title for a in arts]
        if len(other) != len(titles):
            raise CtxlabError(f"not parallel: {lang} has {len(other)} articles, {ref_lang} has {len(titles)}")
        for i, (a, b) in enumerate(zip(titles, other, strict=True)):
            if a != b:
                raise CtxlabError(f"not parallel: article {i} is {b!r} in {lang} but {a!r} in {ref_lang}")
    return len(titles)


def split_parallel(articles_by_lang: Mapping[str, Sequence[Article]], fractions: Sequence[float] = DEFAULT_FRACTIONS,
                   seed: int = 0) -> dict[str, dict[str, list[Article]]]:
    """split → lang → articles; every language version of an article lands in the same split."""
    idx = split_article_indices(check_parallel(articles_by_lang), fractions, seed)
    return {name: {lang: [arts[i] for i in idx[name]] for lang, arts in articles_by_lang.items()} for name in SPLITS}


# ---------------------------------------------------------------------------------------------------- contexts


def _xquad_contexts(spec: str, data_dir: str | Path | None, fractions: Sequence[float], seed: int) -> list[Context]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[1]:
        raise CtxlabError(f"bad contexts spec {spec!r}; expected xquad:LANG or xquad:LANG:SPLIT")
    lang = check_lang(parts[1])
    arts = load_xquad(lang, data_dir)
    chosen = range(len(arts))
    if len(parts) == 3:
        if parts[2] not in SPLITS:
            raise CtxlabError(f"unknown split {parts[2]!r} in {spec!r}; valid: {', '.join(SPLITS)}")
        chosen = split_article_indices(len(arts), fractions, seed)[parts[2]]
    return [Context(f"{lang}-a{ai:02d}-p{pi}", p.context, lang, arts[ai].title)
            for ai in chosen for pi, p in enumerate(arts[ai].paragraphs)]


def _jsonl_contexts(path: Path, lang: str | None) -> list[Context]:
    out: list[Context] = []
    for n, row in read_jsonl(path):
        text = row.get("context", row.get("text"))
        if not isinstance(text, str) or not text.strip():
            raise CtxlabError(f'{path}:{n}: expected an object with a non-empty "context" (or "text") string')
        rlang = row.get("lang", lang or "und")
        if not isinstance(rlang, str):
            raise CtxlabError(f'{path}:{n}: "lang" must be a string')
        try:
            rlang = check_lang(rlang)
        except CtxlabError as e:
            raise CtxlabError(f"{path}:{n}: {e}") from None
        out.append(Context(str(row.get("id", f"{path.stem}-{n}")), text, rlang, str(row.get("title", ""))))
    return out


def load_contexts(spec: str, *, lang: str | None = None, data_dir: str | Path | None = None,
                  fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0) -> list[Context]:
    """Contexts from `xquad:LANG[:SPLIT]`, a SQuAD `.json`, a `.jsonl` or a text file (one context per line).

    JSONL rows: {"context" (or "text"), optional "id", "title", "lang"}. `lang` is the language for files whose
    rows don't say (default 'und'). SPLIT (generator|qa|eval) uses `split_article_indices(n, fractions, seed)`.
    Paragraph texts of a SQuAD file are de-duplicated; ids must be unique.
    """
    if lang is not None:
        lang = check_lang(lang)
    if spec.startswith("xquad:"):
        contexts = _xquad_contexts(spec, data_dir, fractions, seed)
    else:
        path = Path(spec)
        if not path.is_file():
            raise CtxlabError(f"{spec}: no such file (expected a .txt/.jsonl/.json file or xquad:LANG)")
        try:
            if path.suffix == ".jsonl":
                contexts = _jsonl_contexts(path, lang)
            elif path.suffix == ".json":
                first_title: dict[str, str] = {}  # paragraph text → title of its first article
                for art in load_squad(path):
                    for par in art.paragraphs:
                        first_title.setdefault(par.context, art.title)
                contexts = [Context(f"{path.stem}-{i}", t, lang or "und", title)
                            for i, (t, title) in enumerate(first_title.items())]
            else:
                lines = read_text_file(path, "contexts file", allow_empty=True).splitlines()
                contexts = [Context(f"{path.stem}-{n}", t.strip(), lang or "und")
                            for n, t in enumerate(lines, start=1) if t.strip()]
        except UnicodeDecodeError as e:
            raise CtxlabError(f"{path}: not UTF-8 text ({e})") from None
    if not contexts:
        raise CtxlabError(f"{spec}: no contexts found")
    _check_contexts(contexts)
    return contexts


__all__ = [
    "DEFAULT_FRACTIONS", "DEFAULT_MIN_ROUNDTRIP_F1", "FILTERS", "SPLITS", "Context", "LangStats", "check_parallel",
    "find_answer_span", "format_stats", "generation_prompt", "generation_target", "load_contexts", "parse_generation",
    "run_synth_qa", "save_synth_qa", "span_key", "split_article_indices", "split_parallel",
]

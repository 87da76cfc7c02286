"""LongBench-v2 (THUDM): 503 multiple-choice questions over 8k-2M-word contexts, official zero-shot protocol.

Protocol (THUDM/LongBench `pred.py` / `result.py`, benchmarks.md §3.1): the `prompts/0shot.txt` template filled
by chained `str.replace` on stripped fields; the whole prompt middle-truncated on tokens to the model's context
(`ids[:max_len//2] + ids[-max_len//2:]`); a chat request with temperature 0.1 and 128 new tokens; the answer
parsed from "The correct answer is (X)" (fallback "The correct answer is X", after deleting `*`); accuracy
overall, by difficulty and by length. The official `result.py` counts "medium" items as "long" (its medium
branch re-tests "short"); `summary` here keeps the three length buckets apart.

Data (not redistributable here; HF `THUDM/LongBench-v2`): `data_dir/data.json` (the official JSON list), or the
auto-converted parquet (`data_dir/*.parquet` or `data_dir/default/train/*.parquet`, needs pyarrow or pandas).
`data_dir` may also be the data file itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ctxlab.errors import CtxlabError
from ctxlab.tasks.base import DataCard, Sample, Task
from ctxlab.tasks.metrics import SampleValue, aggregate_by, get_metric
from ctxlab.tasks.rows import check_fields, read_rows
from ctxlab.tasks.truncation import TokenizerLike, truncate_middle

# prompts/0shot.txt, verbatim (THUDM/LongBench commit 072a5a7).
TEMPLATE_0SHOT = (
    "Please read the following text and answer the question below.\n\n<text>\n$DOC$\n</text>\n\n"
    "What is the correct answer to this question: $Q$\nChoices:\n(A) $C_A$\n(B) $C_B$\n(C) $C_C$\n(D) $C_D$\n\n"
    'Format your response as follows: "The correct answer is (insert answer here)".'
)

LETTERS = ("A", "B", "C", "D")
DIFFICULTIES = ("easy", "hard")
LENGTHS = ("short", "medium", "long")
_STR_FIELDS = ("_id", "domain", "sub_domain", "difficulty", "length", "question", "answer", "context")
_SCHEMA = {k: str for k in _STR_FIELDS + tuple(f"choice_{x}" for x in LETTERS)}
_CONVERT_HINT = (
    "use the official data.json from HF THUDM/LongBench-v2, or convert once where pandas is installed: "
    "python -c \"import pandas as pd; pd.read_parquet('FILE.parquet').to_json('data.json', orient='records', "
    'force_ascii=False)"'
)

_ANSWER_PAREN = re.compile(r"The correct answer is \(([A-D])\)")
_ANSWER_BARE = re.compile(r"The correct answer is ([A-D])")


def extract_answer(response: str) -> str | None:
    """Official parser: strip `*`, then "The correct answer is (X)", then "The correct answer is X"; else None."""
    response = response.replace("*", "")
    m = _ANSWER_PAREN.search(response) or _ANSWER_BARE.search(response)
    return m.group(1) if m else None


def find_data_files(data_dir: Path) -> list[Path]:
    """The official data.json, else parquet shards; a clear error naming what was looked for."""
    if data_dir.is_file():
        return [data_dir]
    if not data_dir.is_dir():
        raise CtxlabError(f"longbench_v2: data directory {data_dir} does not exist")
    if (data_dir / "data.json").is_file():
        return [data_dir / "data.json"]
    shards = sorted(data_dir.glob("*.parquet")) or sorted(data_dir.glob("default/train/*.parquet"))
    if shards:
        return shards
    raise CtxlabError(
        f"longbench_v2: no data in {data_dir}: expected data.json (HF THUDM/LongBench-v2) "
        "or *.parquet / default/train/*.parquet"
    )


def _sample(row: dict, where: str) -> Sample:
    check_fields(row, _SCHEMA, where)
    for key, allowed in (("difficulty", DIFFICULTIES), ("length", LENGTHS), ("answer", LETTERS)):
        if row[key] not in allowed:
            raise CtxlabError(f"{where}: field {key!r} must be one of {'/'.join(allowed)}, got {row[key]!r}")
    if not row["_id"]:
        raise CtxlabError(f"{where}: empty '_id'")
    return Sample(
        id=row["_id"],
        context=row["context"],
        question=row["question"],
        reference=row["answer"],
        meta={
            "domain": row["domain"],
            "sub_domain": row["sub_domain"],
            "difficulty": row["difficulty"],
            "length": row["length"],
            "choices": {x: row[f"choice_{x}"] for x in LETTERS},
        },
    )


def load_samples(data_dir: Path) -> list[Sample]:
    """All rows, validated before anything else runs; duplicate `_id`s are errors."""
    out: list[Sample] = []
    seen: dict[str, str] = {}
    for path in find_data_files(data_dir):
        for n, row in read_rows(path, _CONVERT_HINT):
            where = f"{path}: row {n}"
            s = _sample(row, where)
            if s.id in seen:
                raise CtxlabError(f"{where}: duplicate _id {s.id!r} (first at {seen[s.id]})")
            seen[s.id] = where
            out.append(s)
    if not out:
        raise CtxlabError(f"longbench_v2: no rows in {data_dir}")
    return out


def summary(values: Sequence[SampleValue], samples: Sequence[Sample], metric: str = "accuracy") -> dict[str, float]:
    """The official result table: Overall / Easy / Hard / Short / Medium / Long (0-100; absent buckets omitted)."""
    m = get_metric(metric)
    out = {"overall": m.aggregate(values)}
    for key in ("difficulty", "length"):
        out.update(aggregate_by(m, values, [s.meta[key] for s in samples]))
    order = ("overall",) + DIFFICULTIES + LENGTHS
    return {k: out[k] for k in order if k in out}


@dataclass(frozen=True)
class LongBenchV2Task(Task):
    """Official zero-shot LongBench-v2; `compensated` scores an unparsable answer 0.25 (official option, off)."""

    max_new_tokens: int = 128
    temperature: float = 0.1
    compensated: bool = False
    truncation: str = "middle"
    breakdown: tuple[str, ...] = ("difficulty", "length")

    def samples(self, data_dir: Path | None) -> Iterator[Sample]:
        if data_dir is None:
            raise CtxlabError(
                f"{self.name} needs a data directory with data.json from HF THUDM/LongBench-v2 (not available offline)"
            )
        return iter(load_samples(Path(data_dir)))

    def prompt(self, sample: Sample) -> str:
        # Chained replace, as pred.py does (a placeholder inside the document would be replaced too).
        c = sample.meta["choices"]
        return (
            TEMPLATE_0SHOT.replace("$DOC$", sample.context.strip())
            .replace("$Q$", sample.question.strip())
            .replace("$C_A$", c["A"].strip())
            .replace("$C_B$", c["B"].strip())
            .replace("$C_C$", c["C"].strip())
            .replace("$C_D$", c["D"].strip())
        )

    def fit_prompt(self, sample: Sample, tokenizer: TokenizerLike, max_len: int) -> str:
        """The prompt middle-truncated to `max_len` tokens (the model's context from config/model2maxlen.json,
        e.g. 120000; the official script does not subtract the 128 generated tokens)."""
        return truncate_middle(self.prompt(sample), tokenizer, max_len)

    def fit_to(self, sample: Sample, tokenizer: TokenizerLike, budget: int) -> tuple[str, Sample | None]:
        return self.fit_prompt(sample, tokenizer, budget), None

    def parse(self, generation: str) -> str | None:
        return extract_answer(generation.strip())

    def score(self, prediction: str | None, sample: Sample) -> dict[str, float]:
        if prediction is None and self.compensated:
            return {"accuracy": 0.25}
        return {"accuracy": float(get_metric("accuracy").per_sample(prediction, sample.reference))}


CARD = DataCard(
    overview={
        "summary": (
            "503 challenging multiple-choice questions (A-D) over contexts of 8k to 2M words, in six domains: "
            "single-document QA, multi-document QA, long in-context learning, long-dialogue history, code "
            "repository and long structured data. Each item has a difficulty (easy/hard) and a length "
            "(short/medium/long)."
        ),
        "where.website": "https://github.com/THUDM/LongBench",
        "where.data-url": "https://huggingface.co/datasets/THUDM/LongBench-v2 (data.json, 465 MB; also zai-org/)",
        "where.has-leaderboard": "yes (project page of THUDM/LongBench)",
        "languages.license": "apache-2.0 (HF dataset page)",
        "languages.primary-task": "long-context multiple-choice question answering",
        "structure.data-fields": (
            "_id, domain, sub_domain, difficulty, length, question, choice_A..choice_D, answer (A-D), context"
        ),
        "structure.data-splits": "a single split, train (503 items)",
    },
    gem={
        "rationale.ability": "reading and reasoning over very long inputs; no fine-tuning, zero-shot",
        "starting.loading": (
            "ctxlab reads data_dir/data.json (JSON list) or the HF parquet conversion (needs pyarrow or pandas)"
        ),
    },
    results={
        "metrics": "accuracy (%), overall and by difficulty (easy/hard) and length (short/medium/long)",
        "proposed-evaluation": (
            "official pred.py: 0shot.txt prompt, middle truncation of the prompt tokens to the model's context "
            "(ids[:L//2] + ids[-L//2:]), chat request, temperature 0.1, max 128 new tokens, answer parsed from "
            "'The correct answer is (X)'; optional 'compensated' scoring of unparsable answers as 0.25 (off)"
        ),
        "other-evaluation": (
            "lm-eval's longbench2 scores loglikelihood over A-D after left truncation and OpenCompass uses its "
            "own post-processor: their numbers are not comparable to the official protocol"
        ),
    },
    curation={
        "original.rationale": "test deep understanding of long real-world inputs beyond retrieval",
    },
    considerations={
        "technical-limitations": (
            "Prompts far exceed most context windows, so scores depend on the truncation length; record it. "
            "The official result.py files 'medium' items under 'long'; ctxlab reports the three buckets apart. "
            "Exact domain/sub_domain strings and language coverage are unverified here."
        ),
    },
)

TASKS: list[Task] = [
    LongBenchV2Task(
        name="longbench_v2",
        version="1.0",
        card=CARD,
        metrics=("accuracy",),
        languages=("en",),
        needs_data_dir=True,
    )
]

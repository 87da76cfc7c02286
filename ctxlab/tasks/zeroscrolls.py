"""ZeroSCROLLS (tau-nlp): ten zero-shot long-text tasks, official prompts, truncation, metrics and submission file.

Each row's `input` already holds the full prompt (instruction + document + query + answer cue); character
offsets locate the document and the query. Sample.context is `input[:query_start_index]` (what truncation may
shorten) and Sample.question is `input[query_start_index:]` (kept whole), so `prompt()` returns `input` exactly.

Truncation follows the official API runner (`experiments/api/*.py`): when the prompt does not fit
`max_tokens - max_new_tokens`, the text before the query is cut to `max_tokens - |separator + query| -
max_new_tokens - 1` tokens and `truncation_seperator + query` is appended. Test gold outputs are private: test
predictions go to the leaderboard as a CSV (Task, ID, Prediction) written by `write_submission`.

Accepted layouts under `data_dir` (per config; split = validation or test):
  <config>/<split>.jsonl           unzipped https://huggingface.co/datasets/tau/zero_scrolls/resolve/main/<config>.zip
  <config>/<split>.parquet         a parquet export (needs pyarrow or pandas)
  <config>/<split>/*.parquet       the HF parquet conversion (refs/convert/parquet)
`data_dir` may also be the config folder itself.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxlab.errors import CtxlabError
from ctxlab.tasks.base import DataCard, Sample, Task
from ctxlab.tasks.metrics import SampleValue, get_metric
from ctxlab.tasks.rows import check_fields, read_rows
from ctxlab.tasks.truncation import TokenizerLike, truncate_keep_suffix


@dataclass(frozen=True)
class ConfigInfo:
    metric: str
    max_new_tokens: int  # experiments/api/api.py: dataset_to_leave_tokens_for_generations
    description: str


# Leaderboard order (submission/prepare_submission.py TASKS_MAPPING).
CONFIGS: dict[str, ConfigInfo] = {
    "gov_report": ConfigInfo("rouge_geo", 1024, "summarise a long government report (GAO/CRS)"),
    "summ_screen_fd": ConfigInfo("rouge_geo", 512, "summarise a TV episode from its script"),
    "qmsum": ConfigInfo("rouge_geo", 512, "query-based summarisation of a meeting transcript"),
    "squality": ConfigInfo("rouge_geo", 512, "question-focused summarisation of a science-fiction story"),
    "qasper": ConfigInfo("zs_f1", 128, "answer a question about an NLP paper"),
    "narrative_qa": ConfigInfo("zs_f1", 64, "answer a question about a book or movie script"),
    "quality": ConfigInfo("zs_accuracy", 10, "multiple-choice question (A-D) about a story or article"),
    "musique": ConfigInfo("zs_f1", 32, "multi-hop question over Wikipedia paragraphs"),
    "space_digest": ConfigInfo("exp_similarity", 36, "percentage of positive reviews among many hotel reviews"),
    "book_sum_sort": ConfigInfo("concordance_index", 256, "re-order shuffled chapter summaries of a book"),
}
SPLITS = ("validation", "test")
SUBMISSION_COLUMNS = ("Task", "ID", "Prediction")
PREFIX = "zeroscrolls:"

_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "input": str,
    "document_start_index": int,
    "document_end_index": int,
    "query_start_index": int,
    "query_end_index": int,
    "truncation_seperator": str,  # sic: the official field name
}
_LETTER = re.compile(r"\b[A-D]\b")  # the zs_accuracy metric's gold pattern
_CONVERT_HINT = "use the official <config>.zip (JSONL per split) from HF tau/zero_scrolls instead"


def config_name(name: str) -> str:
    """'zeroscrolls:qasper' or 'qasper' → 'qasper'; unknown names list the valid configs."""
    cfg = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    if cfg not in CONFIGS:
        raise CtxlabError(f"unknown ZeroSCROLLS config {name!r}; valid configs: {', '.join(CONFIGS)}")
    return cfg


def find_split_files(data_dir: Path, config: str, split: str) -> list[Path]:
    roots = [data_dir / config] + ([data_dir] if data_dir.name == config else [])
    for root in roots:
        for single in (root / f"{split}.jsonl", root / f"{split}.parquet"):
            if single.is_file():
                return [single]
        shards = sorted((root / split).glob("*.parquet"))
        if shards:
            return shards
    raise CtxlabError(
        f"zeroscrolls:{config}: no {split} data under {data_dir}: expected {config}/{split}.jsonl (from the "
        f"official {config}.zip), {config}/{split}.parquet or {config}/{split}/*.parquet"
    )


def _check_row(row: Mapping[str, Any], config: str, split: str, where: str) -> list[str]:
    """Validate one row; returns its reference list (empty on the test split, whose outputs are private)."""
    check_fields(row, _SCHEMA, where)
    if not row["id"]:
        raise CtxlabError(f"{where}: empty 'id'")
    if row.get("pid") is not None and not isinstance(row["pid"], str):
        raise CtxlabError(f"{where}: field 'pid' must be str, got {type(row['pid']).__name__}")
    n = len(row["input"])
    for part in ("document", "query"):
        s, e = row[f"{part}_start_index"], row[f"{part}_end_index"]
        if not 0 <= s <= e <= n:
            raise CtxlabError(f"{where}: {part} span [{s}, {e}) is not inside the input (length {n})")
    inner = row.get("inner_docs_start_indices")
    if inner is not None and (
        not isinstance(inner, list)
        or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= n for i in inner)
    ):
        raise CtxlabError(f"{where}: 'inner_docs_start_indices' must be a list of offsets inside the input")
    out = row.get("output")
    if split == "test" and not out:
        return []
    if not isinstance(out, str) or not out:
        raise CtxlabError(f"{where}: field 'output' must be a non-empty str on the {split} split")
    if config == "quality" and not _LETTER.search(out):
        raise CtxlabError(f"{where}: QuALITY output has no standalone letter A-D: {out[:60]!r}")
    return [out]


def load_samples(data_dir: Path, config: str, split: str = "validation") -> list[Sample]:
    """Validated samples; rows sharing an `id` are merged into one sample with several references (as the
    official `drop_duplicates_in_input` does), keeping the first row's input."""
    if split not in SPLITS:
        raise CtxlabError(f"unknown ZeroSCROLLS split {split!r}; valid splits: {', '.join(SPLITS)}")
    rows: dict[str, tuple[Mapping[str, Any], list[str]]] = {}
    for path in find_split_files(data_dir, config, split):
        for n, row in read_rows(path, _CONVERT_HINT):
            refs = _check_row(row, config, split, f"{path}: row {n}")
            if row["id"] in rows:
                rows[row["id"]][1].extend(refs)
            else:
                rows[row["id"]] = (row, refs)
    if not rows:
        raise CtxlabError(f"zeroscrolls:{config}: no rows in the {split} split under {data_dir}")
    out = []
    for row, refs in rows.values():
        q = row["query_start_index"]
        meta = {
            "config": config,
            "split": split,
            "pid": row.get("pid") or row["id"],
            "document_span": (row["document_start_index"], row["document_end_index"]),
            "query_span": (q, row["query_end_index"]),
            "truncation_separator": row["truncation_seperator"],
        }
        if row.get("inner_docs_start_indices") is not None:
            meta["inner_docs_start_indices"] = tuple(row["inner_docs_start_indices"])
        out.append(Sample(row["id"], row["input"][:q], row["input"][q:], refs, meta))
    return out


@dataclass(frozen=True)
class ZeroScrollsTask(Task):
    config: str = "gov_report"
    split: str = "validation"
    max_new_tokens: int = 1024
    truncation: str = "keep_query"

    def with_split(self, split: str) -> ZeroScrollsTask:
        if split not in SPLITS:
            raise CtxlabError(f"unknown ZeroSCROLLS split {split!r}; valid splits: {', '.join(SPLITS)}")
        return dataclasses.replace(self, split=split)

    def samples(self, data_dir: Path | None) -> Iterator[Sample]:
        if data_dir is None:
            raise CtxlabError(
                f"{self.name} needs a data directory holding {self.config}/{self.split}.jsonl "
                "(HF tau/zero_scrolls; not available offline)"
            )
        return iter(load_samples(Path(data_dir), self.config, self.split))

    def prompt(self, sample: Sample) -> str:
        return sample.context + sample.question

    def fit_prompt(self, sample: Sample, tokenizer: TokenizerLike, max_tokens: int, reserve: int | None = None) -> str:
        """The prompt fitted to a `max_tokens` context (prompt + generation), reserving `reserve` tokens for the
        answer (default: the official per-task budget `max_new_tokens`). Document tail cut, query kept."""
        gen = self.max_new_tokens if reserve is None else reserve
        text = self.prompt(sample)
        if len(tokenizer.encode(text)) <= max_tokens - gen:
            return text
        suffix = sample.meta["truncation_separator"] + sample.question
        budget = max_tokens - len(tokenizer.encode(suffix)) - gen - 1
        return truncate_keep_suffix(sample.context, suffix, tokenizer, budget)

    def fit_to(self, sample: Sample, tokenizer: TokenizerLike, budget: int) -> tuple[str, Sample | None]:
        return self.fit_prompt(sample, tokenizer, budget, reserve=0), None

    def score(self, prediction: Any, sample: Sample) -> dict[str, SampleValue]:
        if not sample.reference:
            raise CtxlabError(
                f"{self.name}: the {sample.meta.get('split', self.split)} split has no public gold outputs; "
                "write a leaderboard submission with write_submission()"
            )
        metric = self.metrics[0]
        return {metric: get_metric(metric).per_sample(prediction, sample.reference)}


def write_submission(
    preds_by_config: Mapping[str, Mapping[str, str]],
    path: str | Path,
    *,
    expected_ids: Mapping[str, Collection[str]] | None = None,
    partial: bool = False,
) -> Path:
    """Write the leaderboard CSV (columns Task, ID, Prediction; tasks in leaderboard order) and return its path.

    `preds_by_config` maps a config ('qasper' or 'zeroscrolls:qasper') to {example id: prediction}. All ten
    configs are required (as `prepare_submission.py` requires) unless `partial`. With `expected_ids` (e.g. the
    test-split sample ids per config), missing or extra ids are errors, as in the official `verify_task.py`.
    """
    preds: dict[str, Mapping[str, str]] = {}
    for name, by_id in preds_by_config.items():
        cfg = config_name(name)
        if cfg in preds:
            raise CtxlabError(f"config {cfg!r} given twice")
        if not isinstance(by_id, Mapping):
            raise CtxlabError(f"{cfg}: predictions must be a mapping of id → prediction")
        for k, v in by_id.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise CtxlabError(
                    f"{cfg}: ids and predictions must be strings (got {type(k).__name__} → {type(v).__name__})"
                )
        preds[cfg] = by_id
    missing = [c for c in CONFIGS if c not in preds]
    if missing and not partial:
        raise CtxlabError(f"submission lacks configs: {', '.join(missing)} (pass partial=True for a local file)")
    for cfg, ids in (expected_ids or {}).items():
        cfg = config_name(cfg)
        got, want = set(preds.get(cfg, {})), set(ids)
        if got - want or want - got:
            raise CtxlabError(
                f"{cfg}: {len(want - got)} missing ids (e.g. {sorted(want - got)[:3]}), "
                f"{len(got - want)} unexpected ids (e.g. {sorted(got - want)[:3]})"
            )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")  # what pandas.to_csv(index=False) writes
        w.writerow(SUBMISSION_COLUMNS)
        for cfg in CONFIGS:
            for ex_id, pred in preds.get(cfg, {}).items():
                w.writerow((cfg, ex_id, pred))
    return out


def _card(config: str, info: ConfigInfo) -> DataCard:
    return DataCard(
        overview={
            "summary": (
                f"ZeroSCROLLS {config}: {info.description}. One of ten zero-shot long-text understanding tasks "
                "(Shaham et al. 2023, arXiv 2305.14196); each input holds instruction, document, query and "
                "answer cue."
            ),
            "where.website": "https://github.com/tau-nlp/zero_scrolls",
            "where.data-url": f"https://huggingface.co/datasets/tau/zero_scrolls (config {config}; {config}.zip)",
            "where.paper-url": "https://arxiv.org/abs/2305.14196",
            "where.has-leaderboard": "yes: test scores only via https://zero.scrolls-benchmark.com/submission",
            "languages.license": "per source dataset (see zero_scrolls_datasets.bib in the repository)",
            "structure.data-fields": (
                "id, pid, input, output, document_start_index, document_end_index, query_start_index, "
                "query_end_index, truncation_seperator (sic)"
                + ("; inner_docs_start_indices" if config in ("musique", "space_digest", "book_sum_sort") else "")
            ),
            "structure.data-splits": "validation (~20 examples, public gold) and test (private gold)",
        },
        gem={
            "rationale.ability": "zero-shot reading of long documents: " + info.description,
            "starting.loading": f"ctxlab reads data_dir/{config}/<split>.jsonl (or parquet); rows sharing an id "
            "are merged into one example with several references",
        },
        results={
            "metrics": f"{info.metric} (0-100): {get_metric(info.metric).description}",
            "proposed-evaluation": (
                f"prompt = the given input; keep the query and cut the document tail to fit the context, "
                f"reserving {info.max_new_tokens} generated tokens; validation scored locally; test "
                "predictions submitted as a Task,ID,Prediction CSV"
            ),
        },
        considerations={
            "technical-limitations": (
                "only ~20 validation examples per task, so local scores are noisy (see the bootstrap error); "
                "chat models in the official API runs also get 'Do not provide any explanation.' and no answer "
                "cue, which ctxlab does not add"
            ),
        },
    )


TASKS: list[Task] = [
    ZeroScrollsTask(
        name=f"{PREFIX}{cfg}",
        version="1.0",
        card=_card(cfg, info),
        metrics=(info.metric,),
        languages=("en",),
        needs_data_dir=True,
        config=cfg,
        max_new_tokens=info.max_new_tokens,
    )
    for cfg, info in CONFIGS.items()
]

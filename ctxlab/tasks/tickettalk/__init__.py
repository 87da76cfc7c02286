"""TicketTalk (Taskmaster-3): predict the agent's next action — a reply or an API call — from the dialogue so far.

Data (formats: /work/shared/docs/data.md §2.4, §4.1; benchmark facts: benchmarks.md §1.5, §4). `data_dir` is
one serialized split TSV (`input \\t target \\t conversation_id`, e.g. splits/train/train-bc.tsv), a directory
of `*.tsv` shards (read in name order, like `cat dev-*.tsv > dev.tsv`), or GEM/Taskmaster records in `.jsonl` /
`.json` files with fields `context` (the same markup as the TSV input), `target` and optionally `gem_id`,
`conversation_id`. GEM targets are plain reply text; a GEM target that starts with `[A]` or `[PN]` is read as
TSV target markup.

Samples. `question` is the head of the row (the latest user turn `<U>…`, API response `<PR>…` or `<S>`),
`context` the dialogue before it in chronological order, both in the TSV history markup, so truncation
shortens the oldest turns and never the head. `prompt_style` "chronological" (default) puts the history
before the head, for a language model that continues with the next item (`<A>…` or `<PN>…`); "tm3" rebuilds
the upstream text-to-text input `head<C>history` exactly. `reference` is a dict: `target` (the TSV target,
`[A]text` / `[PN]api[PAN]arg[PAV]value…` / both), `text` (reply or None) and `call` (`<PN>…` or None).

Scoring (ctxlab/tasks/tickettalk/metrics.py): per-sample sufficient statistics for corpus BLEU over replies,
API-call exact match and micro per-argument F1; aggregate with `ctxlab.tasks.tickettalk.metrics.aggregate`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxlab.errors import CtxlabError
from ctxlab.tasks.base import DataCard, Sample, Task
from ctxlab.tasks.tickettalk import metrics as M
from ctxlab.tasks.tickettalk.formats import (
    Example,
    Target,
    format_item,
    format_items,
    iter_tsv,
    parse_input,
    parse_target,
)

PROMPT_STYLES = ("chronological", "tm3")

_CARD = DataCard(
    overview={
        "summary": "TicketTalk (Taskmaster-3): 23,789 movie-ticketing dialogues written by crowd workers playing both "
                   "the customer and the agent, annotated with API calls (find_movies, find_showtimes, book_tickets, "
                   "…) and their responses. The task: given the dialogue so far, produce the agent's next action, "
                   "either a reply or an API call.",
        "where.website": "https://github.com/google-research-datasets/Taskmaster/tree/master/TM-3-2020",
        "where.data-url": "https://github.com/google-research-datasets/Taskmaster (commit "
                          "d92cb6af3005f1dc09c39e75e7daf4a04905e00b); GEM version: huggingface.co/datasets/GEM/"
                          "Taskmaster",
        "where.paper-url": "https://arxiv.org/abs/2012.12458",
        "where.paper-bibtext": "@inproceedings{byrne-etal-2021-tickettalk, title={TicketTalk: Toward human-level "
                               "performance with end-to-end, transaction-based dialog systems}, author={Byrne, Bill "
                               "and Krishnamoorthi, Karthik and Ganesh, Saravanan and Kale, Mihir}, "
                               "booktitle={ACL}, pages={671--680}, year={2021}}",
        "where.contact-name": "Karthik Krishnamoorthi (taskmaster-datasets@googlegroups.com)",
        "where.has-leaderboard": "no",
        "languages.multilingual": "no",
        "languages.languages": "English",
        "languages.license": "CC BY 4.0 (stated in TM-3-2020/README.md; the repository has no LICENSE file)",
        "languages.primary-task": "task-oriented dialogue: response and API-call generation",
        "languages.communicative-goal": "help a customer choose a movie, theater and showtime and buy tickets, "
                                        "grounding every fact in API responses",
        "credit.creators": "Bill Byrne, Karthik Krishnamoorthi, Saravanan Ganesh (Google)",
        "structure.data-fields": "split TSV: input (head <U>/<PR>/<S>, then <C> and the history with <U> <A> "
                                 "<PN>/<PAN>/<PAV> <PR>/<PRAN>/<PRAV>), target ([A]text and/or [PN]api[PAN]arg"
                                 "[PAV]value), conversation_id; GEM: gem_id, context, target, references, "
                                 "conversation_id",
        "structure.example": "<U>AMC Holiday Theater.<C><U>Buying movie tickets for tonight.<A>Theater of choice? → "
                             "[PN]find_movies[PAN]name.theater[PAV]AMC Holiday Theater[PAN]location[PAV]nearby",
        "structure.data-splits": "GEM: train 187,182 / validation 23,406 / test 23,316 rows. Offline here: the "
                                 "last of 29 train shards, train-bc.tsv (1,517 rows, 1,462 dialogues).",
    },
    context={
        "previous-work": "End-to-end, transaction-based dialogue: one T5 model generates replies and API calls "
                         "(Byrne et al. 2021); rated 86.5% 'makes sense' for replies, 93.9% correct API calls.",
        "underserved": "No: English, US movie-going scenarios.",
        "biases": "Self-dialogues by crowd workers: the same person writes both roles, so user behaviour is more "
                  "cooperative and scripted than real customers; US-centric locations and films.",
    },
    curation={
        "original.rationale": "Training data for dialogue systems that act through APIs and ground replies in "
                              "their responses.",
        "language.obtained": "Crowdsourced self-dialogues following over three dozen instruction sets, some "
                             "partially pre-filled ('Auto template').",
        "language.validation": "Dialogues checked for errors; typos and informal spellings were kept.",
        "annotations.annotations": "API calls with arguments and responses per utterance; entity segments.",
        "pii.pii": "Workers invented the conversations; names of real theaters, films and public figures only.",
        "maintenance.plan": "Static release (reward labels added in 2024).",
    },
    gem={
        "rationale.contribution": "A dialogue task in GEM that needs grounding in structured API results.",
        "curation.modifications": "ctxlab scores API calls as well as replies: GEM scores only the reply text "
                                  "with BLEU; here calls are scored by exact match and per-argument F1.",
        "starting.pointers": "Task `tickettalk` with data dir = a split TSV (e.g. splits/train/train-bc.tsv), "
                             "a folder of shards or GEM .jsonl files; the booking backend in ctxlab/apps/tickets "
                             "executes predicted API calls.",
    },
    results={
        "metrics": "bleu (sacrebleu 13a corpus BLEU over agent replies), api_exact_match (% of gold calls "
                   "predicted exactly: same API, same argument/value multiset, case-insensitive values), "
                   "api_arg_f1 (micro F1 over (api, argument, value) triples).",
        "proposed-evaluation": "Next-action prediction with the gold history (teacher forcing), as in the "
                               "upstream text-to-text splits; human ratings in the paper.",
        "previous-results": "GEM card: BLEU 60 (reply text). Paper: human-rated, no automatic scores reported "
                            "in the abstract.",
    },
    considerations={
        "technical-limitations": "Argument values are free text as typed ('nearby', 'tonight', 'me and my "
                                 "friend'), so exact match undercounts semantically correct calls. Rows of one "
                                 "dialogue share history; several references per context are not available.",
        "unsuited": "Not a benchmark of real-world ticket availability: API responses are those the workers wrote.",
        "licence": "CC BY 4.0: attribution required.",
        "offline": "Only train-bc.tsv ships with ctxlab's shared data; dev/test shards must be obtained separately.",
    },
)


def _shards(data_dir: Path) -> list[Path]:
    if data_dir.is_file():
        return [data_dir]
    if not data_dir.is_dir():
        raise CtxlabError(f"tickettalk: data path not found: {data_dir}")
    for pattern in ("*.tsv", "*.jsonl", "*.json"):
        files = sorted(data_dir.glob(pattern))
        if files:
            return files
    raise CtxlabError(f"tickettalk: no *.tsv shards (or GEM .jsonl/.json files) in {data_dir}")


def _gem_rows(path: Path) -> Iterator[tuple[int, str, Any]]:
    """(record number, location for messages, record) of a GEM .jsonl (line numbers) or .json list file."""
    try:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                lines = list(enumerate(f, 1))
            for n, line in lines:
                if line.strip():
                    yield n, f"{path}:{n}", json.loads(line)
            return
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CtxlabError(f"{path}: invalid JSON at line {e.lineno} ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise CtxlabError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if not isinstance(data, list):
        raise CtxlabError(f"{path}: expected a JSON list of GEM records")
    for n, row in enumerate(data, 1):
        yield n, f"{path}: record {n}", row


def _gem_example(row: Any, where: str) -> Example:
    if not isinstance(row, dict) or not isinstance(row.get("context"), str) or not isinstance(row.get("target"), str):
        raise CtxlabError(f"{where}: a GEM record needs string fields 'context' and 'target'")
    try:
        head, history = parse_input(row["context"])
        tgt = row["target"]
        target = parse_target(tgt) if tgt.startswith(("[A]", "[PN]")) else Target(tgt)
    except CtxlabError as e:
        raise CtxlabError(f"{where}: {e}") from None
    return Example(str(row.get("conversation_id") or row.get("gem_id") or ""), head, history, target)


def load_examples(data_dir: str | Path) -> Iterator[tuple[str, Example]]:
    """(sample id, Example) for every row under `data_dir`; ids are `file:line` (TSV) or the GEM `gem_id`."""
    for path in _shards(Path(data_dir)):
        if path.suffix in (".jsonl", ".json"):
            for n, where, row in _gem_rows(path):
                ex = _gem_example(row, where)
                yield str(row.get("gem_id") or f"{path.name}:{n}"), ex
        else:
            for line, ex in iter_tsv(path):
                yield f"{path.name}:{line}", ex


def example_to_sample(sid: str, ex: Example) -> Sample:
    action = M.Action(ex.target.text, ex.target.call)
    return Sample(id=sid, context=format_items(ex.history or ()), question=format_item(ex.head),
                  reference=action.to_dict(),
                  meta={"conversation_id": ex.conversation_id, "has_context": ex.history is not None,
                        "head": type(ex.head).__name__, "target_kind": "+".join(
                            k for k, v in (("text", ex.target.text), ("call", ex.target.call)) if v is not None)})


@dataclass(frozen=True)
class TicketTalkTask(Task):
    """Next-action prediction on TicketTalk split TSV rows (see the module docstring)."""

    prompt_style: str = "chronological"

    def samples(self, data_dir: Path | None) -> Iterator[Sample]:
        if self.prompt_style not in PROMPT_STYLES:
            raise CtxlabError(f"unknown prompt_style {self.prompt_style!r}; valid: {', '.join(PROMPT_STYLES)}")
        if data_dir is None:
            raise CtxlabError("tickettalk needs a data dir: a TM-3 split TSV, a folder of *.tsv shards, or GEM "
                              ".jsonl files (e.g. ../shared/data/taskmaster3/TM-3-2020/splits/train/train-bc.tsv)")
        for sid, ex in load_examples(data_dir):
            yield example_to_sample(sid, ex)

    def prompt(self, sample: Sample) -> str:
        if self.prompt_style == "tm3":
            return sample.question + ("<C>" + sample.context if sample.context else "")
        return sample.context + sample.question

    def parse(self, generation: str) -> dict[str, Any]:
        return M.parse_action(generation).to_dict()

    def score(self, prediction: Any, sample: Sample) -> dict[str, tuple[float, ...]]:
        return M.sample_scores(prediction, sample.reference)


TASKS: list[Task] = [
    TicketTalkTask(name="tickettalk", version="1.0", card=_CARD, metrics=M.METRICS, needs_data_dir=True),
]

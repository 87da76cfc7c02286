"""Eval-harness adapters for the sandbox generators: `sandbox:bank`, `sandbox:code`, `sandbox:kv`.

Each task generates `n_samples` examples of `n_tokens` tokens (prompt length, default counter unless `count_tokens`
is set) with seeds `seed, seed + 1, ...`; change them with `dataclasses.replace(task, n_tokens=4096, ...)`.
Keep training seeds disjoint from evaluation seeds (e.g. train from seed 1_000_000).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxlab.errors import CtxlabError
from ctxlab.tasks.base import CountTokens, DataCard, Sample, Task
from ctxlab.tasks.format import format_prompt
from ctxlab.tasks.sandbox import bank, code, kv
from ctxlab.tasks.sandbox.common import SandboxExample
from ctxlab.tasks.truncation import approx_count_tokens

GENERATORS: dict[str, Callable[..., SandboxExample]] = {"bank": bank.generate, "code": code.generate, "kv": kv.generate}


def example_near(task: str, seed: int, n_tokens: int, count_tokens: Callable[[str], int]) -> SandboxExample:
    """The task's example of `n_tokens` prompt tokens, or the closest one the generator can build where no example
    of this seed fits within the tolerance (very short bank logs under digit-splitting tokenizers)."""
    try:
        return GENERATORS[task](seed, n_tokens, count_tokens=count_tokens)
    except CtxlabError:
        return GENERATORS[task](seed, n_tokens, count_tokens=count_tokens, tolerance=None)


def chance_level(task: str, examples: list[SandboxExample]) -> float:
    """Accuracy of a uniform guess among the answer's candidates, averaged over `examples`: kv = values listed,
    bank = 4 anomaly types x TX lines, code = shown lines of the bug's file (the question names its function)."""
    inv = []
    for ex in examples:
        if task == "kv":
            k = ex.meta["n_pairs"]
        elif task == "bank":
            k = 4 * ex.meta["n_ops"]
        else:
            first = ex.context.split("\n--- ")[1] if "\n--- " in ex.context else ex.context
            k = max(1, sum(1 for line in first.splitlines()[1:] if "|" in line))
        inv.append(1.0 / k)
    return sum(inv) / max(1, len(inv))


PARSERS: dict[str, Callable[[str], str | None]] = {
    "bank": bank.parse_answer,
    "code": code.parse_answer,
    "kv": kv.parse_answer,
}
_PAPER = ("Bansal et al. 2025, Let's (not) just put things in Context: Test-Time Training for Long-Context LLMs, "
          "arXiv 2512.13898 (sandbox tasks: App. A)")
_FIELDS = ("context, question, reference = answer, evidence = (char_start, char_end) spans of the needle in "
           "the context; meta: seed, n_tokens, target_tokens, haystack_size, scratchpad, plus task-specific keys")


def _card(kind: str, *, summary: str, task: str, answer: str, example: str, splits: str, ability: str,
          modifications: str, previous: str, rationale: str, annotations: str, motivation: str,
          limitations: str, unsuited: str, license: str = "Apache-2.0 (ctxlab code)") -> DataCard:
    """A GEMv2-style card (dotted keys become sub-headings when rendered); the sandbox-wide fields are shared."""
    return DataCard(
        overview={
            "summary": summary,
            "where.website": "generated locally by ctxlab/tasks/sandbox (no download)",
            "where.paper-url": _PAPER,
            "languages.license": license,
            "languages.primary-task": task,
            "languages.intended-use": "length sweeps comparing in-context answering, thinking and qTTT; training "
                                      "tiny models at short lengths; attention-mass diagnostics on the evidence",
            "structure.data-fields": f"{_FIELDS}; answer format: {answer}",
            "structure.example": example,
            "structure.data-splits": splits,
        },
        gem={
            "rationale.ability": ability,
            "curation.modifications": modifications,
            "starting.loading": f"registry task sandbox:{kind} (dataclasses.replace(task, n_tokens=..., n_samples=..., "
                                f"seed=...)), or ctxlab.tasks.sandbox.generate_{kind}(seed, n_tokens)",
        },
        results={
            "metrics": "accuracy: exact match of the parsed answer with the reference (1.0 or 0.0 per sample)",
            "proposed-evaluation": "prompt = context, question and 'Reply with only the answer after \"Final:\"'; "
                                   "parsing is lenient: the first answer pattern after the last 'Final:', else the "
                                   "last one in the text",
            "previous-results": previous,
        },
        curation={
            "original.rationale": rationale,
            "language.data": "synthetic, generated on the fly from string-seeded random streams; same seed and "
                             "length give identical text; the needle has its own stream and is identical at every "
                             "length while the haystack grows around it; the haystack size is searched so the "
                             "no-thinking prompt is within 5% of n_tokens under the given token counter",
            "annotations.origin": annotations,
            "pii.risk": "none: synthetic data or public source code",
        },
        context={
            "motivation": motivation,
            "underserved": "not applicable (synthetic English/Python data)",
            "biases": "none of social relevance; distributional quirks are documented in the module docstring",
        },
        considerations={
            "technical-limitations": limitations,
            "unsuited-applications": unsuited,
        },
    )


CARDS = {
    "bank": _card(
        "bank",
        summary="Synthetic multi-account bank ledgers (initial balances, then transactions recording old -> new "
                "balances) with exactly one injected anomaly to find.",
        task="anomaly detection in a long structured log",
        answer="BUG_TYPE TXnnnn, BUG_TYPE in CALC_ERROR, NEGATIVE_BAL, LOST_UPDATE, DUPLICATE_TXN",
        example="TX4821 transfer A2 -> A5 amount 120: A2 530 -> 410, A5 75 -> 195  (answer e.g. CALC_ERROR TX4821)",
        splits="none: any seed range; anomaly type = ANOMALIES[seed % 4] (balanced in blocks of 4 seeds)",
        ability="retrieval plus step-by-step checking of invariants (arithmetic, state, uniqueness) over long logs",
        modifications="anomalies defined precisely (ctxlab/tasks/sandbox/bank.py): LOST_UPDATE = a write based on "
                      "the balance before the account's previous update; DUPLICATE_TXN = a transfer replayed with "
                      "the same TX id; TX ids are random 4-digit numbers, not sequential",
        previous="paper Table 1 (qTTT, LR 1e-5, Qwen3-4B): 28.0 / 14.4 / 9.2 / 8.4 at 512 / 2,536 / 5,120 / 9,560 "
                 "tokens, on the paper's own generator (not comparable)",
        rationale="reproduce the paper's transaction-log sandbox with a single, independently checkable anomaly",
        annotations="answer known by construction and re-derived by check_log(), an independent re-parser that "
                    "lists every rule violation (tests assert exactly one)",
        motivation="in-context accuracy on such logs falls with length (score dilution); the task separates "
                   "retrieval from reasoning failures",
        limitations="small needles (1-3 lines, at most one line between); integer amounts <= 400; below ~220 "
                    "tokens (default counter) some seeds cannot be built",
        unsuited="not a model of real banking data or fraud detection",
    ),
    "code": _card(
        "code",
        summary="Line-numbered excerpts of Python standard-library modules with one injected single-line logical "
                "bug, described in natural language; locate it.",
        task="bug localisation in long code context",
        answer="path:line, path relative to the stdlib directory, e.g. json/decoder.py:123",
        example="79|     if lo <= 0:   (bisect.py; the original reads if lo < 0:)",
        splits="none: any seed range; mutation kind = KINDS[seed % 8]",
        ability="code understanding over many files: find the line that contradicts the described bug",
        modifications="the paper uses OLMo's repository; we use the stdlib that ships with every interpreter. "
                      "Mutation kinds: comparison, equality, arithmetic, boolean, constant, off_by_one, "
                      "negated_return, dropped_not; the hint names the kind and the enclosing function; the answer "
                      "is the location only (no fix)",
        previous="paper Table 1 (qTTT, LR 1e-5, Qwen3-4B): 44.5 / 40.2 / 28.0 / 20.2 at 512 / 2,050 / 7,450 / "
                 "10,000 tokens, on OLMo code (not comparable)",
        rationale="a realistic, always-available code corpus; mutation sites found with tokenize (never in "
                  "strings or comments) and kept only when the mutated file still compiles",
        annotations="answer known by construction; tests diff every shown line against the source files",
        motivation="long-context code understanding; mirrors the paper's repository bug-localisation sandbox",
        limitations="the stdlib differs between Python versions, so examples are reproducible per interpreter "
                    "version (meta['python']); some mutations are hard to tell from intended behaviour; the "
                    "stdlib is in every code pre-training corpus, so a model may spot changes from memory",
        unsuited="not a benchmark of real-world bugs",
        license="Apache-2.0 (ctxlab code); the excerpts are CPython standard-library sources (PSF License)",
    ),
    "kv": _card(
        "kv",
        summary="A list of 'five-word-key: 6-digit value' pairs; return the value of the asked key.",
        task="exact-match retrieval with controllable distractor similarity",
        answer="the value (digits)",
        example="frost-aspen-cabin-pine-harbor: 331631",
        splits="none: any seed range",
        ability="precise retrieval among look-alike keys",
        modifications="not from the paper: a retrieval control; generator option similarity in [0, 1] (default "
                      "0.5): each distractor shares ~4 * similarity leading words with the needle key",
        previous="none (new task)",
        rationale="separate pure retrieval from the reasoning tasks and stress attention selectivity",
        annotations="answer known by construction; every key appears once",
        motivation="distractor keys sharing long prefixes with the needle key dilute attention scores",
        limitations="at similarity 1 at most 107 distractors differ only in the last word; further ones share "
                    "fewer words (meta['mean_shared_prefix'] reports the realised similarity)",
        unsuited="not a reasoning benchmark",
    ),
}


@dataclass(frozen=True)
class SandboxTask(Task):
    """`sandbox:KIND`: generated examples; `options` are extra generator keyword arguments (e.g. similarity)."""

    kind: str = "bank"
    n_tokens: int = 1024
    n_samples: int = 50
    seed: int = 0
    count_tokens: CountTokens | None = None
    options: tuple[tuple[str, Any], ...] = ()

    def examples(self) -> Iterator[SandboxExample]:
        if self.kind not in GENERATORS:
            raise CtxlabError(f"unknown sandbox task {self.kind!r}; valid: {', '.join(GENERATORS)}")
        if not isinstance(self.n_samples, int) or self.n_samples < 1:
            raise CtxlabError(f"n_samples must be a positive integer, got {self.n_samples!r}")
        counter = self.count_tokens or approx_count_tokens
        for i in range(self.n_samples):
            yield GENERATORS[self.kind](self.seed + i, self.n_tokens, count_tokens=counter, **dict(self.options))

    def samples(self, data_dir: Path | None) -> Iterator[Sample]:
        for ex in self.examples():
            yield Sample(
                id=f"{self.name}/{self.n_tokens}/{ex.meta['seed']}",
                context=ex.context,
                question=ex.question,
                reference=ex.answer,
                meta={**ex.meta, "scratchpad": ex.scratchpad},
                evidence=ex.evidence,
            )

    def prompt(self, sample: Sample) -> str:
        return format_prompt(sample.context, sample.question, thinking=False)

    def parse(self, generation: str) -> str:
        return PARSERS[self.kind](generation) or ""

    def score(self, prediction: Any, sample: Sample) -> dict[str, float]:
        # parse() is idempotent on canonical answers, so raw generations and parsed predictions both work.
        pred = PARSERS[self.kind](str(prediction)) if prediction else None
        return {"accuracy": float(pred is not None and pred == sample.reference)}


def make_task(kind: str, **kwargs: Any) -> SandboxTask:
    return SandboxTask(name=f"sandbox:{kind}", version="1.0", card=CARDS[kind], metrics=("accuracy",), kind=kind,
                       **kwargs)


TASKS: list[Task] = [make_task(kind) for kind in ("bank", "code", "kv")]

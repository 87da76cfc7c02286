"""Task abstraction: a versioned dataclass with a GEM-style data card, a loader, a prompt builder and a scorer.

Every task family lives in one file under `ctxlab/tasks/` and exposes `TASKS: list[Task]`; the registry in
`ctxlab/tasks/__init__.py` lists those modules explicitly (no import side effects, no hidden initialisation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ctxlab.errors import CtxlabError
from ctxlab.tasks.truncation import TokenizerLike

CARD_SECTIONS = ("overview", "context", "curation", "gem", "results", "considerations")


@dataclass(frozen=True)
class DataCard:
    """The GEM data-card sections as structured data: each section maps field names to short texts."""

    overview: dict[str, str]
    context: dict[str, str] = field(default_factory=dict)
    curation: dict[str, str] = field(default_factory=dict)
    gem: dict[str, str] = field(default_factory=dict)
    results: dict[str, str] = field(default_factory=dict)
    considerations: dict[str, str] = field(default_factory=dict)

    def sections(self) -> dict[str, dict[str, str]]:
        return {name: dict(getattr(self, name)) for name in CARD_SECTIONS}


@dataclass(frozen=True)
class Sample:
    """One evaluation example. `context` is the long part that truncation may shorten; `question` is kept whole.

    `reference` is whatever the task's scorer expects (a string, a list of strings, a dict). `evidence` holds
    character spans of the evidence inside `context` (for attention-mass diagnostics); empty when unknown.
    """

    id: str
    context: str
    question: str
    reference: Any
    meta: dict[str, Any] = field(default_factory=dict)
    evidence: tuple[tuple[int, int], ...] = ()


# A token counter / truncator pair lets tasks fit prompts to a model's context without knowing its tokenizer.
CountTokens = Callable[[str], int]


TRUNCATIONS = ("left_context", "middle", "keep_query")


@dataclass(frozen=True)
class Task:
    """Base class: subclasses override `samples`, `prompt` and `score` (and `parse` when answers need parsing).

    What the eval runner reads from every task (declared here, overridden by families that differ): the answer budget
    `max_new_tokens` (None = the runner's default), the sampling `temperature`, the `truncation` policy and its
    `fit_to` (how a prompt is cut to a token budget), the meta keys to `breakdown` scores by, and `metric(name)` for
    metrics of the task's own (None = the registry in ctxlab/tasks/metrics.py)."""

    name: str
    version: str
    card: DataCard
    metrics: tuple[str, ...]
    languages: tuple[str, ...] = ("en",)
    needs_data_dir: bool = False
    max_new_tokens: int | None = None
    temperature: float = 0.0
    truncation: str = "left_context"  # one of TRUNCATIONS: oldest context tokens cut; middle; query kept whole
    breakdown: tuple[str, ...] = ()

    def samples(self, data_dir: Path | None) -> Iterator[Sample]:
        raise NotImplementedError

    def prompt(self, sample: Sample) -> str:
        """The full prompt text for the model (context, question and answer instructions)."""
        return f"{sample.context}\n\n{sample.question}"

    def parse(self, generation: str) -> Any:
        """Turn the model's raw generation into the prediction the metrics score."""
        return generation.strip()

    def score(self, prediction: Any, sample: Sample) -> dict[str, float]:
        """Per-sample metric values keyed by metric name (aggregated by the metric registry)."""
        raise NotImplementedError

    def metric(self, name: str) -> Any:
        """A Metric of this task's own for `name`, or None to use the metric registry."""
        return None

    def fit_to(self, sample: Sample, tokenizer: TokenizerLike, budget: int) -> tuple[str, Sample | None]:
        """The prompt cut to at most `budget` tokens of `tokenizer` by the task's truncation policy, and the cut
        sample when the prompt is still `prompt(sample)` of one (None when the policy cut the rendered text).
        Default ("left_context"): drop the oldest context tokens; the question and instructions stay whole."""
        ids = list(tokenizer.encode(sample.context))
        text = self.prompt(sample)
        cut = max(1, len(tokenizer.encode(text)) - budget)
        while True:
            if cut > len(ids):
                raise CtxlabError(f"{self.name} sample {sample.id!r}: the prompt does not fit {budget} tokens even "
                                  "without its context; lower the answer/thinking budget")
            short = replace(sample, context=tokenizer.decode(ids[cut:]))
            text = self.prompt(short)
            n = len(tokenizer.encode(text))
            if n <= budget:
                return text, short
            cut += n - budget


class TaskRegistry:
    """Explicit name → Task map; unknown names are errors that list the valid ones."""

    def __init__(self, tasks: list[Task]):
        self._tasks: dict[str, Task] = {}
        for t in tasks:
            if t.name in self._tasks:
                raise ValueError(f"duplicate task name {t.name!r}")
            self._tasks[t.name] = t

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def get(self, name: str) -> Task:
        if name not in self._tasks:
            raise CtxlabError(f"unknown task {name!r}; valid tasks: {', '.join(self.names())}")
        return self._tasks[name]

    def resolve(self, spec: str) -> list[Task]:
        """'a,b:c' → tasks; a family prefix without a config ('zeroscrolls') selects all of its configs."""
        out: list[Task] = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            if part in self._tasks:
                out.append(self._tasks[part])
                continue
            family = [t for n, t in sorted(self._tasks.items()) if n.split(":")[0] == part]
            if not family:
                raise CtxlabError(f"unknown task {part!r}; valid tasks: {', '.join(self.names())}")
            out.extend(family)
        if not out:
            raise CtxlabError("no task given")
        return out

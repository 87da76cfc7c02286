"""Task abstraction: a versioned dataclass with a GEM-style data card, a loader, a prompt builder and a scorer.

Every task family lives in one file under `ctxlab/tasks/` and exposes `TASKS: list[Task]`; the registry in
`ctxlab/tasks/__init__.py` lists those modules explicitly (no import side effects, no hidden initialisation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctxlab.errors import CtxlabError

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


@dataclass(frozen=True)
class Task:
    """Base class: subclasses override `samples`, `prompt` and `score` (and `parse` when answers need parsing)."""

    name: str
    version: str
    card: DataCard
    metrics: tuple[str, ...]
    languages: tuple[str, ...] = ("en",)
    needs_data_dir: bool = False

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

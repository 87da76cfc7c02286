"""The typed results of a run (`results.json`) and how they are computed from stored per-sample records.

`RunResult.to_dict()` is the file's content; `load_results(run_dir)` reads it back (for `ctxlab report`).
Aggregates come from `ctxlab.tasks.metrics` (0-100 scale) with bootstrap standard errors over samples
(seeded with the run's seed, so they are reproducible). Everything is computed from the stored records, in
task-sample order, so an interrupted-and-resumed or sharded run gives exactly the numbers of a single
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from ctxlab.errors import CtxlabError

SCHEMA = "ctxlab.eval.results/1"
FLOPS_UNIT = "multiply-accumulates (analytic, ctxlab.strategies.flops; x2 for hardware FLOPs)"
PACKAGES = ("ctxlab", "torch", "numpy", "tokenizers", "safetensors", "sacrebleu", "rouge-score", "nltk",
            "transformers", "google-genai", "typer", "rich")


@dataclass(frozen=True)
class MetricResult:
    value: float  # 0-100
    stderr: float  # bootstrap standard error, same scale
    higher_is_better: bool = True
    description: str = ""


@dataclass(frozen=True)
class TaskResult:
    name: str
    version: str
    languages: list[str]
    n_samples: int
    metrics: dict[str, MetricResult]
    breakdown: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # metric → key → group → value
    truncation: str = "none"
    truncated_samples: int = 0
    max_new_tokens: int = 0
    temperature: float = 0.0
    flops_total: float | None = None
    flops_per_sample: float | None = None
    wall_s_total: float = 0.0
    data_dir: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunResult:
    schema: str
    run_dir: str
    model: dict[str, Any]
    backend: dict[str, Any]
    strategy: dict[str, Any]
    tasks: dict[str, TaskResult]
    seed: int
    limit: int | None
    bootstrap: int
    n_samples: int
    flops: dict[str, Any]
    timings: dict[str, Any]
    env: dict[str, Any]
    fingerprint: str
    duplicates: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunResult:
        if d.get("schema") != SCHEMA:
            raise CtxlabError(f"unsupported results schema {d.get('schema')!r} (expected {SCHEMA})")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [n for n in names if n not in d and n != "duplicates"]
        if missing:
            raise CtxlabError(f"results are missing fields: {', '.join(sorted(missing))}")
        tasks = {}
        for name, t in d["tasks"].items():
            metrics = {m: MetricResult(**v) for m, v in t["metrics"].items()}
            tasks[name] = TaskResult(**{**t, "metrics": metrics})
        return cls(**{k: v for k, v in d.items() if k in names and k != "tasks"}, tasks=tasks)


def load_results(run_dir: str | Path) -> RunResult:
    """The RunResult of a run directory (or of a results.json path); one-line errors."""
    p = Path(run_dir)
    path = p / "results.json" if p.is_dir() else p
    if not path.is_file():
        hint = " (the run is unfinished: resume it with --resume)" if (p / "store").is_dir() else ""
        raise CtxlabError(f"no results.json in {run_dir}{hint}")
    try:
        return RunResult.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CtxlabError(f"{path}: invalid JSON ({e})") from None
    except (KeyError, TypeError) as e:
        raise CtxlabError(f"{path}: malformed results ({e})") from None


# ------------------------------------------------------------------------------------------------ environment


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_info(path: Path | None = None) -> dict[str, Any]:
    """HEAD commit and whether tracked files differ from it, for the checkout holding ctxlab (None outside git)."""
    root = path or Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if head is None:
        return {"hash": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"hash": head, "dirty": bool(status) if status is not None else None}


def environment(world_size: int = 1, device: str | None = None) -> dict[str, Any]:
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": package_versions(),
            "git": git_info(), "world_size": world_size, "device": device, "argv": sys.argv[1:]}

"""The one rich progress-bar layout of ctxlab's long jobs (evaluation runs, training, the demo)."""

from __future__ import annotations

from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(console: Any, *, enabled: bool = True, extra: tuple[ProgressColumn, ...] = ()) -> Progress:
    """description · bar · done/total · elapsed · remaining, then `extra` columns (e.g. live training metrics)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), *extra, console=console, disable=not enabled, transient=False)

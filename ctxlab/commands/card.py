"""`ctxlab card NAME [--format md|html|json]`: a task's GEM-style data card, or a model's card for names that look
like models (a checkpoint directory, a preset or a hub id)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ctxlab.errors import CtxlabError


def run(
    name: Annotated[str, typer.Argument(help="a task name (see `ctxlab tasks`)")],
    fmt: Annotated[str, typer.Option("--format", help="md, html or json")] = "md",
) -> None:
    """Print a task's GEM-style data card."""
    card(name, fmt)


def _looks_like_model(name: str) -> bool:
    from ctxlab.presets import preset_for
    from ctxlab.realmodels import REAL_MODELS

    p = Path(name).expanduser()
    if name in REAL_MODELS or (p.is_file() and p.suffix.lower() == ".gguf"):
        return True
    return (p.is_dir() and (p / "config.json").is_file()) or preset_for(name) is not None or bool(
        re.match(r"^[\w.-]+/[\w.-]+$", name) and ":" not in name)


def card(name: str, fmt: str = "md", out: Any = None) -> str:
    """The card as md, html or json, printed and returned."""
    from ctxlab.tasks import registry
    from ctxlab.tasks.cards import FORMATS, render_card

    if fmt not in FORMATS:
        raise CtxlabError(f"unknown card format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    reg = registry()
    if name in reg.names():
        text = render_card(reg.get(name), fmt)
    elif _looks_like_model(name):
        from ctxlab.modelinfo import model_card

        text = model_card(name, fmt)
    else:
        reg.get(name)  # raises: unknown task, listing the valid ones
        raise AssertionError("unreachable")
    (out or sys.stdout).write(text if text.endswith("\n") else text + "\n")
    return text

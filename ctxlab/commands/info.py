"""`ctxlab info MODEL [--json]`: facts about a checkpoint computed from its config (reads no weights)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ctxlab.commands.common import ModelArg


def run(
    model: ModelArg,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Family, shape, parameters, context length, licence and dtype of a checkpoint (reads no weights)."""
    from ctxlab.modelinfo import model_info

    facts = model_info(model)
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    for key, value in facts.items():
        print(f"{key:>22}: {value}")

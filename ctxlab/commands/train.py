"""`ctxlab train pretrain|sft|dpo --config FILE [--resume]`: the one training loop (ctxlab/train/run.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ctxlab.errors import CtxlabError

KINDS = ("pretrain", "sft", "dpo")


def run(
    kind: Annotated[str, typer.Argument(help="pretrain, sft or dpo")],
    config: Annotated[Path, typer.Option(help="TOML or JSON training config (see configs/)")],
    resume: Annotated[bool, typer.Option(help="continue from the last checkpoint in the config's out_dir")] = False,
) -> None:
    """Train on the one loop: pretraining, supervised fine-tuning or DPO, with HF-format checkpoints."""
    if kind not in KINDS:
        raise CtxlabError(f"unknown training kind {kind!r}; choose from {', '.join(KINDS)}")
    from ctxlab.train.run import run_training

    run_training(kind, config, resume)

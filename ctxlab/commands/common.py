"""Option types shared by several commands (each written once here) and the small input helpers they use."""

from __future__ import annotations

from typing import Annotated, Any

import typer

ModelArg = Annotated[str, typer.Argument(help="checkpoint directory, .gguf file, bundled, smollm2-135m-instruct, "
                                              "gemma-3-270m, or a hub id (e.g. Qwen/Qwen3-0.6B)")]
DtypeOpt = Annotated[str | None, typer.Option(help="float32 (CPU default), bfloat16, float16")]
DeviceOpt = Annotated[str, typer.Option(help="cpu or cuda[:N]")]
SeedOpt = Annotated[int, typer.Option(min=0, help="random seed")]


def split_names(value: str | None) -> tuple[str, ...]:
    """'a, b,,c' → ('a', 'b', 'c')."""
    return tuple(s.strip() for s in (value or "").split(",") if s.strip())


def console(out: Any = None, stderr: bool = False) -> Any:
    """`out` if given (a rich Console), else a console on stdout (or stderr) without syntax highlighting."""
    from rich.console import Console

    return out if out is not None else Console(stderr=stderr, highlight=False)

"""`ctxlab report RUN_DIR...`: finished runs side by side (a table of scores ± stderr and a PNG chart)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from ctxlab.commands.common import console


def run(
    run_dirs: Annotated[list[str], typer.Argument(help="finished run directories (holding results.json)")],
    out_png: Annotated[str, typer.Option(help="bar chart path ('' = none)")] = "report.png",
) -> None:
    """Compare runs side by side: a table of scores ± stderr and a PNG chart."""
    compare_runs(run_dirs, out_png or None)


def compare_runs(run_dirs: Sequence[str], out_png: str | None = "report.png", out: Any = None) -> Any:
    """The comparison of finished runs: printed as a table and (unless out_png is empty) drawn as a PNG."""
    from ctxlab.eval.report import chart, compare, table
    from ctxlab.fileio import check_writable_dir

    if out_png:
        check_writable_dir(Path(out_png).expanduser().parent, "--out-png directory")
    c = compare(run_dirs)
    con = console(out)
    con.print(table(c))
    if out_png:
        con.print(f"chart: {chart(c, out_png)}")
    return c

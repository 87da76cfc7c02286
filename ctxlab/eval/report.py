"""`ctxlab report RUN_DIR...`: runs side by side, as a rich table and a PNG bar chart (matplotlib, Agg).

Rows are (task, metric) pairs present in any run, then compute rows (FLOPs per sample, seconds per sample);
columns are runs, labelled by their directory name (plus its parent when two names clash) and strategy.
Cells read "value ± stderr"; a metric a run lacks is "—". The chart has one group per (task, metric) and one bar
per run, with the bootstrap standard error as error bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxlab.errors import CtxlabError
from ctxlab.eval.results import RunResult, load_results


@dataclass(frozen=True)
class Comparison:
    labels: list[str]
    runs: list[RunResult]
    rows: list[tuple[str, str]]  # (task, metric)

    def cell(self, run: int, row: tuple[str, str]) -> tuple[float, float] | None:
        task = self.runs[run].tasks.get(row[0])
        m = task.metrics.get(row[1]) if task else None
        return None if m is None else (m.value, m.stderr)


def _labels(dirs: Sequence[Path], runs: Sequence[RunResult]) -> list[str]:
    names = [d.name or str(d) for d in dirs]
    clash = {n for n in names if names.count(n) > 1}
    out = []
    for d, n, r in zip(dirs, names, runs, strict=True):
        base = f"{d.parent.name}/{n}" if n in clash else n
        out.append(f"{base} ({r.strategy.get('name', '?')})")
    return out


def compare(run_dirs: Sequence[str | Path]) -> Comparison:
    if not run_dirs:
        raise CtxlabError("give at least one run directory")
    dirs = [Path(d) for d in run_dirs]
    runs = [load_results(d) for d in dirs]
    rows: list[tuple[str, str]] = []
    for r in runs:
        for tname, t in r.tasks.items():
            for m in t.metrics:
                if (tname, m) not in rows:
                    rows.append((tname, m))
    return Comparison(_labels(dirs, runs), runs, rows)


def _fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "—"
    if abs(x) >= 1e6:
        return f"{x:.3e}{unit}"
    return f"{x:.3f}{unit}"


def table(c: Comparison) -> Any:
    from rich.table import Table

    t = Table(title="ctxlab eval: runs compared (scores 0-100, ± bootstrap stderr)")
    t.add_column("task")
    t.add_column("metric")
    for label in c.labels:
        t.add_column(label, justify="right")
    for row in c.rows:
        cells = []
        for i in range(len(c.runs)):
            v = c.cell(i, row)
            cells.append("—" if v is None else f"{v[0]:.2f} ± {v[1]:.2f}")
        t.add_row(row[0], row[1], *cells)
    t.add_section()
    for label, key in (("FLOPs / sample", "flops"), ("s / sample", "wall")):
        cells = []
        for r in c.runs:
            n = r.n_samples or 1
            if key == "flops":
                total = r.flops.get("total")
                cells.append(_fmt(None if total is None else total / n))
            else:
                cells.append(_fmt(r.timings.get("sample_wall_s", 0.0) / n))
        t.add_row("(all)", label, *cells)
    t.add_row("(all)", "samples", *[str(r.n_samples) for r in c.runs])
    t.add_row("(all)", "budget (think tokens)", *[str(r.strategy.get("budget_think_tokens", "—")) for r in c.runs])
    return t


def chart(c: Comparison, out_png: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    n_runs, n_rows = len(c.runs), len(c.rows)
    width = 0.8 / max(1, n_runs)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * n_rows * max(1, n_runs) ** 0.5 + 2), 4.5))
    x = np.arange(n_rows)
    for i, label in enumerate(c.labels):
        vals = [c.cell(i, row) for row in c.rows]
        ys = [v[0] if v else np.nan for v in vals]
        es = [v[1] if v else 0.0 for v in vals]
        ax.bar(x + (i - (n_runs - 1) / 2) * width, ys, width, yerr=es, capsize=3, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{t}\n{m}" for t, m in c.rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score (0-100)")
    ax.set_title("ctxlab eval")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

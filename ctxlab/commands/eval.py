"""Bodies of the `ctxlab eval | tasks | report | card` commands (the typer wiring lives in ctxlab/cli.py).

Each function validates its input before doing expensive work, raises CtxlabError for user errors (the CLI prints
one line) and returns what it printed as data, so it can be called from Python and tested without a terminal.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctxlab.errors import CtxlabError


def _console(console: Any = None, stderr: bool = False) -> Any:
    from rich.console import Console

    return console if console is not None else Console(stderr=stderr, highlight=False)


def default_out(model: str, strategy: str) -> str:
    """runs/<model name>--<strategy>: stable, so `--resume` finds the run without --out."""
    name = Path(model.rstrip("/")).name or "model"
    return str(Path("runs") / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}--{strategy}")


def eval_cli(
    model: str,
    tasks: str,
    strategy: str = "in-context",
    budget_think_tokens: int = 8192,
    limit: int | None = None,
    data_dir: Sequence[str] = (),
    out: str | None = None,
    resume: bool = False,
    backend: str = "native",
    *,
    base_url: str | None = None,
    api: str | None = None,
    concurrency: int | None = None,
    timeout: float | None = None,
    max_retries: int | None = None,
    context_length: int | None = None,
    dtype: str | None = None,
    device: str | None = None,
    backend_opt: Sequence[str] = (),
    task_opt: Sequence[str] = (),
    strategy_opt: Sequence[str] = (),
    metrics: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    seed: int = 0,
    bootstrap: int = 1000,
    progress: bool = True,
    console: Any = None,
) -> Any:
    """Evaluate MODEL on TASKS with STRATEGY; prints a summary and returns the RunResult (None on ranks > 0)."""
    from ctxlab.eval.runner import EvalConfig, parse_pairs, run_eval

    sugar = {"base_url": base_url, "api": api, "concurrency": concurrency, "timeout": timeout,
             "max_retries": max_retries, "context_length": context_length, "dtype": dtype, "device": device}
    opts = dict(parse_pairs(backend_opt, "--backend-opt"))
    for key, value in sugar.items():
        if value is not None:
            if key in opts:
                raise CtxlabError(f"backend option {key} given twice (--{key.replace('_', '-')} and --backend-opt)")
            opts[key] = value
    cfg = EvalConfig(
        model=model, tasks=tasks, strategy=strategy, budget_think_tokens=budget_think_tokens, limit=limit,
        data_dirs=tuple(data_dir), out=out or default_out(model, strategy), resume=resume, backend=backend,
        backend_options=tuple(opts.items()), task_options=parse_pairs(task_opt, "--task-opt"),
        strategy_options=parse_pairs(strategy_opt, "--strategy-opt"),
        metrics=tuple(m.strip() for m in (metrics or "").split(",") if m.strip()),
        max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, bootstrap=bootstrap,
    )
    err = _console(console, stderr=True)
    result = run_eval(cfg, progress=progress and err.is_terminal, console=err)
    if result is not None:
        print_summary(result, _console(console))
    return result


def print_summary(result: Any, console: Any) -> None:
    from rich.table import Table

    t = Table(title=f"{result.model.get('model')} · {result.strategy.get('name')} "
                    f"(budget {result.strategy.get('budget_think_tokens')} think tokens)")
    for col in ("task", "version", "metric", "score", "± stderr", "n", "truncated"):
        t.add_column(col, justify="right" if col in ("score", "± stderr", "n", "truncated") else "left")
    for name, tr in result.tasks.items():
        for m, v in tr.metrics.items():
            t.add_row(name, tr.version, m, f"{v.value:.2f}", f"{v.stderr:.2f}", str(tr.n_samples),
                      str(tr.truncated_samples))
    console.print(t)
    flops = result.flops.get("total")
    note = f" · {flops:.3e} MAC" if flops is not None else ""
    console.print(f"{result.n_samples} samples{note} · results: {Path(result.run_dir) / 'results.json'}")


def tasks_cli(console: Any = None) -> list[dict[str, Any]]:
    """Every registered task with version, languages, metrics, whether it needs a data dir, truncation policy."""
    from rich.table import Table

    from ctxlab.eval.runner import truncation_policy
    from ctxlab.tasks import registry

    reg = registry()
    rows = []
    for name in reg.names():
        t = reg.get(name)
        rows.append({"name": name, "version": t.version, "languages": list(t.languages), "metrics": list(t.metrics),
                     "needs_data_dir": t.needs_data_dir, "truncation": truncation_policy(t)})
    table = Table(title="ctxlab tasks")
    for col in ("task", "version", "languages", "metrics", "data dir", "truncation"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["version"], ",".join(r["languages"]), ",".join(r["metrics"]),
                      "needed" if r["needs_data_dir"] else "-", r["truncation"])
    _console(console).print(table)
    return rows


def report_cli(run_dirs: Sequence[str], out_png: str | None = "report.png", console: Any = None) -> Any:
    """Compare finished runs: a table on the console and (unless out_png is empty) a PNG bar chart."""
    from ctxlab.eval.report import chart, compare, table

    c = compare(run_dirs)
    con = _console(console)
    con.print(table(c))
    if out_png:
        con.print(f"chart: {chart(c, out_png)}")
    return c


def model_card(model: str, fmt: str) -> str:
    """The hook `ctxlab card` calls for names that are not tasks but look like models (a checkpoint directory,
    a preset or a hub id): ctxlab.modelinfo.model_card when it exists."""
    try:
        from ctxlab.modelinfo import model_card as render
    except ImportError:
        raise CtxlabError(f"{model!r} looks like a model, and model cards are not available in this version; "
                          "`ctxlab card` renders task cards (see `ctxlab tasks`)") from None
    return render(model, fmt)


def _looks_like_model(name: str) -> bool:
    from ctxlab.presets import preset_for

    p = Path(name).expanduser()
    return (p.is_dir() and (p / "config.json").is_file()) or preset_for(name) is not None or bool(
        re.match(r"^[\w.-]+/[\w.-]+$", name) and ":" not in name)


def card_cli(name: str, fmt: str = "md", out: Any = None) -> str:
    """A task's GEM-style data card as md, html or json (printed); model names go to the `model_card` hook."""
    from ctxlab.tasks import registry
    from ctxlab.tasks.cards import FORMATS, render_card

    if fmt not in FORMATS:
        raise CtxlabError(f"unknown card format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    reg = registry()
    if name in reg.names():
        text = render_card(reg.get(name), fmt)
    elif _looks_like_model(name):
        text = model_card(name, fmt)
    else:
        reg.get(name)  # raises: unknown task, listing the valid ones
        raise AssertionError("unreachable")
    (out or sys.stdout).write(text if text.endswith("\n") else text + "\n")
    return text

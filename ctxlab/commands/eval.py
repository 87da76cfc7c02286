"""`ctxlab eval MODEL --tasks ...`: evaluate a model on tasks; the options are defined once, here, and turned into the
runner's EvalConfig in one place (`run`). `evaluate(cfg)` is the same run from Python.

Data parallel: torchrun --nproc-per-node N -m ctxlab eval ...
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from ctxlab.commands.common import DtypeOpt, console, split_names
from ctxlab.errors import CtxlabError


def run(
    model: Annotated[str, typer.Argument(help="checkpoint dir / hub id (native, hf) or served model name (openai, "
                                              "gemini)")],
    tasks: Annotated[str, typer.Option(help="comma-separated task names or families (see `ctxlab tasks`)")],
    strategy: Annotated[str, typer.Option(help="in-context, thinking, self-consistency, qttt")] = "in-context",
    budget_think_tokens: Annotated[int, typer.Option(help="thinking budget; qTTT is FLOP-matched to it")] = 8192,
    limit: Annotated[int | None, typer.Option(help="first N samples of each task")] = None,
    data_dir: Annotated[list[str] | None, typer.Option(help="PATH, or TASK_OR_FAMILY=PATH (repeatable)")] = None,
    out: Annotated[str | None, typer.Option(help="run directory (default runs/<model>--<strategy>)")] = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --out (same settings)")] = False,
    backend: Annotated[str, typer.Option(help="native, hf, openai, gemini (or package.module:Class)")] = "native",
    base_url: Annotated[str | None, typer.Option(help="openai: server URL up to /v1")] = None,
    api: Annotated[str | None, typer.Option(help="openai: chat or completions")] = None,
    concurrency: Annotated[int | None, typer.Option(help="remote: requests in flight")] = None,
    timeout: Annotated[float | None, typer.Option(help="remote: seconds per request")] = None,
    max_retries: Annotated[int | None, typer.Option(help="remote: retries on 429/5xx/timeouts")] = None,
    context_length: Annotated[int | None, typer.Option(help="remote: the model's context in tokens")] = None,
    dtype: DtypeOpt = None,
    device: Annotated[str | None, typer.Option(help="native/hf: cpu or cuda[:N]")] = None,
    backend_opt: Annotated[list[str] | None, typer.Option(help="backend option KEY=VALUE (repeatable)")] = None,
    task_opt: Annotated[list[str] | None, typer.Option(help="task option KEY=VALUE, e.g. n_tokens=4096")] = None,
    strategy_opt: Annotated[list[str] | None, typer.Option(help="strategy option KEY=VALUE, e.g. samples=4")] = None,
    metrics: Annotated[str | None, typer.Option(help="comma-separated subset of the tasks' metrics")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="answer tokens (default: each task's own)")] = None,
    temperature: Annotated[float | None, typer.Option(help="default: each task's own (0 = greedy)")] = None,
    seed: int = 0,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for standard errors")] = 1000,
    progress: Annotated[bool, typer.Option(help="progress bar with ETA on a terminal")] = True,
) -> Any:
    """Evaluate MODEL on tasks; per-sample results are committed as they finish (resume with --resume).
    Data parallel: torchrun --nproc-per-node N -m ctxlab eval ..."""
    from ctxlab.eval.runner import EvalConfig, parse_pairs

    sugar = {"base_url": base_url, "api": api, "concurrency": concurrency, "timeout": timeout,
             "max_retries": max_retries, "context_length": context_length, "dtype": dtype, "device": device}
    cfg = EvalConfig(
        model=model, tasks=tasks, strategy=strategy, budget_think_tokens=budget_think_tokens, limit=limit,
        data_dirs=tuple(data_dir or ()), out=out or default_out(model, strategy), resume=resume, backend=backend,
        backend_options=backend_options(backend_opt or (), sugar),
        task_options=parse_pairs(task_opt or (), "--task-opt"),
        strategy_options=parse_pairs(strategy_opt or (), "--strategy-opt"), metrics=split_names(metrics),
        max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, bootstrap=bootstrap,
    )
    return evaluate(cfg, progress=progress)


def evaluate(cfg: Any, *, progress: bool = True, out: Any = None) -> Any:
    """Run an EvalConfig, print its summary table; returns the RunResult (None on torchrun ranks > 0)."""
    from ctxlab.eval.runner import run_eval

    err = console(out, stderr=True)
    result = run_eval(cfg, progress=progress and err.is_terminal, console=err)
    if result is not None:
        print_summary(result, console(out))
    return result


def backend_options(items: Sequence[str], sugar: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """--backend-opt KEY=VALUE pairs merged with the named shortcuts (--base-url, --device, ...); a key given both
    ways is an error."""
    from ctxlab.eval.runner import parse_pairs

    opts = dict(parse_pairs(items, "--backend-opt"))
    for key, value in sugar.items():
        if value is not None:
            if key in opts:
                raise CtxlabError(f"backend option {key} given twice (--{key.replace('_', '-')} and --backend-opt)")
            opts[key] = value
    return tuple(opts.items())


def default_out(model: str, strategy: str) -> str:
    """runs/<model name>--<strategy>: stable, so `--resume` finds the run without --out."""
    name = Path(model.rstrip("/")).name or "model"
    return str(Path("runs") / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}--{strategy}")


def print_summary(result: Any, con: Any) -> None:
    from rich.table import Table

    strat = result.strategy
    budget = f" (budget {strat.get('budget_think_tokens')} think tokens)" if strat.get("name") != "in-context" else ""
    t = Table(title=f"{result.model.get('model')} · {strat.get('name')}{budget}")
    for col in ("task", "version", "metric", "score", "± stderr", "n", "truncated"):
        t.add_column(col, justify="right" if col in ("score", "± stderr", "n", "truncated") else "left")
    for name, tr in result.tasks.items():
        for m, v in tr.metrics.items():
            t.add_row(name, tr.version, m, f"{v.value:.2f}", f"{v.stderr:.2f}", str(tr.n_samples),
                      str(tr.truncated_samples))
    con.print(t)
    flops = result.flops.get("total")
    note = f" · {flops:.3e} MAC" if flops is not None else ""
    con.print(f"{result.n_samples} samples{note} · results: {Path(result.run_dir) / 'results.json'}")

"""`ctxlab tasks`: the evaluation tasks with versions, languages, metrics and truncation policies."""

from __future__ import annotations

from typing import Any

from ctxlab.commands.common import console


def run() -> None:
    """List the evaluation tasks with versions, languages, metrics and truncation policies."""
    list_tasks()


def list_tasks(out: Any = None) -> list[dict[str, Any]]:
    """Every registered task with version, languages, metrics, whether it needs a data dir, truncation policy;
    printed as a table and returned as rows."""
    from rich.table import Table

    from ctxlab.tasks import registry

    reg = registry()
    rows = []
    for name in reg.names():
        t = reg.get(name)
        rows.append({"name": name, "version": t.version, "languages": list(t.languages), "metrics": list(t.metrics),
                     "needs_data_dir": t.needs_data_dir, "truncation": t.truncation})
    table = Table(title="ctxlab tasks")
    for col in ("task", "version", "languages", "metrics", "data dir", "truncation"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["version"], ",".join(r["languages"]), ",".join(r["metrics"]),
                      "needed" if r["needs_data_dir"] else "-", r["truncation"])
    console(out).print(table)
    return rows

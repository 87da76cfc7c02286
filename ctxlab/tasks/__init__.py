"""Task registry: an explicit list of task-family modules, each exporting `TASKS: list[Task]`.

Families are imported only when `registry()` is called, so importing `ctxlab.tasks` stays cheap and has no side
effects. Adding a family = one import line below.
"""

from __future__ import annotations

from pathlib import Path

from ctxlab.tasks.base import Task, TaskRegistry


def _families() -> list[list[Task]]:
    from ctxlab.tasks import longbench_v2, sandbox, tickettalk, xquad, zeroscrolls

    return [
        longbench_v2.TASKS,
        zeroscrolls.TASKS,
        sandbox.TASKS,
        xquad.TASKS,
        tickettalk.TASKS,
    ]


def discover(data_dir: str | Path) -> list[Task]:
    """Tasks a data directory adds beyond the registered ones (families with `tasks_for_dir`: XQuAD finds every
    `xquad.LANG.json` it holds)."""
    from ctxlab.tasks import xquad

    return list(xquad.tasks_for_dir(data_dir))


def registry() -> TaskRegistry:
    """All tasks of all families; duplicate names across families are an error."""
    return TaskRegistry([t for family in _families() for t in family])


def list_tasks() -> list[tuple[str, str, tuple[str, ...]]]:
    """(name, version, languages) rows, sorted by name, for `ctxlab tasks`."""
    reg = registry()
    return [(t.name, t.version, t.languages) for t in (reg.get(n) for n in reg.names())]

"""The import graph follows the data flow (CLI → registries → model/engine → strategy → task/metric → results): every
top-level room of ctxlab imports only rooms below it (or itself), and no two rooms import each other. Imports inside
functions count too: a lazy backward import is still a backward import. Reads the source; imports nothing."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "ctxlab"

# Rooms from the bottom up; a room may import its own modules and those of any lower rank.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "checks", "fileio", "progress", "assets", "gguf_file"),  # shared basics, the GGUF file reader
    ("presets", "realmodels", "licensing", "tokenizer", "tokenizer_gguf"),  # published facts, installed real
    # models, licences, tokenizers
    ("models",),  # model families, caches, loading
    ("modelinfo", "engine"),  # facts computed from models; generation on token ids
    ("tasks",),  # answer format, tasks, metrics, cards
    ("strategies",),  # in-context, thinking, self-consistency, qTTT, FLOPs, diagnostics
    ("eval",),  # backends, runner, store, results, report
    ("train",),  # the training loop, scratch checkpoints
    ("apps", "serve"),  # demo, synthetic QA, TicketTalk; the OpenAI-compatible server
    ("commands", "cli", "__main__"),  # the `ctxlab` command
]
RANK = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(name: str, path: Path) -> set[str]:
    """ctxlab modules imported anywhere in the file (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # `from ctxlab import x` names a module
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {t for t in found if t == "ctxlab" or t.startswith("ctxlab.")}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "ctxlab"


def room_edges() -> dict[tuple[str, str], list[str]]:
    """(importing room, imported room) → the imports behind it, for rooms that differ."""
    mods = _modules()
    edges: dict[tuple[str, str], list[str]] = {}
    for name, path in mods.items():
        for target in _imports(name, path):
            if target not in mods:  # `from ctxlab.x import Name`: the module is ctxlab.x
                continue
            a, b = _room(name), _room(target)
            if a != b:
                edges.setdefault((a, b), []).append(f"{name} -> {target}")
    return edges


def test_every_room_has_a_layer():
    rooms = {_room(m) for m in _modules()} - {"ctxlab"}
    assert rooms <= set(RANK), f"rooms without a layer in tests/test_layering.py: {sorted(rooms - set(RANK))}"


def test_no_backward_imports():
    bad = [imp for (a, b), imps in room_edges().items() if RANK.get(b, -1) > RANK.get(a, -1) for imp in imps]
    assert not bad, "imports from a lower room into a higher one:\n" + "\n".join(sorted(bad))


def test_no_cycles_between_rooms():
    graph: dict[str, set[str]] = {}
    for a, b in room_edges():
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for room in sorted(graph):
        if room not in state:
            cycle = visit(room, [])
            assert cycle is None, f"import cycle between rooms: {' -> '.join(cycle)}"


def test_no_module_level_cycles():
    """Module-level imports (what runs at import time) form no cycle between ctxlab modules."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in tree.body:  # top-level statements only
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            deps.update(t for t in targets if t in mods and t != name and not name.startswith(t + "."))
        graph[name] = deps
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("module import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_checker_sees_a_backward_import(tmp_path, monkeypatch):
    """The layering check is honest: a task importing the eval harness is reported."""
    pkg = tmp_path / "ctxlab"
    (pkg / "tasks").mkdir(parents=True)
    (pkg / "eval").mkdir()
    for f in ("__init__.py", "tasks/__init__.py", "eval/__init__.py", "eval/metrics.py"):
        (pkg / f).write_text("")
    (pkg / "tasks" / "x.py").write_text("def f():\n    from ctxlab.eval.metrics import M\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    edges = room_edges()
    assert edges == {("tasks", "eval"): ["ctxlab.tasks.x -> ctxlab.eval.metrics"]}
    with pytest.raises(AssertionError, match="lower room into a higher one"):
        test_no_backward_imports()

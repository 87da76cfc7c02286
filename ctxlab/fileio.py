"""Atomic JSON and JSON-lines writes: a temporary file renamed over the target, so a reader (or a run killed
mid-write) never sees half a file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def jsonable(x: Any) -> Any:
    """json.dumps fallback: sets as sorted lists, numpy/torch scalars and arrays as Python values, else repr."""
    if isinstance(x, (set, frozenset)):
        return sorted(x)
    if hasattr(x, "tolist"):
        return x.tolist()
    if hasattr(x, "item"):
        return x.item()
    return repr(x)


def _tmp(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)  # (the directory of an output path the caller checked)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int = 2, allow_nan: bool = True) -> None:
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_text(json.dumps(obj, indent=indent, ensure_ascii=False, default=jsonable, allow_nan=allow_nan) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    """One JSON object per line; returns the number of rows written."""
    path = Path(path)
    tmp = _tmp(path)
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=jsonable) + "\n")
            n += 1
    os.replace(tmp, path)
    return n

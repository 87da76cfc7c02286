"""Files in and out. Writes are atomic (a temporary file renamed over the target, so a reader or a run killed mid-write
never sees half a file); reads of files a user named check them first (missing, directory, binary, not UTF-8, empty)
and fail with one line; output directories are checked for writability before any work."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ctxlab.errors import CtxlabError


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


def read_text_file(path: str | os.PathLike, what: str = "file", *, allow_empty: bool = False) -> str:
    """The UTF-8 text of a file the user named, or one line saying why not: missing, a directory, unreadable,
    binary (NUL bytes), not UTF-8, or empty (whitespace only, unless allow_empty)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CtxlabError(f"{what} not found: {p}")
    if p.is_dir():
        raise CtxlabError(f"{what} {p} is a directory, not a file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise CtxlabError(f"cannot read {what} {p}: {e.strerror or e.__class__.__name__}") from None
    if b"\x00" in data[:65536]:
        raise CtxlabError(f"{what} {p} is a binary file, not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CtxlabError(f"{what} {p} is not UTF-8 text (byte {e.start})") from None
    if not allow_empty and not text.strip():
        raise CtxlabError(f"{what} {p} is empty")
    return text.removeprefix("\ufeff")


def read_json_file(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """A JSON document from a file the user named (read_text_file's checks, then one line for invalid JSON)."""
    text = read_text_file(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CtxlabError(f"{what} {path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def check_writable_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """`path` is, or can be created as, a directory this process can write (checked before any work is done)."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise CtxlabError(f"{what} {p} exists and is not a directory")
    parent = p
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise CtxlabError(f"{what} {p}: {parent} is not a directory")
    try:  # a real probe: permissions, read-only file systems, and root (whom os.access always lets write)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".ctxlab-write-check-")
    except OSError as e:
        raise CtxlabError(f"{what} {p} is not writable ({parent}: {e.strerror or e.__class__.__name__})") from None
    os.close(fd)
    os.unlink(probe)
    return p

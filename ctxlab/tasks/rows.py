"""Reading and validating benchmark rows from JSON, JSONL and parquet files, with file + row-number errors.

Row numbers in messages are 1-based (the n-th record of a JSON list, the n-th line of a JSONL file, the n-th
row of a parquet file). Parquet needs pyarrow or pandas, which ctxlab does not depend on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ctxlab.errors import CtxlabError
from ctxlab.fileio import read_text_file

Row = dict[str, Any]


def read_rows(path: Path, convert_hint: str = "convert the file to JSON lines") -> list[tuple[int, Row]]:
    """(row number, row) pairs from a .json (list), .jsonl or .parquet file, chosen by suffix."""
    if path.suffix == ".json":
        return list(enumerate(read_json_list(path), 1))
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".parquet":
        return list(enumerate(read_parquet(path, convert_hint), 1))
    raise CtxlabError(f"{path}: unsupported file type {path.suffix!r} (expected .json, .jsonl or .parquet)")


def read_json_list(path: Path) -> list[Row]:
    """A JSON file whose top level is a list of objects (LongBench-v2 `data.json`)."""
    try:
        data = json.loads(read_text_file(path, "data file", allow_empty=True))
    except json.JSONDecodeError as e:
        raise CtxlabError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(data, list):
        raise CtxlabError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for n, row in enumerate(data, 1):
        if not isinstance(row, dict):
            raise CtxlabError(f"{path}: row {n}: expected a JSON object, got {type(row).__name__}")
    return data


def read_jsonl(path: Path) -> list[tuple[int, Row]]:
    """(line number, object) for each non-blank line; blank lines are skipped but still counted."""
    rows: list[tuple[int, Row]] = []
    # split on "\n" only: a JSON string may hold U+2028 and friends, which str.splitlines would break on
    for n, line in enumerate(read_text_file(path, "data file", allow_empty=True).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise CtxlabError(f"{path}: row {n}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise CtxlabError(f"{path}: row {n}: expected a JSON object, got {type(row).__name__}")
        rows.append((n, row))
    return rows


def read_parquet(path: Path, convert_hint: str) -> list[Row]:
    """Rows of a parquet file via pyarrow (or pandas); a clear error with `convert_hint` when neither is installed."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    if pq is not None:
        return pq.read_table(path).to_pylist()
    try:
        import pandas as pd
    except ImportError:
        raise CtxlabError(
            f"{path}: reading parquet needs pyarrow or pandas (pip install pyarrow); or {convert_hint}"
        ) from None
    return [{k: _plain(v) for k, v in r.items()} for r in pd.read_parquet(path).to_dict(orient="records")]


def _plain(v: Any) -> Any:
    """pandas gives numpy scalars/arrays; turn them into Python values so validation sees int/str/list."""
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def check_fields(row: Mapping[str, Any], schema: Mapping[str, type | tuple[type, ...]], where: str) -> None:
    """Every field in `schema` present with the given type (bool is not accepted as int)."""
    for key, typ in schema.items():
        if key not in row:
            raise CtxlabError(f"{where}: missing field {key!r}")
        v = row[key]
        if not isinstance(v, typ) or (isinstance(v, bool) and bool not in _as_tuple(typ)):
            names = "/".join(t.__name__ for t in _as_tuple(typ))
            raise CtxlabError(f"{where}: field {key!r} must be {names}, got {type(v).__name__}")


def _as_tuple(typ: type | tuple[type, ...]) -> tuple[type, ...]:
    return typ if isinstance(typ, tuple) else (typ,)

"""Checks of a model config's fields, shared by every family's config dataclass (call `validate_config(self, ...)`
first thing in `__post_init__`): a checkpoint whose config.json holds nonsense becomes one line before any weight is
read or any shape is derived from it.

By the field's annotation: `int` fields must be integers >= 1 (sizes, counts, lengths) unless named in `counts`
(>= 0); `float` fields finite numbers, > 0 unless named in `ranges`; `bool` booleans; `str` strings; optional
token ids (`bos/eos/pad_token_id`) integers in [0, vocab_size) or a list of them. `ranges` adds closed or
half-open bounds, `divisible` pairs (a, b) require field a to be a multiple of field b.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from ctxlab.checks import is_int
from ctxlab.errors import CtxlabError

TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
# (low, high, low inclusive): e.g. partial_rotary_factor in (0, 1]
Range = tuple[float, float, bool]


def _base(tp: Any) -> set[Any]:
    """The plain types an annotation admits: int | None → {int, None}; tuple[int, ...] → {tuple}."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_base(a) for a in typing.get_args(tp)))
    if tp is type(None) or tp is None:
        return {None}
    base = origin or tp
    return {tuple, list} if base in (tuple, list) else {base}  # HF configs give JSON lists for tuples


def _ok_type(value: Any, kinds: set[Any]) -> bool:
    if value is None:
        return None in kinds
    if isinstance(value, bool):
        return bool in kinds
    if is_int(value):
        return int in kinds or float in kinds
    if isinstance(value, float):
        return float in kinds
    return any(isinstance(value, k) for k in kinds if isinstance(k, type))


def _kind_name(kinds: set[Any]) -> str:
    names = {int: "an integer", float: "a number", bool: "true/false", str: "a string", list: "a list",
             tuple: "a list", dict: "an object"}
    return " or ".join(sorted({names.get(k, getattr(k, "__name__", str(k))) for k in kinds if k is not None}))


def validate_config(
    cfg: Any,
    family: str,
    *,
    counts: Sequence[str] = (),
    ranges: Mapping[str, Range] | None = None,
    divisible: Sequence[tuple[str, str]] = (),
) -> None:
    """Raise CtxlabError naming the first bad field of the config dataclass `cfg` (see the module docstring)."""
    ranges = dict(ranges or {})
    hints = typing.get_type_hints(type(cfg))

    def bad(name: str, want: str, value: Any) -> CtxlabError:
        return CtxlabError(f"invalid {family} config: {name} must be {want}, got {value!r}")

    for f in dataclasses.fields(cfg):
        if f.name == "extra":
            continue
        value, kinds = getattr(cfg, f.name), _base(hints.get(f.name, Any))
        if Any in kinds:
            continue
        if not _ok_type(value, kinds):
            raise bad(f.name, _kind_name(kinds), value)
        if f.name in TOKEN_IDS:
            ids = value if isinstance(value, list) else [value]
            if any(v is not None and not (is_int(v) and 0 <= v < cfg.vocab_size) for v in ids):
                raise bad(f.name, f"a token id in [0, {cfg.vocab_size})", value)
            continue
        if f.name in ranges:
            lo, hi, closed = ranges[f.name]
            if not (math.isfinite(value) and (lo <= value if closed else lo < value) and value <= hi):
                raise bad(f.name, f"in {'[' if closed else '('}{lo:g}, {hi:g}]", value)
        elif is_int(value) and int in kinds and float not in kinds:
            low = 0 if f.name in counts else 1
            if value < low:
                raise bad(f.name, f"an integer >= {low}", value)
        elif isinstance(value, float) or (float in kinds and is_int(value)):
            if not (math.isfinite(value) and value > 0):
                raise bad(f.name, "a finite number > 0", value)
    for a, b in divisible:
        if getattr(cfg, a) % getattr(cfg, b):
            raise CtxlabError(f"invalid {family} config: {a} ({getattr(cfg, a)}) must be a multiple of {b} "
                              f"({getattr(cfg, b)})")

"""Validation helpers shared by every room: integers, finite numbers, booleans and typed values from strings.

Each check raises CtxlabError with one line naming the value, so the CLI can print it without a traceback.
`bool` is never accepted as an integer, and NaN or infinity never as a number.
"""

from __future__ import annotations

import math
from typing import Any

from ctxlab.errors import CtxlabError

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
    """An int or float that is finite (bool excluded)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None, *,
              allow_none: bool = False) -> Any:
    """`value` if it is an integer in [low, high] (either bound optional); else a one-line error."""
    if value is None and allow_none:
        return None
    if not is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        if low is not None and high is not None:
            want = f"an integer in [{low}, {high}]"
        elif low is not None:
            want = f"an integer >= {low}"
        elif high is not None:
            want = f"an integer <= {high}"
        else:
            want = "an integer"
        raise CtxlabError(f"{name} must be {want}, got {value!r}")
    return value


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, allow_none: bool = False) -> Any:
    """`value` if it is a finite number in [low, high] ((low, high] with low_open); else a one-line error."""
    if value is None and allow_none:
        return None
    ok = is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        parts = []
        if low is not None:
            parts.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            parts.append(f"<= {high:g}")
        raise CtxlabError(f"{name} must be a finite number{' ' + ' and '.join(parts) if parts else ''}, "
                          f"got {value!r}")
    return value


def parse_bool(text: str) -> bool:
    """'1/true/yes/on' or '0/false/no/off' (any case); ValueError otherwise."""
    v = text.strip().lower()
    if v not in TRUE + FALSE:
        raise ValueError(f"not a boolean: {text!r}")
    return v in TRUE


def coerce_like(default: Any, value: Any, what: str, *, none_ok: bool = False) -> Any:
    """A string option value converted to the type of `default` (bool, int, float; 'none' → None when the default
    is None or `none_ok`); non-strings pass through. Non-finite floats are refused: no option of ctxlab means NaN
    or inf."""
    if not isinstance(value, str):
        return value
    v = value.strip()
    if (default is None or none_ok) and v.lower() == "none":
        return None
    try:
        if isinstance(default, bool):
            return parse_bool(v)
        if is_int(default) or (default is None and v.lstrip("-").isdigit()):
            return int(v)
        if isinstance(default, float):
            x = float(v)
            if not math.isfinite(x):
                raise ValueError
            return x
    except ValueError:
        kind = "bool" if isinstance(default, bool) else type(default).__name__
        raise CtxlabError(f"{what} must be {kind}, got {value!r}") from None
    return v


def check_device(device: Any) -> str:
    """`device` as a string if this machine has it (cpu, cuda, cuda:N, mps); one line otherwise. Checked before a
    model is loaded, so a typo or a missing GPU is not a traceback from deep inside torch."""
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise CtxlabError(f"unknown device {device!r}; use cpu or cuda[:N]") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise CtxlabError(f"device {device}: no CUDA device is available on this machine")
        n = torch.cuda.device_count()
        if (d.index or 0) >= n:
            raise CtxlabError(f"device {device} does not exist: this machine has {n} CUDA device(s) (cuda:0..{n - 1})")
    elif d.type == "mps":
        if not torch.backends.mps.is_available():
            raise CtxlabError(f"device {device}: MPS is not available on this machine")
    elif d.type != "cpu":
        raise CtxlabError(f"unsupported device {device!r}; use cpu or cuda[:N]")
    return str(device)

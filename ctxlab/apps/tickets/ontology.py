"""The TicketTalk API ontology (TM-3-2020/ontology/apis.json) and where the shipped Taskmaster-3 files live.

The ontology is loaded from the shared data when present, else from `BUILTIN_APIS`, a transcription of the
same nine-API schema (names, required `all_of` / optional `any_of` arguments, response type and keys).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxlab.errors import CtxlabError

_BOOL = {"type": "boolean", "keys": ["status"], "true_value": ["success", "available"],
         "false_value": ["failure", "unavailable"]}
_ATTRS = ["name.genre", "name.person", "name.character", "date.release", "description.plot", "duration.movie",
          "review.audience", "review.critic", "rating.movie"]

BUILTIN_APIS: dict[str, Any] = {
    "book_tickets": {"apis": ["book_tickets"],
                     "args": {"all_of": ["name.movie", "name.theater", "time.showing"],
                              "any_of": ["date.showing", "num.tickets", "seating"]},
                     "response": _BOOL},
    "check_tickets": {"apis": ["check_tickets"],
                      "args": {"all_of": ["name.movie", "name.theater", "time.showing"],
                               "any_of": ["date.showing", "num.tickets", "seating", "time.preference"]},
                      "response": _BOOL},
    "find_movies": {"apis": ["find_movies"],
                    "args": {"any_of": ["location", "name.theater", "name.genre", "type.screening", "date.release",
                                        "description.other", "name.person", "name.character", "review.audience",
                                        "review.critic", "rating.movies"]},
                    "response": {"type": "list", "keys": ["name.movie", "empty"]}},
    "find_theaters": {"apis": ["find_theaters"],
                      "args": {"any_of": ["location", "type.screening", "name.movie"]},
                      "response": {"type": "list", "keys": ["name.theater", "empty"]}},
    "find_showtimes": {"apis": ["find_showtimes"],
                       "args": {"all_of": ["name.movie", "name.theater"],
                                "any_of": ["date.showing", "type.screening", "time.preference", "location"]},
                       "response": {"type": "list", "keys": ["time.showing", "empty"]}},
    "get_movie_attribute": {"apis": ["get_movie_attribute"],
                            "args": {"all_of": ["name.movie", "attribute"], "any_of": list(_ATTRS)},
                            "response": {"type": "list", "keys": list(_ATTRS)}},
    "resolve_movie": {"apis": ["resolve_movie"], "args": {"all_of": ["name.movie"]},
                      "response": {"type": "list", "keys": ["name.movie"]}},
    "resolve_location": {"apis": ["resolve_location"], "args": {"all_of": ["location"]},
                         "response": {"type": "list", "keys": ["location"]}},
    "resolve_theater": {"apis": ["resolve_theater"], "args": {"all_of": ["name.theater", "location"]},
                        "response": {"type": "list", "keys": ["name.theater"]}},
}

# The ontology's find_movies lists `rating.movies` (a typo); the data uses `rating.movie`. Both are accepted.
ARG_ALIASES: dict[str, dict[str, str]] = {"find_movies": {"rating.movie": "rating.movies"}}


@dataclass(frozen=True)
class ApiSpec:
    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    response_type: str  # "boolean" | "list"
    response_keys: tuple[str, ...]
    true_values: tuple[str, ...] = ()
    false_values: tuple[str, ...] = ()

    def allowed_args(self) -> tuple[str, ...]:
        return self.required + self.optional + tuple(ARG_ALIASES.get(self.name, {}))


@dataclass(frozen=True)
class Ontology:
    apis: dict[str, ApiSpec]
    source: str

    def names(self) -> list[str]:
        return sorted(self.apis)

    def spec(self, name: str) -> ApiSpec:
        if name not in self.apis:
            raise CtxlabError(f"unknown API {name!r}; valid APIs: {', '.join(self.names())}")
        return self.apis[name]


def _strs(obj: Any, where: str) -> tuple[str, ...]:
    if not isinstance(obj, list) or not all(isinstance(x, str) for x in obj):
        raise CtxlabError(f"ontology {where}: expected a list of strings")
    return tuple(obj)


def parse_ontology(obj: Any, source: str = "<ontology>") -> Ontology:
    if not isinstance(obj, dict) or not obj:
        raise CtxlabError(f"{source}: the ontology must be a non-empty object of API specs")
    apis = {}
    for name, spec in obj.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("args"), dict) or not isinstance(
                spec.get("response"), dict):
            raise CtxlabError(f"{source}: API {name!r} needs 'args' and 'response' objects")
        args, resp = spec["args"], spec["response"]
        rtype = resp.get("type")
        if rtype not in ("boolean", "list"):
            raise CtxlabError(f"{source}: API {name!r} has response type {rtype!r}, expected boolean or list")
        apis[name] = ApiSpec(name, _strs(args.get("all_of", []), f"{name}.all_of"),
                             _strs(args.get("any_of", []), f"{name}.any_of"), rtype,
                             _strs(resp.get("keys", []), f"{name}.keys"),
                             _strs(resp.get("true_value", []), f"{name}.true_value"),
                             _strs(resp.get("false_value", []), f"{name}.false_value"))
    return Ontology(apis, source)


def tm3_dir() -> Path | None:
    """The shipped TM-3-2020 folder: $CTXLAB_SHARED_DATA/taskmaster3/TM-3-2020, else ../shared/data next to
    the repository (the layout tests/conftest.py uses); None when absent."""
    roots = [Path(os.environ["CTXLAB_SHARED_DATA"])] if os.environ.get("CTXLAB_SHARED_DATA") else []
    roots.append(Path(__file__).resolve().parents[4] / "shared" / "data")
    for root in roots:
        d = root / "taskmaster3" / "TM-3-2020"
        if d.is_dir():
            return d
    return None


def shipped_train_tsv() -> Path | None:
    d = tm3_dir()
    p = d / "splits" / "train" / "train-bc.tsv" if d else None
    return p if p is not None and p.is_file() else None


def load_ontology(path: str | Path | None = None) -> Ontology:
    """`path` if given (an apis.json), else the shipped ontology when present, else the built-in copy."""
    if path is None:
        d = tm3_dir()
        shipped = d / "ontology" / "apis.json" if d else None
        if shipped is None or not shipped.is_file():
            return parse_ontology(BUILTIN_APIS, "builtin")
        path = shipped
    p = Path(path)
    if not p.is_file():
        raise CtxlabError(f"ontology file not found: {p}")
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CtxlabError(f"{p}:{e.lineno}: invalid JSON ({e.msg})") from None
    return parse_ontology(obj, str(p))

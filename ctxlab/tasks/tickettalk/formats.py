"""Taskmaster-3 (TicketTalk) file formats: dialogue JSON, the serialized split TSV and the reward JSON.

One set of typed items serves all three: `Utterance`, `ApiCall`, `ApiResponse` and `Start` (`<S>`, the agent
speaks first). The TSV tag grammar, CSV quoting and CRLF quirks follow ../shared/docs/data.md §2.4; writing a
parsed shard back reproduces it byte for byte. Malformed input raises `CtxlabError` naming the file and line.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxlab.errors import CtxlabError

# ---------------------------------------------------------------------------------------------------- items


@dataclass(frozen=True)
class Start:
    """`<S>`: marks a dialogue in which the agent speaks first."""


@dataclass(frozen=True)
class Utterance:
    speaker: str  # "user" | "agent"
    text: str

    def __post_init__(self) -> None:
        if self.speaker not in ("user", "agent"):
            raise CtxlabError(f"utterance speaker must be 'user' or 'agent', got {self.speaker!r}")


@dataclass(frozen=True)
class ApiResponse:
    """One response field of one API: `<PR>name<PRAN>key<PRAV>v1<PRAV>v2…`.

    `scalar` only matters for JSON: the value was a bare string rather than a list (kept for exact rewrites).
    """

    name: str
    key: str
    values: tuple[str, ...]
    scalar: bool = False


@dataclass(frozen=True)
class ApiCall:
    """An API invocation. `args` keeps order (the TSV is order-sensitive); `response` and `index` are filled
    only for dialogue JSON, where a call carries its response; in the TSV the response is a separate item."""

    name: str
    args: tuple[tuple[str, str], ...] = ()
    response: tuple[ApiResponse, ...] = ()
    index: int | None = None

    @classmethod
    def of(cls, name: str, args: Mapping[str, str] | None = None) -> ApiCall:
        return cls(name, tuple((args or {}).items()))

    def arg_dict(self) -> dict[str, str]:
        return dict(self.args)


Item = Start | Utterance | ApiCall | ApiResponse


@dataclass(frozen=True)
class Target:
    """The next agent action of a TSV row: `[A]text`, `[PN]call`, or text followed by a call."""

    text: str | None = None
    call: ApiCall | None = None

    def __post_init__(self) -> None:
        if self.text is None and self.call is None:
            raise CtxlabError("a target needs agent text, an API call, or both")


@dataclass(frozen=True)
class Example:
    """One row of a serialized split: the head (latest user turn, API response or `<S>`), the dialogue before
    it (None when the row has no `<C>`), the target and the conversation id."""

    conversation_id: str
    head: Item
    history: tuple[Item, ...] | None
    target: Target

    @property
    def input(self) -> str:
        return format_input(self.head, self.history)

    @property
    def target_text(self) -> str:
        return format_target(self.target)


# ----------------------------------------------------------------------------------------- TSV tag grammar

_IN_TAGS = ("U", "A", "S", "C", "PN", "PAN", "PAV", "PR", "PRAN", "PRAV")
_IN_SPLIT = re.compile(r"(<(?:" + "|".join(_IN_TAGS) + r")>)")
_OUT_SPLIT = re.compile(r"(\[(?:A|PN|PAN|PAV)\])")
_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept by errors="surrogateescape"


def _tokens(text: str, split: re.Pattern[str]) -> list[tuple[str, str]]:
    parts = split.split(text)
    if parts[0]:
        raise CtxlabError(f"text before the first tag: {parts[0][:40]!r}")
    return [(parts[i][1:-1], parts[i + 1]) for i in range(1, len(parts), 2)]


def _parse_items(toks: list[tuple[str, str]]) -> list[Item]:
    items: list[Item] = []
    i = 0
    while i < len(toks):
        tag, text = toks[i]
        i += 1
        if tag in ("U", "A"):
            items.append(Utterance("user" if tag == "U" else "agent", text))
        elif tag == "S":
            if text:
                raise CtxlabError(f"<S> must not carry text, got {text[:40]!r}")
            items.append(Start())
        elif tag == "PN":
            if not text:
                raise CtxlabError("<PN> without an API name")
            args = []
            while i < len(toks) and toks[i][0] == "PAN":
                if i + 1 >= len(toks) or toks[i + 1][0] != "PAV":
                    raise CtxlabError(f"<PAN>{toks[i][1]} of {text} is not followed by <PAV>")
                args.append((toks[i][1], toks[i + 1][1]))
                i += 2
            items.append(ApiCall(text, tuple(args)))
        elif tag == "PR":
            if not text:
                raise CtxlabError("<PR> without an API name")
            if i >= len(toks) or toks[i][0] != "PRAN":
                raise CtxlabError(f"<PR>{text} is not followed by <PRAN>")
            key = toks[i][1]
            i += 1
            values = []
            while i < len(toks) and toks[i][0] == "PRAV":
                values.append(toks[i][1])
                i += 1
            if not values:
                raise CtxlabError(f"<PR>{text}<PRAN>{key} has no <PRAV> value")
            items.append(ApiResponse(text, key, tuple(values)))
        else:
            raise CtxlabError(f"unexpected <{tag}>")
    return items


def parse_items(text: str) -> list[Item]:
    """Parse a run of input-side items (`<U>…<A>…<PN>…<PR>…`), e.g. a dialogue history."""
    return _parse_items(_tokens(text, _IN_SPLIT))


def _is_head(item: Item) -> bool:
    return isinstance(item, (Start, ApiResponse)) or isinstance(item, Utterance) and item.speaker == "user"


def parse_input(text: str) -> tuple[Item, tuple[Item, ...] | None]:
    """Split a TSV input into (head, history); history is None when there is no `<C>`."""
    toks = _tokens(text, _IN_SPLIT)
    cuts = [i for i, (tag, _) in enumerate(toks) if tag == "C"]
    if len(cuts) > 1:
        raise CtxlabError("more than one <C>")
    if cuts and toks[cuts[0]][1]:
        raise CtxlabError("<C> must be followed by a tag")
    head_toks = toks[: cuts[0]] if cuts else toks
    head = _parse_items(head_toks)
    if len(head) != 1 or not _is_head(head[0]):
        raise CtxlabError("the head must be exactly one <U> turn, one <PR> response or <S>")
    history = tuple(_parse_items(toks[cuts[0] + 1:])) if cuts else None
    return head[0], history


def parse_target(text: str) -> Target:
    """Parse a TSV target: `[A]text`, `[PN]api[PAN]arg[PAV]value…`, or `[A]text[PN]…`."""
    toks = _tokens(text, _OUT_SPLIT)
    if not toks:
        raise CtxlabError("empty target")
    said: str | None = None
    i = 0
    if toks[0][0] == "A":
        said = toks[0][1]
        i = 1
    call = None
    if i < len(toks):
        if toks[i][0] != "PN" or not toks[i][1]:
            raise CtxlabError(f"expected [PN]api after the reply, got [{toks[i][0]}]")
        name, i, args = toks[i][1], i + 1, []
        while i < len(toks):
            if toks[i][0] != "PAN" or i + 1 >= len(toks) or toks[i + 1][0] != "PAV":
                raise CtxlabError(f"malformed arguments of [PN]{name}: expected [PAN]arg[PAV]value pairs")
            args.append((toks[i][1], toks[i + 1][1]))
            i += 2
        call = ApiCall(name, tuple(args))
    return Target(said, call)


def _check_text(value: str, split: re.Pattern[str], what: str) -> str:
    if split.search(value):
        raise CtxlabError(f"{what} contains a reserved tag and cannot be serialized: {value[:60]!r}")
    return value


def format_item(item: Item) -> str:
    c = _check_text
    if isinstance(item, Start):
        return "<S>"
    if isinstance(item, Utterance):
        return ("<U>" if item.speaker == "user" else "<A>") + c(item.text, _IN_SPLIT, "utterance")
    if isinstance(item, ApiCall):
        return "<PN>" + c(item.name, _IN_SPLIT, "API name") + "".join(
            f"<PAN>{c(k, _IN_SPLIT, 'argument name')}<PAV>{c(v, _IN_SPLIT, 'argument value')}" for k, v in item.args
        )
    if isinstance(item, ApiResponse):
        if not item.values:
            raise CtxlabError(f"response {item.name}/{item.key} has no value")
        return f"<PR>{c(item.name, _IN_SPLIT, 'API name')}<PRAN>{c(item.key, _IN_SPLIT, 'response key')}" + "".join(
            "<PRAV>" + c(v, _IN_SPLIT, "response value") for v in item.values
        )
    raise CtxlabError(f"not a dialogue item: {item!r}")


def format_items(items: Iterable[Item]) -> str:
    return "".join(format_item(it) for it in items)


def format_input(head: Item, history: Iterable[Item] | None) -> str:
    text = format_item(head)
    return text if history is None else text + "<C>" + format_items(history)


def format_call_target(call: ApiCall) -> str:
    c = _check_text
    return "[PN]" + c(call.name, _OUT_SPLIT, "API name") + "".join(
        f"[PAN]{c(k, _OUT_SPLIT, 'argument name')}[PAV]{c(v, _OUT_SPLIT, 'argument value')}" for k, v in call.args
    )


def format_target(target: Target) -> str:
    text = "" if target.text is None else "[A]" + _check_text(target.text, _OUT_SPLIT, "agent reply")
    return text + ("" if target.call is None else format_call_target(target.call))


# -------------------------------------------------------------------------------------------- TSV files


def parse_row(fields: list[str]) -> Example:
    if len(fields) != 3:
        raise CtxlabError(f"expected 3 tab-separated columns (input, target, conversation_id), got {len(fields)}")
    inp, tgt, cid = fields
    if not cid.strip():
        raise CtxlabError("empty conversation_id")
    head, history = parse_input(inp)
    return Example(cid, head, history, parse_target(tgt))


def iter_tsv(source: str | Path | io.TextIOBase, name: str | None = None) -> Iterator[tuple[int, Example]]:
    """Yield (line number, Example) from a split TSV file (path) or an open text stream (opened newline='')."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        with path.open(encoding="utf-8", errors="surrogateescape", newline="") as f:  # bad bytes: see below
            yield from iter_tsv(f, name=str(path))
        return
    label = name or "<tsv>"
    reader = csv.reader(source, delimiter="\t", strict=True)
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise CtxlabError(f"{label}:{reader.line_num}: bad CSV quoting ({e})") from None
        except UnicodeDecodeError as e:
            raise CtxlabError(f"{label}:{reader.line_num + 1}: not UTF-8 ({e.reason})") from None
        if any(_UNDECODED.search(f) for f in fields):
            raise CtxlabError(f"{label}:{reader.line_num}: not UTF-8")
        try:
            yield reader.line_num, parse_row(fields)
        except CtxlabError as e:
            raise CtxlabError(f"{label}:{reader.line_num}: {e}") from None


def read_tsv(source: str | Path) -> list[Example]:
    return [ex for _, ex in iter_tsv(source)]


def parse_tsv(text: str, name: str = "<tsv>") -> list[Example]:
    return [ex for _, ex in iter_tsv(io.StringIO(text, newline=""), name=name)]


def format_tsv(examples: Iterable[Example]) -> str:
    """Serialize rows exactly like the upstream shards: CSV minimal quoting, tab-separated, CRLF."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, delimiter="\t", lineterminator="\r\n")
    for ex in examples:
        writer.writerow([ex.input, ex.target_text, ex.conversation_id])
    return buf.getvalue()


def write_tsv(path: str | Path, examples: Iterable[Example]) -> None:
    Path(path).write_bytes(format_tsv(examples).encode("utf-8"))


# --------------------------------------------------------------------------------------- dialogue JSON


@dataclass(frozen=True)
class Segment:
    start_index: int
    end_index: int
    text: str
    annotations: tuple[str, ...]


@dataclass(frozen=True)
class Turn:
    index: int
    speaker: str  # "user" | "assistant" (dialogue JSON spelling)
    text: str
    apis: tuple[ApiCall, ...] = ()
    segments: tuple[Segment, ...] = ()


@dataclass(frozen=True)
class Dialogue:
    conversation_id: str
    turns: tuple[Turn, ...]
    vertical: str = ""
    scenario: str = ""
    instructions: str = ""


def _need(obj: Any, key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict):
        raise CtxlabError(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise CtxlabError(f"{where}: missing field {key!r}")
    val = obj[key]
    if not isinstance(val, typ) or isinstance(val, bool) and typ is int:
        raise CtxlabError(f"{where}: field {key!r} has type {type(val).__name__}")
    return val


def _str_map(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise CtxlabError(f"{where}: expected an object, got {type(obj).__name__}")
    return obj


def _response_items(name: str, obj: Any, where: str) -> tuple[ApiResponse, ...]:
    out = []
    for key, val in _str_map(obj, where).items():
        if isinstance(val, str):
            out.append(ApiResponse(name, key, (val,), scalar=True))
        elif isinstance(val, list) and all(isinstance(v, str) for v in val):
            out.append(ApiResponse(name, key, tuple(val)))
        else:
            raise CtxlabError(f"{where}: response value of {key!r} must be a string or a list of strings")
    return tuple(out)


def _response_json(resps: Iterable[ApiResponse]) -> dict[str, Any]:
    return {r.key: (r.values[0] if r.scalar and len(r.values) == 1 else list(r.values)) for r in resps}


def _args(obj: Any, where: str) -> tuple[tuple[str, str], ...]:
    args = _str_map(obj, where)
    for k, v in args.items():
        if not isinstance(v, str):
            raise CtxlabError(f"{where}: argument {k!r} must be a string, got {type(v).__name__}")
    return tuple(args.items())


def dialogue_from_json(obj: Any, where: str = "dialogue") -> Dialogue:
    cid = _need(obj, "conversation_id", str, where)
    where = f"{where} {cid}"
    turns = []
    for j, u in enumerate(_need(obj, "utterances", list, where)):
        w = f"{where} utterance {j}"
        speaker = _need(u, "speaker", str, w)
        if speaker not in ("user", "assistant"):
            raise CtxlabError(f"{w}: speaker must be 'user' or 'assistant', got {speaker!r}")
        apis = []
        for k, a in enumerate(u.get("apis") or []):
            wa = f"{w} api {k}"
            name = _need(a, "name", str, wa)
            idx = a.get("index")
            if idx is not None and (not isinstance(idx, int) or isinstance(idx, bool)):
                raise CtxlabError(f"{wa}: field 'index' must be an integer")
            resp = _response_items(name, a.get("response") or {}, wa)
            apis.append(ApiCall(name, _args(a.get("args") or {}, wa), resp, idx))
        segs = []
        for k, s in enumerate(u.get("segments") or []):
            ws = f"{w} segment {k}"
            anns = tuple(_need(x, "name", str, ws) for x in _need(s, "annotations", list, ws))
            segs.append(Segment(_need(s, "start_index", int, ws), _need(s, "end_index", int, ws),
                                _need(s, "text", str, ws), anns))
        turns.append(Turn(_need(u, "index", int, w), speaker, _need(u, "text", str, w), tuple(apis), tuple(segs)))
    extra = {k: obj.get(k, "") for k in ("vertical", "scenario", "instructions")}
    for k, v in extra.items():
        if not isinstance(v, str):
            raise CtxlabError(f"{where}: field {k!r} must be a string")
    return Dialogue(cid, tuple(turns), **extra)


def dialogue_to_json(d: Dialogue) -> dict[str, Any]:
    utts = []
    for t in d.turns:
        u: dict[str, Any] = {"index": t.index, "speaker": t.speaker, "text": t.text}
        if t.apis:
            u["apis"] = [{"name": a.name, "index": t.index if a.index is None else a.index, "args": dict(a.args),
                          "response": _response_json(a.response)} for a in t.apis]
        if t.segments:
            u["segments"] = [{"start_index": s.start_index, "end_index": s.end_index, "text": s.text,
                              "annotations": [{"name": n} for n in s.annotations]} for s in t.segments]
        utts.append(u)
    return {"conversation_id": d.conversation_id, "vertical": d.vertical, "scenario": d.scenario,
            "instructions": d.instructions, "utterances": utts}


def _load_json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CtxlabError(f"{name}:{e.lineno}: invalid JSON ({e.msg})") from None


def parse_dialogues(text: str, name: str = "<json>") -> list[Dialogue]:
    data = _load_json(text, name)
    if not isinstance(data, list):
        raise CtxlabError(f"{name}: expected a JSON array of conversations")
    return [dialogue_from_json(obj, f"{name}: conversation {i}") for i, obj in enumerate(data)]


def read_dialogues(path: str | Path) -> list[Dialogue]:
    return parse_dialogues(Path(path).read_text(encoding="utf-8"), str(path))


def format_dialogues(dialogues: Iterable[Dialogue]) -> str:
    return json.dumps([dialogue_to_json(d) for d in dialogues], indent=2, ensure_ascii=False) + "\n"


def write_dialogues(path: str | Path, dialogues: Iterable[Dialogue]) -> None:
    Path(path).write_text(format_dialogues(dialogues), encoding="utf-8")


def dialogue_items(d: Dialogue) -> list[Item]:
    """Flatten a dialogue into TSV items. An assistant utterance contributes its text, then each API call
    followed by one `<PR>` per response key (the order of the `[A]text[PN]call` targets)."""
    items: list[Item] = [Start()] if d.turns and d.turns[0].speaker == "assistant" else []
    for t in d.turns:
        if t.speaker == "user":
            items.append(Utterance("user", t.text))
            continue
        if t.text or not t.apis:
            items.append(Utterance("agent", t.text))
        for a in t.apis:
            items.append(ApiCall(a.name, a.args))
            items.extend(ApiResponse(r.name, r.key, r.values) for r in a.response)
    return items


def dialogue_to_examples(d: Dialogue) -> list[Example]:
    """Next-action rows of one dialogue: after every head (user turn, API response, `<S>`), the agent text
    and/or call that follows. A run that does not fit the target grammar keeps only its conforming prefix."""
    items = dialogue_items(d)
    rows = []
    for h, head in enumerate(items):
        if not _is_head(head):
            continue
        if isinstance(head, ApiResponse) and h + 1 < len(items) and isinstance(items[h + 1], ApiResponse):
            continue  # several response keys: the head is the last of them
        nxt = items[h + 1: h + 3]
        text = call = None
        if nxt and isinstance(nxt[0], Utterance) and nxt[0].speaker == "agent":
            text = nxt[0].text
            nxt = nxt[1:]
        if nxt and isinstance(nxt[0], ApiCall):
            call = nxt[0]
        if text is None and call is None:
            continue
        history = None if h == 0 or isinstance(head, Start) else tuple(items[:h])
        rows.append(Example(d.conversation_id, head, history, Target(text, call)))
    return rows


# ------------------------------------------------------------------------------------------- reward JSON


@dataclass(frozen=True)
class RewardExample:
    """A turn-level reward label: a dialogue prefix, a candidate next agent turn, and a 0/1 reward."""

    conversation_id: str
    context: tuple[Item, ...]
    generation: Item
    reward: float


def _turn_from_json(obj: Any, where: str) -> Item:
    role = _need(obj, "role", str, where)
    if role in ("agent", "user") and "text" in obj:
        return Utterance(role, _need(obj, "text", str, where))
    if role == "agent" and "api" in obj:
        api = _str_map(obj["api"], where)
        if len(api) != 1:
            raise CtxlabError(f"{where}: an api turn must name exactly one API")
        (name, args), = api.items()
        return ApiCall(name, _args(args, where))
    if role == "api" and "response" in obj:
        resp = _str_map(obj["response"], where)
        if len(resp) != 1:
            raise CtxlabError(f"{where}: a response turn must name exactly one API")
        (name, fields), = resp.items()
        items = _response_items(name, fields, where)
        if len(items) != 1:
            raise CtxlabError(f"{where}: a response turn must have exactly one key")
        return items[0]
    raise CtxlabError(f"{where}: unrecognised turn with role {role!r} and keys {sorted(obj)}")


def _turn_to_json(item: Item) -> dict[str, Any]:
    if isinstance(item, Utterance):
        return {"role": item.speaker, "text": item.text}
    if isinstance(item, ApiCall):
        return {"role": "agent", "api": {item.name: dict(item.args)}}
    if isinstance(item, ApiResponse):
        return {"role": "api", "response": {item.name: _response_json([item])}}
    raise CtxlabError(f"reward turns cannot hold {type(item).__name__}")


def parse_reward(text: str, name: str = "<reward>") -> list[RewardExample]:
    data = _load_json(text, name)
    if not isinstance(data, list):
        raise CtxlabError(f"{name}: expected a JSON array of reward examples")
    out = []
    for i, obj in enumerate(data):
        w = f"{name}: example {i}"
        cid = _need(obj, "conversation_id", str, w)
        ctx = _load_json(_need(obj, "context", str, w), f"{w} context")
        if not isinstance(ctx, list):
            raise CtxlabError(f"{w}: context must encode a JSON list of turns")
        gen = _turn_from_json(_load_json(_need(obj, "generation", str, w), f"{w} generation"), f"{w} generation")
        reward = _need(obj, "reward", (int, float), w)
        out.append(RewardExample(cid, tuple(_turn_from_json(t, f"{w} turn {j}") for j, t in enumerate(ctx)), gen,
                                 float(reward)))
    return out


def read_reward(path: str | Path) -> list[RewardExample]:
    return parse_reward(Path(path).read_text(encoding="utf-8"), str(path))


def format_reward(examples: Iterable[RewardExample]) -> str:
    """Upstream layout: a 4-space indented, ASCII-escaped array whose context/generation are JSON strings."""
    return json.dumps([{"conversation_id": ex.conversation_id,
                        "context": json.dumps([_turn_to_json(t) for t in ex.context]),
                        "generation": json.dumps(_turn_to_json(ex.generation)),
                        "reward": ex.reward} for ex in examples], indent=4)


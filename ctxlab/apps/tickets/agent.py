"""The TicketTalk agent loop (Byrne et al. 2021): one model writes both the agent's words and its API calls; calls
run on the booking backend and their responses are written back into the model's input.

    agent = TicketAgent(NativePredictor("ctxlab/assets/tickets_agent"), BookingBackend())
    turn = agent.user("Two tickets for Mulan tonight near me")
    turn.reply, turn.calls                      # what the agent said, the calls it made with their results

One agent turn: the model sees the dialogue so far in the TM-3 history markup (`<U>… <A>… <PN>…<PAN>…<PAV>…
<PR>…<PRAN>…<PRAV>…`, oldest first) and predicts its next action, read with `metrics.parse_action`: a reply
(`<A>text`), an API call (`<PN>api<PAN>arg<PAV>value…`) or both. A call is validated against the ontology
(`validate_call`: known API, known arguments, no duplicates or empty values, all required arguments), executed on
the backend, and appended to the history with its `<PR>` response items; prediction continues until the agent
says something without a call.

Invalid calls (`AgentConfig.on_invalid`):
- "feedback" (default): the call and a structured error response `<PR>api<PRAN>error<PRAV>code<PRAV>message` (the
  same form as the backend's own errors) go into the history, so the model can correct itself on the next step.
- "retry": the invalid call is dropped and the model predicts again, up to `retries` times (useful with sampling;
  a greedy predictor repeats itself), then falls back to "feedback".
Guards: at most `max_calls_per_turn` calls per turn, an identical call repeated within a turn, or
`max_steps_per_turn` predictions end the turn with `fallback_reply`; so does output that holds no action.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ctxlab.apps.tickets.backend import BookingBackend, result_to_items
from ctxlab.apps.tickets.ontology import Ontology
from ctxlab.errors import CtxlabError
from ctxlab.tasks.tickettalk.formats import ApiCall, Item, Start, Utterance, format_item, format_items
from ctxlab.tasks.tickettalk.metrics import parse_action

ON_INVALID = ("feedback", "retry")
# What ends a predicted action: the next user turn or an API response (the backend writes those), a new dialogue.
STOP_STRINGS = ("<U>", "<PR>", "<S>", "<C>")
_ITEM_START = re.compile(r"(?=<(?:U|A|S|PN|PR)>)")


class Predictor(Protocol):
    """Anything that maps the serialized dialogue so far to the raw text of the agent's next action."""

    def predict(self, history_text: str) -> str: ...


# ------------------------------------------------------------------------------------------------ validation


def error_result(api: str, code: str, message: str, argument: str | None = None, **details: Any) -> dict[str, Any]:
    """A failed call result in `BookingBackend.call`'s shape (so `result_to_items` renders it the same way)."""
    err = {"code": code, "message": message} | ({"argument": argument} if argument else {}) | details
    return {"ok": False, "api": api, "error": err}


def validate_call(call: ApiCall, ontology: Ontology) -> dict[str, Any] | None:
    """None when `call` fits the ontology; else an error result naming the first problem."""
    if call.name not in ontology.apis:
        return error_result(call.name, "unknown_api", f"unknown API {call.name!r}", valid=ontology.names())
    spec = ontology.spec(call.name)
    allowed = spec.allowed_args()
    seen: set[str] = set()
    for k, v in call.args:
        if k not in allowed:
            return error_result(call.name, "unknown_argument", f"{call.name} has no argument {k!r}", k,
                                allowed=list(allowed))
        if k in seen:
            return error_result(call.name, "duplicate_argument", f"{k} is given twice", k)
        if not v.strip():
            return error_result(call.name, "invalid_argument", f"{k} is empty", k)
        seen.add(k)
    for k in spec.required:
        if k not in seen:
            return error_result(call.name, "missing_argument", f"{call.name} requires {k}", k,
                                required=list(spec.required))
    return None


# ------------------------------------------------------------------------------------------------ the loop


@dataclass(frozen=True)
class AgentConfig:
    max_calls_per_turn: int = 4
    max_steps_per_turn: int = 8  # predictions per turn: calls, retries and the reply
    on_invalid: str = "feedback"  # see the module docstring
    retries: int = 1
    fallback_reply: str = "Sorry, I couldn't complete that request. Could you say it another way?"

    def __post_init__(self) -> None:
        if self.on_invalid not in ON_INVALID:
            raise CtxlabError(f"on_invalid must be one of {', '.join(ON_INVALID)}, got {self.on_invalid!r}")
        for name in ("max_calls_per_turn", "max_steps_per_turn"):
            if getattr(self, name) < 1:
                raise CtxlabError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.retries < 0:
            raise CtxlabError(f"retries must be >= 0, got {self.retries}")


@dataclass(frozen=True)
class Event:
    """One thing that happened in a turn. kind: say | call | response | invalid | retry | guard | empty."""

    kind: str
    text: str = ""  # the agent's words, or the item in TM-3 markup
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text} | ({"data": self.data} if self.data else {})


@dataclass
class TurnResult:
    reply: str  # the last thing the agent said this turn
    items: list[Item]  # history items added by the agent this turn (calls, responses, utterances)
    events: list[Event]
    calls: list[tuple[ApiCall, dict[str, Any]]]  # every call made (valid or not) with its result
    guard: str | None = None  # why the turn was cut short, if it was


class TicketAgent:
    """Runs agent turns over a growing dialogue history (see the module docstring)."""

    def __init__(self, predictor: Predictor, backend: BookingBackend, *, ontology: Ontology | None = None,
                 config: AgentConfig | None = None, session: str | None = None,
                 history: Sequence[Item] = ()):
        self.predictor, self.backend = predictor, backend
        self.ontology = ontology or backend.ontology
        self.config = config or AgentConfig()
        self.session = session or uuid.uuid4().hex[:12]
        self.history: list[Item] = list(history)

    def start(self) -> TurnResult:
        """The agent speaks first (`<S>`): only on an empty history."""
        if self.history:
            raise CtxlabError("start() is for an empty dialogue")
        self.history.append(Start())
        return self._turn()

    def user(self, text: str) -> TurnResult:
        text = " ".join(str(text).split())
        if not text:
            raise CtxlabError("the user turn is empty")
        try:
            item = Utterance("user", text)
            format_item(item)
        except CtxlabError:
            raise CtxlabError("the user turn contains TM-3 markup tags such as <U> or <PN>") from None
        self.history.append(item)
        return self._turn()

    def _idempotency_key(self, call: ApiCall) -> str:
        """Same booking request in one session → one booking (a model that repeats book_tickets books once)."""
        body = json.dumps([call.name, sorted(call.args)], ensure_ascii=False)
        return f"{self.session}:{hashlib.sha1(body.encode()).hexdigest()[:16]}"

    def _say(self, text: str, out: TurnResult) -> None:
        item = Utterance("agent", text)
        self.history.append(item)
        out.items.append(item)
        out.events.append(Event("say", text))
        out.reply = text

    def _record(self, call: ApiCall, result: dict[str, Any], out: TurnResult, kind: str) -> None:
        responses = result_to_items(result)
        self.history.append(call)
        self.history.extend(responses)
        out.items += [call, *responses]
        out.calls.append((call, result))
        out.events.append(Event(kind, format_item(call)))
        out.events.append(Event("response", format_items(responses), {"result": result}))

    def _stop(self, why: str, out: TurnResult, said: bool) -> TurnResult:
        out.guard = why
        out.events.append(Event("guard", why))
        if not said:
            self._say(self.config.fallback_reply, out)
        return out

    def _turn(self) -> TurnResult:
        cfg = self.config
        out = TurnResult("", [], [], [])
        retries, done_calls = cfg.retries, set()
        said = False
        for _ in range(cfg.max_steps_per_turn):
            raw = self.predictor.predict(format_items(self.history))
            action = parse_action(raw)
            text = " ".join(action.text.split()) if action.text else ""
            if not text and action.call is None:
                out.events.append(Event("empty", raw[:200]))
                return self._stop("no action in the model output", out, said)
            if text:
                self._say(text, out)
                said = True
            call = action.call
            if call is None:
                return out
            if len(out.calls) >= cfg.max_calls_per_turn:
                return self._stop(f"more than {cfg.max_calls_per_turn} API calls in one turn", out, said)
            key = (call.name, tuple(sorted(call.args)))
            if key in done_calls:
                return self._stop(f"repeated call {call.name}", out, said)
            error = validate_call(call, self.ontology)
            if error is not None and cfg.on_invalid == "retry" and retries > 0:
                retries -= 1
                out.events.append(Event("retry", format_item(call), {"result": error}))
                continue
            done_calls.add(key)
            if error is not None:
                self._record(call, error, out, "invalid")
                continue
            result = self.backend.call(call.name, call.arg_dict(), idempotency_key=self._idempotency_key(call))
            self._record(call, result, out, "call")
        return self._stop(f"{cfg.max_steps_per_turn} predictions without a reply", out, said)


# ------------------------------------------------------------------------------------------------ predictors


class ScriptedPredictor:
    """Returns canned outputs in order (for tests and demos); records every history it was shown."""

    def __init__(self, outputs: Sequence[str]):
        self.outputs = list(outputs)
        self.seen: list[str] = []

    def predict(self, history_text: str) -> str:
        self.seen.append(history_text)
        if not self.outputs:
            raise CtxlabError("the scripted predictor has no outputs left")
        return self.outputs.pop(0)


def split_items_text(text: str) -> list[str]:
    """A serialized history cut at item boundaries (each piece starts with <U>, <A>, <S>, <PN> or <PR>)."""
    return [p for p in _ITEM_START.split(text) if p]


class NativePredictor:
    """A ctxlab checkpoint as a Predictor: greedy decoding that stops at EOS or at the next `<U>`/`<PR>` tag.

    Histories longer than the budget lose their oldest items (whole items, so the markup stays well formed).
    `predict_batch` runs several histories in one left-padded batch (evaluation)."""

    def __init__(self, model: str | Path, *, max_new_tokens: int = 128, max_prompt_tokens: int | None = 512,
                 device: str = "cpu", dtype: str | None = None):
        from ctxlab.engine.stopping import StopCriteria
        from ctxlab.models.loading import load_model, resolve_model_path
        from ctxlab.tokenizer import Tokenizer

        if max_new_tokens < 1:
            raise CtxlabError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        path = resolve_model_path(model)
        self.tok = Tokenizer.from_dir(path)
        self.model = load_model(path, dtype=dtype, device=device).model
        self.max_new_tokens = max_new_tokens
        room = self.model.max_context - max_new_tokens
        if room < 16:
            raise CtxlabError(f"max_new_tokens={max_new_tokens} leaves no room for the dialogue in the model's "
                              f"context of {self.model.max_context} tokens")
        self.budget = min(room, max_prompt_tokens or room)
        self.stop = StopCriteria.from_strings(STOP_STRINGS, self.tok.decode)
        self.truncated = 0  # prompts that lost items to the budget

    def encode(self, history_text: str) -> list[int]:
        ids = self.tok.encode(history_text, add_special_tokens=False)
        if len(ids) <= self.budget:
            return ids
        self.truncated += 1
        pieces = split_items_text(history_text)
        counts = [len(x) for x in self.tok.encode_batch(pieces, add_special_tokens=False)]
        total, start = 0, len(pieces)
        while start > 0 and total + counts[start - 1] <= self.budget:
            total += counts[start - 1]
            start -= 1
        if start < len(pieces):  # else even the newest item is too long: keep its end
            ids = self.tok.encode("".join(pieces[start:]), add_special_tokens=False)
        return ids[-self.budget:]

    def predict(self, history_text: str) -> str:
        return self.predict_batch([history_text])[0]

    def predict_batch(self, histories: Sequence[str], batch_size: int = 8) -> list[str]:
        from ctxlab.engine.generate import generate
        from ctxlab.engine.sampling import SamplingParams
        from ctxlab.engine.stopping import trim_at_stop

        if not histories:
            return []
        prompts = [self.encode(h) or [self.tok.pad_id or 0] for h in histories]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths pad less
        params = SamplingParams(max_new_tokens=self.max_new_tokens)
        out: list[str] = [""] * len(prompts)
        for s in range(0, len(order), batch_size):
            idx = order[s: s + batch_size]
            gens = generate(self.model, [prompts[i] for i in idx], params, eos_ids=self.tok.eos_token_ids,
                            stop=self.stop)
            for i, g in zip(idx, gens, strict=True):
                out[i] = trim_at_stop(self.tok.decode(g.ids, skip_special_tokens=True), STOP_STRINGS)
        return out

"""Request bodies of /v1/completions and /v1/chat/completions → validated, tokenized `GenRequest`s, and the
OpenAI-style error object every failure becomes.

Semantics follow OpenAI's API (and vLLM where OpenAI is silent):
- sampling: temperature in [0, 2] (0 = greedy), top_p in (0, 1], top_k (an extension; 0 or -1 = off), seed (per
  choice j of n: seed + j), n choices, stop (a string or up to 4), max_tokens (chat also max_completion_tokens;
  default: completions 16, chat the rest of the context up to the server's --default-max-tokens);
- prompt + max_tokens must fit the model's context: else 400 with code `context_length_exceeded`;
- options this server does not implement (penalties, logprobs, logit_bias, tools, echo, suffix, best_of > 1,
  non-text response formats) are refused with a 400 naming the parameter when set to anything but their neutral
  value, never silently ignored; unknown fields are ignored, as by vLLM;
- vLLM's extensions `chat_template_kwargs` (chat: extra template variables, e.g. {"enable_thinking": false}) and
  `skip_special_tokens` (default true: special tokens are dropped from the text);
- the extension `"ctxlab": {"qttt": {"steps": N, "span": k, "lr": lr, "seed": s, "region": "prompt" | [lo, hi],
  "probe": bool}}` answers after adapting W_Q on the request's own prompt (see ctxlab/strategies/qttt.py). The server's
  default region is the whole prompt: a request has no separate "context" part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from ctxlab.engine.generate import fit_prompts
from ctxlab.engine.sampling import SamplingParams
from ctxlab.errors import CtxlabError
from ctxlab.serve.model import ServedModel
from ctxlab.strategies.qttt import QTTTConfig, resolve_region

MAX_STOP = 4
ROLES = ("system", "developer", "user", "assistant", "tool")
QTTT_KEYS = ("steps", "span", "lr", "seed", "region", "probe")
# parameter → its neutral value(s): anything else is refused (400) rather than ignored
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "repetition_penalty": (1, 1.0),
    "logprobs": (False, 0), "top_logprobs": (0,), "logit_bias": ({},), "tools": ([],), "functions": ([],),
    "tool_choice": ("none",), "function_call": ("none",), "echo": (False,), "suffix": ("",), "best_of": (1,),
}


class APIError(Exception):
    """An error the client sees as OpenAI's error object with an HTTP status."""

    def __init__(self, message: str, status: int = 400, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """Server-side bounds on what one request may ask for."""

    max_n: int = 16
    max_prompts: int = 16
    max_qttt_steps: int = 256  # 0 = qTTT disabled
    default_max_tokens: int = 1024  # a chat request without max_tokens: at most this many (the cache is preallocated)


@dataclass(frozen=True)
class Choice:
    """One generated sequence: its index in the response, prompt ids and sampling parameters (with its seed)."""

    index: int
    prompt: tuple[int, ...]
    params: SamplingParams


@dataclass(frozen=True)
class GenRequest:
    kind: str  # "chat" | "completion"
    choices: tuple[Choice, ...]
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    qttt: QTTTConfig | None
    skip_special: bool = True

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens of the request (each distinct prompt once, as OpenAI counts them)."""
        return sum(len(p) for p in dict.fromkeys(c.prompt for c in self.choices))


# -------------------------------------------------------------------------------------------- field checks


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) and math.isfinite(x)


def _bad(param: str, message: str) -> APIError:
    return APIError(message, param=param)


def _int(body: dict, key: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    v = body.get(key)
    if v is None:
        return default
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise _bad(key, f"'{key}' must be an integer {rng}, got {v!r}")
    return v


def _num(body: dict, key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(key)
    if v is None:
        return default
    if not _is_num(v) or v > hi or v < lo or (lo_open and v == lo):
        raise _bad(key, f"'{key}' must be a number in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def _bool(body: dict, key: str, default: bool) -> bool:
    v = body.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _bad(key, f"'{key}' must be a boolean, got {v!r}")
    return v


def _stop(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise _bad("stop", "'stop' must be a string or a list of strings")
    items = [s for s in items if s]  # OpenAI accepts and ignores empty stop strings
    if len(items) > MAX_STOP:
        raise _bad("stop", f"'stop' holds at most {MAX_STOP} strings, got {len(items)}")
    return tuple(dict.fromkeys(items))


def _refuse_unsupported(body: dict) -> None:
    for key, neutral in UNSUPPORTED.items():
        v = body.get(key)
        if v is not None and not any(v == n and type(v) is type(n) for n in neutral):
            raise _bad(key, f"'{key}' is not supported by ctxlab serve")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise _bad("response_format", "only response_format {\"type\": \"text\"} is supported by ctxlab serve")


def check_model(body: dict, served: ServedModel) -> None:
    name = body.get("model")
    if name is None:
        raise _bad("model", "you must provide a model parameter")
    if name != served.name:
        raise APIError(f"The model '{name}' does not exist; this server serves '{served.name}'", status=404,
                       param="model", code="model_not_found")


def _sampling(body: dict, served: ServedModel, max_tokens: int, seed: int | None) -> SamplingParams:
    d = served.sampling_defaults()
    top_k = _int(body, "top_k", int(d["top_k"]), -1)
    try:
        return SamplingParams(max_new_tokens=max_tokens, temperature=_num(body, "temperature", d["temperature"], 0, 2),
                              top_p=_num(body, "top_p", d["top_p"], 0, 1, lo_open=True), top_k=max(top_k, 0),
                              seed=seed)
    except CtxlabError as e:
        raise _bad("temperature", str(e)) from None


def _qttt(body: dict, limits: Limits) -> QTTTConfig | None:
    ext = body.get("ctxlab")
    if ext is None:
        return None
    if not isinstance(ext, dict) or set(ext) - {"qttt"}:
        raise _bad("ctxlab", "'ctxlab' must be an object with the single key 'qttt'")
    q = ext.get("qttt")
    if q is None:
        return None
    if not isinstance(q, dict):
        raise _bad("ctxlab.qttt", "'ctxlab.qttt' must be an object (steps, span, lr, seed, region, probe)")
    unknown = sorted(set(q) - set(QTTT_KEYS))
    if unknown:
        raise _bad("ctxlab.qttt", f"unknown qTTT option(s) {', '.join(unknown)}; known: {', '.join(QTTT_KEYS)}")
    if limits.max_qttt_steps == 0:
        raise _bad("ctxlab.qttt", "qTTT is disabled on this server (--max-qttt-steps 0)")
    region = q.get("region", "prompt")
    if isinstance(region, list):
        region = tuple(region)
    kw = {k: q[k] for k in ("steps", "span", "lr", "seed", "probe") if q.get(k) is not None}
    try:
        cfg = QTTTConfig(**kw, region=region)
    except (CtxlabError, TypeError) as e:
        raise _bad("ctxlab.qttt", f"ctxlab.qttt: {e}") from None
    if cfg.region == "context":
        raise _bad("ctxlab.qttt", "ctxlab.qttt.region must be 'prompt' or [lo, hi] token indices (a request has "
                   "no separate context part)")
    if cfg.steps > limits.max_qttt_steps:
        raise _bad("ctxlab.qttt", f"ctxlab.qttt.steps is at most {limits.max_qttt_steps} on this server, got "
                   f"{cfg.steps}")
    return cfg


# -------------------------------------------------------------------------------------------- messages


def _content(m: dict, i: int) -> str | None:
    c = m.get("content")
    if c is None or isinstance(c, str):
        return c
    if isinstance(c, list):
        parts = []
        for part in c:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"messages[{i}].content", "only text content parts ({\"type\": \"text\", \"text\": ...}) "
                           "are supported")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(f"messages[{i}].content", "message content must be a string or a list of text parts")


def parse_messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise _bad("messages", "'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise _bad(f"messages[{i}]", f"messages[{i}] must be an object with a role in {', '.join(ROLES)}")
        if m.get("tool_calls"):
            raise _bad(f"messages[{i}].tool_calls", "tool calls are not supported by ctxlab serve")
        msg: dict[str, Any] = {"role": "system" if m["role"] == "developer" else m["role"], "content": _content(m, i)}
        if isinstance(m.get("name"), str):
            msg["name"] = m["name"]
        out.append(msg)
    return out


def _completion_prompts(raw: Any, served: ServedModel) -> list[list[int]]:
    if isinstance(raw, str):
        return [served.prompt_ids(raw)]
    if isinstance(raw, list) and raw:
        if all(isinstance(p, str) for p in raw):
            return [served.prompt_ids(p) for p in raw]
        if all(_is_int(t) for t in raw):
            return [list(raw)]
        if all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in raw):
            return [list(p) for p in raw]
    raise _bad("prompt", "'prompt' must be a string, a list of strings, a list of token ids or a list of such lists")


# -------------------------------------------------------------------------------------------- requests


def _context_error(n_prompt: int, max_tokens: int, limit: int, what: str) -> APIError:
    return APIError(f"This model's maximum context length is {limit} tokens. However, you requested "
                    f"{n_prompt + max_tokens} tokens ({n_prompt} in the {what}, {max_tokens} in the completion). "
                    f"Please reduce the length of the {what} or completion.",
                    param=what, code="context_length_exceeded")


def _build(kind: str, body: dict, served: ServedModel, prompts: list[list[int]], max_tokens: int | None,
           limits: Limits) -> GenRequest:
    what = "messages" if kind == "chat" else "prompt"
    limit = served.max_context
    longest = max(len(p) for p in prompts)
    if any(not p for p in prompts):
        raise _bad(what, f"the {what} encode to no tokens; generation needs at least one prompt token")
    if max_tokens is None:  # chat default: what the context leaves, capped (every slot of the cache is allocated)
        if limit - longest < 1:
            raise _context_error(longest, 1, limit, what)
        max_tokens = min(limit - longest, limits.default_max_tokens)
    n = _int(body, "n", 1, 1, limits.max_n)
    seed = _int(body, "seed", None, 0)
    params = _sampling(body, served, max_tokens, seed)
    if longest + max_tokens > limit:
        raise _context_error(longest, max_tokens, limit, what)
    try:
        fit_prompts(served.model, prompts, params)  # vocabulary check (the length check passed above)
    except CtxlabError as e:
        raise _bad(what, str(e)) from None
    stream = _bool(body, "stream", False)
    opts = body.get("stream_options")
    if opts is not None and (not stream or not isinstance(opts, dict)):
        raise _bad("stream_options", "'stream_options' must be an object and is only allowed with stream: true")
    include_usage = _bool(opts or {}, "include_usage", False)
    qttt = _qttt(body, limits)
    if qttt is not None:
        if n != 1 or len(prompts) != 1:
            raise _bad("ctxlab.qttt", "a qTTT request generates one choice for one prompt (n = 1)")
        try:
            resolve_region(qttt, len(prompts[0]))
        except CtxlabError as e:
            raise _bad("ctxlab.qttt", f"ctxlab.qttt: {e}") from None
    choices = tuple(Choice(i * n + j, tuple(p), replace(params, seed=None if seed is None else seed + j))
                    for i, p in enumerate(prompts) for j in range(n))
    return GenRequest(kind, choices, _stop(body), stream, include_usage, qttt, _bool(body, "skip_special_tokens", True))


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise APIError("the request body must be a JSON object")
    return body


def parse_chat(body: Any, served: ServedModel, limits: Limits = Limits()) -> GenRequest:
    body = _object(body)
    check_model(body, served)
    _refuse_unsupported(body)
    messages = parse_messages(body.get("messages"))
    if not served.has_chat_template:
        raise _bad("messages", f"model '{served.name}' has no chat template; use /v1/completions")
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
        raise _bad("chat_template_kwargs", "'chat_template_kwargs' must be an object of template variables")
    reserved = sorted(set(kwargs) & {"messages", "add_generation_prompt", "tools", "documents"})
    if reserved:
        raise _bad("chat_template_kwargs", f"chat_template_kwargs cannot set {', '.join(reserved)}")
    try:
        ids = served.chat_ids(messages, **kwargs)
    except CtxlabError as e:
        raise _bad("messages", str(e)) from None
    max_tokens = _int(body, "max_completion_tokens", None, 1)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", None, 1)
    return _build("chat", body, served, [ids], max_tokens, limits)


def parse_completion(body: Any, served: ServedModel, limits: Limits = Limits()) -> GenRequest:
    body = _object(body)
    check_model(body, served)
    _refuse_unsupported(body)
    prompts = _completion_prompts(body.get("prompt"), served)
    if len(prompts) > limits.max_prompts:
        raise _bad("prompt", f"at most {limits.max_prompts} prompts per request, got {len(prompts)}")
    return _build("completion", body, served, prompts, _int(body, "max_tokens", 16, 1), limits)

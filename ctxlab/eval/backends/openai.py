"""The `openai` backend: any OpenAI-compatible server (vLLM, SGLang, llama.cpp server, OpenAI itself) through
POST {base_url}/chat/completions (default) or {base_url}/completions, with the standard library only.

- Key: $OPENAI_API_KEY, sent as a Bearer token when set (local servers usually need none).
- Base URL: option base_url, else $OPENAI_BASE_URL, else http://127.0.0.1:8000/v1 (vLLM's default).
- Robustness: a timeout per request; retries with exponential backoff and jitter on 408/409/429/5xx, timeouts and
  dropped connections (honouring Retry-After); other HTTP errors fail at once with the server's message; at most
  `concurrency` requests in flight (a thread pool).
- Context length: option context_length, else `max_model_len` from GET {base_url}/models (vLLM, SGLang, ctxlab
  serve), else unknown (prompts are then sent untruncated).
- Native prompts (option native_prompts, default auto = when /models says the server is `ctxlab serve`): requests
  carry vLLM's `chat_template_kwargs: {"enable_thinking": false}` and `skip_special_tokens: false`, so the server
  renders and decodes exactly as the native backend's in-context strategy does and the metrics agree.
- Token counts are approximate unless option tokenizer names a local tokenizer (checkpoint directory or hub id).
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from ctxlab.errors import CtxlabError
from ctxlab.eval.backends.base import (
    RETRY_OPTIONS,
    BaseBackend,
    Completion,
    Option,
    RetryableError,
    local_tokenizer,
    pool_imap,
    retry_policy,
)

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _error_message(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return " ".join(text.split())[:200]
    err = obj.get("error", obj) if isinstance(obj, dict) else obj
    msg = err.get("message", err) if isinstance(err, dict) else err
    return " ".join(str(msg).split())[:200]


class OpenAIBackend(BaseBackend):
    name: ClassVar[str] = "openai"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "base_url": Option(str, None, f"server URL up to /v1 (default $OPENAI_BASE_URL or {DEFAULT_BASE_URL})"),
        "api": Option(str, "chat", "chat (/chat/completions) or completions (/completions)",
                      ("chat", "completions")),
        "context_length": Option(int, None, "the model's context in tokens (default: ask the server)"),
        "tokenizer": Option(str, None, "local tokenizer (checkpoint dir or hub id) for exact token counts"),
        "system": Option(str, None, "system message for the chat API"),
        "native_prompts": Option(str, "auto", "thinking off and special tokens kept, as the native backend (vLLM "
                                 "extensions; auto = only when the server is ctxlab serve)", ("auto", "on", "off")),
        **RETRY_OPTIONS,
    }

    def __init__(self, model: str, options: Mapping[str, Any]):
        self.model = model
        self.options = dict(options)
        self.base_url = (options["base_url"] or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.policy = retry_policy(options)
        self.api_key = os.environ.get("OPENAI_API_KEY")
        self._tokenizer = local_tokenizer(options["tokenizer"])
        self._context = options["context_length"]
        self._card: dict | None = None  # the served model's /models entry, fetched once
        self._card_lock = threading.Lock()

    @classmethod
    def check_ready(cls, model: str, options: Mapping[str, Any]) -> None:
        retry_policy(options)
        url = options["base_url"] or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        if not url.startswith(("http://", "https://")):
            raise CtxlabError(f"base_url must start with http:// or https://, got {url!r}")
        if options["context_length"] is not None and options["context_length"] < 1:
            raise CtxlabError(f"option context_length must be >= 1, got {options['context_length']}")
        if not model:
            raise CtxlabError("the openai backend needs a model name as served (e.g. Qwen/Qwen3-8B)")

    @classmethod
    def identity(cls, model: str, options: Mapping[str, Any]) -> dict[str, Any]:
        return {"model": model, "api": options["api"], "system": options["system"]}

    @classmethod
    def load(cls, model: str, options: Mapping[str, Any]) -> OpenAIBackend:
        return cls(model, options)

    # -- HTTP

    def _request(self, method: str, path: str, payload: dict | None) -> dict:
        """One HTTP exchange; RetryableError for what is worth retrying, CtxlabError for the rest."""
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.options["timeout"]) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            msg = f"HTTP {e.code} from {self.base_url}{path}: {_error_message(e.read() or b'')}"
            if e.code in RETRY_STATUS:
                raise RetryableError(msg, _retry_after(e.headers)) from None
            raise CtxlabError(msg) from None
        except TimeoutError as e:
            raise RetryableError(f"timeout after {self.options['timeout']} s ({e})") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, OSError):
                raise RetryableError(f"cannot reach {self.base_url}: {e.reason}") from None
            raise CtxlabError(f"cannot reach {self.base_url}: {e.reason}") from None
        except (ConnectionError, http.client.HTTPException) as e:
            raise RetryableError(f"connection to {self.base_url} failed: {type(e).__name__}: {e}") from None
        try:
            obj = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RetryableError(f"invalid JSON from {self.base_url}{path}: {body[:80]!r}") from None
        if not isinstance(obj, dict):
            raise CtxlabError(f"unexpected response from {self.base_url}{path}: {str(obj)[:80]}")
        return obj

    def _payload(self, prompt: str, max_new_tokens: int, temperature: float, stop: Sequence[str]) -> tuple[str, dict]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_new_tokens, "temperature": float(temperature)}
        if stop:
            body["stop"] = list(stop)
        native = self.options["native_prompts"]
        if native == "on" or (native == "auto" and self.server_card().get("owned_by") == "ctxlab"):
            body["skip_special_tokens"] = False
            if self.options["api"] == "chat":
                body["chat_template_kwargs"] = {"enable_thinking": False}
        if self.options["api"] == "chat":
            system = self.options["system"]
            msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            return "/chat/completions", {**body, "messages": msgs}
        return "/completions", {**body, "prompt": prompt}

    def _text(self, obj: dict, path: str) -> str:
        try:
            choice = obj["choices"][0]
            text = choice["message"]["content"] if self.options["api"] == "chat" else choice["text"]
        except (KeyError, IndexError, TypeError):
            raise CtxlabError(f"unexpected response from {self.base_url}{path}: {json.dumps(obj)[:120]}") from None
        return text or ""

    def complete(self, prompt: str, max_new_tokens: int, temperature: float, stop: Sequence[str]) -> str:
        path, payload = self._payload(prompt, max_new_tokens, temperature, stop)
        obj = self.policy.call(lambda: self._request("POST", path, payload), f"request to {self.base_url}{path}")
        return self._text(obj, path)

    def imap(self, prompts: Sequence[str], max_new_tokens: int, temperature: float = 0.0,
             stop: Sequence[str] = ()) -> Iterator[Completion]:
        yield from pool_imap(lambda p: self.complete(p, max_new_tokens, temperature, stop), prompts,
                             self.options["concurrency"])

    # -- lengths

    def tokenizer_like(self) -> Any:
        return self._tokenizer or super().tokenizer_like()

    def server_card(self) -> dict:
        """The served model's entry in GET {base_url}/models ({} when the server has no such route or entry)."""
        with self._card_lock:
            if self._card is None:
                self._card = {}
                try:
                    obj = self._request("GET", "/models", None)
                    for m in obj.get("data") or []:
                        if isinstance(m, dict) and m.get("id") == self.model:
                            self._card = m
                except (CtxlabError, RetryableError):
                    pass  # servers without /models: nothing known
            return self._card

    @property
    def context_length(self) -> int | None:
        if self._context is None and isinstance(self.server_card().get("max_model_len"), int):
            self._context = self.server_card()["max_model_len"]
        return self._context


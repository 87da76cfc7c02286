"""The `gemini` backend: the Gemini API through Google's SDK `google-genai` (imported here only, when used).

Key from $GEMINI_API_KEY, else $GOOGLE_API_KEY. Same policy as the openai backend: a timeout per request (the SDK's
HttpOptions, in milliseconds), retries with exponential backoff and jitter on 408/429/5xx, timeouts and dropped
connections, immediate one-line errors for other API errors, and at most `concurrency` requests in flight. The
SDK's own retries are left at its defaults (none unless configured), so the policy here is the only one.
Token counts use the API's count_tokens; prompt fitting uses an approximate local tokenizer.
"""

from __future__ import annotations

import os
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

KEY_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
_INSTALL = "the gemini backend needs Google's SDK: pip install google-genai"
_RETRY_NAMES = ("Timeout", "ConnectError", "ConnectionError", "RemoteProtocolError", "ReadError", "WriteError")


def import_genai() -> tuple[Any, Any]:
    """(google.genai, google.genai.types), or a one-line install hint."""
    try:
        from google import genai
        from google.genai import types
    except ImportError:
        raise CtxlabError(_INSTALL) from None
    return genai, types


def api_key() -> str | None:
    return next((os.environ[k] for k in KEY_VARS if os.environ.get(k)), None)


def _status(e: BaseException) -> int | None:
    code = getattr(e, "code", None)
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    code = getattr(e, "status_code", None)
    return code if isinstance(code, int) else None


def classify(e: Exception) -> Exception:
    """RetryableError for rate limits, server errors, timeouts and dropped connections; CtxlabError otherwise."""
    code = _status(e)
    msg = " ".join(str(e).split())[:200]
    if code is not None:
        if code in (408, 429) or 500 <= code < 600:
            return RetryableError(f"Gemini API {code}: {msg}")
        return CtxlabError(f"Gemini API error {code}: {msg}")
    names = [c.__name__ for c in type(e).__mro__]
    if isinstance(e, (TimeoutError, ConnectionError)) or any(r in n for n in names for r in _RETRY_NAMES):
        return RetryableError(f"{type(e).__name__}: {msg}")
    return CtxlabError(f"Gemini request failed: {type(e).__name__}: {msg}")


class GeminiBackend(BaseBackend):
    name: ClassVar[str] = "gemini"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "context_length": Option(int, None, "input token limit (default: ask the API for the model's limit)"),
        "tokenizer": Option(str, None, "local tokenizer (checkpoint dir or hub id) for prompt fitting"),
        "system": Option(str, None, "system instruction"),
        **RETRY_OPTIONS,
    }

    def __init__(self, model: str, options: Mapping[str, Any]):
        genai, self.types = import_genai()
        self.model = model
        self.options = dict(options)
        self.policy = retry_policy(options)
        http = self.types.HttpOptions(timeout=int(options["timeout"] * 1000))
        self.client = genai.Client(api_key=api_key(), http_options=http)
        self._tokenizer = local_tokenizer(options["tokenizer"])
        self._context = options["context_length"]
        self._context_checked = self._context is not None

    @classmethod
    def check_ready(cls, model: str, options: Mapping[str, Any]) -> None:
        import_genai()
        retry_policy(options)
        if api_key() is None:
            raise CtxlabError(f"the gemini backend needs an API key in ${KEY_VARS[0]} (or ${KEY_VARS[1]})")
        if not model:
            raise CtxlabError("the gemini backend needs a model name (e.g. gemini-2.5-flash)")

    @classmethod
    def identity(cls, model: str, options: Mapping[str, Any]) -> dict[str, Any]:
        return {"model": model, "system": options["system"]}

    @classmethod
    def load(cls, model: str, options: Mapping[str, Any]) -> GeminiBackend:
        return cls(model, options)

    def _call(self, fn: Any, what: str) -> Any:
        def attempt() -> Any:
            try:
                return fn()
            except (RetryableError, CtxlabError):
                raise
            except Exception as e:  # noqa: BLE001 - SDK and transport errors are sorted by classify()
                raise classify(e) from None

        return self.policy.call(attempt, what)

    def complete(self, prompt: str, max_new_tokens: int, temperature: float, stop: Sequence[str]) -> str:
        kw: dict[str, Any] = {"max_output_tokens": max_new_tokens, "temperature": float(temperature)}
        if stop:
            kw["stop_sequences"] = list(stop)
        if self.options["system"]:
            kw["system_instruction"] = self.options["system"]
        config = self.types.GenerateContentConfig(**kw)
        resp = self._call(lambda: self.client.models.generate_content(model=self.model, contents=prompt,
                                                                       config=config), f"Gemini {self.model}")
        return getattr(resp, "text", None) or ""

    def imap(self, prompts: Sequence[str], max_new_tokens: int, temperature: float = 0.0,
             stop: Sequence[str] = ()) -> Iterator[Completion]:
        yield from pool_imap(lambda p: self.complete(p, max_new_tokens, temperature, stop), prompts,
                             self.options["concurrency"])

    def count_tokens(self, text: str) -> int:
        resp = self._call(lambda: self.client.models.count_tokens(model=self.model, contents=text),
                          f"Gemini count_tokens {self.model}")
        return int(resp.total_tokens)

    def tokenizer_like(self) -> Any:
        return self._tokenizer or super().tokenizer_like()

    @property
    def context_length(self) -> int | None:
        if not self._context_checked:
            self._context_checked = True
            try:
                info = self._call(lambda: self.client.models.get(model=self.model), f"Gemini model {self.model}")
                limit = getattr(info, "input_token_limit", None)
                self._context = limit if isinstance(limit, int) else None
            except CtxlabError:
                self._context = None
        return self._context

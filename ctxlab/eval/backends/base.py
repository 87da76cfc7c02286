"""What every evaluation backend shares: the `Backend` protocol, option specs, a tokenizer-free approximate
tokenizer, and the retry/timeout/concurrency policy of the remote backends.

A backend turns prompt *text* into completion *text*. `generate` is the protocol; `imap` is what the runner uses
(it yields each completion as soon as it is ready, so results can be committed one by one). Backends are built in
two steps so that bad input fails before anything expensive happens: `check_options` + `check_ready` (cheap:
option names and types, SDK installed, API key set, checkpoint directory present), then `load` (weights, clients).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from ctxlab.checks import check_int, check_number, parse_bool
from ctxlab.errors import CtxlabError
from ctxlab.tasks.truncation import ApproxTokenizer


@runtime_checkable
class Backend(Protocol):
    """Text in, text out. `context_length` is None when the backend cannot tell (remote servers, no option)."""

    name: str

    def generate(self, prompts: list[str], max_new_tokens: int, temperature: float = 0.0,
                 stop: Sequence[str] = ()) -> list[str]: ...

    def count_tokens(self, text: str) -> int: ...

    @property
    def context_length(self) -> int | None: ...


@dataclass(frozen=True)
class Completion:
    """One finished request of `imap`: the prompt's position in the call, its text and the request's wall time."""

    index: int
    text: str
    wall_s: float


# ------------------------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class Option:
    """A backend option: its type (int, float, bool, str), default, help and optional allowed values.
    `identity` False marks operational options (timeouts, concurrency) that do not change what is computed,
    so changing them does not block `--resume`."""

    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    identity: bool = True


def coerce(name: str, spec: Option, value: Any) -> Any:
    """`value` (a Python value, or a string from the command line) as the option's type; one-line errors."""
    if value is None or (isinstance(value, str) and value.lower() == "none" and spec.default is None):
        return None
    typ = spec.type
    try:
        if typ is bool:
            if isinstance(value, bool):
                out: Any = value
            elif isinstance(value, str):
                out = parse_bool(value)
            else:
                raise ValueError
        elif typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            out = int(value)
        elif typ is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not math.isfinite(out):
                raise ValueError
        else:
            out = str(value)
    except (TypeError, ValueError):
        raise CtxlabError(f"option {name} must be {typ.__name__}, got {value!r}") from None
    if spec.choices and out not in spec.choices:
        raise CtxlabError(f"option {name} must be one of {', '.join(spec.choices)}, got {out!r}")
    return out


def check_options(backend: str, specs: Mapping[str, Option], options: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in, names and types checked: unknown names list the valid ones."""
    unknown = [k for k in options if k not in specs]
    if unknown:
        valid = ", ".join(sorted(specs)) or "none"
        raise CtxlabError(f"unknown option {unknown[0]!r} for backend {backend}; valid options: {valid}")
    return {k: coerce(k, spec, options.get(k, spec.default)) for k, spec in specs.items()}


# ------------------------------------------------------------------------------------------------ tokenizer


class TextTokenizer:
    """A ctxlab `Tokenizer` seen as the truncation helpers' `TokenizerLike` (no special tokens added)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))


def local_tokenizer(path: str | None) -> Any:
    """A ctxlab Tokenizer from a local checkpoint directory or hub id (for remote backends), or None."""
    if not path:
        return None
    from ctxlab.models.loading import resolve_model_path
    from ctxlab.tokenizer import Tokenizer

    return TextTokenizer(Tokenizer.from_dir(resolve_model_path(path)))


# ------------------------------------------------------------------------------------------------ retries


class RetryableError(Exception):
    """A failure worth retrying (HTTP 429/5xx, timeout, dropped connection); `retry_after` is the server's hint."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n (0-based) waits min(cap, base * 2**n) * U[1 - jitter, 1 + jitter],
    or the server's Retry-After (capped) when it sends one. `max_retries` retries after the first attempt."""

    max_retries: int = 5
    backoff: float = 1.0
    backoff_max: float = 60.0
    jitter: float = 0.5

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None and retry_after >= 0:
            return min(self.backoff_max, retry_after)
        base = min(self.backoff_max, self.backoff * (2**attempt))
        return base * rng.uniform(1 - self.jitter, 1 + self.jitter)

    def call(self, fn: Callable[[], Any], what: str, sleep: Callable[[float], None] = time.sleep) -> Any:
        """fn() until it succeeds, raises a non-retryable error (passed through), or retries run out
        (CtxlabError naming the last failure)."""
        rng = random.Random()
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                return fn()
            except RetryableError as e:
                last = str(e)
                if attempt == self.max_retries:
                    break
                sleep(self.delay(attempt, e.retry_after, rng))
        raise CtxlabError(f"{what} failed after {self.max_retries + 1} attempts; last error: {last}")


def pool_imap(fn: Callable[[str], str], prompts: Sequence[str], concurrency: int) -> Iterator[Completion]:
    """Run fn over prompts on at most `concurrency` threads, yielding completions as they finish. Requests are
    submitted lazily (never more than `concurrency` in flight), and on the first error nothing new is started:
    queued work is dropped and the error is raised once the running requests return."""

    def timed(i: int, p: str) -> Completion:
        t0 = time.perf_counter()
        text = fn(p)
        return Completion(i, text, time.perf_counter() - t0)

    todo = iter(enumerate(prompts))
    width = max(1, concurrency)
    error: BaseException | None = None
    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="ctxlab-backend") as ex:
        running: set[Future] = set()
        while True:
            while error is None and len(running) < width:
                nxt = next(todo, None)
                if nxt is None:
                    break
                running.add(ex.submit(timed, *nxt))
            if not running:
                break
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=id):
                exc = fut.exception()
                if exc is None:
                    yield fut.result()  # successes are handed out even after a failure: nothing finished is lost
                elif error is None:
                    error = exc  # start nothing new; the in-flight requests still finish
    if error is not None:
        raise error


# ------------------------------------------------------------------------------------------------ base class


class BaseBackend:
    """Defaults for the protocol. Subclasses set `name`, `OPTIONS` and implement `load`, `complete` (one prompt)
    or `imap`, `count_tokens` and `context_length`."""

    name: ClassVar[str] = "base"
    OPTIONS: ClassVar[dict[str, Option]] = {}
    # strategies this backend can run: "in-context" = plain generation through `imap`; the native backend adds
    # ctxlab's test-time strategies (thinking, self-consistency, qTTT), which need the model's weights.
    strategies: ClassVar[tuple[str, ...]] = ("in-context",)
    lm: Any = None  # the native backend's model + tokenizer (ctxlab.strategies.LM); None: text in, text out

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        return check_options(cls.name, cls.OPTIONS, options)

    @classmethod
    def check_ready(cls, model: str, options: Mapping[str, Any]) -> None:
        """Cheap checks before anything is loaded (SDK importable, key set, model path present)."""

    @classmethod
    def identity(cls, model: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """What identifies the model for results and `--resume` (no weights are read)."""
        return {"model": model}

    @classmethod
    def context_hint(cls, model: str, options: Mapping[str, Any]) -> int | None:
        """The model's context in tokens when known before loading (budgets are checked against it), else None."""
        value = options.get("context_length")
        return value if isinstance(value, int) and value > 0 else None

    @classmethod
    def load(cls, model: str, options: Mapping[str, Any]) -> BaseBackend:
        raise NotImplementedError

    # -- generation

    def complete(self, prompt: str, max_new_tokens: int, temperature: float, stop: Sequence[str]) -> str:
        raise NotImplementedError

    def imap(self, prompts: Sequence[str], max_new_tokens: int, temperature: float = 0.0,
             stop: Sequence[str] = ()) -> Iterator[Completion]:
        """Completions in finishing order (sequential by default)."""
        for i, p in enumerate(prompts):
            t0 = time.perf_counter()
            text = self.complete(p, max_new_tokens, temperature, stop)
            yield Completion(i, text, time.perf_counter() - t0)

    def generate(self, prompts: list[str], max_new_tokens: int, temperature: float = 0.0,
                 stop: Sequence[str] = ()) -> list[str]:
        check_generation_args(prompts, max_new_tokens, temperature, stop)
        out: list[str | None] = [None] * len(prompts)
        for c in self.imap(prompts, max_new_tokens, temperature, stop):
            out[c.index] = c.text
        return [t or "" for t in out]

    # -- lengths

    def count_tokens(self, text: str) -> int:
        return self.tokenizer_like().count_tokens(text)

    @property
    def context_length(self) -> int | None:
        return None

    def tokenizer_like(self) -> Any:
        """encode/decode/count_tokens used to fit prompts to `context_length` (approximate unless overridden)."""
        tok = getattr(self, "_approx", None)
        if tok is None:
            tok = self._approx = ApproxTokenizer()
        return tok

    def prompt_overhead(self) -> int:
        """Tokens the backend adds around a prompt (chat template, system message)."""
        return 0

    def sent_tokens(self, prompt: str, structured: tuple[str, str] | None = None, thinking: bool = False) -> int:
        """Tokens of `prompt` as the backend will send it (what must fit `context_length`). `structured` and
        `thinking` matter only to backends that render prompts themselves (the native test-time strategies)."""
        return len(self.tokenizer_like().encode(prompt)) + self.prompt_overhead()

    def close(self) -> None:
        pass


def check_generation_args(prompts: Sequence[str], max_new_tokens: int, temperature: float,
                          stop: Sequence[str]) -> None:
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise CtxlabError("prompts must be a list of strings")
    check_int("max_new_tokens", max_new_tokens, 1)
    check_number("temperature", temperature, 0)
    if isinstance(stop, str) or any(not isinstance(s, str) or not s for s in stop):
        raise CtxlabError(f"stop must be a list of non-empty strings, got {stop!r}")


def trim_stop(text: str, stop: Sequence[str]) -> str:
    """Cut the text before the earliest stop string (servers already do; local backends may overshoot)."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(cuts)] if cuts else text


RETRY_OPTIONS: dict[str, Option] = {
    "concurrency": Option(int, 8, "requests in flight at once", identity=False),
    "timeout": Option(float, 120.0, "seconds per request", identity=False),
    "max_retries": Option(int, 5, "retries on 429/5xx/timeouts/dropped connections", identity=False),
    "backoff": Option(float, 1.0, "first retry delay in seconds (doubles each retry, with jitter)", identity=False),
    "backoff_max": Option(float, 60.0, "longest retry delay in seconds", identity=False),
}


def retry_policy(opts: Mapping[str, Any]) -> RetryPolicy:
    for key in ("concurrency", "max_retries"):
        if opts[key] < (1 if key == "concurrency" else 0):
            raise CtxlabError(f"option {key} must be >= {1 if key == 'concurrency' else 0}, got {opts[key]}")
    for key in ("timeout", "backoff", "backoff_max"):
        if not opts[key] > 0 and not (key == "backoff" and opts[key] == 0):
            raise CtxlabError(f"option {key} must be > 0, got {opts[key]}")
    return RetryPolicy(opts["max_retries"], opts["backoff"], opts["backoff_max"])

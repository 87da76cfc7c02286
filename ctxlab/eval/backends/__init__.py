"""Evaluation backends: the `Backend` protocol and four implementations, looked up by name.

    native   ctxlab checkpoints (load_model + Tokenizer + engine); the only one running ctxlab/strategies
    hf       any transformers AutoModelForCausalLM (transformers imported lazily)
    openai   any OpenAI-compatible server: vLLM, SGLang, llama.cpp server, OpenAI (stdlib HTTP)
    gemini   the Gemini API through google-genai (imported lazily)

A backend may also be given as "package.module:Class" (a BaseBackend subclass), e.g. a fake for tests or a
private serving stack. Modules are imported only when their backend is asked for, so `import ctxlab.eval`
never pulls in torch, transformers or an SDK.

    from ctxlab.eval.backends import make_backend
    b = make_backend("openai", "Qwen/Qwen3-8B", {"base_url": "http://127.0.0.1:8000/v1"})
    b.generate(["Hello"], max_new_tokens=16)
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from typing import Any

from ctxlab.errors import CtxlabError
from ctxlab.eval.backends.base import (
    ApproxTokenizer,
    Backend,
    BaseBackend,
    Completion,
    Option,
    RetryableError,
    RetryPolicy,
)

BACKENDS: dict[str, str] = {
    "native": "ctxlab.eval.backends.native:NativeBackend",
    "hf": "ctxlab.eval.backends.hf:HFBackend",
    "openai": "ctxlab.eval.backends.openai:OpenAIBackend",
    "gemini": "ctxlab.eval.backends.gemini:GeminiBackend",
}
_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def backend_names() -> list[str]:
    return list(BACKENDS)


def backend_class(name: str) -> type[BaseBackend]:
    """The class for a registered name or a "module:Class" spec; unknown names list the valid ones."""
    target = BACKENDS.get(name)
    if target is None:
        if not _SPEC.match(name or ""):
            raise CtxlabError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)} "
                              "(or package.module:Class)")
        target = name
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise CtxlabError(f"cannot import backend {target}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, BaseBackend)):
        raise CtxlabError(f"backend {target} is not a ctxlab.eval.backends.BaseBackend subclass")
    return cls


def make_backend(name: str, model: str, options: Mapping[str, Any] | None = None) -> BaseBackend:
    """Validate options, run the cheap readiness checks, then load (weights, clients)."""
    cls = backend_class(name)
    opts = cls.check_options(options or {})
    cls.check_ready(model, opts)
    return cls.load(model, opts)


__all__ = [
    "BACKENDS", "ApproxTokenizer", "Backend", "BaseBackend", "Completion", "Option", "RetryPolicy",
    "RetryableError", "backend_class", "backend_names", "make_backend",
]

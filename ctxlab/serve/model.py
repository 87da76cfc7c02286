"""The model behind `ctxlab serve` and `ctxlab chat MODEL`: weights, tokenizer, chat template and context limit.

Prompts are encoded exactly as the native eval backend encodes them (a chat is the template's rendering without
extra special tokens; a plain prompt gets the tokenizer's own special tokens), so a served model and the native
backend see the same ids for the same text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctxlab.engine.stopping import StopCriteria, trim_at_stop
from ctxlab.errors import CtxlabError
from ctxlab.tokenizer import IncrementalDecoder, Tokenizer


def set_threads(threads: int | None) -> int:
    """torch intra-op threads (None = torch's default); returns the effective number."""
    if threads is not None:
        if threads < 1:
            raise CtxlabError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


@dataclass
class ServedModel:
    """One loaded model under a served name. `max_context` bounds prompt + new tokens."""

    name: str
    model: nn.Module
    tokenizer: Tokenizer
    path: Path
    generation_config: dict = field(default_factory=dict)

    @classmethod
    def load(cls, model: str, *, name: str | None = None, dtype: str | None = None, device: str = "cpu",
             notices: list[str] | None = None) -> ServedModel:
        from ctxlab.models.loading import load_model, resolve_model_path

        Tokenizer.from_dir(resolve_model_path(model))  # a missing/broken tokenizer fails before the weights load
        loaded = load_model(model, dtype=dtype, device=device)  # resolved as the native eval backend resolves it
        if notices is not None:
            notices.extend(loaded.notices)
        return cls(name or str(model), loaded.model, Tokenizer.from_dir(loaded.path), loaded.path,
                   dict(loaded.generation_config))

    @property
    def max_context(self) -> int:
        return int(self.model.max_context)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return self.tokenizer.eos_token_ids

    @property
    def has_chat_template(self) -> bool:
        return self.tokenizer.has_chat_template

    def chat_ids(self, messages: Sequence[Mapping[str, Any]], **template_vars: Any) -> list[int]:
        """The rendered conversation with the assistant's turn opened (CtxlabError when there is no template);
        `template_vars` are extra template variables (e.g. enable_thinking=False)."""
        return self.tokenizer.encode_chat(list(messages), add_generation_prompt=True, **template_vars)

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt)

    def stop_criteria(self, stop: Sequence[str]) -> StopCriteria | None:
        return StopCriteria.from_strings(list(stop), self.tokenizer.decode) if stop else None

    def text(self, ids: Sequence[int], stop: Sequence[str] = (), skip_special: bool = True) -> str:
        """Generated ids → the text a client receives: special tokens dropped (unless skip_special is False), cut
        before the first stop string."""
        return trim_at_stop(self.tokenizer.decode(list(ids), skip_special_tokens=skip_special), stop)

    def sampling_defaults(self) -> dict[str, float | int]:
        """OpenAI's defaults (temperature 1, top_p 1), replaced by the checkpoint's generation_config when it
        samples (do_sample true): what a request that names no sampling option gets."""
        gc = self.generation_config
        out: dict[str, float | int] = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}
        if gc.get("do_sample"):
            for key in out:
                if isinstance(gc.get(key), (int, float)) and not isinstance(gc.get(key), bool):
                    out[key] = gc[key]
        return out


def _held(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string (held back while streaming)."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class TextAssembler:
    """One choice's streamed text: decoded pieces, minus whatever could be the start of a stop string, cut before
    the first stop string. The pieces add up to `ServedModel.text(ids, stop)`, the non-streaming answer."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = (), skip_special: bool = True):
        self._dec = IncrementalDecoder(tokenizer, skip_special_tokens=skip_special)
        self._stop = tuple(stop)
        self._full = ""
        self._sent = 0
        self._stopped = False

    def add(self, token: int) -> str:
        if self._stopped:
            return ""
        self._full += self._dec.add(token)
        return self._emit(final=False)

    def finish(self) -> str:
        if not self._stopped:
            self._full += self._dec.flush()
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        cut = trim_at_stop(self._full, self._stop)
        if len(cut) < len(self._full):
            self._stopped, end = True, len(cut)
        else:
            end = len(self._full) if final else len(self._full) - _held(self._full, self._stop)
        out = self._full[self._sent : end]
        self._sent = max(self._sent, end)
        return out

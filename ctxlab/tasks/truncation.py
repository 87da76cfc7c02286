"""Explicit truncation policies for long-context tasks, on tokens of a tokenizer-like object.

Each task family names its policy (`Task.truncation`) so that results can record it; silent truncation is a
recurring complaint about other harnesses (benchmarks.md §2.5). Both policies return text, which the model
backend tokenizes again, as the official LongBench-v2 and ZeroSCROLLS API scripts do.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from typing import Protocol

from ctxlab.errors import CtxlabError


class TokenizerLike(Protocol):
    """What truncation needs: `encode` → token ids (without special tokens, ideally) and `decode` back to text."""

    def encode(self, text: str) -> Sequence[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def truncate_middle(text: str, tokenizer: TokenizerLike, max_len: int) -> str:
    """LongBench-v2 `pred.py`: if the text has more than `max_len` tokens keep `ids[:max_len//2] + ids[-max_len//2:]`.

    Python's `-max_len//2` is `(-max_len)//2`, so an odd `max_len` keeps one more token from the end; the result
    has exactly `max_len` tokens either way. Text that fits is returned unchanged (not re-decoded).
    """
    if max_len < 2:
        raise CtxlabError(f"max_len must be at least 2 tokens, got {max_len}")
    ids = list(tokenizer.encode(text))
    if len(ids) <= max_len:
        return text
    return tokenizer.decode(ids[: max_len // 2] + ids[-max_len // 2 :])


def truncate_keep_suffix(prefix: str, suffix: str, tokenizer: TokenizerLike, budget: int) -> str:
    """Cut the tail of `prefix` to `budget` tokens and append `suffix` whole (ZeroSCROLLS keeps the query)."""
    if budget <= 0:
        raise CtxlabError(f"no room left for the document: token budget {budget} (context too small for the query)")
    return tokenizer.decode(list(tokenizer.encode(prefix))[:budget]) + suffix


class ApproxTokenizer:
    """A lossless, tokenizer-free stand-in for counting and cutting text when no tokenizer is at hand (prompts sent
    to remote models, sandbox examples sized without a model).

    BPE tokenizers put a leading space on the following word, split long words, split numbers into short digit
    groups and keep short punctuation runs together; one regex piece per such token approximates GPT/Llama/Qwen-style
    counts (within ~20% on English prose and code; pass the real tokenizer's counter when lengths matter exactly).
    `encode` maps pieces to ids through a growing table, so `decode(encode(x)) == x` and slices decode to the
    matching text."""

    _piece = re.compile(r" ?[A-Za-z]{1,8}| ?\d{1,3}| ?[^\sA-Za-z\d]{1,2}|\s+(?!\S)|\s+")

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._pieces: list[str] = []
        self._lock = threading.Lock()

    @classmethod
    def pieces(cls, text: str) -> list[str]:
        return cls._piece.findall(text)

    def encode(self, text: str) -> list[int]:
        out = []
        with self._lock:
            for p in self.pieces(text):
                i = self._ids.get(p)
                if i is None:
                    i = self._ids[p] = len(self._pieces)
                    self._pieces.append(p)
                out.append(i)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self._pieces[i] for i in ids)

    @classmethod
    def count_tokens(cls, text: str) -> int:
        return len(cls.pieces(text))


def approx_count_tokens(text: str) -> int:
    """Approximate BPE token count of `text` (ApproxTokenizer's pieces; fast, deterministic, tokenizer-free)."""
    return ApproxTokenizer.count_tokens(text)

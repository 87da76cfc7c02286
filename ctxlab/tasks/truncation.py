"""Explicit truncation policies for long-context tasks, on tokens of a tokenizer-like object.

Each task family names its policy (`Task.truncation`) so that results can record it; silent truncation is a
recurring complaint about other harnesses (benchmarks.md §2.5). Both policies return text, which the model
backend tokenizes again, as the official LongBench-v2 and ZeroSCROLLS API scripts do.
"""

from __future__ import annotations

from collections.abc import Sequence
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

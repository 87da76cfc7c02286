"""Stop criteria on generated token ids. The engine never sees text: stop *strings* work through a decode
function the caller supplies (normally `Tokenizer.decode`), applied to the tail of each sequence's new ids."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ctxlab.errors import CtxlabError

Decode = Callable[[Sequence[int]], str]


@dataclass(frozen=True)
class StopCriteria:
    """`check(ids)` gets one sequence's generated ids so far (prompt excluded, EOS never included) after every
    step and returns True to stop that sequence (finish_reason "stop"). The ids that triggered it are kept."""

    check: Callable[[Sequence[int]], bool]
    strings: tuple[str, ...] = ()  # the stop strings behind `check`, when built by from_strings (for trim_text)

    def __call__(self, ids: Sequence[int]) -> bool:
        return self.check(ids)

    @classmethod
    def from_strings(cls, strings: Sequence[str], decode: Decode, window: int | None = None) -> StopCriteria:
        """Stop once the decoded generation contains any of `strings`.

        Only the last `window` ids are decoded per step (default: longest string + 8), so the cost does not grow
        with the generation: a match that completes now ends in the newest token's text, and every token adds at
        least one character; the slack covers zero-width tokens, split UTF-8 bytes and decoders that drop a
        leading space at the start of the decoded span. window=0 decodes everything (exact, O(n) per step)."""
        strings = tuple(strings)
        if not strings or any(not isinstance(s, str) or not s for s in strings):
            raise CtxlabError(f"stop strings must be non-empty strings, got {list(strings)!r}")
        if window is None:
            window = max(len(s) for s in strings) + 8
        if window < 0:
            raise CtxlabError(f"stop-string window must be >= 0, got {window}")

        def check(ids: Sequence[int]) -> bool:
            text = decode(ids[-window:] if window else ids)
            return any(s in text for s in strings)

        return cls(check, strings)

    def trim_text(self, text: str) -> str:
        """Cut decoded text before the earliest stop string (what a user expects to see)."""
        return trim_at_stop(text, self.strings)


def trim_at_stop(text: str, strings: Sequence[str]) -> str:
    """`text` up to (excluding) the earliest occurrence of any of `strings`; unchanged when none occurs."""
    cuts = [i for i in (text.find(s) for s in strings if s) if i >= 0]
    return text[: min(cuts)] if cuts else text

"""Key-value retrieval with controllable distractor similarity.

The context lists `key: value` pairs, one per line; keys are five dash-joined words (`amber-falcon-river-stone-maple`),
values are unique-per-needle 6-digit numbers. The question asks for the needle key's value.

`similarity` in [0, 1] sets how many leading words each distractor key shares with the needle key: a distractor
shares exactly p words with p = floor(similarity * 4 + u), u ~ U[0, 1) (stochastic rounding, so the mean shared
prefix is 4 * similarity words). 0 gives unrelated random keys; 1 gives keys that differ from the needle only in the
last word (at most len(WORDS) - 1 of them; further distractors fall back to shorter shared prefixes).

The needle pair and its relative depth come from their own random stream; the pairs before and after it are
nested streams (nearest first), so a longer example extends a shorter one at both ends.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from random import Random

from ctxlab.errors import CtxlabError
from ctxlab.tasks.format import answer_region
from ctxlab.tasks.sandbox.common import (
    TOLERANCE,
    SandboxExample,
    check_seed,
    check_target,
    fit_length,
    span_of,
)
from ctxlab.tasks.truncation import approx_count_tokens

WORDS = (
    "amber", "apple", "arrow", "aspen", "basin", "beach", "berry", "birch", "bison", "blaze", "bloom", "brook",
    "cabin", "canoe", "cedar", "chalk", "cliff", "cloud", "clover", "coral", "crane", "creek", "daisy", "delta",
    "dune", "eagle", "ember", "fable", "falcon", "fern", "field", "flint", "frost", "garnet", "glade", "grove",
    "harbor", "hazel", "heron", "hill", "honey", "island", "ivory", "jade", "jasper", "juniper", "kettle", "lagoon",
    "lake", "lantern", "larch", "lemon", "lily", "linen", "lotus", "maple", "marble", "meadow", "mesa", "mint",
    "moss", "nectar", "oak", "ocean", "olive", "onyx", "orchid", "otter", "pearl", "pebble", "pepper", "pine",
    "plum", "pond", "poppy", "prairie", "quartz", "quill", "raven", "reed", "ridge", "river", "robin", "ruby",
    "sage", "salmon", "sand", "slate", "sparrow", "spruce", "stone", "storm", "summit", "swan", "thistle", "thorn",
    "tide", "timber", "topaz", "trail", "tulip", "valley", "velvet", "violet", "walnut", "willow", "wren", "zephyr",
)
N_WORDS = 5  # words per key
N_MAX = 20000  # pairs

QUESTION = "What is the value of the key {key}? Only an exact key match counts. Give the number."
_HEADER = "A list of key: value pairs. Each key appears once."


def _draw_key(rng: Random, needle: tuple[str, ...], similarity: float, used: set[tuple[str, ...]]) -> tuple[str, ...]:
    """A new distractor key sharing a prefix of ~similarity * (N_WORDS - 1) words with the needle key."""
    p = min(N_WORDS - 1, int(similarity * (N_WORDS - 1) + rng.random()))
    for prefix in range(p, -1, -1):  # fall back to shorter shared prefixes when a prefix's key space is used up
        if prefix == N_WORDS - 1:  # only the last word is free: pick among the unused ones
            free = [needle[:prefix] + (w,) for w in WORDS if w != needle[prefix] and needle[:prefix] + (w,) not in used]
            keys = [rng.choice(free)] if free else []
        else:
            keys = [needle[:prefix] + (rng.choice([w for w in WORDS if w != needle[prefix]]),)
                    + tuple(rng.choice(WORDS) for _ in range(N_WORDS - prefix - 1)) for _ in range(20)]
        for key in keys:
            if key not in used:
                used.add(key)
                return key
    raise CtxlabError("ran out of distinct distractor keys; use a shorter length")


class _Pairs:
    """One stream of distinct distractor pairs; pair j goes before the needle when floor((j + 1) * depth) grows, so
    the first n pairs put floor(n * depth) before it (nearest first) and the rest after it, for every n."""

    def __init__(self, seed: int, key: tuple[str, ...], value: int, similarity: float):
        self.rng, self.key, self.value, self.similarity = Random(f"kv:{seed}:hay"), key, value, similarity
        self.used, self.seq = {key}, []

    def take(self, n: int) -> list[tuple[tuple[str, ...], int]]:
        while len(self.seq) < n:
            key = _draw_key(self.rng, self.key, self.similarity, self.used)
            value = self.rng.randint(100000, 999999)
            while value == self.value:
                value = self.rng.randint(100000, 999999)
            self.seq.append((key, value))
        return self.seq[:n]


def _line(key: tuple[str, ...], value: int) -> str:
    return f"{'-'.join(key)}: {value}"


def generate(
    seed: int,
    n_tokens: int = 1024,
    *,
    count_tokens: Callable[[str], int] = approx_count_tokens,
    similarity: float = 0.5,
    tolerance: float | None = TOLERANCE,
) -> SandboxExample:
    """A key-value list with one needle pair whose no-thinking prompt has `n_tokens` ± 5% tokens."""
    check_seed(seed)
    check_target(n_tokens)
    if not isinstance(similarity, (int, float)) or not 0.0 <= similarity <= 1.0:
        raise CtxlabError(f"similarity must be a number in [0, 1], got {similarity!r}")
    rng = Random(f"kv:{seed}:needle")
    key = tuple(rng.sample(WORDS, N_WORDS))
    value = rng.randint(100000, 999999)
    depth = rng.uniform(0.05, 0.95)
    pairs = _Pairs(seed, key, value, float(similarity))
    needle_line, key_text = _line(key, value), "-".join(key)

    def build(n: int, k: int) -> SandboxExample:
        items = pairs.take(n)
        pre = [math.floor((j + 1) * depth) > math.floor(j * depth) for j in range(n)]
        before = [p for p, is_pre in zip(items, pre, strict=True) if is_pre][::-1]
        after = [p for p, is_pre in zip(items, pre, strict=True) if not is_pre]
        n_pre = len(before)
        context = "\n".join([_HEADER, *(_line(*p) for p in before), needle_line, *(_line(*p) for p in after)])
        start = len(_HEADER) + 1 + sum(len(_line(*p)) + 1 for p in before)
        assert span_of(context, needle_line, start) == (start, start + len(needle_line))
        shared = [_shared_prefix(key, p[0]) for p in before + after]
        return SandboxExample(
            task="kv",
            context=context,
            question=QUESTION.format(key=key_text),
            answer=str(value),
            evidence=((start, start + len(needle_line)),),
            scratchpad=(f"I look for the line whose key is exactly {key_text}; other keys may share its first words. "
                        f"That line reads {needle_line}, so the value is {value}."),
            meta={"seed": seed, "key": key_text, "similarity": float(similarity), "n_pairs": n + 1,
                  "depth": round(depth, 4), "needle_index": n_pre,
                  "mean_shared_prefix": round(sum(shared) / len(shared), 3) if shared else 0.0},
        )

    return fit_length(build, count_tokens, n_tokens, n_max=N_MAX, what="key-value list", tolerance=tolerance)


def _shared_prefix(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def parse_pairs(context: str) -> dict[str, list[str]]:
    """key → values as listed in a context (used by tests to check that the needle key occurs exactly once)."""
    out: dict[str, list[str]] = {}
    for line in context.splitlines()[1:]:
        k, _, v = line.partition(": ")
        out.setdefault(k, []).append(v)
    return out


_NUM = re.compile(r"\d+")


def parse_answer(text: str) -> str | None:
    """The value: the first number after the last `Final:`, else the last number in the text."""
    region, marked = answer_region(text)
    nums = _NUM.findall(region)
    if not nums:
        return None
    return nums[0] if marked else nums[-1]


def score(prediction_text: str, example: SandboxExample) -> bool:
    return parse_answer(prediction_text) == example.answer

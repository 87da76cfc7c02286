"""Thinking first: a budget of generated tokens before the answer, alone or voted over samples (shared docs qttt.md
§3.3, App. G).

- Thinking: up to `think_tokens` generated tokens first — inside the model's `<think>` block when the template
  supports it, else after a scratchpad instruction that asks for the answer after "Final:". If thinking ends by
  itself ("</think>", or "Final:" in scratchpad mode) the model answers on; if the budget runs out (or EOS comes
  first) the closing tag and/or the "Final:" marker are forced and the answer is decoded after them.
- SelfConsistency: `samples` sampled thinking runs sharing the budget (think_tokens // samples each) from one
  prefill (the cache is put back to the prompt between samples); majority vote over parse(answer).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace

from ctxlab.checks import check_int
from ctxlab.engine import SamplingParams, StopCriteria, generate_from_cache
from ctxlab.errors import CtxlabError
from ctxlab.strategies.base import (
    LM,
    Outcome,
    Prefilled,
    Request,
    Strategy,
    default_parse,
    outcome,
)
from ctxlab.tasks.format import FINAL_MARKER, THINK_CLOSE, answer_text

# Qwen3-recommended sampling (thinking mode) for self-consistency.
SC_PARAMS = SamplingParams(temperature=0.6, top_k=20, top_p=0.95, seed=0)
FORCED_TEXT_RESERVE = 16  # tokens for the forced "</think> Final:" text (length fitting before a tokenizer is known)


def forced_text(fmt: str) -> str:
    """What is appended when thinking does not end by itself."""
    return "\n" + THINK_CLOSE + "\n\n" + FINAL_MARKER if fmt == "template" else "\n" + FINAL_MARKER


@dataclass(frozen=True)
class Thought:
    """One thinking sample: the thinking tokens, the forced text (empty when thinking ended by itself) and the
    answer tokens after them."""

    think: list[int]
    forced: list[int]
    answer: list[int]
    finish_reason: str  # of the answer phase

    @property
    def ids(self) -> list[int]:
        return self.think + self.forced + self.answer

    @property
    def natural(self) -> bool:
        return not self.forced


def think_slots(lm: LM, fmt: str, budget: int, answer_tokens: int) -> int:
    """Cache slots after the prompt: <= budget thinking tokens, the forced text, the answer."""
    return budget + len(lm.encode_plain(forced_text(fmt))) + answer_tokens


def think_sample(run: Prefilled, fmt: str, budget: int, answer_tokens: int, params: SamplingParams) -> Thought:
    """Thinking (<= budget tokens), a forced close if needed, then the answer, all written to run.cache."""
    lm = run.lm
    logits, think, natural = run.logits, [], False
    if budget > 0:
        close = THINK_CLOSE if fmt == "template" else FINAL_MARKER
        stop = StopCriteria.from_strings([close], lm.decode)
        g = generate_from_cache(run.model, logits, run.cache, replace(params, max_new_tokens=budget), lm.eos, stop)[0]
        think, natural = list(g.ids), g.finish_reason == "stop"
    # the decode loop does not write its last sampled token (nor EOS): feed it with the forced text, if any
    pending = think[-1:] if think and run.cache.length < run.T + len(think) else []
    forced = [] if natural else lm.encode_plain(forced_text(fmt))
    if pending or forced:
        logits = run.feed(pending + forced)
    seed = None if params.seed is None else params.seed + 1
    g = generate_from_cache(run.model, logits, run.cache, replace(params, max_new_tokens=answer_tokens, seed=seed),
                            lm.eos)[0]
    return Thought(think, forced, list(g.ids), g.finish_reason)


@dataclass(frozen=True)
class Thinking(Strategy):
    think_tokens: int = 8192
    name = "thinking"
    thinking = True
    budget_fields = ("think_tokens",)

    def __post_init__(self) -> None:
        check_int("think_tokens", self.think_tokens, 0)

    def reserve(self, max_new_tokens: int) -> int:
        return max_new_tokens + (self.think_tokens + FORCED_TEXT_RESERVE if self.think_tokens else 0)

    def run(self, lm: LM, req: Request) -> Outcome:
        t0 = time.perf_counter()
        enc = lm.encode(req.prompt, thinking=True)
        fmt, probe, A = enc.thinking_format, req.probe, req.max_new_tokens
        tail = max(A, len(probe.marker) + len(probe.answer)) if probe else A
        run = Prefilled(lm, enc.ids, think_slots(lm, fmt, self.think_tokens, tail), rewindable=probe is not None)
        th = think_sample(run, fmt, self.think_tokens, A, req.sampling())
        run.fed += run.cache.length - run.T
        wall = time.perf_counter() - t0
        measured = None
        if probe is not None:
            # the probe starts where thinking ended; after a "Final:" (scratchpad, or forced) only the marker's
            # tail precedes the answer
            run.cache.rewind(run.T + len(th.think) + len(th.forced))
            tail_only = fmt == "scratchpad" or not th.natural
            measured = run.probe(enc.ids + th.think + th.forced, probe.marker_tail if tail_only else probe.marker,
                                 probe)
        run.cache.restore(run.at_prompt)
        stats = {"prompt_tokens": run.T, "context_tokens": enc.context_len, "format": fmt,
                 "think_tokens": len(th.think), "forced": not th.natural, "generated_tokens": len(th.ids),
                 "finish_reason": th.finish_reason}
        return outcome(lm, th.ids, run.flops(), wall, stats, measured)


@dataclass(frozen=True)
class SelfConsistency(Strategy):
    think_tokens: int = 8192  # shared by all samples
    samples: int = 8
    params: SamplingParams = SC_PARAMS
    name = "self-consistency"
    thinking = True
    budget_fields = ("think_tokens",)

    def __post_init__(self) -> None:
        check_int("think_tokens", self.think_tokens, 0)
        check_int("samples", self.samples, 1)
        if self.params.greedy:
            raise CtxlabError("self-consistency needs sampling (temperature > 0); greedy samples are identical")

    def reserve(self, max_new_tokens: int) -> int:
        per = self.think_tokens // self.samples
        return max_new_tokens + (per + FORCED_TEXT_RESERVE if per else 0)

    def run(self, lm: LM, req: Request) -> Outcome:
        parse = req.parse or default_parse
        t0 = time.perf_counter()
        enc = lm.encode(req.prompt, thinking=True)
        fmt, per = enc.thinking_format, self.think_tokens // self.samples
        run = Prefilled(lm, enc.ids, think_slots(lm, fmt, per, req.max_new_tokens))
        answers, parsed, texts, thoughts = [], [], [], []
        for i in range(self.samples):
            seed = req.seed + 2 * i  # the per-request seed keeps resumed runs identical; seed + 1 is the answer phase
            th = think_sample(run, fmt, per, req.max_new_tokens, replace(self.params, seed=seed))
            run.reset()
            thoughts.append(th)
            texts.append(lm.decode(th.ids))
            answers.append(answer_text(texts[-1]))
            parsed.append(parse(answers[-1]))
        votes = Counter(p for p in parsed if p is not None)
        idx = 0
        if votes:
            best = max(votes.values())
            idx = next(i for i, p in enumerate(parsed) if p is not None and votes[p] == best)  # ties: first sampled
        stats = {"prompt_tokens": run.T, "context_tokens": enc.context_len, "format": fmt, "per_sample_budget": per,
                 "votes": dict(votes), "answers": answers, "generations": texts, "winner": parsed[idx]}
        return Outcome(answers[idx], texts[idx], run.flops(), time.perf_counter() - t0, tuple(thoughts[idx].ids),
                       stats)

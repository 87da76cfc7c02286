"""The strategy contract: a `Request` in, an `Outcome` (answer text, generation, FLOPs, diagnostics) out.

    outcome = strategy.run(lm, Request(Prompt(context, question), max_new_tokens=64))

`lm` is an `LM`: a ctxlab model and its tokenizer. Every strategy (in-context, thinking, self-consistency, qTTT) is a
frozen dataclass of its options implementing `run`, `reserve` (cache slots it generates after the prompt) and
`describe`; `run_many(backend, requests)` is what the eval runner calls: native backends run each request through
`run`, remote backends (in-context only) generate in batches on the server.

`Request.prompt` is a `Prompt(context, question)` (rendered in the lab-wide format of ctxlab/tasks/format.py, with
the thinking instruction when the strategy thinks; the context/question split lets qTTT draw spans from the context
only) or an already rendered string (used verbatim as the user message). With a chat template the text becomes one
user turn; thinking-capable templates (those reading `enable_thinking`, Qwen3) get `enable_thinking` True for
thinking strategies and False otherwise. `Request.probe` asks for attention diagnostics (`AnswerProbe`): the
reference answer is teacher-forced where the strategy would answer and the attention mass on the evidence measured
(ctxlab/strategies/diagnostics.py); probes cost nothing in `Outcome.flops`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, cast

import torch
from torch import nn

from ctxlab.engine import SamplingParams, prefill
from ctxlab.errors import CtxlabError
from ctxlab.strategies.diagnostics import Probe, probe_answer
from ctxlab.strategies.flops import ArchCost
from ctxlab.tasks.format import answer_text, format_prompt

Parse = Callable[[str], Any]


@dataclass(frozen=True)
class Prompt:
    context: str
    question: str
    system: str | None = None

    def text(self, thinking: bool = False) -> str:
        body = format_prompt(self.context, self.question, thinking)
        return f"{self.system}\n\n{body}" if self.system else body


@dataclass(frozen=True)
class AnswerProbe:
    """Diagnostics to take while answering: `evidence` = prompt token positions; `answer` = the reference answer
    tokens; `marker` = the tokens between a direct prompt and the answer ("Final:" and a lone space token);
    `marker_tail` = the part of `marker` after "Final:" (appended where the model wrote its own "Final:")."""

    evidence: tuple[int, ...]
    answer: tuple[int, ...]
    marker: tuple[int, ...] = ()
    marker_tail: tuple[int, ...] = ()

    def slots(self, extra: Sequence[int]) -> int:
        """Cache slots a probe after `extra` appended tokens needs beyond the point it starts from."""
        return len(extra) + len(self.answer)


@dataclass(frozen=True)
class Request:
    """One prompt to answer. `seed` seeds sampling (and qTTT's span draws); `parse` maps an answer text to the value
    self-consistency votes on (default: its first line)."""

    prompt: Prompt | str
    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    parse: Parse | None = None
    probe: AnswerProbe | None = None

    def text(self, thinking: bool = False) -> str:
        """The prompt as plain text (what a remote backend is sent)."""
        return self.prompt.text(thinking) if isinstance(self.prompt, Prompt) else self.prompt

    def sampling(self) -> SamplingParams:
        """Greedy at temperature 0, else sampling seeded by the request."""
        if self.temperature > 0:
            return SamplingParams(temperature=self.temperature, seed=self.seed)
        return SamplingParams()


@dataclass(frozen=True)
class Outcome:
    answer_text: str
    generation: str
    flops: float | None  # analytic, paper unit (multiply-accumulates); None when a server generated it
    wall_s: float
    tokens: tuple[int, ...] = ()  # generated token ids (native strategies)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    probe: Probe | None = None  # the AnswerProbe's measurement, when the request asked for one


@dataclass(frozen=True)
class LM:
    """A ctxlab model and its tokenizer: what native strategies run on."""

    model: nn.Module
    tokenizer: Any
    chat: bool = True  # render prompts with the tokenizer's chat template when it has one (False: raw text)

    def encode(self, prompt: Prompt | str, thinking: bool) -> Encoded:
        return encode_prompt(self.tokenizer, prompt, thinking, chat=self.chat)

    @property
    def eos(self) -> tuple[int, ...]:
        return tuple(getattr(self.tokenizer, "eos_token_ids", ()) or ())

    def cost(self) -> ArchCost:
        return ArchCost.from_config(self.model.cfg)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def encode_plain(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)


class Strategy:
    """Base of the strategies: subclasses are frozen dataclasses with `name` and `run`."""

    name: ClassVar[str]
    thinking: ClassVar[bool] = False  # writes a thinking block before the answer (prompt format, length fitting)
    needs_weights: ClassVar[bool] = True  # needs a native LM (the weights and the KV cache)
    budget_fields: ClassVar[tuple[str, ...]] = ()  # options set from the run's thinking budget

    def run(self, lm: LM, req: Request) -> Outcome:
        raise NotImplementedError

    def reserve(self, max_new_tokens: int) -> int:
        """Cache slots generated after the prompt for an answer of `max_new_tokens` tokens."""
        return max_new_tokens

    def describe(self) -> dict[str, Any]:
        """Name, class and the scalar options (the thinking budget is recorded by the runner itself)."""
        values = {f.name: getattr(self, f.name) for f in fields(cast(Any, self))}
        opts = {k: v for k, v in values.items()
                if k not in self.budget_fields and (v is None or isinstance(v, (bool, int, float, str, tuple)))}
        return {"name": self.name, "kind": type(self).__name__, "options": opts}

    def run_many(self, backend: Any, reqs: Sequence[Request]) -> Iterator[tuple[int, Outcome]]:
        """(index, outcome) as requests finish; native backends run them one at a time through `run`."""
        lm = backend.lm
        if lm is None:
            raise CtxlabError(f"strategy {self.name} needs the native backend")
        for i, r in enumerate(reqs):
            yield i, self.run(lm, r)


def default_parse(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


# ------------------------------------------------------------------------------------------------ prompts


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    context_len: int | None  # prompt tokens up to the end of the context (None: unknown, str prompt)
    thinking_format: str  # "template" (<think> via enable_thinking) | "scratchpad" | "none"


def supports_thinking(tokenizer) -> bool:
    """The chat template reads `enable_thinking` (Qwen3-style <think> blocks)."""
    if not getattr(tokenizer, "has_chat_template", False):
        return False
    try:
        return "enable_thinking" in tokenizer.get_chat_template()
    except CtxlabError:
        return False


def encode_prompt(tokenizer, prompt: Prompt | str, thinking: bool, *, chat: bool = True) -> Encoded:
    """Token ids of the prompt, the number of tokens through the end of the context, and the thinking format.
    `chat` False: raw text (with the tokenizer's special tokens) even when a chat template exists."""
    template = chat and getattr(tokenizer, "has_chat_template", False)
    native = template and supports_thinking(tokenizer)
    fmt = ("template" if native else "scratchpad") if thinking else "none"
    if isinstance(prompt, Prompt):
        body = format_prompt(prompt.context, prompt.question, thinking=thinking and not native)
        system, ctx_end = prompt.system, prompt.context
    else:
        body, system, ctx_end = prompt, None, None
    if template:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": body}]
        kw = {"enable_thinking": thinking} if native else {}
        text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, **kw)
        special = False
    else:
        text = f"{system}\n\n{body}" if system else body
        special = True
    ids = tokenizer.encode(text, add_special_tokens=special)
    context_len = None
    if ctx_end is not None and ctx_end in text:
        cut = text.index(ctx_end) + len(ctx_end)
        context_len = min(len(tokenizer.encode(text[:cut], add_special_tokens=special)), len(ids))
    if not ids:
        raise CtxlabError("the prompt encodes to no tokens")
    return Encoded(ids, context_len, fmt)


# ------------------------------------------------------------------------------------------------ one prefill


class Prefilled:
    """One prompt's prefilled cache plus exact accounting of the tokens written after it."""

    def __init__(self, lm: LM, ids: list[int], extra_slots: int, *, rewindable: bool = False):
        model = lm.model
        limit = getattr(model, "max_context", None)
        T = len(ids)
        if limit is not None and T + extra_slots > limit:
            raise CtxlabError(f"prompt of {T} tokens + {extra_slots} generated tokens exceeds the model's context "
                              f"of {limit} tokens; lower the budget or shorten the context")
        self.lm, self.model, self.ids, self.T = lm, model, ids, T
        self.device = next(model.parameters()).device
        self.cache = model.new_cache(1, T + extra_slots, rewindable=rewindable)
        with torch.inference_mode():
            self.logits, _ = prefill(model, self.tensor(ids), None, self.cache)  # (1, V)
        self.fed = 0  # tokens written after the prompt, over all samples
        self.at_prompt = self.cache.snapshot()

    def tensor(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.tensor([list(ids)], dtype=torch.long, device=self.device)

    def feed(self, ids: Sequence[int]) -> torch.Tensor:
        """Append ids to the cache; the last position's logits (1, V)."""
        with torch.inference_mode():
            out, _ = self.model(self.tensor(ids), self.cache, last_only=True)
        return out[:, -1]

    def reset(self) -> int:
        """Back to the prompt; returns the tokens written since (counted in `fed`)."""
        n = self.cache.length - self.T
        self.fed += n
        self.cache.restore(self.at_prompt)
        return n

    def probe(self, prefix: Sequence[int], extra: Sequence[int], probe: AnswerProbe) -> Probe:
        """The probe's measurement with the current weights: the cache holds `prefix` (the prompt, or the prompt
        and a scratchpad); `extra` is appended, the answer teacher-forced, and the cache put back as it was."""
        return run_probe(self.model, self.cache, prefix, extra, probe)

    def flops(self) -> float:
        """The prefill plus every token written after it."""
        cost = self.lm.cost()
        return cost.prefill(self.T) + cost.decode(self.T, self.fed)


def run_probe(model: nn.Module, cache: Any, prefix: Sequence[int], extra: Sequence[int], probe: AnswerProbe) -> Probe:
    """`AnswerProbe` on `cache` (holding `prefix`): append `extra`, teacher-force the answer, restore the cache."""
    snap = cache.snapshot()
    try:
        if extra:
            device = next(model.parameters()).device
            with torch.no_grad():
                model(torch.tensor([list(extra)], dtype=torch.long, device=device), cache, last_only=True)
        return probe_answer(model, cache, list(prefix) + list(extra), probe.evidence, probe.answer)
    finally:
        cache.restore(snap)


def outcome(lm: LM, ids: Sequence[int], flops: float, wall_s: float, diagnostics: dict[str, Any],
            probe: Probe | None = None) -> Outcome:
    """An Outcome from generated token ids: the generation text and its answer text (tasks/format.py)."""
    text = lm.decode(ids)
    return Outcome(answer_text(text), text, flops, wall_s, tuple(ids), diagnostics, probe)

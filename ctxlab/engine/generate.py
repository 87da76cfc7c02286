"""Token-level generation over the model protocol (see ctxlab/models/llama.py): batched, left-padded prompts,
one preallocated cache, per-sequence EOS / stop / length finishing, and a single-prompt streaming iterator.

Shapes:  B batch · T padded prompt length · V vocab.
Flow:    prompts → fit to the context limit (error, or explicit left-truncation) → left-pad ids (B, T) + valid
         (B, T) → cache of T + max_new_tokens - 1 slots → prefill (last-token logits (B, V)) → per step: sample
         (B,) → one host copy of the B ids (EOS / stop / streaming) → decode_step on the sampled ids.
The last sampled token is never fed back, hence the "- 1". Finished rows keep decoding (their output is ignored)
so the batch shape stays fixed; generation stops when every row has finished.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ctxlab.checks import check_int
from ctxlab.engine.sampling import SamplingParams, make_generator, sample
from ctxlab.errors import CtxlabError

StopCheck = Callable[[Sequence[int]], bool]  # ctxlab.engine.stopping.StopCriteria or any such callable

FINISH_REASONS = ("eos", "length", "stop")


@dataclass(frozen=True)
class Generation:
    """One sequence's new token ids (EOS excluded), why it ended, the prompt tokens it was conditioned on
    (after truncation) and how many prompt tokens were cut from the left to fit the context (0 = none)."""

    ids: list[int]
    finish_reason: str  # "eos" | "length" | "stop"
    prompt_tokens: int
    truncated: int = 0


@dataclass
class GenerationStats:
    """Timing of one generate/stream call. `prefill_s` ends when the prompt logits are ready; `decode_s` covers
    everything after (sampling every new token and the decode forward passes; for `stream` also the consumer's
    time between tokens). `new_tokens` counts tokens sampled for unfinished rows, a terminating EOS included."""

    batch: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    steps: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s

    @property
    def prefill_tok_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_per_s(self) -> float:
        return self.new_tokens / self.decode_s if self.decode_s > 0 else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "batch": self.batch, "prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens,
            "steps": self.steps, "prefill_s": self.prefill_s, "decode_s": self.decode_s, "total_s": self.total_s,
            "prefill_tok_per_s": self.prefill_tok_per_s, "decode_tok_per_s": self.decode_tok_per_s,
        }

    def summary(self) -> str:
        return (
            f"prefill {self.prompt_tokens} tok in {self.prefill_s:.3f} s ({self.prefill_tok_per_s:.1f} tok/s) · "
            f"decode {self.new_tokens} tok in {self.decode_s:.3f} s ({self.decode_tok_per_s:.1f} tok/s)"
        )


class GenerationBatch(list[Generation]):
    """The list of generations, in prompt order, plus the call's `stats`."""

    def __init__(self, items: Iterable[Generation], stats: GenerationStats):
        super().__init__(items)
        self.stats = stats


# ------------------------------------------------------------------------------------------------ helpers


def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _sync(device: torch.device) -> None:
    """Wait for queued device work so wall-clock timings mean something (twice per call, not per step)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _eos_set(eos_ids: Iterable[int] | int | None) -> frozenset[int]:
    if eos_ids is None:
        return frozenset()
    ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids)
    if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in ids):
        raise CtxlabError(f"eos ids must be non-negative integers, got {ids!r}")
    return frozenset(ids)


def fit_prompts(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    max_context: int | None = None,
    truncate: bool = False,
) -> tuple[list[list[int]], list[int]]:
    """Validate prompts against the vocabulary and the context limit (prompt + max_new_tokens <= limit).
    Too long → CtxlabError, or with truncate=True keep each prompt's last tokens. Returns (prompts, cut counts)."""
    if not isinstance(params, SamplingParams):
        raise CtxlabError(f"params must be a SamplingParams, got {type(params).__name__}")
    if len(prompts) == 0:
        raise CtxlabError("no prompts to generate from")
    limit = model.max_context if max_context is None else max_context
    check_int("max_context", limit, 1)
    new = params.max_new_tokens
    budget = limit - new
    if budget < 1:
        raise CtxlabError(
            f"{new} new tokens leave no room for a prompt in the model's context of {limit} tokens; "
            "lower --max-new-tokens"
        )
    vocab = getattr(getattr(model, "cfg", None), "vocab_size", None)
    out: list[list[int]] = []
    cut: list[int] = []
    for i, p in enumerate(prompts):
        p = p.tolist() if isinstance(p, Tensor) else list(p)
        name = "prompt" if len(prompts) == 1 else f"prompt {i}"
        if not p:
            raise CtxlabError(f"{name} is empty; generation needs at least one prompt token")
        lo, hi = min(p), max(p)
        if lo < 0 or (vocab is not None and hi >= vocab):
            bad = lo if lo < 0 else hi
            raise CtxlabError(f"{name} holds token id {bad}, outside the model's vocabulary of {vocab} ids")
        n = len(p)
        if n > budget:
            if not truncate:
                raise CtxlabError(
                    f"{name} of {n} tokens + {new} new tokens exceeds the model's context of {limit} tokens; "
                    f"pass --truncate to keep its last {budget} tokens, or lower --max-new-tokens"
                )
            p = p[n - budget :]  # explicit left-truncation: the end of a prompt (the question) matters most
        out.append(p)
        cut.append(n - len(p))
    return out, cut


def left_pad(prompts: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> tuple[Tensor, Tensor | None]:
    """ids (B, T) left-padded with id 0 and valid (B, T) (False on padding); valid is None when nothing is padded."""
    lens = [len(p) for p in prompts]
    B, T = len(prompts), max(lens)
    ids = torch.zeros(B, T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - lens[i] :] = torch.tensor(p, dtype=torch.long)
    valid = None
    if min(lens) < T:
        valid = torch.arange(T)[None, :] >= torch.tensor([T - n for n in lens])[:, None]  # (B, T)
        valid = valid.to(device)
    return ids.to(device), valid


# ----------------------------------------------------------------------------------------- model calls


def prefill(
    model: nn.Module, ids: Tensor, valid: Tensor | None, cache, *, chunk_size: int | None = None
) -> tuple[Tensor, object]:
    """Run the prompt ids (B, T) (valid False = left padding) into `cache`; return the last position's logits
    (B, V) and the cache. chunk_size splits long prompts into several calls to bound activation memory.
    No grad mode is forced here (generate/stream use inference_mode; qTTT needs a cache it can backprop through)."""
    T = ids.shape[1]
    if T == 0:
        raise CtxlabError("cannot prefill an empty prompt")
    step = T if not chunk_size else chunk_size
    if step < 1:
        raise CtxlabError(f"prefill chunk size must be >= 1, got {chunk_size}")
    logits = None
    for s in range(0, T, step):
        part_valid = None if valid is None else valid[:, s : s + step]
        logits, cache = model(ids[:, s : s + step], cache, part_valid, last_only=True)  # (B, 1, V)
    return logits[:, -1], cache  # (B, V)


def decode_step(model: nn.Module, token: Tensor, cache) -> tuple[Tensor, object]:
    """Append one token per row (token (B,) or (B, 1)) to the cache; return its next-token logits (B, V)."""
    logits, cache = model(token.view(-1, 1), cache)  # (B, 1, V)
    return logits[:, -1], cache


# ------------------------------------------------------------------------------------------- decode loop


@dataclass
class _State:
    ids: list[list[int]]
    reasons: list[str | None]
    stats: GenerationStats = field(default_factory=GenerationStats)


def _decode_steps(
    model: nn.Module,
    logits: Tensor,
    cache,
    params: SamplingParams,
    eos: frozenset[int],
    stop: StopCheck | None,
    generator: torch.Generator | None,
    state: _State,
) -> Iterator[list[int | None]]:
    """The hot loop. After each sampling step, yields per row the id it appended (None: finished / EOS).
    One device→host copy per step (`tolist`) serves EOS, stop checks and streaming alike. inference_mode is
    entered per step, never across a yield, so it cannot leak into a streaming consumer's code."""
    B = logits.shape[0]
    ids, reasons, stats = state.ids, state.reasons, state.stats
    running = B
    max_new = params.max_new_tokens
    for step in range(max_new):
        with torch.inference_mode():
            nxt = sample(logits, params, generator)  # (B,)
            toks = nxt.tolist()  # the one host sync per step
        appended: list[int | None] = [None] * B
        for i, tok in enumerate(toks):
            if reasons[i] is not None:
                continue
            stats.new_tokens += 1
            if tok in eos:
                reasons[i] = "eos"
                running -= 1
                continue
            ids[i].append(tok)
            appended[i] = tok
            if stop is not None and stop(ids[i]):
                reasons[i] = "stop"
                running -= 1
        stats.steps += 1
        yield appended
        if running == 0 or step + 1 == max_new:
            break
        with torch.inference_mode():
            logits, cache = decode_step(model, nxt, cache)
    for i in range(B):
        if reasons[i] is None:
            reasons[i] = "length"


def _check_capacity(cache, params: SamplingParams) -> None:
    need = getattr(cache, "length", 0) + params.max_new_tokens - 1
    cap = getattr(cache, "capacity", None)
    if cap is not None and need > cap:
        raise CtxlabError(f"the cache holds {cap} slots but decoding {params.max_new_tokens} tokens needs {need}")


def generate_from_cache(
    model: nn.Module,
    logits: Tensor,
    cache,
    params: SamplingParams,
    eos_ids: Iterable[int] | int | None = (),
    stop: StopCheck | None = None,
    *,
    prompt_tokens: Sequence[int] | None = None,
    truncated: Sequence[int] | None = None,
) -> GenerationBatch:
    """Generate from an already prefilled cache, given its last-position logits (B, V): the entry point for
    callers that build the cache themselves (qTTT: prefill, adapt W_Q, recompute the last logits, decode).
    The cache needs `cache.length + max_new_tokens - 1` slots. stats.prefill_s is 0 here."""
    _check_capacity(cache, params)
    device = logits.device
    B = logits.shape[0]
    plen = list(prompt_tokens) if prompt_tokens is not None else [getattr(cache, "length", 0)] * B
    state = _State([[] for _ in range(B)], [None] * B, GenerationStats(batch=B, prompt_tokens=sum(plen)))
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in _decode_steps(
            model, logits, cache, params, _eos_set(eos_ids), stop, make_generator(params.seed, device), state
        ):
            pass
    _sync(device)
    state.stats.decode_s = time.perf_counter() - t0
    cut = list(truncated) if truncated is not None else [0] * B
    gens = (Generation(state.ids[i], state.reasons[i], plen[i], cut[i]) for i in range(B))
    return GenerationBatch(gens, state.stats)


def generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    eos_ids: Iterable[int] | int | None = (),
    stop: StopCheck | None = None,
    max_context: int | None = None,
    truncate: bool = False,
    *,
    prefill_chunk: int | None = None,
) -> GenerationBatch:
    """Generate for a batch of prompts (token id lists of any lengths) in one left-padded batch.

    Each sequence ends on its own: an id in `eos_ids` ("eos", not included in `ids`), `stop(ids)` returning True
    ("stop"), or max_new_tokens ("length"). prompt + max_new_tokens must fit `max_context` (default
    model.max_context) unless truncate=True, which keeps each prompt's last tokens and reports the cut count.
    Returns a GenerationBatch (a list of Generation, in prompt order) whose `.stats` holds the timings."""
    eos = _eos_set(eos_ids)
    fitted, cut = fit_prompts(model, prompts, params, max_context, truncate)
    device = model_device(model)
    B = len(fitted)
    stats = GenerationStats(batch=B, prompt_tokens=sum(len(p) for p in fitted))
    state = _State([[] for _ in range(B)], [None] * B, stats)
    t0 = time.perf_counter()
    with torch.inference_mode():
        ids, valid = left_pad(fitted, device)
        cache = model.new_cache(B, ids.shape[1] + params.max_new_tokens - 1)
        logits, cache = prefill(model, ids, valid, cache, chunk_size=prefill_chunk)
        _sync(device)
        t1 = time.perf_counter()
        generator = make_generator(params.seed, device)
        for _ in _decode_steps(model, logits, cache, params, eos, stop, generator, state):
            pass
        _sync(device)
    stats.prefill_s, stats.decode_s = t1 - t0, time.perf_counter() - t1
    gens = (Generation(state.ids[i], state.reasons[i], len(fitted[i]), cut[i]) for i in range(B))
    return GenerationBatch(gens, stats)


class TokenStream:
    """Iterator over one prompt's new token ids as they are produced (EOS is not yielded). Once exhausted,
    `generation` (a Generation) and `stats` are set; if the consumer stops early, `generation` stays None.
    Prompt validation (context limit) happens when the stream is created; the prefill runs on the first next()."""

    def __init__(self, run: Callable[[TokenStream], Iterator[int]], prompt_tokens: int, truncated: int):
        self.prompt_tokens = prompt_tokens
        self.truncated = truncated
        self.generation: Generation | None = None
        self.stats = GenerationStats(batch=1, prompt_tokens=prompt_tokens)
        self._it = run(self)

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> int:
        return next(self._it)

    def close(self) -> None:
        self._it.close()


def stream(
    model: nn.Module,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    eos_ids: Iterable[int] | int | None = (),
    stop: StopCheck | None = None,
    max_context: int | None = None,
    truncate: bool = False,
    *,
    prefill_chunk: int | None = None,
) -> TokenStream:
    """Like generate() for a single prompt, but yields each token id as soon as it is sampled."""
    eos = _eos_set(eos_ids)
    (fitted,), (cut,) = fit_prompts(model, [prompt_ids], params, max_context, truncate)

    def run(ts: TokenStream) -> Iterator[int]:
        device = model_device(model)
        state = _State([[]], [None], ts.stats)
        t0 = time.perf_counter()
        with torch.inference_mode():
            ids, _ = left_pad([fitted], device)
            cache = model.new_cache(1, len(fitted) + params.max_new_tokens - 1)
            logits, cache = prefill(model, ids, None, cache, chunk_size=prefill_chunk)
            _sync(device)
        t1 = time.perf_counter()
        ts.stats.prefill_s = t1 - t0
        generator = make_generator(params.seed, device)
        for (tok,) in _decode_steps(model, logits, cache, params, eos, stop, generator, state):
            if tok is not None:
                yield tok
        _sync(device)
        ts.stats.decode_s = time.perf_counter() - t1
        ts.generation = Generation(state.ids[0], state.reasons[0], len(fitted), cut)

    return TokenStream(run, len(fitted), cut)

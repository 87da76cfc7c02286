"""Generation engine on token ids (no tokenization here): sampling, batched generate, streaming, stop criteria."""

from ctxlab.engine.generate import (
    FINISH_REASONS,
    Generation,
    GenerationBatch,
    GenerationStats,
    TokenStream,
    decode_step,
    fit_prompts,
    generate,
    generate_from_cache,
    left_pad,
    prefill,
    stream,
)
from ctxlab.engine.sampling import SamplingParams, logits_to_probs, make_generator, sample, sample_from_probs
from ctxlab.engine.stopping import StopCriteria, trim_at_stop

__all__ = [
    "FINISH_REASONS",
    "Generation",
    "GenerationBatch",
    "GenerationStats",
    "SamplingParams",
    "StopCriteria",
    "TokenStream",
    "decode_step",
    "fit_prompts",
    "generate",
    "generate_from_cache",
    "left_pad",
    "logits_to_probs",
    "make_generator",
    "prefill",
    "sample",
    "sample_from_probs",
    "stream",
    "trim_at_stop",
]

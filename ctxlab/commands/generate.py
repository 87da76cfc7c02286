"""Text-level generation for the CLI: tokenizer + model + engine, streaming decoded text as it is produced."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from ctxlab.engine.generate import stream
from ctxlab.engine.sampling import SamplingParams
from ctxlab.engine.stopping import StopCriteria
from ctxlab.models.loading import load_model, resolve_model_path
from ctxlab.tokenizer import IncrementalDecoder, Tokenizer


def stream_text(
    model: str | os.PathLike,
    prompt: str,
    params: SamplingParams,
    *,
    chat: bool = False,
    stop: list[str] | None = None,
    truncate: bool = False,
    dtype: str | None = None,
    device: str = "cpu",
    out: TextIO,
) -> str:
    """Write the completion of `prompt` to `out` as it is generated; return a one-line timing summary.

    The tokenizer and chat template are checked before the weights are loaded, so bad input fails fast."""
    path = resolve_model_path(model)
    tok = Tokenizer.from_dir(path)
    if chat:
        ids = tok.encode_chat([{"role": "user", "content": prompt}], add_generation_prompt=True)
    else:
        ids = tok.encode(prompt)
    stop_criteria = StopCriteria.from_strings(stop, tok.decode) if stop else None
    loaded = load_model(path, dtype=dtype, device=device)
    for notice in loaded.notices:
        print(f"note: {notice}", file=sys.stderr)
    ts = stream(loaded.model, ids, params, eos_ids=tok.eos_token_ids, stop=stop_criteria, truncate=truncate)
    decoder = IncrementalDecoder(tok, prompt_ids=ids[-8:])
    text = ""
    for token in ts:
        piece = decoder.add(token)
        text += piece
        out.write(piece)
        out.flush()
    out.write(decoder.flush())
    note = f" · prompt left-truncated by {ts.truncated} tokens" if ts.truncated else ""
    reason = ts.generation.finish_reason if ts.generation else "interrupted"
    return f"[{reason}] {ts.stats.summary()}{note}"

"""`ctxlab generate MODEL --prompt TEXT|@FILE`: stream a completion (tokenizer + model + engine, decoded text written
as it is produced)."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any, TextIO

import typer

from ctxlab.commands.common import DeviceOpt, DtypeOpt, ModelArg


def run(
    model: ModelArg,
    prompt: Annotated[str, typer.Option(help="the prompt text (use @FILE to read it from a file)")],
    chat: Annotated[bool, typer.Option(help="wrap the prompt in the model's chat template")] = False,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
    top_k: Annotated[int, typer.Option(help="0 = off")] = 0,
    top_p: Annotated[float, typer.Option(help="nucleus sampling mass (1 = off)")] = 1.0,
    seed: int = 0,
    stop: Annotated[list[str] | None, typer.Option(help="stop string (repeatable)")] = None,
    truncate: Annotated[bool, typer.Option(help="left-truncate a prompt that exceeds the context")] = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Stream a completion of PROMPT to stdout."""
    from ctxlab.checks import check_device
    from ctxlab.engine.sampling import SamplingParams
    from ctxlab.fileio import read_text_file

    check_device(device)
    params = SamplingParams(
        temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
    )
    text = read_text_file(prompt[1:], "prompt file") if prompt.startswith("@") else prompt
    stats = stream_text(model, text, params, chat=chat, stop=stop or [], truncate=truncate, dtype=dtype,
                        device=device, out=sys.stdout)
    print(file=sys.stdout, flush=True)
    print(stats, file=sys.stderr)


def stream_text(
    model: str | os.PathLike,
    prompt: str,
    params: Any,
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
    from ctxlab.engine.generate import stream
    from ctxlab.engine.stopping import StopCriteria
    from ctxlab.models.loading import load_model, resolve_model_path
    from ctxlab.tokenizer import IncrementalDecoder, Tokenizer

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

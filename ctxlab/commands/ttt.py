"""`ctxlab ttt MODEL --context FILE --question TEXT [--steps N] [--span K] [--lr LR]`: answer a question about a
long context with qTTT (the QTTT strategy with fixed steps) and print a short report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, TextIO

import typer

from ctxlab.checks import check_device, check_int
from ctxlab.commands.common import DeviceOpt, DtypeOpt, ModelArg
from ctxlab.errors import CtxlabError


def run(
    model: ModelArg,
    context: Annotated[Path, typer.Option(help="file holding the long context")],
    question: Annotated[str, typer.Option(help="the question asked after the context")],
    steps: Annotated[int, typer.Option(help="qTTT gradient steps N")] = 32,
    span: Annotated[int, typer.Option(help="span length k in tokens")] = 128,
    lr: Annotated[float, typer.Option(help="AdamW learning rate on the query projections")] = 1e-5,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    seed: int = 0,
    dtype: DtypeOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Query-only test-time training: one prefill, N steps on W_Q against the frozen cache, then the answer."""
    from ctxlab.fileio import read_text_file

    answer_with_qttt(model, read_text_file(context, "context file"), question, steps, span, lr,
                     max_new_tokens=max_new_tokens, seed=seed, dtype=dtype, device=device)


def answer_with_qttt(
    model_path: str,
    context_text: str,
    question: str,
    steps: int = 32,
    span: int = 128,
    lr: float = 1e-5,
    *,
    max_new_tokens: int = 64,
    seed: int = 0,
    region: str = "context",
    dtype: str | None = None,
    device: str = "cpu",
    out: TextIO | None = None,
) -> dict:
    """Load MODEL, adapt its queries on context + question (spans from the context by default), decode the answer,
    print it and a report (span loss before/after on a fixed probe span, FLOPs, time, the thinking budget the run
    is worth); returns the report as a dict. Options are validated before the model is loaded."""
    out = sys.stdout if out is None else out
    if not context_text.strip():
        raise CtxlabError("the context is empty")
    if not question.strip():
        raise CtxlabError("the question is empty")
    check_int("max_new_tokens", max_new_tokens, 1)
    check_device(device)
    from ctxlab.models.loading import load_model
    from ctxlab.strategies import LM, QTTT, Prompt, Request
    from ctxlab.tasks.format import answer_text
    from ctxlab.tokenizer import Tokenizer

    strategy = QTTT(steps=steps, span=span, lr=lr, region=region, probe=True)  # validated here, before loading

    loaded = load_model(model_path, dtype=dtype, device=device)
    lm = LM(loaded.model, Tokenizer.from_dir(loaded.path))
    res = strategy.run(lm, Request(Prompt(context_text, question), max_new_tokens, seed=seed))
    d = res.diagnostics
    generation = lm.tokenizer.decode(list(res.tokens), skip_special_tokens=True)
    T, k, N = d["prompt_tokens"], d["span"], len(d["losses"])
    report = {
        "answer": answer_text(generation),
        "generation": generation,
        "prompt_tokens": T,
        "context_tokens": d["context_tokens"],
        "steps": N,
        "span": k,
        "lr": lr,
        "region": d["region"],
        "span_loss_before": d["probe_loss_before"],
        "span_loss_after": d["probe_loss_after"],
        "first_step_loss": d["losses"][0] if N else None,
        "last_step_loss": d["losses"][-1] if N else None,
        "flops": d["flops_parts"],
        "flops_unit": "multiply-accumulates (paper convention; x2 for hardware FLOPs)",
        "matched_thinking_tokens": lm.cost().think_budget(T, k, N) if N else 0,
        "prefill_s": d["prefill_s"],
        "adapt_s": d["adapt_s"],
        "decode_s": d["decode_s"],
        "total_s": d["prefill_s"] + d["adapt_s"] + d["decode_s"],
        "finish_reason": d["finish_reason"],
    }
    answer = report["answer"]
    print(answer, file=out)
    print(format_report(report), file=out)
    return report


def format_report(r: dict) -> str:
    f = r["flops"]
    loss = (f"span loss {r['span_loss_before']:.4f} → {r['span_loss_after']:.4f} (fixed probe span)"
            if r["span_loss_before"] is not None else "span loss: no probe")
    return "\n".join([
        f"qTTT: {r['steps']} steps × span {r['span']} (lr {r['lr']:g}) over tokens [{r['region'][0]}, "
        f"{r['region'][1]}) of a {r['prompt_tokens']}-token prompt",
        loss,
        f"compute {f['total']:.3e} MAC (prefill {f['prefill']:.3e}, adaptation {f['adapt']:.3e}, "
        f"decode {f['decode']:.3e}); the adaptation costs as much as {r['matched_thinking_tokens']} thinking tokens",
        f"time {r['total_s']:.2f} s (prefill {r['prefill_s']:.2f} s, adaptation {r['adapt_s']:.2f} s, "
        f"decode {r['decode_s']:.2f} s)",
    ])

"""`ctxlab ttt MODEL --context FILE --question TEXT [--steps N] [--span K] [--lr LR]`: answer a question about a
long context with qTTT and print a short report. The CLI wiring (typer) lives in ctxlab/cli.py; this is the body."""

from __future__ import annotations

import sys
from typing import TextIO

from ctxlab.errors import CtxlabError
from ctxlab.strategies.flops import ArchCost
from ctxlab.strategies.native import Prompt, answer_text, encode_prompt, qttt_flops
from ctxlab.strategies.qttt import QTTTConfig, qttt_answer


def run_ttt_cli(
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
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise CtxlabError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    cfg = QTTTConfig(steps=steps, span=span, lr=lr, seed=seed, region=region)

    from ctxlab.models.loading import load_model
    from ctxlab.tokenizer import Tokenizer

    loaded = load_model(model_path, dtype=dtype, device=device)
    tok = Tokenizer.from_dir(loaded.path)
    model = loaded.model
    enc = encode_prompt(tok, Prompt(context_text, question), thinking=False)
    res = qttt_answer(model, enc.ids, cfg, max_new_tokens, tok.eos_token_ids, context_len=enc.context_len)
    generation = tok.decode(res.ids, skip_special_tokens=True)
    answer = answer_text(generation)
    cost = ArchCost.from_config(model.cfg)
    T, k, N = res.prompt_tokens, res.report.span, res.report.steps
    flops = qttt_flops(cost, res)
    equiv = cost.think_budget(T, k, N) if N else 0
    rep = res.report
    report = {
        "answer": answer,
        "generation": generation,
        "prompt_tokens": T,
        "context_tokens": enc.context_len,
        "steps": N,
        "span": k,
        "lr": lr,
        "region": list(rep.region),
        "span_loss_before": rep.probe_loss_before,
        "span_loss_after": rep.probe_loss_after,
        "first_step_loss": rep.losses[0] if rep.losses else None,
        "last_step_loss": rep.losses[-1] if rep.losses else None,
        "flops": flops,
        "flops_unit": "multiply-accumulates (paper convention; x2 for hardware FLOPs)",
        "matched_thinking_tokens": equiv,
        "prefill_s": res.prefill_s,
        "adapt_s": res.adapt_s,
        "decode_s": res.decode_s,
        "total_s": res.wall_time,
        "finish_reason": res.finish_reason,
    }
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

"""`ctxlab demo [--quick]`: the long-context sandbox sweep on the bundled model (ctxlab/apps/demo/sweep.py)."""

from __future__ import annotations

from typing import Annotated

import typer


def run(
    model: Annotated[str, typer.Option(help="'bundled' (the packaged sandbox model), a checkpoint dir or hub id")]
    = "bundled",
    tasks: Annotated[str, typer.Option(help="comma-separated sandbox tasks: kv, bank, code")] = "kv,bank,code",
    lengths: Annotated[str | None, typer.Option(help="comma-separated prompt lengths in tokens (default "
                                                     "256,512,1024,2048,4096; --quick: 256,1024)")] = None,
    n: Annotated[int | None, typer.Option(help="examples per task and length (default 12; --quick: 6)")] = None,
    strategies: Annotated[str, typer.Option(help="comma-separated: in-context, thinking, qttt")]
    = "in-context,thinking,qttt",
    think_budget: Annotated[int | None, typer.Option(help="thinking tokens at most; qTTT steps are FLOP-matched to "
                                                          "it (default 256; --quick: 128)")] = None,
    qttt_steps: Annotated[int | None, typer.Option(help="fixed qTTT steps; alone, the thinking budget is matched "
                                                        "to them instead")] = None,
    qttt_span: Annotated[int | None, typer.Option(help="qTTT span k in tokens (default 32)")] = None,
    qttt_lr: Annotated[float | None, typer.Option(help="qTTT AdamW learning rate on W_Q")] = None,
    qttt_region: Annotated[str | None, typer.Option(help="where qTTT spans come from: context (default) or prompt "
                                                         "(context + question)")] = None,
    max_answer_tokens: Annotated[int | None, typer.Option(help="answer tokens after 'Final:' (default 24)")] = None,
    seed: Annotated[int, typer.Option(help="first example seed (seeds seed..seed+n-1 at every length)")] = 0,
    out_dir: Annotated[str, typer.Option(help="results.json, table.md and demo.png go here")] = "demo_out",
    quick: Annotated[bool, typer.Option(help="a ~1-minute run: 2 lengths, fewer examples, smaller budget")] = False,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default 1: steady on shared machines)")]
    = None,
) -> None:
    """The long-context sandbox demo: accuracy and evidence attention of in-context answering, thinking and qTTT
    at matched compute as the context grows."""
    from ctxlab.apps.demo.sweep import make_config, run_demo

    run_demo(make_config(model, tasks, lengths, n, strategies, think_budget, qttt_steps, qttt_span, qttt_lr,
                         max_answer_tokens, seed, out_dir, quick, threads, qttt_region))

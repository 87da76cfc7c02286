"""`ctxlab tickets prepare|eval|selfplay|transcript|baseline|simulate`: the TicketTalk pipeline around the agent
(data and the initial checkpoint, scoring, self-play bookings, the recorded transcript, simulated dialogues);
the bodies are ctxlab/apps/tickets/pipeline.py and simulate.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ctxlab.fileio import check_writable_dir

app = typer.Typer(help="The TicketTalk pipeline: data, scoring, self-play and transcripts.", no_args_is_help=True,
                  add_completion=False)

DataOpt = Annotated[list[str], typer.Option(help="split TSV to score (repeatable)")]
LimitOpt = Annotated[int | None, typer.Option(help="first N rows")]


@app.command()
def prepare(
    out: Annotated[str, typer.Option(help="output directory")] = "runs/tickets",
    n_sim: Annotated[int, typer.Option(help="simulated training dialogues")] = 4000,
    n_sim_eval: Annotated[int, typer.Option(help="simulated evaluation dialogues")] = 200,
    seed: int = 0,
    seq_len: Annotated[int, typer.Option(help="longest training row in tokens")] = 512,
    sft_sim_dialogues: Annotated[int, typer.Option(help="simulated dialogues in the SFT data")] = 1500,
    vocab_size: Annotated[int, typer.Option(help="BPE vocabulary of the initial checkpoint")] = 3072,
) -> None:
    """Simulate dialogues, convert data, build the initial checkpoint."""
    from ctxlab.apps.tickets.pipeline import prepare as run

    check_writable_dir(out, "--out")
    run(out, n_sim=n_sim, n_sim_eval=n_sim_eval, seed=seed, seq_len=seq_len, sft_sim_dialogues=sft_sim_dialogues,
        vocab_size=vocab_size)


@app.command("eval")
def evaluate(
    model: Annotated[str, typer.Argument(help="checkpoint directory")],
    data: DataOpt,
    limit: LimitOpt = None,
    max_prompt_tokens: Annotated[int, typer.Option(help="history budget (oldest items dropped)")] = 512,
    out: Annotated[str | None, typer.Option(help="write the scores as JSON")] = None,
) -> None:
    """Score a checkpoint through the tickettalk task."""
    from ctxlab.apps.tickets.pipeline import evaluate as run

    if out:
        check_writable_dir(Path(out).expanduser().parent, "--out directory")
    res = {d: run(model, d, limit=limit, max_prompt_tokens=max_prompt_tokens) for d in data}
    if out:
        Path(out).write_text(json.dumps(res, indent=2))


@app.command()
def selfplay(
    model: Annotated[str, typer.Argument(help="checkpoint directory")],
    n: Annotated[int, typer.Option(help="simulated users")] = 20,
    seed: int = 10_000,
) -> None:
    """End-to-end bookings against simulated users."""
    from ctxlab.apps.tickets.pipeline import selfplay as run

    run(model, n, seed=seed)


@app.command()
def transcript(
    out: Annotated[str, typer.Option(help="markdown file to write")] = "docs/tickets_transcript.md",
    model: Annotated[str | None, typer.Option(help="checkpoint directory")] = None,
    user_script: Annotated[str | None, typer.Option(help="one user utterance per line")] = None,
    replay: Annotated[str | None, typer.Option(help="SEED:INDEX of a simulated dialogue whose rule-agent actions "
                                                    "are replayed")] = None,
) -> None:
    """Record one chat as markdown (docs/tickets_transcript.md)."""
    from ctxlab.apps.tickets.pipeline import parse_replay, transcript_doc

    check_writable_dir(Path(out).expanduser().parent, "--out directory")
    print(transcript_doc(out, model=model, user_script=user_script, replay=parse_replay(replay)))


@app.command()
def baseline(data: DataOpt, limit: LimitOpt = None) -> None:
    """Score trivial predictors."""
    from ctxlab.apps.tickets.pipeline import baselines

    for d in data:
        print(d, json.dumps(baselines(d, limit), indent=1))


@app.command()
def simulate(
    out: Annotated[str, typer.Option(help="split TSV to write")],
    n: Annotated[int, typer.Option(help="dialogues")] = 1000,
    seed: int = 0,
    as_json: Annotated[str | None, typer.Option("--json", help="also write the dialogues as TM-3 dialogue JSON")]
    = None,
) -> None:
    """Write simulated TicketTalk dialogues as a TM-3 split TSV."""
    from ctxlab.apps.tickets.simulate import write_simulated

    for path in (out, as_json):
        if path:
            check_writable_dir(Path(path).expanduser().parent, "output directory")
    print(write_simulated(out, n, seed, as_json))

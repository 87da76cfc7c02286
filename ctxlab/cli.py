"""The `ctxlab` command: typed functions turned into subcommands with typer.

Every command validates its options before loading a model; user errors (CtxlabError) become one line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ctxlab.errors import CtxlabError

app = typer.Typer(
    name="ctxlab",
    help="A fast, hackable PyTorch lab for open LLMs and long contexts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ModelArg = Annotated[str, typer.Argument(help="checkpoint directory or hub id (e.g. Qwen/Qwen3-0.6B)")]
DtypeOpt = Annotated[str | None, typer.Option(help="float32 (CPU default), bfloat16, float16")]
DeviceOpt = Annotated[str, typer.Option(help="cpu or cuda[:N]")]


@app.command()
def info(
    model: ModelArg,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Family, shape, parameters, context length, licence and dtype of a checkpoint (reads no weights)."""
    from ctxlab.modelinfo import model_info

    facts = model_info(model)
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    for key, value in facts.items():
        print(f"{key:>22}: {value}")


@app.command()
def generate(
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
    from ctxlab.commands.generate import stream_text
    from ctxlab.engine.sampling import SamplingParams

    params = SamplingParams(
        temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
    )
    text = Path(prompt[1:]).read_text() if prompt.startswith("@") else prompt
    stats = stream_text(model, text, params, chat=chat, stop=stop or [], truncate=truncate, dtype=dtype,
                        device=device, out=sys.stdout)
    print(file=sys.stdout, flush=True)
    print(stats, file=sys.stderr)


@app.command()
def ttt(
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
    from ctxlab.commands.ttt import run_ttt_cli

    try:
        text = context.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CtxlabError(f"cannot read context file {context}: {e.__class__.__name__}") from None
    run_ttt_cli(model, text, question, steps, span, lr, max_new_tokens=max_new_tokens, seed=seed, dtype=dtype,
                device=device)


@app.command()
def train(
    kind: Annotated[str, typer.Argument(help="pretrain, sft or dpo")],
    config: Annotated[Path, typer.Option(help="TOML or JSON training config (see configs/)")],
    resume: Annotated[bool, typer.Option(help="continue from the last checkpoint in the config's out_dir")] = False,
) -> None:
    """Train on the one loop: pretraining, supervised fine-tuning or DPO, with HF-format checkpoints."""
    from ctxlab.train.run import train_cli

    if kind not in ("pretrain", "sft", "dpo"):
        raise CtxlabError(f"unknown training kind {kind!r}; choose from pretrain, sft, dpo")
    train_cli(kind, config, resume)


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Argument(help="checkpoint dir / hub id (native, hf) or served model name (openai, "
                                              "gemini)")],
    tasks: Annotated[str, typer.Option(help="comma-separated task names or families (see `ctxlab tasks`)")],
    strategy: Annotated[str, typer.Option(help="in-context, thinking, self-consistency, qttt")] = "in-context",
    budget_think_tokens: Annotated[int, typer.Option(help="thinking budget; qTTT is FLOP-matched to it")] = 8192,
    limit: Annotated[int | None, typer.Option(help="first N samples of each task")] = None,
    data_dir: Annotated[list[str] | None, typer.Option(help="PATH, or TASK_OR_FAMILY=PATH (repeatable)")] = None,
    out: Annotated[str | None, typer.Option(help="run directory (default runs/<model>--<strategy>)")] = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --out (same settings)")] = False,
    backend: Annotated[str, typer.Option(help="native, hf, openai, gemini (or package.module:Class)")] = "native",
    base_url: Annotated[str | None, typer.Option(help="openai: server URL up to /v1")] = None,
    api: Annotated[str | None, typer.Option(help="openai: chat or completions")] = None,
    concurrency: Annotated[int | None, typer.Option(help="remote: requests in flight")] = None,
    timeout: Annotated[float | None, typer.Option(help="remote: seconds per request")] = None,
    max_retries: Annotated[int | None, typer.Option(help="remote: retries on 429/5xx/timeouts")] = None,
    context_length: Annotated[int | None, typer.Option(help="remote: the model's context in tokens")] = None,
    dtype: DtypeOpt = None,
    device: Annotated[str | None, typer.Option(help="native/hf: cpu or cuda[:N]")] = None,
    backend_opt: Annotated[list[str] | None, typer.Option(help="backend option KEY=VALUE (repeatable)")] = None,
    task_opt: Annotated[list[str] | None, typer.Option(help="task option KEY=VALUE, e.g. n_tokens=4096")] = None,
    strategy_opt: Annotated[list[str] | None, typer.Option(help="strategy option KEY=VALUE, e.g. samples=4")] = None,
    metrics: Annotated[str | None, typer.Option(help="comma-separated subset of the tasks' metrics")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="answer tokens (default: each task's own)")] = None,
    temperature: Annotated[float | None, typer.Option(help="default: each task's own (0 = greedy)")] = None,
    seed: int = 0,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for standard errors")] = 1000,
    progress: Annotated[bool, typer.Option(help="progress bar with ETA on a terminal")] = True,
) -> None:
    """Evaluate MODEL on tasks; per-sample results are committed as they finish (resume with --resume).
    Data parallel: torchrun --nproc-per-node N -m ctxlab eval ..."""
    from ctxlab.commands.eval import eval_cli

    eval_cli(model, tasks, strategy, budget_think_tokens, limit, data_dir or (), out, resume, backend,
             base_url=base_url, api=api, concurrency=concurrency, timeout=timeout, max_retries=max_retries,
             context_length=context_length, dtype=dtype, device=device, backend_opt=backend_opt or (),
             task_opt=task_opt or (), strategy_opt=strategy_opt or (), metrics=metrics,
             max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, bootstrap=bootstrap,
             progress=progress)


@app.command()
def tasks() -> None:
    """List the evaluation tasks with versions, languages, metrics and truncation policies."""
    from ctxlab.commands.eval import tasks_cli

    tasks_cli()


@app.command()
def report(
    run_dirs: Annotated[list[str], typer.Argument(help="finished run directories (holding results.json)")],
    out_png: Annotated[str, typer.Option(help="bar chart path ('' = none)")] = "report.png",
) -> None:
    """Compare runs side by side: a table of scores ± stderr and a PNG chart."""
    from ctxlab.commands.eval import report_cli

    report_cli(run_dirs, out_png or None)


@app.command()
def card(
    name: Annotated[str, typer.Argument(help="a task name (see `ctxlab tasks`)")],
    fmt: Annotated[str, typer.Option("--format", help="md, html or json")] = "md",
) -> None:
    """Print a task's GEM-style data card."""
    from ctxlab.commands.eval import card_cli

    card_cli(name, fmt)


@app.command()
def chat(
    app_name: Annotated[str, typer.Argument(metavar="APP", help="the chat app (only: tickets)")],
    model: ModelArg,
    user_script: Annotated[Path | None, typer.Option(help="batch mode: one user utterance per line")] = None,
    simulate_user: Annotated[bool, typer.Option(help="batch mode: a rule-based user with a sampled goal")] = False,
    seed: Annotated[int, typer.Option(help="the simulated user's goal")] = 0,
    db: Annotated[Path | None, typer.Option(help="SQLite booking database (default: a temporary one)")] = None,
    max_turns: Annotated[int, typer.Option(min=1, help="user turns at most")] = 20,
    transcript: Annotated[Path | None, typer.Option(help="write STEM.jsonl and STEM.txt (batch default: "
                                                         "runs/chat/tickets-<time>)")] = None,
    agent_first: Annotated[bool, typer.Option(help="the agent greets first")] = False,
    max_calls: Annotated[int, typer.Option(min=1, help="API calls per agent turn at most")] = 4,
    device: DeviceOpt = "cpu",
) -> None:
    """Chat with a TicketTalk agent (`ctxlab chat tickets MODEL`): it books movie tickets through real API calls."""
    if app_name != "tickets":
        raise CtxlabError(f"unknown chat app {app_name!r}; available: tickets")
    from ctxlab.apps.tickets.chat import chat_cli

    chat_cli(model, user_script, db, max_turns, simulate_user=simulate_user, seed=seed, transcript=transcript,
             agent_first=agent_first, max_calls=max_calls, device=device)


@app.command("synth-qa")
def synth_qa(
    model: ModelArg,
    contexts: Annotated[str, typer.Option(help="xquad:LANG[:generator|qa|eval], or a .txt/.jsonl/.json file")],
    out: Annotated[str, typer.Option(help="output SQuAD v1.1 JSON (+ OUT.stats.json)")],
    per_context: Annotated[int, typer.Option(help="candidates per context (> 1 samples)")] = 1,
    min_roundtrip_f1: Annotated[float | None, typer.Option(help="keep pairs the QA model answers with F1 >= X "
                                                                "(default 0.5)")] = None,
    roundtrip: Annotated[bool, typer.Option("--roundtrip/--no-roundtrip", help="filter with a QA model")] = True,
    qa_model: Annotated[str | None, typer.Option(help="round-trip QA checkpoint (default: MODEL)")] = None,
    temperature: Annotated[float | None, typer.Option(help="default 0 (greedy), 1.0 when --per-context > 1")] = None,
    top_p: Annotated[float, typer.Option(help="nucleus sampling mass (1 = off)")] = 1.0,
    seed: int = 0,
    lang: Annotated[str | None, typer.Option(help="language of file contexts whose rows don't say")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="generator tokens per candidate")] = 64,
    qa_max_new_tokens: Annotated[int, typer.Option(help="round-trip answer tokens")] = 32,
    batch_size: Annotated[int, typer.Option(help="prompts per engine batch")] = 16,
    data_dir: Annotated[str | None, typer.Option(help="directory holding xquad.LANG.json")] = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Generate synthetic question-answer pairs for CONTEXTS with MODEL, filter them, write SQuAD JSON."""
    from ctxlab.apps.synthqa.command import synth_qa_cli

    synth_qa_cli(model, contexts, out, per_context=per_context, min_roundtrip_f1=min_roundtrip_f1,
                 roundtrip=roundtrip, qa_model=qa_model, temperature=temperature, top_p=top_p, seed=seed, lang=lang,
                 max_new_tokens=max_new_tokens, qa_max_new_tokens=qa_max_new_tokens, batch_size=batch_size,
                 data_dir=data_dir, dtype=dtype, device=device)


@app.command()
def demo(
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
    from ctxlab.apps.demo.sweep import demo_cli

    demo_cli(model, tasks, lengths, n, strategies, think_budget, qttt_steps, qttt_span, qttt_lr, seed, out_dir,
             quick, max_answer_tokens=max_answer_tokens, threads=threads, qttt_region=qttt_region)


def main() -> None:
    """Console entry point: one-line errors and a non-zero exit for bad input."""
    try:
        app(standalone_mode=False)
    except CtxlabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (typer.Abort, typer.Exit) as e:  # typer's own exits
        sys.exit(getattr(e, "exit_code", 1))
    except Exception as e:  # click usage errors and friends
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()

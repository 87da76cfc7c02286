"""`ctxlab chat MODEL`: a terminal chat with any model (history + its chat template, ctxlab/serve/repl.py);
`ctxlab chat tickets MODEL`: the TicketTalk agent over the real booking backend (ctxlab/apps/tickets/chat.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ctxlab.commands.common import DeviceOpt, DtypeOpt
from ctxlab.errors import CtxlabError


def run(
    target: Annotated[str, typer.Argument(metavar="MODEL|tickets", help="a model (checkpoint dir, hub id, bundled) "
                                                                        "for a plain chat, or the app `tickets`")],
    app_model: Annotated[str | None, typer.Argument(metavar="MODEL", help="tickets: the agent's model")] = None,
    model: Annotated[str | None, typer.Option(help="tickets: the agent's model (instead of the argument)")] = None,
    user_script: Annotated[Path | None, typer.Option(help="batch mode: one user utterance per line")] = None,
    max_turns: Annotated[int | None, typer.Option(min=1, help="user turns at most (tickets default 20)")] = None,
    seed: Annotated[int, typer.Option(help="tickets: the simulated user's goal; MODEL: the sampling seed")] = 0,
    device: DeviceOpt = "cpu",
    system: Annotated[str | None, typer.Option(help="MODEL: the system message")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="MODEL: answer tokens at most (512)")] = None,
    temperature: Annotated[float | None, typer.Option(help="MODEL: 0 = greedy (default 0.7)")] = None,
    top_p: Annotated[float | None, typer.Option(help="MODEL: nucleus sampling mass (default 1 = off)")] = None,
    top_k: Annotated[int | None, typer.Option(help="MODEL: top-k sampling (default 0 = off)")] = None,
    threads: Annotated[int | None, typer.Option(help="MODEL: torch CPU threads")] = None,
    dtype: DtypeOpt = None,
    simulate_user: Annotated[bool, typer.Option(help="tickets batch mode: a rule-based user with a sampled goal")]
    = False,
    db: Annotated[Path | None, typer.Option(help="tickets: SQLite booking database (default: a temporary one)")]
    = None,
    transcript: Annotated[Path | None, typer.Option(help="tickets: write STEM.jsonl and STEM.txt (batch default: "
                                                         "runs/chat/tickets-<time>)")] = None,
    agent_first: Annotated[bool, typer.Option(help="tickets: the agent greets first")] = False,
    max_calls: Annotated[int | None, typer.Option(min=1, help="tickets: API calls per agent turn at most (4)")]
    = None,
) -> None:
    """Chat in the terminal: `ctxlab chat MODEL` talks to any model (history + its chat template);
    `ctxlab chat tickets MODEL` talks to a TicketTalk agent that books movie tickets through real API calls."""
    if target == "tickets":
        if app_model is not None and model is not None and app_model != model:
            raise CtxlabError("give the tickets agent's model once (argument or --model)")
        agent_model = app_model or model
        if agent_model is None:
            raise CtxlabError("`ctxlab chat tickets` needs the agent's model for now: ctxlab chat tickets MODEL")
        given = [name for name, v in (("--system", system), ("--max-new-tokens", max_new_tokens),
                                      ("--temperature", temperature), ("--top-p", top_p), ("--top-k", top_k),
                                      ("--threads", threads), ("--dtype", dtype)) if v is not None]
        if given:
            raise CtxlabError(f"{given[0]} applies to `ctxlab chat MODEL`, not to the tickets app")
        from ctxlab.apps.tickets.chat import run_chat
        from ctxlab.checks import check_device
        from ctxlab.fileio import check_writable_dir

        check_device(device)
        if transcript is not None:
            check_writable_dir(transcript.expanduser().parent, "--transcript directory")
        if db is not None:
            check_writable_dir(db.expanduser().parent, "--db directory")

        run_chat(agent_model, user_script, db, max_turns or 20, simulate_user=simulate_user, seed=seed,
                 transcript=transcript, agent_first=agent_first, max_calls=max_calls or 4, device=device)
        return
    if app_model is not None:
        raise CtxlabError(f"unknown chat app {target!r}; available: tickets (or `ctxlab chat MODEL` for a plain "
                          "chat with a model)")
    if model is not None:
        raise CtxlabError("--model is for `ctxlab chat tickets`; for a plain chat the model is the argument")
    given = [name for name, v in (("--simulate-user", simulate_user or None), ("--db", db),
                                  ("--transcript", transcript), ("--agent-first", agent_first or None),
                                  ("--max-calls", max_calls)) if v is not None]
    if given:
        raise CtxlabError(f"{given[0]} applies to `ctxlab chat tickets` only")
    from ctxlab.serve.repl import chat_repl

    utterances = None
    if user_script is not None:
        from ctxlab.apps.tickets.chat import read_user_script

        utterances = read_user_script(user_script)
    chat_repl(target, system=system, max_new_tokens=max_new_tokens or 512,
              temperature=0.7 if temperature is None else temperature, top_p=1.0 if top_p is None else top_p,
              top_k=top_k or 0, seed=seed, max_turns=max_turns, threads=threads, dtype=dtype, device=device,
              utterances=utterances)

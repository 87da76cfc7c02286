"""`ctxlab chat tickets MODEL`: the TicketTalk agent over the real booking backend (ctxlab/apps/tickets/chat.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ctxlab.commands.common import DeviceOpt, ModelArg
from ctxlab.errors import CtxlabError

APPS = ("tickets",)


def run(
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
    if app_name not in APPS:
        raise CtxlabError(f"unknown chat app {app_name!r}; available: {', '.join(APPS)}")
    from ctxlab.apps.tickets.chat import run_chat
    from ctxlab.checks import check_device
    from ctxlab.fileio import check_writable_dir

    check_device(device)
    if transcript is not None:
        check_writable_dir(transcript.expanduser().parent, "--transcript directory")
    if db is not None:
        check_writable_dir(db.expanduser().parent, "--db directory")

    run_chat(model, user_script, db, max_turns, simulate_user=simulate_user, seed=seed, transcript=transcript,
             agent_first=agent_first, max_calls=max_calls, device=device)

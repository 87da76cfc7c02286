"""`ctxlab chat tickets MODEL`: talk to a TicketTalk agent over the real booking backend.

Three ways to supply the user side:
- interactive (default): a terminal prompt; `/quit` (or end of input) leaves, `/help` lists the commands;
- `--user-script FILE`: one user utterance per line (blank lines and lines starting with `#` are skipped);
- `--simulate-user`: the rule-based user of simulate.py with a goal sampled from the catalogue (`--seed`).
Every agent step is printed: what the agent says, each API call (→) and its response (←), invalid calls and guards.
Batch modes (script, simulated user) always write a transcript: `<stem>.jsonl` (one record per event, with the full
API results) and `<stem>.txt` (readable); interactive sessions write one when `--transcript` is given.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ctxlab.apps.tickets.agent import AgentConfig, Event, NativePredictor, Predictor, TicketAgent, TurnResult
from ctxlab.apps.tickets.backend import BookingBackend
from ctxlab.errors import CtxlabError
from ctxlab.fileio import read_text_file
from ctxlab.tasks.tickettalk.formats import parse_items

HELP = "commands: /quit (leave), /help (this list); anything else is your next message to the agent"


def read_user_script(path: str | Path) -> list[str]:
    p = Path(path)
    lines = read_text_file(p, "user script").splitlines()
    utterances = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not utterances:
        raise CtxlabError(f"{p} holds no user utterances (one per line)")
    return utterances


def _call_str(text: str) -> str:
    """`<PN>api<PAN>k<PAV>v…` → `api(k="v", …)`."""
    try:
        (call,) = parse_items(text)
        return f"{call.name}(" + ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in call.args) + ")"
    except (CtxlabError, ValueError):
        return text


def _response_str(ev: Event) -> str:
    result = ev.data.get("result", {})
    if not result.get("ok"):
        err = result.get("error", {})
        return f"error {err.get('code')}: {err.get('message')}"
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in result.get("response", {}).items())


def event_lines(ev: Event) -> list[str]:
    """How one agent event reads on the terminal and in the text transcript."""
    if ev.kind == "say":
        return [f"agent> {ev.text}"]
    if ev.kind in ("call", "invalid"):
        return [f"   → {_call_str(ev.text)}" + ("   [invalid]" if ev.kind == "invalid" else "")]
    if ev.kind == "response":
        return [f"   ← {_response_str(ev)}"]
    if ev.kind == "retry":
        return [f"   ↺ dropped invalid call {_call_str(ev.text)}"]
    if ev.kind == "guard":
        return [f"   ! {ev.text}"]
    return [f"   ? model output without an action: {ev.text[:80]!r}"]


@dataclass
class Transcript:
    meta: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def user(self, turn: int, text: str) -> str:
        self.records.append({"turn": turn, "role": "user", "text": text})
        line = f"user> {text}"
        self.lines.append(line)
        return line

    def agent(self, turn: int, result: TurnResult) -> list[str]:
        out = []
        for ev in result.events:
            self.records.append({"turn": turn, "role": ev.kind} | ev.to_dict())
            out += event_lines(ev)
        self.lines += out
        return out

    def write(self, stem: str | Path, summary: dict[str, Any]) -> tuple[Path, Path]:
        stem = Path(stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        jl, txt = stem.with_name(stem.name + ".jsonl"), stem.with_name(stem.name + ".txt")
        recs = [{"role": "meta", **self.meta}, *self.records, {"role": "summary", **summary}]
        jl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
        m = self.meta
        head = [f"# TicketTalk chat: {m.get('model')} ({m.get('mode')}, {m.get('started')})", ""]
        foot = ["", "summary: " + ", ".join(f"{k} {v}" for k, v in summary.items())]
        txt.write_text("\n".join(head + self.lines + foot) + "\n", encoding="utf-8")
        return jl, txt


def run_chat(model: str, scripted_user: Path | None = None, db: Path | None = None, max_turns: int = 20, *,
             simulate_user: bool = False, seed: int = 0, transcript: Path | None = None, agent_first: bool = False,
             max_calls: int = 4, device: str = "cpu", predictor: Predictor | None = None,
             backend: BookingBackend | None = None, out: TextIO | None = None,
             input_fn: Callable[[str], str] = input) -> dict[str, Any]:
    """Run a chat session (see the module docstring); returns the summary (turns, calls, errors, bookings, paths).
    `predictor` replaces the checkpoint (tests, other model servers), `backend` the database at `db` (the caller
    closes it), `input_fn` the terminal prompt."""
    out = out or sys.stdout
    if max_turns < 1:
        raise CtxlabError(f"max_turns must be >= 1, got {max_turns}")
    if scripted_user is not None and simulate_user:
        raise CtxlabError("choose one user: --user-script FILE or --simulate-user")
    script = read_user_script(scripted_user) if scripted_user is not None else None
    if db is not None and backend is not None:
        raise CtxlabError("give a database path or a backend, not both")
    if db is not None and not Path(db).parent.is_dir():
        raise CtxlabError(f"database folder not found: {Path(db).parent}")
    mode = "script" if script is not None else "simulated-user" if simulate_user else "interactive"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if transcript is None and mode != "interactive":
        transcript = Path("runs") / "chat" / f"tickets-{stamp}"
    predictor = predictor or NativePredictor(model, device=device)
    own = backend is None
    backend = backend or BookingBackend(db)
    try:
        return _session(model, mode, script, backend, predictor, max_turns, simulate_seed=seed,
                        transcript=transcript, agent_first=agent_first, max_calls=max_calls, out=out,
                        input_fn=input_fn, stamp=stamp)
    finally:
        if own:
            backend.close()


def _session(model: str, mode: str, script: list[str] | None, backend: BookingBackend, predictor: Predictor,
             max_turns: int, *, simulate_seed: int, transcript: Path | None, agent_first: bool, max_calls: int,
             out: TextIO, input_fn: Callable[[str], str], stamp: str) -> dict[str, Any]:
    agent = TicketAgent(predictor, backend, config=AgentConfig(max_calls_per_turn=max_calls))
    sim = None
    if mode == "simulated-user":
        from ctxlab.apps.tickets.simulate import sim_user

        sim = sim_user(simulate_seed, backend)
    meta = {"model": str(model), "mode": mode, "db": str(backend.db_path), "session": agent.session,
            "started": stamp, "max_turns": max_turns} | ({"goal": sim.g.__dict__ | {"upfront": sorted(sim.g.upfront)}}
                                                        if sim else {})
    tr = Transcript(meta)
    n_bookings = len(backend.bookings())

    def show(lines: list[str] | str) -> None:
        for line in [lines] if isinstance(lines, str) else lines:
            print(line, file=out, flush=True)

    if mode == "interactive":
        show(f"TicketTalk agent ({model}); bookings go to {backend.db_path}. {HELP}")
    turns = 0
    reply = ""
    if agent_first:
        res = agent.start()
        show(tr.agent(0, res))
        reply = res.reply
    while turns < max_turns:
        if script is not None:
            if turns >= len(script):
                break
            text = script[turns]
        elif sim is not None:
            turn = sim.opening() if turns == 0 and not agent_first else sim.respond(reply)
            if turn is None:
                break
            text = turn.text
        else:
            try:
                text = input_fn("you> ").strip()
            except EOFError:
                break
            if text in ("/quit", "/exit"):
                break
            if text == "/help":
                show(HELP)
                continue
            if not text:
                continue
        turns += 1
        line = tr.user(turns, text)
        if mode != "interactive":
            show(line)
        try:
            res = agent.user(text)
        except CtxlabError as e:
            if mode == "interactive":  # e.g. markup tags typed by the user: say so and go on
                show(f"   ! {e}")
                continue
            raise
        show(tr.agent(turns, res))
        reply = res.reply
    summary = {"turns": turns, "api_calls": sum(r["role"] in ("call", "invalid") for r in tr.records),
               "invalid_calls": sum(r["role"] == "invalid" for r in tr.records),
               "api_errors": sum(r["role"] == "response" and not r.get("data", {}).get("result", {}).get("ok")
                                 for r in tr.records),
               "guards": sum(r["role"] == "guard" for r in tr.records),
               "bookings": len(backend.bookings()) - n_bookings}
    if transcript is not None:
        jl, txt = tr.write(transcript, summary)
        summary |= {"transcript_jsonl": str(jl), "transcript_txt": str(txt)}
        show(f"transcript: {jl} and {txt}")
    return summary

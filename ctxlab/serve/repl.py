"""`ctxlab chat MODEL`: a terminal chat with any model, its chat template and the conversation's history.

Each turn renders the whole history (optional system message, then alternating user/assistant turns) with the
model's chat template and streams the answer. A model without a chat template (a base model) gets a plain
"User: … / Assistant:" transcript instead, stopped at the next "User:" (a note says so). When the history no longer
fits the context with room for the answer, the oldest turns are dropped (a note says how many).

Commands: /quit (or end of input), /reset (forget the history), /system TEXT (set or, empty, clear the system
message), /help. Batch mode: `utterances` (from --user-script) replaces the terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, TextIO

from ctxlab.engine.generate import stream
from ctxlab.engine.sampling import SamplingParams
from ctxlab.errors import CtxlabError
from ctxlab.serve.model import ServedModel, TextAssembler, set_threads

HELP = "commands: /quit, /reset (forget the history), /system TEXT (empty: clear it), /help"
PLAIN_STOP = "\nUser:"


class Conversation:
    """The history and how it becomes prompt ids for one model."""

    def __init__(self, served: ServedModel, system: str | None = None):
        self.served = served
        self.system = system or None
        self.turns: list[dict[str, str]] = []

    def messages(self, turns: Sequence[dict[str, str]] | None = None) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + list(self.turns if turns is None else turns)

    def ids(self, turns: Sequence[dict[str, str]]) -> list[int]:
        if self.served.has_chat_template:
            return self.served.chat_ids(self.messages(turns))
        lines = [f"System: {self.system}"] if self.system else []
        lines += [f"{t['role'].capitalize()}: {t['content']}" for t in turns]
        return self.served.prompt_ids("\n".join(lines) + "\nAssistant:")

    def prompt(self, max_new_tokens: int) -> tuple[list[int], int]:
        """Ids of the history with the assistant's turn opened, and how many old turns were dropped to fit."""
        limit = self.served.max_context - max_new_tokens
        for drop in range(0, len(self.turns), 2):  # whole user/assistant exchanges; the last user turn stays
            ids = self.ids(self.turns[drop:])
            if len(ids) <= limit:
                return ids, drop
        raise CtxlabError(f"the message does not fit the context of {self.served.max_context} tokens with "
                          f"{max_new_tokens} answer tokens; shorten it or lower --max-new-tokens")


def _lines(utterances: Sequence[str] | None, input_fn: Callable[[str], str], out: TextIO) -> Iterator[str]:
    if utterances is not None:
        for u in utterances:
            print(f"you> {u}", file=out, flush=True)
            yield u
        return
    while True:
        try:
            yield input_fn("you> ")
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            return


def chat_repl(model: str, *, system: str | None = None, max_new_tokens: int = 512, temperature: float = 0.7,
              top_p: float = 1.0, top_k: int = 0, seed: int = 0, max_turns: int | None = None,
              threads: int | None = None, dtype: str | None = None, device: str = "cpu",
              utterances: Sequence[str] | None = None, served: ServedModel | None = None,
              input_fn: Callable[[str], str] = input, out: TextIO | None = None) -> dict[str, Any]:
    """Run the chat; returns a summary (turns, generated tokens, the final history). `served` replaces loading
    MODEL (tests); turn n samples with seed + n."""
    out = out or sys.stdout
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                            seed=seed)  # validates before the model is loaded
    if max_turns is not None and max_turns < 1:
        raise CtxlabError(f"max_turns must be >= 1, got {max_turns}")
    n_threads = set_threads(threads)
    if served is None:
        notices: list[str] = []
        served = ServedModel.load(model, dtype=dtype, device=device, notices=notices)
        for notice in notices:
            print(f"note: {notice}", file=sys.stderr)
    template = "chat template" if served.has_chat_template else "no chat template: plain User/Assistant transcript"
    print(f"chat with {served.name} (context {served.max_context} tokens, {template}, torch threads {n_threads}); "
          f"{HELP}", file=sys.stderr, flush=True)
    stop = () if served.has_chat_template else (PLAIN_STOP,)
    criteria = served.stop_criteria(stop)
    conv = Conversation(served, system)
    turns = tokens = 0
    for line in _lines(utterances, input_fn, out):
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/help":
            print(HELP, file=out)
            continue
        if text == "/reset":
            conv.turns.clear()
            print("(history cleared)", file=out)
            continue
        if text.startswith("/system"):
            conv.system = text[len("/system"):].strip() or None
            print(f"(system message {'set' if conv.system else 'cleared'})", file=out)
            continue
        conv.turns.append({"role": "user", "content": text})
        try:
            ids, dropped = conv.prompt(max_new_tokens)
        except CtxlabError as e:
            conv.turns.pop()
            print(f"error: {e}", file=out)
            continue
        if dropped:
            del conv.turns[:dropped]
            print(f"(dropped the {dropped} oldest messages to fit the context)", file=out)
        answer, n = _answer(served, ids, replace(params, seed=seed + turns), criteria, stop, out)
        conv.turns.append({"role": "assistant", "content": answer})
        turns += 1
        tokens += n
        if max_turns is not None and turns >= max_turns:
            break
    return {"turns": turns, "tokens": tokens, "history": conv.messages()}


def _answer(served: ServedModel, ids: list[int], params: SamplingParams, criteria, stop: tuple[str, ...],
            out: TextIO) -> tuple[str, int]:
    """Stream one answer to `out`; Ctrl-C ends it early (the partial answer is kept)."""
    ts = stream(served.model, ids, params, eos_ids=served.eos_ids, stop=criteria)
    text = TextAssembler(served.tokenizer, stop)
    answer = ""
    print("bot> ", end="", file=out, flush=True)
    try:
        for tok in ts:
            piece = text.add(tok)
            answer += piece
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        ts.close()
        print(" [interrupted]", end="", file=out)
    rest = text.finish()
    answer += rest
    print(rest, file=out, flush=True)
    return answer.strip() if not served.has_chat_template else answer, ts.stats.new_tokens

"""In-context answering: decode the answer directly after the prompt (the baseline every strategy is compared with).

On a native backend it runs on the model's cache (exact FLOPs, optional probe); on a remote backend (OpenAI-compatible
server, Gemini, transformers) it is plain generation, many requests at once, with no FLOP count (the runner cannot
see inside a server).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ctxlab.engine import generate_from_cache
from ctxlab.strategies.base import LM, Outcome, Prefilled, Request, Strategy, outcome
from ctxlab.tasks.format import answer_text


@dataclass(frozen=True)
class InContext(Strategy):
    name = "in-context"
    needs_weights = False

    def run(self, lm: LM, req: Request) -> Outcome:
        t0 = time.perf_counter()
        enc = lm.encode(req.prompt, thinking=False)
        probe = req.probe
        extra = max(req.max_new_tokens, probe.slots(probe.marker) if probe else 0)
        run = Prefilled(lm, enc.ids, extra, rewindable=probe is not None)
        g = generate_from_cache(lm.model, run.logits, run.cache, replace(req.sampling(),
                                max_new_tokens=req.max_new_tokens), lm.eos)[0]
        run.reset()
        wall = time.perf_counter() - t0
        measured = run.probe(enc.ids, probe.marker, probe) if probe else None
        stats = {"prompt_tokens": run.T, "context_tokens": enc.context_len, "generated_tokens": len(g.ids),
                 "finish_reason": g.finish_reason}
        return outcome(lm, g.ids, run.flops(), wall, stats, measured)

    def run_many(self, backend: Any, reqs: Sequence[Request]) -> Iterator[tuple[int, Outcome]]:
        """Native: one request at a time. Remote: requests sharing max_new_tokens/temperature go to the server
        together (it runs them concurrently) and outcomes come back as they finish."""
        if backend.lm is not None:
            yield from super().run_many(backend, reqs)
            return
        groups: dict[tuple[int, float], list[int]] = {}
        for i, r in enumerate(reqs):
            groups.setdefault((r.max_new_tokens, r.temperature), []).append(i)
        for (max_new, temp), idx in groups.items():
            for c in backend.imap([reqs[i].text() for i in idx], max_new, temp):
                yield idx[c.index], Outcome(answer_text(c.text), c.text, None, c.wall_s)

"""The one thread that runs the model. Requests wait in a FIFO queue; the worker takes the oldest and, unless it
is a qTTT request, joins the plain requests queued behind it (up to `max_batch` choices) into one left-padded
batch. A qTTT request always runs alone: nothing else touches the model while its W_Q is adapted, and
`qttt_answer` restores the weights bit-exactly before the worker takes the next request, whether the answer ran
to its end, was cancelled (the client disconnected) or failed.

Batch decoding (`run_batch`) is the engine's loop over its small functions (left_pad, prefill, decode_step,
sample), with what a server needs on top: sampling parameters, seed, stop strings and length per row, rows that
end early or are cancelled while the others go on, and every token handed out as soon as it is sampled. A batch of
one computes exactly what `ctxlab.engine.generate` computes for that prompt (same ops, same seeded draws).
Batched rows see other shapes of the same matmuls, so their logits may differ from a batch of one in the last
float bits (as in any batching server); `--max-batch 1` makes every answer bit-identical to the native backend.

Events go to each request's `emit` callback (called on this thread): Token(index, id), Finished(index, reason,
ids, new_tokens), then Done(usage_extra), or Failed(APIError) (500 when generation failed, 503 when the server
stopped first).
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ctxlab.engine.generate import decode_step, left_pad, model_device, prefill
from ctxlab.engine.sampling import make_generator, sample
from ctxlab.engine.stopping import StopCriteria
from ctxlab.serve.model import ServedModel
from ctxlab.serve.schemas import APIError, GenRequest


@dataclass(frozen=True)
class Token:
    index: int
    id: int


@dataclass(frozen=True)
class Finished:
    index: int
    reason: str  # "eos" | "stop" | "length" | "cancelled"
    ids: tuple[int, ...]
    new_tokens: int  # tokens sampled, a terminating EOS included


@dataclass(frozen=True)
class Failed:
    error: APIError


@dataclass(frozen=True)
class Done:
    extra: dict[str, Any] = field(default_factory=dict)  # usage extras (qTTT report)


Event = Token | Finished | Failed | Done
SHUTTING_DOWN = APIError("the server is shutting down", status=503, type="server_error", code="shutting_down")


class Job:
    """One request in the queue. `cancel()` (client gone) makes the worker drop it or end its rows early."""

    def __init__(self, request: GenRequest, emit: Callable[[Event], None]):
        self.request = request
        self.emit = emit
        self._cancel = threading.Event()
        self.queued_at = time.perf_counter()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


@dataclass
class _Row:
    job: Job
    index: int
    prompt: list[int]
    params: Any
    stop: StopCriteria | None
    ids: list[int] = field(default_factory=list)
    new: int = 0
    reason: str | None = None

    def finish(self, reason: str) -> None:
        self.reason = reason
        self.job.emit(Finished(self.index, reason, tuple(self.ids), self.new))


def run_batch(model: torch.nn.Module, rows: list[_Row], eos: frozenset[int]) -> None:
    """Prefill the rows' prompts as one left-padded batch and decode until every row has finished."""
    device = model_device(model)
    max_new = max(r.params.max_new_tokens for r in rows)
    with torch.inference_mode():
        ids, valid = left_pad([r.prompt for r in rows], device)  # (B, T)
        cache = model.new_cache(len(rows), ids.shape[1] + max_new - 1)
        logits, cache = prefill(model, ids, valid, cache)  # (B, V)
    gens = [make_generator(r.params.seed, device) for r in rows]
    greedy = all(r.params.greedy for r in rows)
    for step in range(max_new):
        with torch.inference_mode():
            if greedy:
                nxt = logits.argmax(dim=-1)  # (B,)
            else:
                nxt = torch.cat([sample(logits[i : i + 1], r.params, gens[i]) for i, r in enumerate(rows)])  # (B,)
            toks = nxt.tolist()  # the one host sync per step
        for r, tok in zip(rows, toks, strict=True):
            if r.reason is not None:
                continue
            if r.job.cancelled:
                r.finish("cancelled")
                continue
            r.new += 1
            if tok in eos:
                r.finish("eos")
                continue
            r.ids.append(tok)
            r.job.emit(Token(r.index, tok))
            if r.stop is not None and r.stop(r.ids):
                r.finish("stop")
            elif r.new >= r.params.max_new_tokens:
                r.finish("length")
        if all(r.reason is not None for r in rows) or step + 1 == max_new:
            break
        with torch.inference_mode():
            logits, cache = decode_step(model, nxt, cache)
    for r in rows:
        if r.reason is None:
            r.finish("length")


@dataclass
class WorkerStats:
    requests: int = 0
    batches: int = 0
    rows: int = 0
    max_batch_seen: int = 0
    qttt_requests: int = 0
    cancelled: int = 0
    failed: int = 0


class Worker:
    """Owns the model; `submit` from any thread, events come back through each job's `emit`."""

    def __init__(self, served: ServedModel, max_batch: int = 8, max_queue: int = 256):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.served = served
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.stats = WorkerStats()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._held: Job | None = None  # a qTTT job met while filling a batch: it runs next, alone
        self._running: list[Job] = []
        self._gated: Job | None = None  # taken from the queue, held while the worker is paused
        self._gate = threading.Event()
        self._gate.set()
        self._thread = threading.Thread(target=self._loop, name="ctxlab-serve-worker", daemon=True)
        self._eos = frozenset(served.eos_ids)
        self._stopping = False

    # ---- control

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse what is queued (503), end the running jobs at their next token (503 too), join the thread."""
        self._stopping = True
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.emit(Failed(SHUTTING_DOWN))
        held, self._held = self._held, None
        if held is not None:
            held.emit(Failed(SHUTTING_DOWN))
        for job in list(self._running):
            job.cancel()
        self._queue.put(None)
        self._gate.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        if self._queue.qsize() >= self.max_queue:
            raise APIError(f"the server's queue is full ({self.max_queue} requests); retry later", status=429,
                           type="rate_limit_error", code="queue_full")
        self._queue.put(job)

    @property
    def queued(self) -> int:
        """Requests waiting (queued, or taken but not started)."""
        return self._queue.qsize() + (self._held is not None) + (self._gated is not None)

    @contextmanager
    def paused(self):
        """Hold the worker before its next batch (requests queue up meanwhile): makes batch composition
        deterministic for tests and benchmarks."""
        self._gate.clear()
        try:
            yield
        finally:
            self._gate.set()

    # ---- the loop

    def _take(self, block: bool) -> Job | None | bool:
        """The next job; False when none is waiting (non-blocking), None = shut down."""
        if self._held is not None:
            job, self._held = self._held, None
            return job
        try:
            return self._queue.get(block=block)
        except queue.Empty:
            return False

    def _loop(self) -> None:
        while True:
            job = self._take(block=True)
            if job is None:
                return
            self._gated = job
            self._gate.wait()  # paused: hold the first job too, so that everything queued meanwhile joins it
            self._gated = None
            if job.cancelled:
                self._drop(job)
                continue
            if job.request.qttt is not None:
                self._running = [job]
                try:
                    self._run_qttt(job)
                finally:
                    self._running = []
                continue
            batch, width = [job], len(job.request.choices)
            while width < self.max_batch:
                nxt = self._take(block=False)
                if nxt is False:
                    break
                if nxt is None:  # shutting down: finish this batch first
                    self._queue.put(None)
                    break
                if nxt.cancelled:
                    self._drop(nxt)
                elif nxt.request.qttt is not None or width + len(nxt.request.choices) > self.max_batch:
                    self._held = nxt
                    break
                else:
                    batch.append(nxt)
                    width += len(nxt.request.choices)
            self._running = batch
            try:
                self._run_plain(batch)
            finally:
                self._running = []

    def _drop(self, job: Job) -> None:
        self.stats.cancelled += 1
        job.emit(Done())

    def _fail(self, jobs: list[Job], e: BaseException) -> None:
        self.stats.failed += len(jobs)
        traceback.print_exception(e)
        err = APIError(f"generation failed: {type(e).__name__}: {e}", status=500, type="server_error")
        for j in jobs:
            j.emit(Failed(err))

    def _run_plain(self, jobs: list[Job]) -> None:
        self.stats.requests += len(jobs)
        self.stats.batches += 1
        try:
            stops = {id(j): self.served.stop_criteria(j.request.stop) for j in jobs}
            rows = [_Row(j, c.index, list(c.prompt), c.params, stops[id(j)]) for j in jobs for c in j.request.choices]
            self.stats.rows += len(rows)
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(rows))
            run_batch(self.served.model, rows, self._eos)
        except Exception as e:  # noqa: BLE001 - one failed batch must not take the server down
            self._fail(jobs, e)
            return
        for j in jobs:
            self._end(j)

    def _end(self, job: Job, extra: dict[str, Any] | None = None) -> None:
        """The job's last event: Done, or a 503 when the server itself cut it short."""
        if job.cancelled:
            self.stats.cancelled += 1
        job.emit(Failed(SHUTTING_DOWN) if job.cancelled and self._stopping else Done(extra or {}))

    def _run_qttt(self, job: Job) -> None:
        from ctxlab.strategies.flops import ArchCost
        from ctxlab.strategies.qttt import qttt_answer
        from ctxlab.strategies.qttt_strategy import qttt_flops

        (choice,) = job.request.choices
        stop = self.served.stop_criteria(job.request.stop)

        def on_token(ids) -> bool:  # the engine's stop hook, called after every appended token: stream it
            job.emit(Token(choice.index, ids[-1]))
            return job.cancelled or (stop is not None and stop(ids))

        self.stats.requests += 1
        self.stats.qttt_requests += 1
        cfg = job.request.qttt
        try:
            res = qttt_answer(self.served.model, list(choice.prompt), cfg, choice.params.max_new_tokens, self._eos,
                              choice.params, stop=on_token)
        except Exception as e:  # noqa: BLE001 - qttt_answer has restored W_Q before raising
            self._fail([job], e)
            return
        reason = "cancelled" if job.cancelled else res.finish_reason
        new = len(res.ids) + (res.finish_reason == "eos")
        job.emit(Finished(choice.index, reason, tuple(res.ids), new))
        rep = res.report
        flops = qttt_flops(ArchCost.from_config(self.served.model.cfg), res)
        self._end(job, {"qttt": {
            "steps": rep.steps, "span": rep.span, "lr": cfg.lr, "seed": cfg.seed, "region": list(rep.region),
            "loss_first_step": rep.losses[0] if rep.losses else None,
            "loss_last_step": rep.losses[-1] if rep.losses else None,
            "probe_loss_before": rep.probe_loss_before, "probe_loss_after": rep.probe_loss_after,
            "flops": flops, "flops_unit": "multiply-accumulates (paper convention; x2 for hardware FLOPs)",
            "prefill_seconds": res.prefill_s, "adapt_seconds": res.adapt_s, "decode_seconds": res.decode_s,
        }})

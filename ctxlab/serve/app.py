"""The HTTP side of `ctxlab serve`: a Starlette application on uvicorn, with OpenAI's routes and wire format.

Routes: GET / (the chat page), GET /health, GET /v1/models, GET /v1/models/{id}, POST /v1/completions,
POST /v1/chat/completions, GET /v1/ctxlab/stats (queue and batching counters).

A request is parsed and tokenized (schemas.py), queued for the worker thread (worker.py), and answered from the
worker's events: as one JSON body, or as server-sent events (`data: {chunk}` lines ending with `data: [DONE]`).
Whenever the response ends before the job does (the client went away, the server stops), the job is cancelled:
the worker drops it from the queue or ends its rows at the next token.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ctxlab.errors import CtxlabError
from ctxlab.serve.model import ServedModel, TextAssembler
from ctxlab.serve.schemas import APIError, GenRequest, Limits, parse_chat, parse_completion
from ctxlab.serve.worker import Done, Event, Failed, Finished, Job, Token, Worker

PAGE = Path(__file__).resolve().parent / "static" / "index.html"
DISCONNECT_CHECK_S = 0.25  # how often a non-streamed request looks for its client
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "stop"}


class EventQueue:
    """Worker-thread events handed to the event loop (`emit` is thread-safe)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def emit(self, ev: Event) -> None:
        try:
            self._loop.call_soon_threadsafe(self.queue.put_nowait, ev)
        except RuntimeError:  # the loop is closed: the server is gone, nobody is listening
            pass


class JobResponse(StreamingResponse):
    """An SSE response that cancels its job whenever it ends (finished, client gone, server stopping)."""

    def __init__(self, content: AsyncIterator[str], job: Job):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()  # a no-op for a job that has finished


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def _usage(req: GenRequest, completion: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {"prompt_tokens": req.prompt_tokens, "completion_tokens": completion,
            "total_tokens": req.prompt_tokens + completion, **extra}


class Server:
    """The application state: the served model, its worker and the request limits."""

    def __init__(self, served: ServedModel, worker: Worker, limits: Limits = Limits()):
        self.served, self.worker, self.limits = served, worker, limits
        self.created = int(time.time())
        self.page = PAGE.read_text(encoding="utf-8")

    # ---- plain routes

    def model_card(self) -> dict[str, Any]:
        return {"id": self.served.name, "object": "model", "created": self.created, "owned_by": "ctxlab",
                "max_model_len": self.served.max_context, "chat_template": self.served.has_chat_template}

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [self.model_card()]})

    async def model(self, request: Request) -> JSONResponse:
        name = request.path_params["name"]
        if name != self.served.name:
            raise APIError(f"The model '{name}' does not exist", status=404, param="model", code="model_not_found")
        return JSONResponse(self.model_card())

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def stats(self, request: Request) -> JSONResponse:
        return JSONResponse({**vars(self.worker.stats), "queued": self.worker.queued,
                             "max_batch": self.worker.max_batch})

    async def index(self, request: Request) -> HTMLResponse:
        return HTMLResponse(self.page)

    # ---- generation

    async def chat(self, request: Request) -> Response:
        body = await _json(request)
        req = await run_in_threadpool(parse_chat, body, self.served, self.limits)
        return await self._respond(request, req)

    async def completions(self, request: Request) -> Response:
        body = await _json(request)
        req = await run_in_threadpool(parse_completion, body, self.served, self.limits)
        return await self._respond(request, req)

    async def _respond(self, request: Request, req: GenRequest) -> Response:
        events = EventQueue(asyncio.get_running_loop())
        job = Job(req, events.emit)
        self.worker.submit(job)
        meta = {"id": ("chatcmpl-" if req.kind == "chat" else "cmpl-") + uuid.uuid4().hex, "created": int(time.time()),
                "model": self.served.name}
        if req.stream:
            return JobResponse(self._sse(req, events, meta), job)
        try:
            return await self._collect(request, req, job, events, meta)
        finally:
            job.cancel()

    async def _collect(self, request: Request, req: GenRequest, job: Job, events: EventQueue,
                       meta: dict) -> Response:
        finished: dict[int, Finished] = {}
        checked = time.monotonic()
        while True:
            try:
                ev = await asyncio.wait_for(events.queue.get(), timeout=DISCONNECT_CHECK_S)
            except TimeoutError:
                ev = None
            if time.monotonic() - checked >= DISCONNECT_CHECK_S:  # tokens may arrive faster than any timeout
                checked = time.monotonic()
                if await request.is_disconnected():
                    return Response(status_code=499)  # nobody reads it; the finally cancels the job
            if ev is None:
                continue
            if isinstance(ev, Failed):
                return error_response(ev.error)
            if isinstance(ev, Finished):
                finished[ev.index] = ev
            elif isinstance(ev, Done):
                break
        choices = []
        for c in req.choices:
            f = finished[c.index]
            text = self.served.text(f.ids, req.stop, req.skip_special)
            if req.kind == "chat":
                choices.append({"index": c.index, "message": {"role": "assistant", "content": text},
                                "finish_reason": FINISH[f.reason], "logprobs": None})
            else:
                choices.append({"index": c.index, "text": text, "finish_reason": FINISH[f.reason], "logprobs": None})
        completion = sum(f.new_tokens for f in finished.values())
        obj = "chat.completion" if req.kind == "chat" else "text_completion"
        return JSONResponse({**meta, "object": obj, "choices": choices, "usage": _usage(req, completion, ev.extra)})

    async def _sse(self, req: GenRequest, events: EventQueue, meta: dict) -> AsyncIterator[str]:
        chat = req.kind == "chat"
        obj = "chat.completion.chunk" if chat else "text_completion"
        tail = {"usage": None} if req.include_usage else {}

        def chunk(index: int, text: str | None, reason: str | None = None, role: bool = False) -> str:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
                if text:
                    delta["content"] = text
                choice = {"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}
            else:
                choice = {"index": index, "text": text or "", "finish_reason": reason, "logprobs": None}
            return _data({**meta, "object": obj, "choices": [choice], **tail})

        texts = {c.index: TextAssembler(self.served.tokenizer, req.stop, req.skip_special) for c in req.choices}
        if chat:
            for c in req.choices:
                yield chunk(c.index, None, role=True)
        completion = 0
        while True:
            ev = await events.queue.get()
            if isinstance(ev, Token):
                piece = texts[ev.index].add(ev.id)
                if piece:
                    yield chunk(ev.index, piece)
            elif isinstance(ev, Finished):
                completion += ev.new_tokens
                rest = texts[ev.index].finish()
                if rest:
                    yield chunk(ev.index, rest)
                yield chunk(ev.index, None, FINISH[ev.reason])
            elif isinstance(ev, Failed):
                yield _data(ev.error.body())
                return
            elif isinstance(ev, Done):
                if req.include_usage:
                    yield _data({**meta, "object": obj, "choices": [], "usage": _usage(req, completion, ev.extra)})
                yield "data: [DONE]\n\n"
                return


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise APIError("the request body is not valid JSON") from None


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    msg = f"{request.method} {request.url.path}: {exc.detail}"
    return error_response(APIError(msg, status=exc.status_code, code=kind))


def build_app(server: Server) -> Starlette:
    routes = [
        Route("/", server.index, methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/models/{name:path}", server.model, methods=["GET"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
        Route("/v1/ctxlab/stats", server.stats, methods=["GET"]),
    ]
    handlers = {APIError: _api_error, HTTPException: _http_error}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        server.worker.start()
        yield
        await run_in_threadpool(server.worker.stop)  # finishes the running batch without blocking the loop

    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)


# ------------------------------------------------------------------------------------------------- command


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0 = any free port); one-line error when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise CtxlabError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


@dataclass(frozen=True)
class ServeConfig:
    """What `ctxlab serve` was asked for (the CLI's options); validated on construction, before any loading."""

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int | None = None
    name: str | None = None
    max_batch: int = 8
    max_queue: int = 256
    max_qttt_steps: int = 256
    default_max_tokens: int = 1024
    log_level: str = "warning"
    dtype: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise CtxlabError(f"--port must be in [0, 65535], got {self.port}")
        for opt, lo in (("max_batch", 1), ("max_queue", 1), ("max_qttt_steps", 0), ("default_max_tokens", 1),
                        ("threads", 1)):
            value = getattr(self, opt)
            if value is not None and value < lo:
                raise CtxlabError(f"--{opt.replace('_', '-')} must be >= {lo}, got {value}")
        if self.log_level not in ("critical", "error", "warning", "info", "debug"):
            raise CtxlabError(f"--log-level must be critical, error, warning, info or debug, got {self.log_level!r}")
        if self.name is not None and not self.name.strip():
            raise CtxlabError("--name must not be empty")

    @property
    def limits(self) -> Limits:
        return Limits(max_qttt_steps=self.max_qttt_steps, default_max_tokens=self.default_max_tokens)


def serve_cli(cfg: ServeConfig) -> None:
    """Load the model and serve it until interrupted (Ctrl-C or SIGTERM: a graceful shutdown)."""
    import uvicorn

    from ctxlab.serve.model import set_threads

    n_threads = set_threads(cfg.threads)
    sock = bind(cfg.host, cfg.port)  # a taken port fails before the weights are read
    notices: list[str] = []
    served = ServedModel.load(cfg.model, name=cfg.name, dtype=cfg.dtype, device=cfg.device, notices=notices)
    for notice in notices:
        print(f"note: {notice}", file=sys.stderr)
    server = Server(served, Worker(served, max_batch=cfg.max_batch, max_queue=cfg.max_queue), cfg.limits)
    bound = sock.getsockname()[1]
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(f"ctxlab serve: '{served.name}' (context {served.max_context} tokens) on http://{shown}:{bound} · "
          f"OpenAI API at /v1 · chat page at / · torch threads {n_threads} · max batch {cfg.max_batch}", flush=True)
    config = uvicorn.Config(build_app(server), log_level=cfg.log_level, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])

"""`ctxlab serve MODEL`: an OpenAI-compatible server with qTTT per request and a chat page (ctxlab/serve/)."""

from __future__ import annotations

from typing import Annotated

import typer

from ctxlab.commands.common import DeviceOpt, DtypeOpt, ModelArg


def run(
    model: ModelArg,
    host: Annotated[str, typer.Option(help="address to listen on (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0 = any free port, printed at start)")] = 8000,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's; the effective number "
                                                     "is printed)")] = None,
    name: Annotated[str | None, typer.Option(help="the model id clients send (default: MODEL as given)")] = None,
    max_batch: Annotated[int, typer.Option(help="choices decoded together in one batch (1 = one request at a "
                                                "time, bit-identical to the native backend)")] = 8,
    max_queue: Annotated[int, typer.Option(help="requests waiting at most; more are refused with 429")] = 256,
    max_qttt_steps: Annotated[int, typer.Option(help="qTTT steps a request may ask for (0 = qTTT off)")] = 256,
    default_max_tokens: Annotated[int, typer.Option(help="answer tokens of a chat request that sets no max_tokens "
                                                         "(at most the rest of the context)")] = 1024,
    log_level: Annotated[str, typer.Option(help="uvicorn log level (info shows every request)")] = "warning",
    dtype: DtypeOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Serve MODEL over the OpenAI API (/v1/models, /v1/completions, /v1/chat/completions, streaming), with qTTT
    per request (`"ctxlab": {"qttt": {"steps": 32, "span": 128, "lr": 1e-5}}`) and a chat page at /."""
    from ctxlab.serve.app import ServeConfig, serve_cli

    serve_cli(ServeConfig(model, host, port, threads=threads, name=name, max_batch=max_batch, max_queue=max_queue,
                          max_qttt_steps=max_qttt_steps, default_max_tokens=default_max_tokens, log_level=log_level,
                          dtype=dtype, device=device))

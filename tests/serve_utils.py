"""A real `ctxlab serve` (uvicorn + the Starlette app + the worker thread) on 127.0.0.1 at a free port, run in a
thread of the test process so that tests can also look at the model's weights and the worker's counters."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

from ctxlab.serve.app import Server, bind, build_app
from ctxlab.serve.model import ServedModel
from ctxlab.serve.schemas import Limits
from ctxlab.serve.worker import Worker


@dataclass
class Running:
    url: str  # http://127.0.0.1:PORT
    served: ServedModel
    worker: Worker

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Until nothing is queued or running (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.worker.queued == 0 and not self.worker._running:
                return
            time.sleep(0.02)
        raise TimeoutError("the worker stayed busy")


@contextmanager
def running_server(served: ServedModel, *, max_batch: int = 8, limits: Limits = Limits()) -> Iterator[Running]:
    worker = Worker(served, max_batch=max_batch)
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(Server(served, worker, limits)), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield Running(f"http://127.0.0.1:{port}", served, worker)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()

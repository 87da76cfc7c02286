"""Evaluation backends: protocol, options, retries/timeouts/concurrency against a local fake OpenAI server, the
Gemini backend against a fake SDK module, and the native/hf backends on a tiny random checkpoint."""

from __future__ import annotations

import json
import random
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ctxlab.errors import CtxlabError
from ctxlab.eval.backends import ApproxTokenizer, Backend, backend_class, make_backend
from ctxlab.eval.backends.base import Completion, RetryableError, RetryPolicy, pool_imap

FAST = {"backoff": 0.001, "backoff_max": 0.01}


# ------------------------------------------------------------------------------------------------ fake server


class FakeOpenAI:
    """OpenAI-compatible server on 127.0.0.1 (ephemeral port). `script` is a list of actions consumed by
    successive POSTs ("ok", 500, 429, ("sleep", s)); when empty every request succeeds. Replies echo the prompt
    as "echo:<prompt>". Records every request; refuses to serve more than `max_requests` (a bounded server)."""

    def __init__(self, max_requests: int = 200):
        self.script: list = []
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.0
        self.max_requests = max_requests
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, code: int, obj: dict, headers: dict | None = None):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                if self.path.endswith("/models"):
                    self._send(200, {"data": [{"id": "fake-model", "max_model_len": 321}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    if len(fake.requests) >= fake.max_requests:
                        self._send(503, {"error": {"message": "request budget exhausted"}})
                        return
                    fake.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                    action = fake.script.pop(0) if fake.script else "ok"
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    if isinstance(action, tuple) and action[0] == "sleep":
                        time.sleep(action[1])
                        action = "ok"
                    if fake.delay:
                        time.sleep(fake.delay)
                    if action == "ok":
                        prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
                        text = f"echo:{prompt}"
                        if self.path.endswith("/chat/completions"):
                            self._send(200, {"choices": [{"message": {"role": "assistant", "content": text}}]})
                        else:
                            self._send(200, {"choices": [{"text": text}]})
                    elif action == 429:
                        self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
                    else:
                        self._send(int(action), {"error": {"message": f"status {action}"}})
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    s = FakeOpenAI()
    yield s
    s.close()


def openai(server: FakeOpenAI, **opts):
    return make_backend("openai", "fake-model", {"base_url": server.url, **FAST, **opts})


# ------------------------------------------------------------------------------------------------ openai


def test_openai_chat_and_completions(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    b = openai(server, system="be brief")
    assert isinstance(b, Backend)
    assert b.generate(["hi", "there"], max_new_tokens=5, temperature=0.0, stop=["\n"]) == ["echo:hi", "echo:there"]
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["messages"][0] == {"role": "system", "content": "be brief"}
    assert req["body"]["max_tokens"] == 5 and req["body"]["stop"] == ["\n"] and req["body"]["model"] == "fake-model"
    assert "chat_template_kwargs" not in req["body"] and "skip_special_tokens" not in req["body"]  # not ctxlab serve
    openai(server, native_prompts="on").generate(["hi"], max_new_tokens=2)
    assert server.requests[-1]["body"]["chat_template_kwargs"] == {"enable_thinking": False}
    assert server.requests[-1]["body"]["skip_special_tokens"] is False

    monkeypatch.delenv("OPENAI_API_KEY")
    b = openai(server, api="completions")
    assert b.generate(["x"], max_new_tokens=3) == ["echo:x"]
    assert server.requests[-1]["path"] == "/v1/completions" and server.requests[-1]["auth"] is None
    assert b.context_length == 321  # max_model_len from GET /models
    assert openai(server, context_length=99).context_length == 99


@pytest.mark.parametrize("failure", [500, 503, 429])
def test_openai_retries_transient_errors(server, failure):
    server.script = [failure, failure, "ok"]
    assert openai(server, max_retries=3).generate(["p"], max_new_tokens=2) == ["echo:p"]
    assert len(server.requests) == 3


def test_openai_retries_after_timeout(server):
    server.script = [("sleep", 1.0), "ok"]
    t0 = time.perf_counter()
    assert openai(server, timeout=0.2, max_retries=2).generate(["p"], max_new_tokens=2) == ["echo:p"]
    assert time.perf_counter() - t0 < 1.0  # the client gave up on the slow request, it did not wait for it
    assert len(server.requests) == 2


def test_openai_gives_up_and_reports(server):
    server.script = [500] * 10
    with pytest.raises(CtxlabError, match="failed after 3 attempts; last error: HTTP 500"):
        openai(server, max_retries=2).generate(["p"], max_new_tokens=2)
    assert len(server.requests) == 3


def test_openai_client_error_is_not_retried(server):
    server.script = [400]
    with pytest.raises(CtxlabError, match="HTTP 400 .*status 400"):
        openai(server).generate(["p"], max_new_tokens=2)
    assert len(server.requests) == 1


def test_openai_unreachable_server_retries_then_fails():
    b = make_backend("openai", "m", {"base_url": "http://127.0.0.1:9/v1", "max_retries": 1, **FAST})
    with pytest.raises(CtxlabError, match="failed after 2 attempts.*cannot reach"):
        b.generate(["p"], max_new_tokens=2)


def test_openai_concurrency_limit_and_order(server):
    server.delay = 0.05
    prompts = [f"p{i}" for i in range(12)]
    assert openai(server, concurrency=3).generate(prompts, max_new_tokens=2) == [f"echo:{p}" for p in prompts]
    assert 1 < server.max_in_flight <= 3


def test_openai_bad_options():
    with pytest.raises(CtxlabError, match="unknown option 'temprature' for backend openai; valid options: api"):
        make_backend("openai", "m", {"temprature": 1})
    with pytest.raises(CtxlabError, match="option api must be one of chat, completions"):
        make_backend("openai", "m", {"api": "responses"})
    with pytest.raises(CtxlabError, match="option concurrency must be int"):
        make_backend("openai", "m", {"concurrency": "many"})
    with pytest.raises(CtxlabError, match="base_url must start with http"):
        make_backend("openai", "m", {"base_url": "localhost:8000"})
    with pytest.raises(CtxlabError, match="max_new_tokens must be an integer >= 1"):
        make_backend("openai", "m", {}).generate(["p"], max_new_tokens=0)


# ------------------------------------------------------------------------------------------------ gemini


class FakeAPIError(Exception):
    def __init__(self, code: int, message: str = "boom"):
        super().__init__(f"{code} {message}")
        self.code = code


class ReadTimeout(Exception):  # named like httpx's, which the backend retries
    pass


@pytest.fixture
def fake_genai(monkeypatch):
    """google.genai as a fake module: Client(api_key, http_options).models.{generate_content,count_tokens,get}."""
    state = {"script": [], "calls": [], "clients": []}

    class HttpOptions:
        def __init__(self, **kw):
            self.kw = kw

    class GenerateContentConfig:
        def __init__(self, **kw):
            self.kw = kw

    class Models:
        def generate_content(self, *, model, contents, config):
            state["calls"].append({"model": model, "contents": contents, "config": config.kw})
            action = state["script"].pop(0) if state["script"] else "ok"
            if isinstance(action, BaseException):
                raise action
            return types.SimpleNamespace(text=f"gem:{contents}")

        def count_tokens(self, *, model, contents):
            return types.SimpleNamespace(total_tokens=len(contents.split()))

        def get(self, *, model):
            return types.SimpleNamespace(input_token_limit=1_048_576)

    class Client:
        def __init__(self, *, api_key=None, http_options=None):
            state["clients"].append({"api_key": api_key, "http_options": http_options.kw})
            self.models = Models()

    google = types.ModuleType("google")
    genai = types.ModuleType("google.genai")
    gtypes = types.ModuleType("google.genai.types")
    gtypes.HttpOptions, gtypes.GenerateContentConfig = HttpOptions, GenerateContentConfig
    genai.Client, genai.types = Client, gtypes
    google.genai = genai
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.genai", genai)
    monkeypatch.setitem(sys.modules, "google.genai.types", gtypes)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", "g-key")
    return state


def test_gemini_generate_with_retries(fake_genai):
    fake_genai["script"] = [FakeAPIError(429), FakeAPIError(503), ReadTimeout("read timed out"), "ok"]
    b = make_backend("gemini", "gemini-test", {"timeout": 2.5, "max_retries": 3, "system": "sys", **FAST})
    assert b.generate(["hello"], max_new_tokens=7, temperature=0.2, stop=["END"]) == ["gem:hello"]
    assert len(fake_genai["calls"]) == 4
    cfg = fake_genai["calls"][-1]["config"]
    assert cfg == {"max_output_tokens": 7, "temperature": 0.2, "stop_sequences": ["END"], "system_instruction": "sys"}
    assert fake_genai["clients"][0] == {"api_key": "g-key", "http_options": {"timeout": 2500}}  # milliseconds
    assert b.count_tokens("a b c") == 3
    assert b.context_length == 1_048_576


def test_gemini_errors(fake_genai, monkeypatch):
    fake_genai["script"] = [FakeAPIError(400, "bad request")]
    b = make_backend("gemini", "gemini-test", FAST)
    with pytest.raises(CtxlabError, match="Gemini API error 400"):
        b.generate(["x"], max_new_tokens=2)
    assert len(fake_genai["calls"]) == 1  # not retried
    fake_genai["script"] = [FakeAPIError(500)] * 5
    with pytest.raises(CtxlabError, match="failed after 2 attempts"):
        make_backend("gemini", "gemini-test", {"max_retries": 1, **FAST}).generate(["x"], max_new_tokens=2)

    monkeypatch.delenv("GEMINI_API_KEY")
    with pytest.raises(CtxlabError, match="needs an API key in \\$GEMINI_API_KEY"):
        make_backend("gemini", "gemini-test", {})
    monkeypatch.setenv("GOOGLE_API_KEY", "other")
    make_backend("gemini", "gemini-test", {})
    assert fake_genai["clients"][-1]["api_key"] == "other"


def test_gemini_missing_sdk(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.genai", None)  # import fails as if not installed
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    with pytest.raises(CtxlabError, match="pip install google-genai"):
        make_backend("gemini", "gemini-test", {})


# ------------------------------------------------------------------------------------------------ shared parts


def test_approx_tokenizer_is_lossless():
    tok = ApproxTokenizer()
    text = "Hello, wörld!  42 frost-aspen_cabin\n\tdone 漢字 ..."
    ids = tok.encode(text)
    assert tok.decode(ids) == text and tok.count_tokens(text) == len(ids)
    assert tok.decode(ids[3:]) == "".join(tok.pieces(text)[3:])


def test_retry_policy_backoff_and_jitter():
    pol = RetryPolicy(max_retries=4, backoff=1.0, backoff_max=5.0, jitter=0.5)
    rng = random.Random(0)
    for attempt, base in enumerate([1, 2, 4, 5, 5]):
        d = pol.delay(attempt, None, rng)
        assert 0.5 * base <= d <= 1.5 * base
    assert pol.delay(0, 3.0, rng) == 3.0 and pol.delay(0, 99.0, rng) == 5.0  # Retry-After, capped
    sleeps: list[float] = []
    calls = iter([RetryableError("a"), RetryableError("b"), "done"])

    def fn():
        x = next(calls)
        if isinstance(x, Exception):
            raise x
        return x

    assert pol.call(fn, "op", sleep=sleeps.append) == "done" and len(sleeps) == 2


def test_pool_imap_keeps_finished_results_on_failure():
    def fn(p):
        if p == "bad":
            time.sleep(0.02)
            raise RuntimeError("bad prompt")
        return p.upper()

    got: list[Completion] = []
    with pytest.raises(RuntimeError, match="bad prompt"):
        for c in pool_imap(fn, ["a", "bad", "b", "c"], concurrency=2):
            got.append(c)
    assert {c.text for c in got} >= {"A"}
    assert all(isinstance(c, Completion) and c.wall_s >= 0 for c in got)


def test_backend_lookup():
    with pytest.raises(CtxlabError, match="unknown backend 'vllm'; valid backends: native, hf, openai, gemini"):
        backend_class("vllm")
    with pytest.raises(CtxlabError, match="cannot import backend nope.mod:Thing"):
        backend_class("nope.mod:Thing")
    with pytest.raises(CtxlabError, match="not a ctxlab.eval.backends.BaseBackend subclass"):
        backend_class("ctxlab.errors:CtxlabError")


# ------------------------------------------------------------------------------------------------ local models


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from ctxlab.train.scratch import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("bk") / "tiny", max_len=256)


def test_native_backend_matches_engine(ckpt):
    from ctxlab.engine import SamplingParams, generate
    from ctxlab.tokenizer import Tokenizer

    b = make_backend("native", str(ckpt), {"chat": False})
    assert isinstance(b, Backend) and b.context_length == 256
    tok = Tokenizer.from_dir(ckpt)
    prompts = ["def add(a, b):", "Once upon a time"]
    got = b.generate(prompts, max_new_tokens=6)
    for p, text in zip(prompts, got, strict=True):
        ids = generate(b.model, [tok.encode(p)], SamplingParams(max_new_tokens=6), tok.eos_token_ids)[0].ids
        assert text == tok.decode(ids, skip_special_tokens=True)
    assert b.count_tokens("hello world") == len(tok.encode("hello world", add_special_tokens=False))
    chat = make_backend("native", str(ckpt), {})
    assert chat.prompt_overhead() > b.prompt_overhead()
    with pytest.raises(CtxlabError, match="unknown dtype 'fp8'"):
        make_backend("native", str(ckpt), {"dtype": "fp8"})
    with pytest.raises(CtxlabError, match="model not found"):
        make_backend("native", str(ckpt / "missing"), {})


def test_hf_backend_matches_native(ckpt):
    pytest.importorskip("transformers")
    hf = make_backend("hf", str(ckpt), {"chat": False})
    native = make_backend("native", str(ckpt), {"chat": False})
    prompts = ["for i in range(10):", "The quick brown fox"]
    assert hf.generate(prompts, max_new_tokens=5) == native.generate(prompts, max_new_tokens=5)
    assert hf.context_length == 256
    assert hf.count_tokens("hello world") == native.count_tokens("hello world")


def test_hf_backend_without_transformers(ckpt, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(CtxlabError, match="needs transformers"):
        make_backend("hf", str(ckpt), {})

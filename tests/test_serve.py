"""`ctxlab serve` through the official `openai` client against the real server on 127.0.0.1: answers equal the
engine's, streaming equals non-streaming, stop strings, usage, OpenAI-style errors, concurrent and batched clients
never mixed up, and qTTT requests that leave the weights exactly as they were (also when the client leaves)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

openai = pytest.importorskip("openai")

from ctxlab.engine import SamplingParams, generate  # noqa: E402
from ctxlab.serve.model import ServedModel  # noqa: E402
from ctxlab.serve.schemas import Limits  # noqa: E402
from tests.serve_utils import running_server  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

KV = "key: alpha value: 17. key: beta value: 42. What is the value of beta?"
PROMPTS = [KV, "def add(a, b):\n    return", "The ledger of account 7 lists", "Final answer:", "Hello, who are you?",
           "Count: one two three", "key: gamma value: 99. What is gamma?", "import os\nimport sys\n"]


@pytest.fixture(scope="module")
def served():
    return ServedModel.load("bundled")


@pytest.fixture(scope="module")
def srv(served, one_thread):
    with running_server(served, limits=Limits(max_qttt_steps=64)) as r:
        yield r


@pytest.fixture(scope="module")
def client(srv):
    return openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0, timeout=120)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def engine_answer(served: ServedModel, ids: list[int], max_tokens: int, stop=(), **sampling) -> tuple[str, str, int]:
    """What the engine alone answers: (text, OpenAI finish reason, completion tokens)."""
    params = SamplingParams(max_new_tokens=max_tokens, **sampling)
    g = generate(served.model, [ids], params, served.eos_ids, served.stop_criteria(stop))[0]
    reason = "length" if g.finish_reason == "length" else "stop"
    return served.text(g.ids, stop), reason, len(g.ids) + (g.finish_reason == "eos")


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(model, saved: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post_raw(url: str, data: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# ------------------------------------------------------------------------------------------------ basics


def test_models_health_and_page(srv, client):
    models = client.models.list().data
    assert [m.id for m in models] == ["bundled"] and models[0].max_model_len == 8192
    assert client.models.retrieve("bundled").owned_by == "ctxlab"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    assert get_json(srv.url + "/health") == (200, {"status": "ok"})
    status, stats = get_json(srv.base_url + "/ctxlab/stats")
    assert status == 200 and stats["max_batch"] == 8 and stats["queued"] == 0 and "qttt_requests" in stats
    with urllib.request.urlopen(srv.url + "/", timeout=30) as r:
        page = r.read().decode()
    assert r.headers["content-type"].startswith("text/html")
    assert "ctxlab chat" in page and "/v1/chat/completions" in page


def test_chat_and_completions_match_the_engine(srv, client, served):
    r = client.chat.completions.create(model="bundled", messages=user(KV), max_tokens=24, temperature=0)
    text, reason, n = engine_answer(served, served.chat_ids(user(KV)), 24)
    assert r.choices[0].message.content == text and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == reason and r.object == "chat.completion" and r.model == "bundled"
    assert r.usage.prompt_tokens == len(served.chat_ids(user(KV))) and r.usage.completion_tokens == n
    assert r.usage.total_tokens == r.usage.prompt_tokens + n
    c = client.completions.create(model="bundled", prompt=PROMPTS[1], max_tokens=12, temperature=0)
    text, reason, n = engine_answer(served, served.prompt_ids(PROMPTS[1]), 12)
    assert c.choices[0].text == text and c.choices[0].finish_reason == reason and c.usage.completion_tokens == n
    ids = served.prompt_ids(PROMPTS[2])
    c = client.completions.create(model="bundled", prompt=[PROMPTS[1], PROMPTS[2]], max_tokens=12, temperature=0)
    assert [ch.index for ch in c.choices] == [0, 1] and c.choices[1].text == engine_answer(served, ids, 12)[0]
    assert c.usage.prompt_tokens == len(served.prompt_ids(PROMPTS[1])) + len(ids)
    c = client.completions.create(model="bundled", prompt=ids, max_tokens=12, temperature=0)  # token ids
    assert c.choices[0].text == engine_answer(served, ids, 12)[0]


def test_template_kwargs_and_special_tokens(srv, client, served):
    ids = served.chat_ids(user(KV), enable_thinking=False)
    assert ids != served.chat_ids(user(KV))  # the bundled template writes an empty think block
    r = client.chat.completions.create(model="bundled", messages=user(KV), max_tokens=20, temperature=0,
                                       extra_body={"chat_template_kwargs": {"enable_thinking": False},
                                                   "skip_special_tokens": False})
    g = generate(served.model, [ids], SamplingParams(max_new_tokens=20), served.eos_ids)[0]
    assert r.usage.prompt_tokens == len(ids)
    assert r.choices[0].message.content == served.text(g.ids, skip_special=False)
    for bad in ({"chat_template_kwargs": "x"}, {"chat_template_kwargs": {"messages": []}},
                {"skip_special_tokens": "no"}):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="bundled", messages=user(KV), max_tokens=2, extra_body=bad)


def test_streaming_equals_non_streaming(srv, client):
    for stop in (None, ["value"]):
        plain = client.chat.completions.create(model="bundled", messages=user(KV), max_tokens=40, temperature=0,
                                               stop=stop)
        chunks = list(client.chat.completions.create(model="bundled", messages=user(KV), max_tokens=40,
                                                     temperature=0, stop=stop, stream=True,
                                                     stream_options={"include_usage": True}))
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == plain.choices[0].message.content
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert reasons == [plain.choices[0].finish_reason]
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    pieces = list(client.completions.create(model="bundled", prompt=PROMPTS[1], max_tokens=16, temperature=0,
                                            stream=True))
    plain = client.completions.create(model="bundled", prompt=PROMPTS[1], max_tokens=16, temperature=0)
    assert "".join(p.choices[0].text for p in pieces) == plain.choices[0].text
    assert all(p.usage is None for p in pieces)  # no include_usage: no usage chunk


def test_stop_strings_and_max_tokens(srv, client, served):
    full = client.completions.create(model="bundled", prompt=PROMPTS[2], max_tokens=30, temperature=0)
    text = full.choices[0].text
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 30
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), "the sandbox model should say something non-blank here"
    cut = client.completions.create(model="bundled", prompt=PROMPTS[2], max_tokens=30, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="bundled", prompt=PROMPTS[2], max_tokens=30, temperature=0,
                                         stop=stop, stream=True)
    assert "".join(p.choices[0].text for p in streamed) == cut.choices[0].text  # the stop string is never leaked
    one = client.completions.create(model="bundled", prompt=PROMPTS[2], max_tokens=1, temperature=0)
    assert one.usage.completion_tokens == 1 and text.startswith(one.choices[0].text)


def test_seeded_sampling_and_n(srv, client, served):
    ids = served.chat_ids(user(KV))
    kw = dict(model="bundled", messages=user(KV), max_tokens=16, temperature=0.9, top_p=0.95)
    a = client.chat.completions.create(seed=3, **kw)
    b = client.chat.completions.create(seed=3, **kw)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].message.content == engine_answer(served, ids, 16, temperature=0.9, top_p=0.95, seed=3)[0]
    two = client.chat.completions.create(seed=3, n=2, **kw)  # choice j samples with seed + j
    assert [c.index for c in two.choices] == [0, 1]
    seed4 = engine_answer(served, ids, 16, temperature=0.9, top_p=0.95, seed=4)[0]
    assert two.choices[1].message.content == seed4 != two.choices[0].message.content


# ------------------------------------------------------------------------------------------------ errors


def test_errors_are_openai_error_objects(srv, client):
    long = "x " * 9000
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="bundled", messages=user(long), max_tokens=8)
    assert e.value.status_code == 400 and e.value.code == "context_length_exceeded"
    assert e.value.body["type"] == "invalid_request_error" and "maximum context length is 8192" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:  # refused before streaming starts
        client.chat.completions.create(model="bundled", messages=user("hi"), max_tokens=8190, stream=True)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="context length"):
        client.completions.create(model="bundled", prompt=long, max_tokens=8)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=user("hi"), max_tokens=4)
    assert e.value.code == "model_not_found"
    bad = [dict(temperature=3), dict(top_p=0), dict(n=0), dict(max_tokens=0), dict(presence_penalty=0.5),
           dict(logprobs=True), dict(stop=["a", "b", "c", "d", "e"]), dict(extra_body={"top_k": "x"}),
           dict(extra_body={"ctxlab": {"qttt": {"steps": 1000}}}), dict(extra_body={"ctxlab": {"qttt": {"bad": 1}}}),
           dict(extra_body={"ctxlab": {"qttt": {"steps": 2}}}, n=2), dict(messages=[{"role": "robot", "content": "x"}])]
    for kw in bad:
        kw = {"model": "bundled", "messages": user("hi"), "max_tokens": 4, **kw}
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(**kw)
        assert e.value.status_code == 400 and e.value.body["param"], kw
    status, body = post_raw(srv.base_url + "/chat/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = get_json(srv.base_url + "/embeddings")
    assert status == 404 and body["error"]["code"] == "not_found"
    ok = client.chat.completions.create(model="bundled", messages=user("hi"), max_tokens=2, temperature=0)
    assert ok.choices[0].finish_reason in ("length", "stop")  # the server is still fine


# ------------------------------------------------------------------------------------------------ concurrency


def test_concurrent_clients_get_their_own_answers(srv, client):
    solo = {p: client.completions.create(model="bundled", prompt=p, max_tokens=20, temperature=0).choices[0].text
            for p in PROMPTS}
    results: dict[tuple[str, bool], str] = {}

    def one(p: str, streamed: bool) -> None:
        c = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0, timeout=120)
        if streamed:
            text = "".join(x.choices[0].text for x in c.completions.create(model="bundled", prompt=p, max_tokens=20,
                                                                            temperature=0, stream=True))
        else:
            text = c.completions.create(model="bundled", prompt=p, max_tokens=20, temperature=0).choices[0].text
        results[(p, streamed)] = text

    threads = [threading.Thread(target=one, args=(p, s)) for p in PROMPTS for s in (False, True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 2 * len(PROMPTS)
    for (p, _), text in results.items():
        assert text == solo[p], p


def test_a_batch_serves_each_request_its_own_answer(srv, client, served):
    """Requests queued while the worker is held run as one left-padded batch with different lengths, stop strings
    and sampling: each gets the answer it gets alone."""
    reqs = [dict(prompt=PROMPTS[0], max_tokens=8), dict(prompt=PROMPTS[3], max_tokens=20),
            dict(prompt=PROMPTS[1], max_tokens=14, stop=["\n"]),
            dict(prompt=PROMPTS[4], max_tokens=12, temperature=0.9, seed=5)]
    reqs = [{"temperature": 0, **r} for r in reqs]
    solo = [client.completions.create(model="bundled", **r).choices[0] for r in reqs]
    before = srv.worker.stats.batches
    out: dict[int, object] = {}

    def one(i: int) -> None:
        c = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0, timeout=120)
        out[i] = c.completions.create(model="bundled", **reqs[i]).choices[0]

    with srv.worker.paused():
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(reqs))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while srv.worker.queued < len(reqs) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert srv.worker.queued == len(reqs)
    for t in threads:
        t.join(120)
    assert srv.worker.stats.batches == before + 1 and srv.worker.stats.max_batch_seen >= len(reqs)
    for i, s in enumerate(solo):
        assert (out[i].text, out[i].finish_reason) == (s.text, s.finish_reason), reqs[i]


# ------------------------------------------------------------------------------------------------ qTTT


def test_qttt_request_then_plain_request_is_bit_exact(srv, client, served):
    kw = dict(model="bundled", messages=user(KV), max_tokens=16, temperature=0)
    plain = client.chat.completions.create(**kw)
    saved = weights(served.model)
    q = client.chat.completions.create(**kw, extra_body={"ctxlab": {"qttt": {"steps": 8, "span": 16, "lr": 3e-3}}})
    rep = q.usage.model_extra["qttt"]
    assert rep["steps"] == 8 and rep["span"] == 16 and rep["adapt_seconds"] > 0
    assert rep["flops"]["adapt"] > 0 and rep["flops"]["total"] > rep["flops"]["adapt"]
    assert rep["probe_loss_after"] < rep["probe_loss_before"]  # it did adapt, on this request's own prompt
    assert q.usage.prompt_tokens == plain.usage.prompt_tokens
    assert same_weights(served.model, saved)
    again = client.chat.completions.create(**kw)
    assert again.choices[0].message.content == plain.choices[0].message.content
    streamed = client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True},
                                              extra_body={"ctxlab": {"qttt": {"steps": 8, "span": 16, "lr": 3e-3}}})
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == q.choices[0].message.content
    assert chunks[-1].usage.model_extra["qttt"]["steps"] == 8
    assert same_weights(served.model, saved)


def test_client_leaving_mid_stream_cancels_and_restores(srv, client, served):
    kw = dict(model="bundled", messages=user(PROMPTS[5]), temperature=0)
    plain = client.chat.completions.create(max_tokens=16, **kw)
    saved = weights(served.model)
    for ext in ({"ctxlab": {"qttt": {"steps": 4, "span": 8, "lr": 3e-3}}}, None):
        cancelled = srv.worker.stats.cancelled
        stream = client.chat.completions.create(max_tokens=4000, stream=True, extra_body=ext, **kw)
        got = 0
        for chunk in stream:
            got += bool(chunk.choices and chunk.choices[0].delta.content)
            if got == 2:
                break
        stream.close()  # the client goes away mid-answer
        deadline = time.monotonic() + 60
        while srv.worker.stats.cancelled == cancelled and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.worker.stats.cancelled == cancelled + 1, "the worker never noticed the client leaving"
        srv.wait_idle()
        assert same_weights(served.model, saved)
        after = client.chat.completions.create(max_tokens=16, **kw)
        assert after.choices[0].message.content == plain.choices[0].message.content


def test_client_leaving_a_non_streamed_request_cancels_it(srv, client):
    import http.client

    cancelled = srv.worker.stats.cancelled
    body = json.dumps({"model": "bundled", "prompt": PROMPTS[5], "max_tokens": 4000, "temperature": 0})
    conn = http.client.HTTPConnection("127.0.0.1", int(srv.url.rsplit(":", 1)[1]), timeout=0.5)
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    with pytest.raises(TimeoutError):
        conn.getresponse()  # 4000 tokens take longer than half a second here
    conn.close()
    deadline = time.monotonic() + 60
    while srv.worker.stats.cancelled == cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.worker.stats.cancelled == cancelled + 1
    srv.wait_idle()


def test_a_failing_batch_is_a_500_and_the_server_goes_on(srv, client, monkeypatch):
    import ctxlab.serve.worker as worker_module

    def broken(*args, **kwargs):
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(worker_module, "run_batch", broken)
    with pytest.raises(openai.InternalServerError) as e:
        client.completions.create(model="bundled", prompt="hi", max_tokens=4)
    assert e.value.status_code == 500 and "simulated kernel failure" in e.value.message
    monkeypatch.undo()
    assert client.completions.create(model="bundled", prompt="hi", max_tokens=4).usage.completion_tokens >= 1


def test_streamed_choices_and_a_full_queue(srv, client):
    kw = dict(model="bundled", prompt=PROMPTS[4], max_tokens=10, temperature=0.9, seed=11, n=3)
    plain = client.completions.create(**kw)
    texts = {0: "", 1: "", 2: ""}
    for chunk in client.completions.create(stream=True, **kw):
        for c in chunk.choices:
            texts[c.index] += c.text
    assert texts == {c.index: c.text for c in plain.choices} and len(set(texts.values())) > 1

    srv.worker.max_queue, saved = 1, srv.worker.max_queue
    errors: list[Exception] = []

    def one() -> None:
        try:
            openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0).completions.create(
                model="bundled", prompt="hi", max_tokens=2)
        except openai.APIError as e:
            errors.append(e)

    try:
        with srv.worker.paused():
            first = [threading.Thread(target=one) for _ in range(2)]  # one held by the paused worker, one queued
            for t in first:
                t.start()
                deadline = time.monotonic() + 30
                while srv.worker.queued < first.index(t) + 1 and time.monotonic() < deadline:
                    time.sleep(0.02)
            with pytest.raises(openai.RateLimitError) as e:
                openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0).completions.create(
                    model="bundled", prompt="hi", max_tokens=2)
            assert e.value.code == "queue_full"
    finally:
        srv.worker.max_queue = saved
    for t in first:
        t.join(60)
    assert errors == []  # the two accepted requests were answered

"""The chat page of `ctxlab serve`, driven in headless Chromium (Debian's `chromium`; skipped where it is absent):
type a message, press Enter, wait for the streamed answer, check it against the API's and check a screenshot."""

from __future__ import annotations

import io

import pytest

from ctxlab.serve.model import ServedModel
from tests.cdp import Chromium, chromium_binary
from tests.serve_utils import running_server

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTION = "key: alpha value: 17. What is alpha?"
ACCENT = (0x2F, 0x6F, 0xDE)  # the header colour (--accent in index.html)
USER_BUBBLE = (0xDF, 0xE9, 0xFB)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    b = Chromium(binary, tmp_path_factory.mktemp("chromium-profile"), width=1000, height=700)
    yield b
    b.close()


def has_colour(img, rgb, tol: int = 6) -> bool:
    import numpy as np

    px = (img[..., :3] * 255).round().astype(int)
    return bool((np.abs(px - np.array(rgb)).max(-1) <= tol).any())


def test_page_chats_in_chromium(browser, tmp_path):
    import json
    import urllib.request

    import matplotlib.image as mpimg

    served = ServedModel.load("bundled")
    with running_server(served) as srv:
        body = {"model": "bundled", "messages": [{"role": "user", "content": QUESTION}], "temperature": 0,
                "max_tokens": 128}  # the page's default settings
        req = urllib.request.Request(srv.base_url + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            expected = json.loads(r.read())["choices"][0]["message"]["content"]

        browser.open(srv.url + "/")
        browser.wait_for("document.getElementById('send') && !document.getElementById('send').disabled")
        assert "bundled" in browser.eval("document.getElementById('model').textContent")
        browser.eval("document.getElementById('input').focus()")
        browser.type(QUESTION)
        browser.press("Enter", 13)
        browser.wait_for("document.querySelector('.msg.assistant[data-state=done]') !== null")
        assert browser.eval("document.querySelector('.msg.user').textContent") == QUESTION
        assert browser.eval("document.querySelector('.msg.assistant').textContent") == expected
        meta = browser.eval("document.querySelector('.meta').textContent")
        assert "prompt" in meta and "completion tokens" in meta
        assert browser.eval("document.getElementById('input').value") == ""  # sent and cleared

        png = browser.screenshot()
        (tmp_path / "chat.png").write_bytes(png)
        img = mpimg.imread(io.BytesIO(png), format="png")  # (H, W, 4) floats in [0, 1]
        assert img.shape[1] == 1000 and img.shape[0] > 300
        assert has_colour(img[:40], ACCENT)  # the header bar
        assert has_colour(img[40:300, 500:], USER_BUBBLE)  # the user's message on the right
        assert img[..., :3].std() > 0.05  # not a blank page

        # Stop mid-answer: the page aborts its fetch, the server cancels the request at the next token
        cancelled = srv.worker.stats.cancelled
        browser.eval("document.getElementById('max_tokens').value = 4000")
        browser.eval("document.getElementById('input').focus()")
        browser.type("Count: one two three")
        browser.press("Enter", 13)
        browser.wait_for("document.querySelectorAll('.msg.assistant')[1].textContent.length > 0")
        browser.eval("document.getElementById('stop').click()")
        browser.wait_for("document.querySelectorAll('.meta').length === 2")
        assert browser.eval("document.querySelectorAll('.meta')[1].textContent") == "stopped"
        browser.wait_for("!document.getElementById('send').disabled")
        srv.wait_idle()
        assert srv.worker.stats.cancelled == cancelled + 1

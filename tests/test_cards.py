"""Data-card rendering (md / html / json) and the task registry wiring."""

import json
from html.parser import HTMLParser

import pytest

from ctxlab.errors import CtxlabError
from ctxlab.tasks import list_tasks, registry
from ctxlab.tasks.base import CARD_SECTIONS, DataCard, Task
from ctxlab.tasks.cards import card_dict, render_card
from ctxlab.tasks.metrics import get_metric

NASTY = "<script>alert('x')</script> & \"quoted\" | pipe"


def _task(**overview) -> Task:
    card = DataCard(
        overview={"summary": NASTY, "where.website": "https://example.org/a?b=1&c=2", **overview},
        results={"metrics": "line one\nline two"},
    )
    return Task(name="demo:x", version="2.1", card=card, metrics=("accuracy",), languages=("en", "zh"))


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text, self.hrefs = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.hrefs += [v for k, v in attrs if k == "href"]

    def handle_data(self, data):
        self.text.append(data)


def test_html_escapes_and_links():
    out = render_card(_task(), "html")
    assert "<script>" not in out and "&lt;script&gt;" in out and "&amp;" in out
    p = _Collect()
    p.feed(out)
    assert "script" not in p.tags
    assert NASTY in "".join(p.text)  # the text survives escaping unchanged
    assert p.hrefs == ["https://example.org/a?b=1&c=2"]
    assert "line one<br>\nline two" in out
    assert '<section id="overview">' in out and '<section id="results">' in out
    assert '<section id="curation">' not in out  # empty sections are left out


def test_html_does_not_link_non_http_urls():
    out = render_card(_task(**{"where.paper-url": "javascript:alert(1)"}), "html")
    p = _Collect()
    p.feed(out)
    assert p.hrefs == ["https://example.org/a?b=1&c=2"]


def test_markdown_structure():
    out = render_card(_task(), "md")
    assert out.startswith("# Data card: demo:x\n")
    assert "| Languages | en, zh |" in out
    assert "### Where to find" in out and "- **Webpage:** https://example.org/a?b=1&c=2" in out
    assert "- **Metrics:** line one\n  line two" in out
    assert "## Dataset Curation" not in out
    summary_row = next(line for line in out.splitlines() if line.startswith("| Metrics"))
    assert summary_row == "| Metrics | accuracy |"


def test_markdown_escapes_table_cells():
    t = Task(name="a|b", version="1", card=DataCard(overview={}), metrics=("f1",))
    assert "| Task | a\\|b |" in render_card(t, "md")


def test_json_round_trip():
    t = _task()
    data = json.loads(render_card(t, "json"))
    assert data == card_dict(t)
    assert list(data["card"]) == list(CARD_SECTIONS)
    assert data["card"]["overview"]["summary"] == NASTY
    assert data["languages"] == ["en", "zh"] and data["version"] == "2.1"


def test_unknown_format():
    with pytest.raises(CtxlabError) as e:
        render_card(_task(), "pdf")
    assert "pdf" in str(e.value) and "md, html, json" in str(e.value)


# ---------------------------------------------------------------------------------------------- registry


def test_registry_contains_families():
    reg = registry()
    names = reg.names()
    assert "longbench_v2" in names
    zs = reg.resolve("zeroscrolls")
    assert len(zs) == 10 and all(t.name.startswith("zeroscrolls:") for t in zs)
    with pytest.raises(CtxlabError, match="unknown task"):
        reg.get("zeroscrolls:nope")


def test_list_tasks_rows():
    rows = list_tasks()
    assert rows == sorted(rows)
    assert ("longbench_v2", "1.0", ("en",)) in rows
    assert ("zeroscrolls:qasper", "1.0", ("en",)) in rows
    assert len({r[0] for r in rows}) == len(rows)


@pytest.mark.parametrize("fmt", ["md", "html", "json"])
def test_every_registered_card_renders(fmt):
    for name in registry().names():
        assert render_card(registry().get(name), fmt).strip()


def test_own_task_metrics_resolve():
    reg = registry()
    for t in [reg.get("longbench_v2"), *reg.resolve("zeroscrolls")]:
        for m in t.metrics:
            get_metric(m)

"""Render a Task's GEM-style data card as markdown, HTML or JSON (`ctxlab card TASK --format md|html|json`).

Card fields are `section -> {key: text}`; a dotted key such as `where.paper-url` puts the field under a
sub-heading ("Where to find"), as on the GEMv2 website cards. Sections render in the website's order and empty
ones are left out of markdown/HTML; JSON always has all six sections, in `CARD_SECTIONS` order.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from ctxlab.errors import CtxlabError
from ctxlab.tasks.base import Task

FORMATS = ("md", "html", "json")

SECTION_TITLES = {
    "overview": "Dataset Overview",
    "gem": "Dataset in GEM",
    "results": "Previous Results",
    "curation": "Dataset Curation",
    "context": "Broader Social Context",
    "considerations": "Considerations for Using the Data",
}
RENDER_ORDER = ("overview", "gem", "results", "curation", "context", "considerations")

# GEMv2 card headings for common keys; anything else is prettified from the key.
GROUP_TITLES = {
    "where": "Where to find",
    "languages": "Languages & Intended Use",
    "credit": "Credit",
    "structure": "Dataset Structure",
    "rationale": "Rationale",
    "curation": "GEM-Specific Curation",
    "starting": "Getting Started",
    "original": "Original Curation",
    "language": "Language Data",
    "annotations": "Structured Annotations",
    "consent": "Consent",
    "pii": "PII",
    "maintenance": "Maintenance",
}
FIELD_TITLES = {
    "website": "Webpage",
    "data-url": "Download",
    "paper-url": "Paper",
    "paper-bibtext": "BibTex",
    "contact-name": "Contact Name",
    "contact-email": "Contact Email",
    "has-leaderboard": "Has a Leaderboard?",
    "license": "License",
    "primary-task": "Primary Task",
    "data-fields": "Data Fields",
    "data-splits": "Data Splits",
    "proposed-evaluation": "Proposed Evaluation",
    "other-evaluation": "Other Evaluation Approaches",
    "technical-limitations": "Technical Limitations",
}
_URL = re.compile(r"^https?://\S+$")


def _title(key: str) -> str:
    if key in FIELD_TITLES:
        return FIELD_TITLES[key]
    words = re.split(r"[-_\s]+", key.strip())
    return " ".join(words)[:1].upper() + " ".join(words)[1:]


def _grouped(fields: dict[str, str]) -> list[tuple[str | None, list[tuple[str, str]]]]:
    """[(sub-heading or None, [(field title, text), ...]), ...] in first-seen order; ungrouped fields first."""
    groups: dict[str | None, list[tuple[str, str]]] = {None: []}
    for key, text in fields.items():
        group, _, leaf = key.rpartition(".")
        g = (GROUP_TITLES.get(group) or _title(group)) if group else None
        groups.setdefault(g, []).append((_title(leaf), str(text)))
    return [(g, items) for g, items in groups.items() if items]


def _summary(task: Task) -> list[tuple[str, str]]:
    return [
        ("Task", task.name),
        ("Version", task.version),
        ("Languages", ", ".join(task.languages)),
        ("Metrics", ", ".join(task.metrics)),
        ("Needs a data directory", "yes" if task.needs_data_dir else "no"),
    ]


def card_dict(task: Task) -> dict[str, Any]:
    return {
        "name": task.name,
        "version": task.version,
        "languages": list(task.languages),
        "metrics": list(task.metrics),
        "needs_data_dir": task.needs_data_dir,
        "card": {name: dict(section) for name, section in task.card.sections().items()},
    }


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_markdown(task: Task) -> str:
    lines = [f"# Data card: {task.name}", "", "## Quick-use summary", "", "| Field | Value |", "|---|---|"]
    lines += [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in _summary(task)]
    sections = task.card.sections()
    for name in RENDER_ORDER:
        if not sections[name]:
            continue
        lines += ["", f"## {SECTION_TITLES[name]}"]
        for group, items in _grouped(sections[name]):
            lines.append("")
            if group:
                lines += [f"### {group}", ""]
            for title, text in items:
                body = text.strip().replace("\n", "\n  ")  # continuation lines stay inside the list item
                lines.append(f"- **{title}:** {body}")
    return "\n".join(lines) + "\n"


def _html_text(text: str) -> str:
    text = text.strip()
    if _URL.match(text):
        url = html.escape(text, quote=True)
        return f'<a href="{url}">{url}</a>'
    return html.escape(text).replace("\n", "<br>\n")


def render_html(task: Task) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>Data card: {e(task.name)}</title>",
        "</head>",
        "<body>",
        f"<h1>Data card: {e(task.name)}</h1>",
        "<h2>Quick-use summary</h2>",
        "<table>",
    ]
    out += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _summary(task)]
    out.append("</table>")
    sections = task.card.sections()
    for name in RENDER_ORDER:
        if not sections[name]:
            continue
        out.append(f'<section id="{name}">')
        out.append(f"<h2>{e(SECTION_TITLES[name])}</h2>")
        for group, items in _grouped(sections[name]):
            if group:
                out.append(f"<h3>{e(group)}</h3>")
            out.append("<dl>")
            for title, text in items:
                out.append(f"<dt>{e(title)}</dt><dd>{_html_text(text)}</dd>")
            out.append("</dl>")
        out.append("</section>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def render_json(task: Task) -> str:
    return json.dumps(card_dict(task), indent=2, ensure_ascii=False) + "\n"


def render_card(task: Task, fmt: str = "md") -> str:
    """The card as 'md', 'html' or 'json' text; other formats are a CtxlabError listing the valid ones."""
    renderers = {"md": render_markdown, "html": render_html, "json": render_json}
    if fmt not in renderers:
        raise CtxlabError(f"unknown card format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return renderers[fmt](task)

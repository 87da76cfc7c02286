"""What `ctxlab info` and model cards report: computed shape facts next to the publisher's facts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ctxlab.gguf_file import is_gguf, open_gguf, tensor_type_counts
from ctxlab.models import model_class
from ctxlab.models.loading import build_config, read_hf_config, resolve_model_path, weight_files
from ctxlab.presets import License, license_from_readme, preset_for
from ctxlab.realmodels import REAL_MODELS, real_model_for


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Total, embedding (input embedding + untied head) and, for MoE models, active parameters."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.tok_emb.weight.numel()
    head = getattr(model, "lm_head", None)
    if head is not None:
        emb += head.weight.numel()
    counts = {"total": total, "non_embedding": total - emb}
    active = getattr(model, "active_parameters", None)
    if callable(active):
        counts["active"] = int(active())
    return counts


def model_license(path: Path, hub_id: str | None) -> License | None:
    preset = preset_for(hub_id)
    if preset is not None:
        return preset.license
    if is_gguf(path):
        from ctxlab.licensing import detect_license

        return detect_license(path)
    readme = path / "README.md"
    return license_from_readme(readme.read_text(errors="replace")) if readme.exists() else None


def model_info(model: str | os.PathLike) -> dict[str, Any]:
    """Facts about a checkpoint computed from its config on the meta device (no weights are read)."""
    path = resolve_model_path(model)
    real = REAL_MODELS.get(str(model)) or (real_model_for(path) if is_gguf(path) else None)
    hub_id = real.hub_id if real else None if Path(str(model)).expanduser().exists() else str(model)
    hf = read_hf_config(path)
    cfg = build_config(hf)
    with torch.device("meta"):
        m = model_class(hf.get("model_type"))(cfg)
    counts = parameter_counts(m)
    files = [path] if is_gguf(path) else weight_files(path)
    lic = model_license(path, hub_id)
    preset = preset_for(hub_id)
    facts: dict[str, Any] = {
        "path": str(path),
        "family": cfg.model_type,
        "architecture": cfg.architecture,
        "layers": getattr(cfg, "num_layers", None),
        "hidden_size": cfg.hidden_size,
        "heads": getattr(cfg, "num_heads", None),
        "kv_heads": getattr(cfg, "num_kv_heads", None),
        "head_dim": getattr(cfg, "head_dim", None),
        "vocab_size": cfg.vocab_size,
        "parameters": counts["total"],
        "non_embedding_parameters": counts["non_embedding"],
        "context_length": m.max_context,
        "dtype": getattr(cfg, "torch_dtype", None),
        "weight_files": len(files),
        "weight_bytes": sum(f.stat().st_size for f in files),
        "license": lic.name if lic else "unknown (no README licence field, not a known preset)",
    }
    if is_gguf(path):
        g = open_gguf(path)
        facts["format"] = "gguf"
        facts["tensor_types"] = ", ".join(f"{n} {k}" for k, n in sorted(tensor_type_counts(g).items()))
        facts["gguf_name"] = g.get("general.name", "")
    if real is not None:
        facts["name"] = real.name
        facts["upstream"] = real.hub_id
        facts["installed_from"] = real.install
        facts["notice_on_derivatives"] = real.notice
    if "active" in counts:
        facts["active_parameters"] = counts["active"]
    if preset is not None:
        facts["published_parameters"] = preset.params
        facts["published_context"] = preset.context
    return facts


def model_card(model: str, fmt: str = "md") -> str:
    """A model card: the publisher's facts for a known preset (no download needed) and, when the checkpoint is
    available locally, the facts computed from its config."""
    import html
    import json

    from ctxlab.errors import CtxlabError
    from ctxlab.presets import PRESETS

    if fmt not in ("md", "html", "json"):
        raise CtxlabError(f"unknown card format {fmt!r}; choose from md, html, json")
    preset = PRESETS.get(model)
    card: dict[str, Any] = {"model": model}
    if preset is not None:
        card.update({
            "family": preset.family,
            "published_parameters": preset.params,
            "published_active_parameters": preset.active_params or "dense (all parameters active)",
            "published_context": preset.context,
            "license": preset.license.name,
            "license_url": preset.license.url,
            "attribution": preset.license.attribution or "",
            "derived_name_rule": f"must begin with {preset.license.required_name_prefix!r}"
            if preset.license.required_name_prefix else "none",
            "source": preset.source,
        })
    try:
        computed = model_info(model)
    except CtxlabError:
        if preset is None:
            known = ", ".join(sorted(PRESETS))
            raise CtxlabError(f"{model!r} is neither a local checkpoint nor a known preset ({known})") from None
        computed = {}
    card.update({f"computed_{k}" if k in card else k: v for k, v in computed.items()})
    if fmt == "json":
        return json.dumps(card, indent=2)
    rows = [(k.replace("_", " "), str(v)) for k, v in card.items() if k != "model"]
    if fmt == "md":
        return "\n".join([f"# {model}", "", "| fact | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<h1>{html.escape(model)}</h1>\n<table>{body}</table>"

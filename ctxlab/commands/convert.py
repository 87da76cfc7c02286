"""`ctxlab convert IN.gguf OUT_DIR`: a GGUF checkpoint dequantized into an HF-format directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ctxlab.errors import CtxlabError


def run(
    source: Annotated[str, typer.Argument(metavar="IN", help="a .gguf file or a real model name (gemma-3-270m, ...)")],
    out_dir: Annotated[Path, typer.Argument(metavar="OUT_DIR", help="HF-format directory to write")],
    name: Annotated[str | None, typer.Option(help="derived model name (licence rules apply; default OUT_DIR's "
                                                  "name)")] = None,
) -> None:
    """Dequantize a GGUF checkpoint into an HF directory (safetensors, config, tokenizer, chat template, licence
    notices) that transformers loads with identical logits."""
    from ctxlab.gguf_file import is_gguf
    from ctxlab.models.loading import load_model, resolve_model_path, save_model

    path = resolve_model_path(source)
    if not is_gguf(path):
        raise CtxlabError(f"{source} is not a GGUF checkpoint; `ctxlab convert` reads .gguf files")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CtxlabError(f"{out_dir} exists and is not an empty directory")
    loaded = load_model(path, dtype="float32")
    save_model(loaded.model, out_dir, source_dir=path, name=name)
    print(f"wrote {out_dir} ({sum(p.numel() for p in loaded.model.parameters()):,} parameters, float32)")

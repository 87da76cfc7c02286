"""Files shipped inside the package: the bundled sandbox model (ctxlab/assets/bundled/, HF format)."""

from __future__ import annotations

from pathlib import Path

from ctxlab.errors import CtxlabError

BUNDLED = Path(__file__).resolve().parent / "bundled"


def bundled_path() -> Path:
    """The directory of the bundled Qwen3-architecture sandbox model (config, safetensors, tokenizer, card)."""
    if not (BUNDLED / "config.json").is_file() or not (BUNDLED / "model.safetensors").is_file():
        raise CtxlabError(f"the bundled model is missing from {BUNDLED}; rebuild it with "
                          "`ctxlab train pretrain --config configs/bundled.toml`")
    return BUNDLED

"""Model registry: HF `model_type` → ctxlab model class (each class carries its config class and HF weight map)."""

from __future__ import annotations

from torch import nn

from ctxlab.errors import CtxlabError
from ctxlab.models.gemma import GemmaModel
from ctxlab.models.gemma3 import Gemma3Model
from ctxlab.models.griffin import GriffinModel
from ctxlab.models.llama import LlamaModel
from ctxlab.models.llama4 import Llama4Model
from ctxlab.models.qwen3 import Qwen3Model

FAMILIES: dict[str, type[nn.Module]] = {
    "llama": LlamaModel,
    "qwen3": Qwen3Model,
    "gemma": GemmaModel,
    "gemma3_text": Gemma3Model,
    "recurrent_gemma": GriffinModel,
    "llama4_text": Llama4Model,
    "llama4": Llama4Model,  # multimodal checkpoint: its text model (read_hf_config unwraps text_config)
}


def model_class(model_type: str | None) -> type[nn.Module]:
    if model_type not in FAMILIES:
        raise CtxlabError(f"unsupported model_type {model_type!r}; supported: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type]

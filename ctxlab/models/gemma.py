"""Gemma 1 (2B MQA, 7B MHA): the Llama decoder with Gemma's numerics.

Differences from Llama (architectures.md §A):
- every RMSNorm scales by (1 + w) in fp32 before casting back (`GemmaRMSNorm`);
- embeddings are multiplied by sqrt(H) rounded to the *activation* dtype (45.25 for 2B in bf16);
- the MLP is GeGLU with the tanh GELU. Hub configs say `hidden_act: "gelu"`, but the model was trained with the
  tanh approximation (transformers 5 rewrites it; 4.57 used exact erf GELU by mistake), so we force tanh;
- head_dim is explicit (256; q-projection width 4096 ≠ H on 7B); the LM head is tied.

Shapes:  B batch · T new tokens · H hidden.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ctxlab.models.layers import GemmaRMSNorm
from ctxlab.models.llama import HF_WEIGHT_MAP, LlamaConfig, LlamaModel


@dataclass(frozen=True)
class GemmaConfig(LlamaConfig):
    rms_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    tie_word_embeddings: bool = True

    model_type = "gemma"
    architecture = "GemmaForCausalLM"

    @classmethod
    def from_hf_config(cls, d: dict) -> GemmaConfig:
        cfg = super().from_hf_config(d)
        return cfg.with_(hidden_act="gelu_pytorch_tanh")  # see module docstring: "gelu" on the hub means tanh


class GemmaModel(LlamaModel):
    config_cls = GemmaConfig
    norm_cls = GemmaRMSNorm
    hf_weight_map = HF_WEIGHT_MAP

    def embed(self, ids: Tensor) -> Tensor:
        x = self.tok_emb(ids)  # (B, T, H)
        return x * torch.tensor(math.sqrt(self.cfg.hidden_size), dtype=x.dtype)

"""The `hf` backend: any `transformers` AutoModelForCausalLM (local directory or hub id), for models ctxlab has no
family file for, and as an independent reference. transformers is imported here only, when the backend is used;
ctxlab does not depend on it.

Prompts run one at a time (batch 1) for the same reason as the native backend: results independent of batching.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ctxlab.errors import CtxlabError
from ctxlab.eval.backends.base import BaseBackend, Option, trim_stop

_INSTALL = "the hf backend needs transformers (pip install 'transformers>=4.57'); or use --backend native"


def import_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise CtxlabError(_INSTALL) from None
    return transformers


class _HFTokenizerLike:
    def __init__(self, tok: Any):
        self.tok = tok

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids))

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))


class HFBackend(BaseBackend):
    name: ClassVar[str] = "hf"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "dtype": Option(str, None, "float32 (CPU default), bfloat16, float16"),
        "device": Option(str, "cpu", "cpu or cuda[:N]", identity=False),
        "chat": Option(bool, True, "wrap prompts in the chat template when the tokenizer has one"),
        "trust_remote_code": Option(bool, False, "let transformers run the repository's own model code"),
    }

    def __init__(self, model: Any, tokenizer: Any, options: Mapping[str, Any]):
        self.model = model
        self.tok = tokenizer
        self.options = dict(options)

    @classmethod
    def check_ready(cls, model: str, options: Mapping[str, Any]) -> None:
        import_transformers()
        from ctxlab.models.loading import default_dtype

        default_dtype(options["device"], options["dtype"])

    @classmethod
    def identity(cls, model: str, options: Mapping[str, Any]) -> dict[str, Any]:
        from ctxlab.eval.backends.native import config_hash

        out: dict[str, Any] = {"model": str(model), "dtype": options.get("dtype"), "chat": options.get("chat")}
        cfg = Path(model) / "config.json"
        if cfg.is_file():
            try:
                out["config_hash"] = config_hash(json.loads(cfg.read_text()))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CtxlabError(f"corrupt config.json in {model}: {e}") from None
        return out

    @classmethod
    def context_hint(cls, model: str, options: Mapping[str, Any]) -> int | None:
        cfg = Path(model) / "config.json"
        try:
            limit = json.loads(cfg.read_text(encoding="utf-8")).get("max_position_embeddings") if cfg.is_file() \
                else None
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return None
        return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None

    @classmethod
    def load(cls, model: str, options: Mapping[str, Any]) -> HFBackend:
        tf = import_transformers()
        from ctxlab.models.loading import default_dtype

        dtype = default_dtype(options["device"], options["dtype"])
        trust = options["trust_remote_code"]
        try:
            tok = tf.AutoTokenizer.from_pretrained(model, trust_remote_code=trust)
            m = tf.AutoModelForCausalLM.from_pretrained(model, dtype=dtype, trust_remote_code=trust)
        except (OSError, ValueError) as e:
            raise CtxlabError(f"transformers could not load {model}: {str(e).splitlines()[0]}") from None
        m.to(options["device"]).eval()
        return cls(m, tok, options)

    def encode(self, prompt: str) -> list[int]:
        if self.options["chat"] and getattr(self.tok, "chat_template", None):
            text = self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                add_generation_prompt=True)
            return list(self.tok(text, add_special_tokens=False)["input_ids"])
        return list(self.tok(prompt)["input_ids"])

    def complete(self, prompt: str, max_new_tokens: int, temperature: float, stop: Sequence[str],
                 seed: int | None = 0) -> str:
        import torch

        ids = torch.tensor([self.encode(prompt)], device=self.model.device)
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
        if temperature > 0:
            kwargs.update(temperature=float(temperature), top_k=0, top_p=1.0)
            if seed is not None:
                torch.manual_seed(seed)
        else:  # greedy: silence checkpoint defaults such as temperature 0.6 that would be ignored with a warning
            kwargs.update(temperature=None, top_k=None, top_p=None)
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=self.tok)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=pad, **kwargs)
        return trim_stop(self.tok.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True), stop)

    def count_tokens(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    @property
    def context_length(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def tokenizer_like(self) -> _HFTokenizerLike:
        return _HFTokenizerLike(self.tok)

    def prompt_overhead(self) -> int:
        return len(self.encode(""))

    def sent_tokens(self, prompt: str, structured: tuple[str, str] | None = None, thinking: bool = False) -> int:
        return len(self.encode(prompt))

"""The `native` backend: a ctxlab checkpoint (load_model + Tokenizer + engine). The only backend that can run the
test-time strategies of ctxlab/strategies (thinking, self-consistency, qTTT), which need the weights and the KV cache:
it hands them its `lm` (model + tokenizer).

Prompts are encoded one at a time (batch 1) on purpose: a sample's result then never depends on which other
samples share its batch (left padding changes float sums), so a resumed or sharded run reproduces an
uninterrupted one exactly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ctxlab.errors import CtxlabError
from ctxlab.eval.backends.base import BaseBackend, Option, TextTokenizer, trim_stop
from ctxlab.strategies import LM, STRATEGIES, Prompt


def config_hash(hf_config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a checkpoint's config (what the weights mean, not the weights)."""
    blob = json.dumps(hf_config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class NativeBackend(BaseBackend):
    name: ClassVar[str] = "native"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "dtype": Option(str, None, "float32 (CPU default), bfloat16, float16"),
        "device": Option(str, "cpu", "cpu or cuda[:N]", identity=False),
        "chat": Option(bool, True, "wrap prompts in the chat template when the tokenizer has one"),
    }
    strategies: ClassVar[tuple[str, ...]] = tuple(STRATEGIES)

    def __init__(self, loaded: Any, tokenizer: Any, options: Mapping[str, Any]):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = tokenizer
        self.options = dict(options)
        self.lm = LM(self.model, tokenizer, chat=bool(self.options.get("chat", True)))  # what strategies run on

    # -- construction

    @classmethod
    def check_ready(cls, model: str, options: Mapping[str, Any]) -> None:
        from ctxlab.models.loading import default_dtype, resolve_model_path

        default_dtype(options["device"], options["dtype"])  # unknown dtype → one-line error
        path = resolve_model_path(model)
        if path.is_dir() and not (path / "tokenizer.json").is_file():
            raise CtxlabError(f"no tokenizer.json in {path}; the native backend needs the checkpoint's tokenizer")

    @classmethod
    def identity(cls, model: str, options: Mapping[str, Any]) -> dict[str, Any]:
        from ctxlab.models.loading import default_dtype, read_hf_config, resolve_model_path, weight_files

        path = resolve_model_path(model)
        cfg = read_hf_config(path)
        try:
            weights = {p.name: p.stat().st_size for p in ([path] if path.is_file() else weight_files(path))}
        except CtxlabError:
            weights = {}
        return {"model": str(model), "path": str(path), "model_type": cfg.get("model_type"),
                "config_hash": config_hash(cfg), "weights_bytes": weights,
                "dtype": str(default_dtype(options["device"], options["dtype"])).replace("torch.", ""),
                "chat": options.get("chat")}

    @classmethod
    def context_hint(cls, model: str, options: Mapping[str, Any]) -> int | None:
        from ctxlab.models.loading import build_config, read_hf_config, resolve_model_path

        limit = getattr(build_config(read_hf_config(resolve_model_path(model))), "max_position_embeddings", None)
        return limit if isinstance(limit, int) else None

    @classmethod
    def load(cls, model: str, options: Mapping[str, Any]) -> NativeBackend:
        from ctxlab.models.loading import load_model
        from ctxlab.tokenizer import Tokenizer

        loaded = load_model(model, dtype=options["dtype"], device=options["device"])
        return cls(loaded, Tokenizer.from_dir(loaded.path), options)

    # -- generation

    def encode(self, prompt: str) -> list[int]:
        if self.options["chat"] and self.tokenizer.has_chat_template:
            return self.tokenizer.encode_chat([{"role": "user", "content": prompt}], add_generation_prompt=True)
        return self.tokenizer.encode(prompt)

    def complete(self, prompt: str, max_new_tokens: int, temperature: float, stop: Sequence[str],
                 seed: int | None = 0) -> str:
        from ctxlab.engine import SamplingParams, StopCriteria, generate

        params = SamplingParams(temperature=float(temperature), max_new_tokens=max_new_tokens, seed=seed)
        crit = StopCriteria.from_strings(list(stop), self.tokenizer.decode) if stop else None
        g = generate(self.model, [self.encode(prompt)], params, self.tokenizer.eos_token_ids, crit)[0]
        return trim_stop(self.tokenizer.decode(g.ids, skip_special_tokens=True), stop)

    # -- lengths

    def count_tokens(self, text: str) -> int:
        return self.tokenizer.count_tokens(text)

    @property
    def context_length(self) -> int | None:
        return getattr(self.model, "max_context", None)

    def tokenizer_like(self) -> TextTokenizer:
        return TextTokenizer(self.tokenizer)

    def prompt_overhead(self) -> int:
        return len(self.encode(""))

    def sent_tokens(self, prompt: str, structured: tuple[str, str] | None = None, thinking: bool = False) -> int:
        """Exact: encoded the way the strategies encode (chat template, thinking format)."""
        return len(self.lm.encode(Prompt(*structured) if structured else prompt, thinking).ids)

"""Build small HF-format checkpoints from scratch: a config, random weights and a BPE tokenizer trained with
`tokenizers`. Used by `make demo` before a trained model exists, by the training loop to start a model, and by
tests that need a checkpoint without transformers."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from ctxlab.models import model_class
from ctxlab.models.loading import save_model

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# A Qwen3-style ChatML template with the `enable_thinking` switch (an empty think block when thinking is off).
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

SIZES = {
    # ~0.3M parameters: fast enough for tests and the interim demo.
    "tiny": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16),
    # a few million parameters: the bundled sandbox model.
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64),
}

DEFAULT_CORPUS = (
    "ctxlab is a lab for long contexts. Models read documents, logs and code, and answer questions about them.\n"
    "Account A sends 120 to account B. The old balance was 500 and the new balance is 380.\n"
    "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i)\n"
    "The key is 7f3a and the value is 1942. Question: what is the value for key 7f3a? Answer: 1942\n"
    "naïve café, Straße, 東京, Москва, αβγ, مرحبا\n"
)


# Pre-tokenisation before byte-level BPE. "bytelevel": GPT-2's regex. "digits": numbers split into single digits
# first (as Qwen does). "chunks": GPT-2's regex, but a dash stays attached to the word after it and numbers split into
# groups of up to 3 digits (as Llama 3 does), so dash-joined keys (amber-falcon-river) and numbers become few,
# distinctive tokens that a tiny model can copy by plain induction (one token of context) instead of matching
# several ambiguous tokens ("-", single digits) at once.
PRETOKENIZERS = ("bytelevel", "digits", "chunks")
_CHUNKS = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|-\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def _pre_tokenizer(kind: str):
    from tokenizers import Regex, pre_tokenizers

    if kind == "bytelevel":
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    if kind == "digits":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    if kind == "chunks":
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_CHUNKS), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    raise ValueError(f"unknown pre-tokenizer {kind!r}; valid: {', '.join(PRETOKENIZERS)}")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, individual_digits: bool = False,
                    pretokenizer: str | None = None) -> object:
    """A byte-level BPE tokenizer with ChatML special tokens; `pretokenizer` is one of PRETOKENIZERS (default
    "bytelevel", or "digits" when `individual_digits`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _pre_tokenizer(pretokenizer or ("digits" if individual_digits else "bytelevel"))
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def write_tokenizer(tok: object, out: Path, max_len: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    added = {
        str(tok.token_to_id(t)): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                  "normalized": False, "single_word": False}
        for t in SPECIAL_TOKENS
    }
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": max_len,
        "added_tokens_decoder": added,
        "chat_template": CHATML_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))


def scratch_hf_config(vocab_size: int, size: str = "tiny", max_len: int = 4096, eos_ids: list[int] | None = None,
                      **overrides) -> dict:
    return {
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "vocab_size": vocab_size,
        **SIZES[size],
        "max_position_embeddings": max_len,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1e6,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "eos_token_id": eos_ids,
        **overrides,
    }


def build_checkpoint(out: str | Path, texts: Iterable[str] = (DEFAULT_CORPUS,), size: str = "tiny",
                     vocab_size: int = 512, max_len: int = 4096, seed: int = 0, individual_digits: bool = False,
                     pretokenizer: str | None = None, copy_init: float = 0.0, **overrides) -> Path:
    """Train a tokenizer on `texts`, initialise a Qwen3-architecture model and save both in HF format.
    `overrides` are HF config keys replacing the size preset's (e.g. num_hidden_layers=6)."""
    out = Path(out)
    tok = train_tokenizer(texts, vocab_size, individual_digits, pretokenizer)
    write_tokenizer(tok, out, max_len)
    eos = [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]
    hf = scratch_hf_config(tok.get_vocab_size(), size, max_len, eos, **overrides)
    cls = model_class("qwen3")
    torch.manual_seed(seed)
    model = cls(cls.config_cls.from_hf_config(hf))
    init_weights(model, seed, copy_init=copy_init)
    save_model(model, out)
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": eos, "pad_token_id": eos[1]}, indent=2))
    return out


def init_weights(model: torch.nn.Module, seed: int = 0, std: float = 0.02, copy_init: float = 0.0) -> None:
    """GPT-style init: normal(0, std) for matrices and embeddings; norms keep their identity init.
    `copy_init` > 0 adds a mimetic value/output init (see `mimetic_copy_init`)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif name.endswith("bias"):
                p.zero_()
    if copy_init:
        mimetic_copy_init(model, copy_init, seed)


def mimetic_copy_init(model: torch.nn.Module, alpha: float = 1.0, seed: int = 0) -> None:
    """Start every attention head as a copier: W_O W_V = alpha x (projection onto a random nkv*hd-dim subspace),
    so attending to a token writes (most of) its embedding into the residual stream and, with tied embeddings,
    raises that token's logit. A mimetic initialisation (Trockman & Kolter 2023): in a 4M-parameter model it cut the
    steps needed to learn "copy the token you attend to" among 1,000 candidates from thousands to ~250, and copying
    (keys, values, line numbers, TX ids) is what every sandbox task needs."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in getattr(model, "blocks", []):
            a = block.attn
            H, groups = a.wv.weight.shape[1], a.nh // a.nkv
            if a.nkv * a.hd > H:
                continue  # the value space is wider than the residual: no projection to start from
            U = torch.linalg.qr(torch.randn(H, H, generator=g))[0]  # (H, H) orthogonal
            a.wv.weight.add_(U[: a.nkv * a.hd] * alpha**0.5)  # (nkv*hd, H): rows of U
            for h in range(a.nh):
                kv = h // groups  # query heads of one group share its value head and split the output
                a.wo.weight[:, h * a.hd : (h + 1) * a.hd] = U[kv * a.hd : (kv + 1) * a.hd].T * alpha**0.5 / groups


if __name__ == "__main__":  # `python -m ctxlab.scratch OUT_DIR`: a tiny random checkpoint for smoke runs
    import sys

    print(build_checkpoint(sys.argv[1] if len(sys.argv) > 1 else "demo_out/tiny"))

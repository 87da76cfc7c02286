"""Build small HF-format checkpoints from scratch: a config, random weights and a BPE tokenizer trained with
`tokenizers`. Used by `make demo` before a trained model exists, by the training loop to start a model, and by
tests that need a checkpoint without transformers."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from ctxlab.errors import CtxlabError
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
# several ambiguous tokens ("-", single digits) at once. "chunks-sep": "chunks", but a number's first group also takes
# one punctuation mark and one space before it (`key: 823923` → `key`, `: 823`, `923`), so a value's first token
# directly follows its key and is found by one-token induction rather than across a `:`, ` ` gap.
PRETOKENIZERS = ("bytelevel", "digits", "chunks", "chunks-sep")
_WORDS = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|-\p{L}+|"
_TAIL = r"| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_SPLITS = {"chunks": _WORDS + r"\p{N}{1,3}" + _TAIL, "chunks-sep": _WORDS + r"[^\s\p{L}\p{N}]? ?\p{N}{1,3}" + _TAIL}


def _pre_tokenizer(kind: str):
    from tokenizers import Regex, pre_tokenizers

    if kind == "bytelevel":
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    if kind == "digits":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    if kind in _SPLITS:
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_SPLITS[kind]), behavior="isolated"),
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
                     pretokenizer: str | None = None, copy_init: float = 0.0, induction_init: float = 0.0,
                     **overrides) -> Path:
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
    init_weights(model, seed, copy_init=copy_init, induction_init=induction_init)
    save_model(model, out)
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": eos, "pad_token_id": eos[1]}, indent=2))
    return out


def init_weights(model: torch.nn.Module, seed: int = 0, std: float = 0.02, copy_init: float = 0.0,
                 induction_init: float = 0.0) -> None:
    """GPT-style init: normal(0, std) for matrices and embeddings; norms keep their identity init.
    `copy_init` > 0 adds a mimetic value/output init (see `mimetic_copy_init`); `induction_init` > 0 wires layers 0-1
    as an induction circuit (see `induction_circuit_init`; applied after the copy init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif name.endswith("bias"):
                p.zero_()
    if copy_init:
        mimetic_copy_init(model, copy_init, seed)
    if induction_init:
        induction_circuit_init(model, induction_init, seed)


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


def induction_circuit_init(model: torch.nn.Module, gain: float = 3.0, seed: int = 0, n_fast: int = 8,
                           n_slow: int = 12) -> None:
    """Start layers 0 and 1 as an induction circuit: at position t, attend to the token that followed an earlier
    occurrence of token t and raise its logit. Key-value lookup, TX-id and line-number copying all need it, and a
    4M-parameter model trained on the sandbox tasks did not form one by itself in 4,600 steps.

    - Every token embedding gets a shared component u (under tied embeddings it shifts all logits equally).
    - Layer 0, query head 0: a previous-token head. Its query and key read only u, so they are (nearly) constant; on
      the `n_fast` fastest rotary pairs the key is (1, 0) and the query e^{-iθ}, so after RoPE q_t·k_s =
      Σ cos(θ (t - s - 1)), largest at s = t - 1. It reads the token's identity subspace A and writes it into a
      separate subspace B (B^T A): position s now also carries token s - 1. Layer 0's other heads write nothing.
    - Layer 1, query head 0: the induction head. On the `n_slow` slowest rotary pairs (nearly unrotated up to 8k
      positions) its query reads A (token t) and its key reads B (token s - 1), so it matches where token s - 1 is
      token t; its value reads A and its output writes A^T: it copies token s. Layer 1's other heads and both
      layers' MLPs write nothing at first.
    `gain` scales the used rotary pairs in the (shared) QK-norm weights of both layers: 3 puts ~99% of head 0's
    attention on the previous token. Rotate-half layout: pair i is dims (i, i + hd/2). Orthogonal to u, A and B are
    random hd-dimensional subspaces of the residual stream."""
    blocks = getattr(model, "blocks", [])
    if len(blocks) < 2 or not hasattr(blocks[0].attn, "q_norm"):
        raise CtxlabError("induction_circuit_init needs a Qwen3-style model (QK-norm, rotate-half RoPE), 2+ layers")
    a0, a1 = blocks[0].attn, blocks[1].attn
    hd, H, half = a0.hd, a0.wq.weight.shape[1], a0.hd // 2
    if 2 * hd + 1 > H or n_fast + n_slow > half:
        raise CtxlabError(f"induction_circuit_init needs hidden >= 2 x head_dim + 1 and {n_fast + n_slow} rotary pairs")
    g = torch.Generator().manual_seed(seed + 2)
    inv_freq = model.rope.inv_freq(torch.device("cpu"))  # (hd/2,) fastest first
    fast = torch.cat([torch.arange(n_fast), half + torch.arange(n_fast)])  # dims of the fastest pairs
    slow = torch.cat([torch.arange(half - n_slow, half), hd - n_slow + torch.arange(n_slow)])  # slowest pairs
    with torch.no_grad():
        basis = torch.linalg.qr(torch.randn(H, H, generator=g))[0].T  # (H, H) orthonormal rows
        u, A, B = basis[0], basis[1 : 1 + hd], basis[1 + hd : 1 + 2 * hd]  # (H,), (hd, H), (hd, H)
        emb = model.tok_emb.weight  # (V, H)
        emb.sub_((emb @ u)[:, None] * u[None])  # tokens differ only orthogonally to u ...
        emb.add_(u * emb.norm(dim=1).mean())  # ... and share u, as large as a typical row
        # layer 0: previous-token head (query head 0, KV head 0; query head 1 shares that KV head: silenced)
        q, k = torch.zeros(hd), torch.zeros(hd)
        q[:n_fast], q[half : half + n_fast] = inv_freq[:n_fast].cos(), -inv_freq[:n_fast].sin()  # e^{-iθ}
        k[:n_fast] = 1.0
        a0.wq.weight[:hd] = q[:, None] * u[None]  # (hd, H): reads only u
        a0.wk.weight[:hd] = k[:, None] * u[None]
        a0.wv.weight[:hd] = A  # (hd, H): token identity
        # Attention reads RMS-normalised inputs but writes into the raw residual, where embeddings are ~0.02 per
        # dimension: scale head 0's write to twice the token's own B component, and silence layer 0's other heads
        # (their copies would drown the token's identity, which layer 1's query reads).
        x = emb / emb.pow(2).mean(-1, keepdim=True).sqrt()  # (V, H): embeddings as attention sees them
        scale = 2.0 * (emb @ B.T).norm(dim=-1).mean() / (x @ A.T).norm(dim=-1).mean()
        a0.wo.weight.zero_()
        a0.wo.weight[:, :hd] = scale * B.T  # (H, hd): token s - 1 written into B
        # layer 1: induction head (query head 0 reads A, KV head 0 reads B, on the slow pairs; copies A back)
        a1.wq.weight[:hd] = 0.0
        a1.wk.weight[:hd] = 0.0
        a1.wq.weight[slow] = A[: 2 * n_slow]  # (2·n_slow, H)
        a1.wk.weight[slow] = B[: 2 * n_slow]
        a1.wv.weight[:hd] = A
        a1.wo.weight.zero_()
        a1.wo.weight[:, :hd] = A.T  # copies token s at full strength: it should decide the next-token logits
        for block in blocks[:2]:  # zero-init MLP outputs: their random writes are as large as the embeddings
            block.ffn.w_down.weight.zero_()
        for a, dims in ((a0, fast), (a1, slow)):
            for norm in (a.q_norm, a.k_norm):
                norm.weight[dims] = gain

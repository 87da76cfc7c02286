"""Tokenizers from GGUF metadata (`tokenizer.ggml.*`), built with the `tokenizers` library so that encoding and
decoding equal transformers' GGUF tokenizers token for token.

Two vocabulary kinds exist in the files ctxlab reads:
- `gpt2`: byte-level BPE with merges (SmolLM2, Llama 3, Qwen). The pre-tokenizer split follows `tokenizer.ggml.pre`
  where llama.cpp names a non-GPT-2 regex (llama3, qwen2); tokens outside the byte alphabet (mislabelled control
  tokens) are re-spelled in it.
- `llama`: SentencePiece-style BPE with scores and token types and no merges (Llama 2, Gemma). Merges are recovered
  from the vocabulary: every split of a token into two vocabulary pieces, ordered by the token's rank. Gemma's ranks
  are its file order (its scores do not follow the merge order) and Gemma files store runs of spaces as real
  spaces, which the pipeline spells "▁"; Llama's ranks are its scores.
Token types: 3 (control) become special added tokens, 4 (user-defined) plain added tokens that are matched whole.
"""

from __future__ import annotations

from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as _HFTokenizer

from ctxlab.errors import CtxlabError
from ctxlab.gguf_file import GGUFFile

CONTROL, USER_DEFINED = 3, 4
_SPM = "\u2581"  # SentencePiece's word-boundary mark

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# llama.cpp `tokenizer.ggml.pre` names whose split regex differs from GPT-2's (the ByteLevel default).
PRE_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
              "smaug-bpe": _LLAMA3_SPLIT, "dbrx": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT,
              "deepseek-r1-qwen": _QWEN2_SPLIT}
GEMMA_ARCHS = ("gemma", "gemma2", "gemma3")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table (the byte-level BPE alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _merges_from_vocab(tokens: list[str], ranks: list[float]) -> list[tuple[str, str]]:
    """Every split of a token into two vocabulary pieces; best rank first, then the longer left piece. A token
    listed twice keeps its first place in the iteration and its last rank (dict semantics, as transformers)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    rank_of = dict(zip(tokens, ranks, strict=True))
    found: list[tuple[float, int, int, str, str]] = []
    for tok, rank in rank_of.items():
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            if left in vocab and right in vocab:
                found.append((rank, cut, len(right), left, right))
    found.sort(key=lambda m: (m[0], m[1], m[2]), reverse=True)
    return [(m[3], m[4]) for m in found]


def _byte_level(g: GGUFFile, tokens: list[str]) -> _HFTokenizer:
    spell = bytes_to_unicode()
    alphabet = set(spell.values())
    tokens = [t if set(t) <= alphabet else "".join(spell[b] for b in t.encode("utf-8")) for t in tokens]
    merges = g.get("tokenizer.ggml.merges")
    if merges is None:
        raise CtxlabError(f"{g.path.name}: a gpt2 tokenizer needs tokenizer.ggml.merges")
    pairs = []
    for m in merges:
        parts = m.split(" ")
        if len(parts) != 2:
            raise CtxlabError(f"{g.path.name}: malformed merge {m!r} in tokenizer.ggml.merges")
        pairs.append((parts[0], parts[1]))
    tk = _HFTokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, pairs, continuing_subword_prefix="",
                                 end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    split = PRE_SPLITS.get(g.get("tokenizer.ggml.pre", ""))
    if split is None:
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    return tk


def _sentencepiece(g: GGUFFile, tokens: list[str], unk: str | None) -> _HFTokenizer:
    gemma = g.arch in GEMMA_ARCHS
    if gemma:
        tokens = [_SPM * len(t) if " " in t and not t.strip() else t for t in tokens]
        ranks: list[float] = [-float(i) for i in range(len(tokens))]
    else:
        scores = g.get("tokenizer.ggml.scores")
        if scores is None or len(scores) != len(tokens):
            raise CtxlabError(f"{g.path.name}: a llama tokenizer needs one tokenizer.ggml.scores entry per token")
        ranks = [float(s) for s in scores]
    merges = g.get("tokenizer.ggml.merges")
    pairs = [tuple(m.split(" ", 1)) for m in merges] if merges is not None else _merges_from_vocab(tokens, ranks)
    tk = _HFTokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, pairs, unk_token=unk, fuse_unk=True,
                                 byte_fallback=True))
    if gemma:
        tk.normalizer = normalizers.Replace(" ", _SPM)
        tk.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
        tk.decoder = decoders.Sequence([decoders.Replace(_SPM, " "), decoders.ByteFallback(), decoders.Fuse()])
    else:
        tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_SPM, prepend_scheme="first", split=False)
        tk.decoder = decoders.Sequence([decoders.Replace(_SPM, " "), decoders.ByteFallback(), decoders.Fuse(),
                                        decoders.Strip(" ", 1, 0)])
    return tk


def gguf_tokenizer(g: GGUFFile) -> tuple[_HFTokenizer, dict[str, Any], str | None, dict[str, Any]]:
    """(tokenizers backend, tokenizer_config-like dict, chat template, generation_config) from the file's metadata."""
    kind = g.get("tokenizer.ggml.model")
    tokens = g.get("tokenizer.ggml.tokens")
    if kind is None or tokens is None:
        raise CtxlabError(f"{g.path.name} has no tokenizer metadata (tokenizer.ggml.model / tokens)")
    tokens = list(tokens)
    types = list(g.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    if len(types) != len(tokens):
        raise CtxlabError(f"{g.path.name}: {len(types)} token types for {len(tokens)} tokens")
    ids = {name: g.get(f"tokenizer.ggml.{key}") for name, key in
           (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"), ("pad", "padding_token_id"))}
    for name, i in ids.items():
        if i is not None and not 0 <= int(i) < len(tokens):
            raise CtxlabError(f"{g.path.name}: {name} token id {i} is outside the vocabulary of {len(tokens)}")
    special = {f"{name}_token": tokens[int(i)] for name, i in ids.items() if i is not None}
    if kind == "gpt2":
        tk = _byte_level(g, tokens)
        alphabet = set(bytes_to_unicode().values())
        control = [t for t, ty in zip(tokens, types, strict=True) if ty == CONTROL and set(t) <= alphabet]
    elif kind == "llama":
        tk = _sentencepiece(g, tokens, special.get("unk_token"))
        control = [t for t, ty in zip(tokens, types, strict=True) if ty == CONTROL]
    else:
        raise CtxlabError(f"{g.path.name}: tokenizer model {kind!r} is not supported (supported: gpt2, llama)")
    named = [t for t in special.values() if t not in control]
    tk.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control + named])
    vocab = tk.get_vocab()
    user = [t for t, ty in zip(tokens, types, strict=True) if ty == USER_DEFINED and t in vocab]
    tk.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])
    add_bos = g.get("tokenizer.ggml.add_bos_token", kind == "llama")  # llama.cpp's default for SentencePiece
    add_eos = g.get("tokenizer.ggml.add_eos_token", False)
    single = ([f"{special['bos_token']}:0"] if add_bos and "bos_token" in special else []) + ["$A:0"] + (
        [f"{special['eos_token']}:0"] if add_eos and "eos_token" in special else [])
    pair = single + [s.replace("$A", "$B").replace(":0", ":1") for s in single]
    tk.post_processor = processors.TemplateProcessing(
        single=single, pair=pair,
        special_tokens=[(special[k], vocab[special[k]]) for k in ("bos_token", "eos_token")
                        if k in special and (f"{special[k]}:0" in single)],
    )
    config = {**special, "add_bos_token": bool(add_bos), "add_eos_token": bool(add_eos)}
    gen = {f"{name}_token_id": int(i) for name, i in ids.items() if i is not None and name != "unk"}
    template = g.get("tokenizer.chat_template")
    return tk, config, template, gen

"""Training data: documents with per-token loss weights, packing for pretraining, padding for SFT/DPO.

A `Doc` is token ids plus one loss weight per token (the weight of *predicting* that token from the ones before
it): sandbox examples weigh prompt tokens (context + question) by `prompt_weight` and target tokens (scratchpad,
`Final: answer`, end token) by `target_weight`; SFT completions weigh 1 and prompts `data.prompt_weight` (0 = masked).

Datasets expose `len()` and `batch(indices) -> dict[str, Tensor]`; the loop decides the order.
- `PackedDataset`: rows of exactly seq_len tokens; documents are concatenated (each ends with the end token) and a
  document that does not fit in a row's remaining space starts the next row (the rest is padding with weight 0),
  so a sandbox example is never cut off from its answer. Text longer than a row is split into row-sized pieces.
- `PaddedDataset` (SFT): one document per row, right-padded to the batch's longest (causal attention never looks
  right, so padding needs no mask).
- `PairDataset` (DPO): chosen and rejected sequences stacked as (2B, T) with response masks.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Protocol, TypeVar

import torch
from torch import Tensor

from ctxlab.errors import CtxlabError
from ctxlab.tasks.sandbox import GENERATORS, render_prompt, render_target
from ctxlab.tokenizer import Tokenizer
from ctxlab.train.config import DataSection, PydocSource, RecallSource, SandboxSource, to_plain

T = TypeVar("T")


@dataclass(frozen=True)
class Doc:
    ids: tuple[int, ...]
    weights: tuple[float, ...]
    kind: str = "text"  # "sandbox:kv", "text", "sft", ...

    def __len__(self) -> int:
        return len(self.ids)


def make_doc(prompt: Sequence[int], target: Sequence[int], prompt_weight: float, target_weight: float,
             kind: str) -> Doc:
    return Doc(tuple(prompt) + tuple(target), (prompt_weight,) * len(prompt) + (target_weight,) * len(target), kind)


class Dataset(Protocol):
    def __len__(self) -> int: ...

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]: ...


# ------------------------------------------------------------------------------------------ pretraining sources


def sandbox_example(src: SandboxSource, i: int, count_tokens: Callable[[str], int]):
    """The i-th example of a sandbox source and whether it carries the scratchpad (deterministic in seed + i)."""
    seed = src.seed + i
    thinking = Random(f"think:{src.task}:{seed}").random() < src.thinking
    n = src.lengths[i % len(src.lengths)]
    ex = GENERATORS[src.task](seed, n, count_tokens=count_tokens, tolerance=None, **src.options)
    return ex, thinking


def sandbox_docs(src: SandboxSource, tok: Tokenizer, end_id: int, where: str) -> Iterator[Doc]:
    for i in range(src.count):
        try:
            ex, thinking = sandbox_example(src, i, tok.count_tokens)
        except (CtxlabError, TypeError) as e:  # TypeError: an unknown generator option
            raise CtxlabError(f"{where} ({src.task}): {e}") from None
        prompt = tok.encode(render_prompt(ex, thinking), add_special_tokens=False)
        target = tok.encode(render_target(ex, thinking), add_special_tokens=False) + [end_id]
        yield make_doc(prompt, target, src.prompt_weight, src.target_weight, f"sandbox:{src.task}")


def sandbox_texts(src: SandboxSource, n: int) -> Iterator[str]:
    """Rendered examples (approximate token counter) for training a tokenizer before the model exists."""
    from ctxlab.tasks.sandbox import approx_count_tokens

    for i in range(min(n, src.count)):
        ex, thinking = sandbox_example(src, i, approx_count_tokens)
        yield render_prompt(ex, thinking) + render_target(ex, thinking)


# Stdlib parts that are tests, GUIs or vendored code rather than documented library modules.
_PYDOC_SKIP = {"test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "site-packages",
               "__pycache__", "dist-packages", "pydoc_data"}


def pydoc_texts(src: PydocSource) -> list[str]:
    """Docstrings of Python stdlib modules as natural text: one document per module, modules in a fixed shuffled
    order, excluding the code task's modules; stops after `max_chars`. Reproducible per Python version."""
    from ctxlab.tasks.sandbox.code import MODULES

    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in sorted(root.rglob("*.py"))
             if not (_PYDOC_SKIP & set(p.relative_to(root).parts)) and p.relative_to(root).as_posix() not in MODULES]
    Random(f"pydoc:{sys.version_info[:2]}").shuffle(files)
    out: list[str] = []
    total = 0
    for f in files:
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        docs = [ast.get_docstring(node, clean=True) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        docs = [d for d in docs if d and len(d) >= 40]
        if not docs:
            continue
        text = "\n\n".join(docs)[: src.max_chars - total]
        out.append(text)
        total += len(text)
        if total >= src.max_chars:
            break
    return out


def _recall_item(rng: Random) -> str:
    from ctxlab.tasks.sandbox.kv import WORDS

    kind = rng.randrange(4)
    key = "-".join(rng.sample(WORDS, rng.randint(2, 5)))
    if kind == 0:
        return f"{key}: {rng.randint(100000, 999999)}"
    if kind == 1:
        return key
    if kind == 2:
        return f"TX{rng.randint(0, 9999):04d} A{rng.randint(1, 9)} {rng.randint(0, 3000)}"
    return f"{rng.choice(('line', 'value', 'id', 'ref'))} {rng.randint(1, 999)}"


def recall_docs(src: RecallSource, tok: Tokenizer, end_id: int) -> Iterator[Doc]:
    """Copy drills: `items` random lines, then "Once more:" and the same lines (loss on the repeat only)."""
    for i in range(src.count):
        rng = Random(f"recall:{src.seed}:{i}")
        lines = "\n".join(_recall_item(rng) for _ in range(rng.randint(src.min_items, src.max_items)))
        first = tok.encode(f"Remember this list.\n{lines}\nOnce more:\n", add_special_tokens=False)
        again = tok.encode(lines, add_special_tokens=False) + [end_id]
        yield make_doc(first, again, 0.0, src.weight, "recall")


def text_docs(text: str, tok: Tokenizer, end_id: int, weight: float, seq_len: int) -> Iterator[Doc]:
    """A text as row-sized documents (the last one ends with the end token)."""
    ids = tok.encode(text, add_special_tokens=False) + [end_id]
    for s in range(0, len(ids), seq_len):
        piece = ids[s : s + seq_len]
        yield Doc(tuple(piece), (weight,) * len(piece), "text")


def tokenizer_corpus(data: DataSection, n_docs: int) -> list[str]:
    """Texts to train a scratch tokenizer on: sandbox examples from every source (split evenly), then all text."""
    texts: list[str] = []
    per = max(1, n_docs // max(1, len(data.sandbox)))
    for src in data.sandbox:
        texts.extend(sandbox_texts(src, per))
    for t in data.text:
        texts.append(Path(t.path).read_text(encoding="utf-8"))
    if data.pydoc is not None:
        texts.extend(pydoc_texts(data.pydoc))
    return texts


def pretrain_docs(data: DataSection, tok: Tokenizer, end_id: int) -> list[Doc]:
    docs: list[Doc] = []
    for i, src in enumerate(data.sandbox):
        for d in sandbox_docs(src, tok, end_id, f"data.sandbox[{i}]"):
            if len(d) > data.seq_len:
                raise CtxlabError(f"a data.sandbox[{i}] ({src.task}) example has {len(d)} tokens, more than "
                                  f"data.seq_len {data.seq_len}; raise seq_len or lower the lengths")
            docs.append(d)
    for t in data.text:
        text = _read_text(Path(t.path))
        for _ in range(t.repeat):
            docs.extend(text_docs(text, tok, end_id, t.weight, data.seq_len))
    if data.pydoc is not None:
        for text in pydoc_texts(data.pydoc):
            docs.extend(text_docs(text, tok, end_id, data.pydoc.weight, data.seq_len))
    if data.recall is not None:
        docs.extend(recall_docs(data.recall, tok, end_id))
    return docs


def split_heldout(docs: Sequence[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Shuffle (seeded) and hold out every k-th document, k = round(1 / fraction)."""
    docs = list(docs)
    Random(f"docs:{seed}").shuffle(docs)
    if fraction <= 0:
        return docs, []
    k = max(2, round(1 / fraction))
    return [d for i, d in enumerate(docs) if i % k], [d for i, d in enumerate(docs) if i % k == 0]


def pack(docs: Sequence[Doc], seq_len: int, pad_id: int) -> tuple[Tensor, Tensor]:
    """Greedy packing into rows of seq_len: ids (N, seq_len) long, weights (N, seq_len) float (0 on padding)."""
    rows_ids: list[list[int]] = []
    rows_w: list[list[float]] = []
    cur_ids: list[int] = []
    cur_w: list[float] = []

    def flush() -> None:
        if cur_ids:
            pad = seq_len - len(cur_ids)
            rows_ids.append(cur_ids + [pad_id] * pad)
            rows_w.append(cur_w + [0.0] * pad)

    for d in docs:
        for s in range(0, len(d), seq_len):
            ids, w = d.ids[s : s + seq_len], d.weights[s : s + seq_len]
            if len(cur_ids) + len(ids) > seq_len:
                flush()
                cur_ids, cur_w = [], []
            cur_ids += ids
            cur_w += w
    flush()
    if not rows_ids:
        return torch.zeros(0, seq_len, dtype=torch.long), torch.zeros(0, seq_len)
    return torch.tensor(rows_ids, dtype=torch.long), torch.tensor(rows_w, dtype=torch.float32)


class PackedDataset:
    def __init__(self, ids: Tensor, weights: Tensor):
        self.ids, self.weights = ids, weights

    def __len__(self) -> int:
        return self.ids.shape[0]

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return {"ids": self.ids[idx], "weights": self.weights[idx]}

    @property
    def n_tokens(self) -> int:
        return int((self.weights > 0).sum())


class BucketedDataset:
    """Pretraining without packing: one document per row, so attention never reaches into another document.
    Documents are sorted by length and cut into fixed groups of `group` rows (little padding); an item is a whole
    group, so the loop runs with batch_size 1 (group) per micro-batch."""

    def __init__(self, docs: Sequence[Doc], pad_id: int, group: int):
        order = sorted(range(len(docs)), key=lambda i: (len(docs[i]), i))
        self.groups = [order[s : s + group] for s in range(0, len(order), group)]
        self.inner = PaddedDataset(docs, pad_id)

    def __len__(self) -> int:
        return len(self.groups)

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        return self.inner.batch([i for g in indices for i in self.groups[g]])

    @property
    def n_tokens(self) -> int:
        return sum(sum(1 for w in d.weights if w > 0) for d in self.inner.docs)


def _flatten(docs: Sequence[Doc]) -> dict[str, Tensor]:
    return {"ids": torch.tensor([i for d in docs for i in d.ids], dtype=torch.long),
            "w": torch.tensor([w for d in docs for w in d.weights], dtype=torch.float32),
            "len": torch.tensor([len(d) for d in docs], dtype=torch.long)}


def _unflatten(blob: dict[str, Tensor]) -> list[Doc]:
    ids, w, out, s = blob["ids"].tolist(), blob["w"].tolist(), [], 0
    for n in blob["len"].tolist():
        out.append(Doc(tuple(ids[s : s + n]), tuple(w[s : s + n])))
        s += n
    return out


def build_pretrain_data(data: DataSection, tok: Tokenizer, tokenizer_dir: Path, cache_dir: Path, seed: int,
                        group: int = 1) -> tuple[Dataset, Dataset | None]:
    """Train / held-out sets (packed rows, or length-bucketed groups of `group` documents when data.pack is false);
    the tokenized documents are cached in cache_dir keyed by the data config and tokenizer."""
    end_id, pad_id = special_ids(tok)
    sources = {k: v for k, v in to_plain(data).items() if k not in ("pack", "seq_len")}
    key = hashlib.sha256(json.dumps({
        "data": sources, "seq_len": data.seq_len, "seed": seed, "python": list(sys.version_info[:2]),
        "end": end_id, "pad": pad_id,
        "tokenizer": tok.fingerprint(),
    }, sort_keys=True).encode()).hexdigest()[:16]
    cache = cache_dir / f"docs-{key}.pt"
    if cache.is_file():
        blob = torch.load(cache, weights_only=True)
        train_docs, eval_docs = _unflatten(blob["train"]), _unflatten(blob["eval"])
    else:
        train_docs, eval_docs = split_heldout(pretrain_docs(data, tok, end_id), data.heldout, seed)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save({"train": _flatten(train_docs), "eval": _flatten(eval_docs)}, tmp)
        tmp.replace(cache)
    if not train_docs:
        raise CtxlabError("the training data is empty")
    if not data.pack:
        ev_b = BucketedDataset(eval_docs, pad_id, group) if eval_docs else None
        return BucketedDataset(train_docs, pad_id, group), ev_b
    train = PackedDataset(*pack(train_docs, data.seq_len, pad_id))
    ev = PackedDataset(*pack(eval_docs, data.seq_len, pad_id)) if eval_docs else None
    return train, ev


# ------------------------------------------------------------------------------------------------- SFT / DPO


def read_jsonl(path: Path, fields: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a JSONL file that must each hold the string `fields` (errors name the file and line)."""
    from ctxlab.tasks.rows import read_jsonl as read_rows

    rows = []
    for n, row in read_rows(path):
        missing = [k for k in fields if not isinstance(row.get(k), str)]
        if missing:
            raise CtxlabError(f"{path}: row {n}: needs string fields {', '.join(fields)} (missing or not a "
                              f"string: {', '.join(missing)})")
        rows.append(row)
    if not rows:
        raise CtxlabError(f"{path} holds no rows")
    return rows


def sft_docs(path: Path, tok: Tokenizer, seq_len: int, prompt_weight: float) -> list[Doc]:
    """{prompt, completion} rows → prompt ids + completion ids + end token; prompt tokens weigh prompt_weight."""
    end_id, _ = special_ids(tok)
    docs = []
    for n, row in enumerate(read_jsonl(path, ("prompt", "completion")), 1):
        prompt = tok.encode(row["prompt"], add_special_tokens=False)
        target = tok.encode(row["completion"], add_special_tokens=False) + [end_id]
        doc = make_doc(prompt, target, prompt_weight, 1.0, "sft")
        _check_len(path, n, len(doc), seq_len)
        docs.append(doc)
    return docs


class PaddedDataset:
    """One document per row, right-padded to the longest in the batch (weight 0 on padding)."""

    def __init__(self, docs: Sequence[Doc], pad_id: int):
        self.docs, self.pad_id = list(docs), pad_id

    def __len__(self) -> int:
        return len(self.docs)

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        docs = [self.docs[i] for i in indices]
        T = max(len(d) for d in docs)
        ids = torch.full((len(docs), T), self.pad_id, dtype=torch.long)
        w = torch.zeros(len(docs), T)
        for r, d in enumerate(docs):
            ids[r, : len(d)] = torch.tensor(d.ids)
            w[r, : len(d)] = torch.tensor(d.weights)
        return {"ids": ids, "weights": w}


@dataclass(frozen=True)
class Pair:
    prompt: tuple[int, ...]
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]


def dpo_pairs(path: Path, tok: Tokenizer, seq_len: int) -> list[Pair]:
    end_id, _ = special_ids(tok)
    pairs = []
    for n, row in enumerate(read_jsonl(path, ("prompt", "chosen", "rejected")), 1):
        prompt = tuple(tok.encode(row["prompt"], add_special_tokens=False))
        chosen = tuple(tok.encode(row["chosen"], add_special_tokens=False) + [end_id])
        rejected = tuple(tok.encode(row["rejected"], add_special_tokens=False) + [end_id])
        _check_len(path, n, len(prompt) + max(len(chosen), len(rejected)), seq_len)
        pairs.append(Pair(prompt, chosen, rejected))
    return pairs


class PairDataset:
    """DPO batches: ids (2B, T) = B chosen rows then B rejected rows (right-padded), mask (2B, T) True on response
    tokens (the tokens whose log-probabilities are summed)."""

    def __init__(self, pairs: Sequence[Pair], pad_id: int):
        self.pairs, self.pad_id = list(pairs), pad_id

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        pairs = [self.pairs[i] for i in indices]
        seqs = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
        T = max(len(a) + len(b) for a, b in seqs)
        ids = torch.full((len(seqs), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(seqs), T, dtype=torch.bool)
        for r, (a, b) in enumerate(seqs):
            ids[r, : len(a) + len(b)] = torch.tensor(a + b)
            mask[r, len(a) : len(a) + len(b)] = True
        return {"ids": ids, "mask": mask}


# ---------------------------------------------------------------------------------------------------- helpers


def special_ids(tok: Tokenizer) -> tuple[int, int]:
    """(end id appended to every document, pad id): the first eos id, and the pad token (else the end id)."""
    eos = tok.eos_token_ids
    if not eos:
        raise CtxlabError(f"{tok.name or 'the tokenizer'} has no eos token; training needs one to end documents")
    return eos[0], tok.pad_id if tok.pad_id is not None else eos[0]


def _check_len(path: Path, n: int, length: int, seq_len: int) -> None:
    if length > seq_len:
        raise CtxlabError(f"{path}:{n}: {length} tokens exceed data.seq_len {seq_len}; shorten the row or raise "
                          "seq_len")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CtxlabError(f"cannot read {path}: {e}") from None

"""Training configuration: a frozen `TrainConfig` read from TOML (tomllib) or JSON with strict validation.

Every section is a frozen dataclass; unknown keys, wrong types and out-of-range values raise a one-line CtxlabError
that names the key (and, for unknown keys, lists the valid ones). Relative paths are relative to the working
directory the command runs in (run `ctxlab train ... --config configs/bundled.toml` from the repository root).

Layout (TOML; every key but those marked required has a default):

    seed = 0
    out_dir = "runs/bundled"            # required: checkpoints, loss curve, data cache
    threads = 2                         # torch.set_num_threads

    [model]   init = "scratch" | <checkpoint dir or hub id>; scratch only: size, vocab_size, num_layers,
              max_position_embeddings, pretokenizer, tokenizer_docs, copy_init,
              induction_init
    [data]    seq_len, pack, heldout (fraction of documents held out for eval loss), jsonl (SFT/DPO file),
              prompt_weight (SFT: weight of prompt tokens, 0 = completion only)
    [[data.sandbox]]  task, lengths, thinking, count, seed, prompt_weight, target_weight, options
    [[data.text]]     path, weight, repeat
    [data.pydoc]      max_chars, weight     (Python stdlib docstrings as natural text)
    [data.recall]     count, seed, min_items, max_items, weight   (copy drills, see RecallSource)
    [optim]   lr, min_lr_ratio, warmup_steps, max_steps, batch_size, grad_accum, grad_clip, weight_decay,
              beta1, beta2, eps, bf16_autocast
    [eval]    every, max_batches, task_samples, task_length, task_thinking
    [checkpoint]  every, keep
    [dpo]     beta
    [export]  dir, dtype, card_samples, card_lengths
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from ctxlab.checks import is_int, is_number
from ctxlab.errors import CtxlabError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: JSON configs still work
    tomllib = None

SANDBOX_TASKS = ("bank", "code", "kv")
KINDS = ("pretrain", "sft", "dpo")


@dataclass(frozen=True)
class ModelSection:
    init: str = "scratch"  # "scratch" (pretraining only) or a checkpoint directory / hub id to start from
    size: str = "small"  # scratch: a preset of ctxlab.train.scratch.SIZES
    num_layers: int = 0  # scratch: override the preset's layer count (0 = keep)
    vocab_size: int = 3072  # scratch: BPE vocabulary size
    max_position_embeddings: int = 8192
    pretokenizer: str = "chunks"  # scratch: one of ctxlab.train.scratch.PRETOKENIZERS (see there)
    tokenizer_docs: int = 3000  # scratch: documents sampled to train the tokenizer
    copy_init: float = 0.0  # scratch: mimetic copy init of attention value/output maps (ctxlab.train.scratch), 0 = off
    induction_init: float = 0.0  # scratch: layers 0-1 start as an induction circuit (QK-norm gain; train/scratch.py)

    def __post_init__(self) -> None:
        from ctxlab.train.scratch import PRETOKENIZERS, SIZES

        if self.size not in SIZES:
            raise CtxlabError(f"model.size {self.size!r} is not a preset; valid: {', '.join(SIZES)}")
        if self.pretokenizer not in PRETOKENIZERS:
            raise CtxlabError(f"model.pretokenizer {self.pretokenizer!r} is unknown; valid: {', '.join(PRETOKENIZERS)}")
        _check_min("model.num_layers", self.num_layers, 0)
        _check_min("model.vocab_size", self.vocab_size, 300)
        _check_min("model.max_position_embeddings", self.max_position_embeddings, 16)
        _check_min("model.tokenizer_docs", self.tokenizer_docs, 1)
        _check_min("model.copy_init", self.copy_init, 0.0)
        _check_min("model.induction_init", self.induction_init, 0.0)


@dataclass(frozen=True)
class SandboxSource:
    task: str
    count: int
    lengths: tuple[int, ...] = (256,)  # prompt lengths in the model's tokens, cycled over the examples
    thinking: float = 0.5  # fraction of examples with the scratchpad before the answer
    seed: int = 1_000_000  # first seed; keep training seeds disjoint from evaluation seeds (0, 1, ...)
    prompt_weight: float = 0.1  # loss weight of prompt tokens (context, question)
    target_weight: float = 1.0  # loss weight of target tokens (scratchpad, answer, end token)
    options: dict[str, Any] = field(default_factory=dict)  # extra generator keyword arguments (e.g. similarity)

    def __post_init__(self) -> None:
        if self.task not in SANDBOX_TASKS:
            raise CtxlabError(f"data.sandbox.task {self.task!r} is unknown; valid: {', '.join(SANDBOX_TASKS)}")
        _check_min("data.sandbox.count", self.count, 1)
        if not self.lengths:
            raise CtxlabError("data.sandbox.lengths must list at least one length")
        for n in self.lengths:
            _check_min("data.sandbox.lengths", n, 64)
        _check_range("data.sandbox.thinking", self.thinking, 0.0, 1.0)
        _check_min("data.sandbox.seed", self.seed, 0)
        _check_min("data.sandbox.prompt_weight", self.prompt_weight, 0.0)
        _check_min("data.sandbox.target_weight", self.target_weight, 0.0)


@dataclass(frozen=True)
class TextSource:
    path: str
    weight: float = 1.0
    repeat: int = 1

    def __post_init__(self) -> None:
        _check_min("data.text.weight", self.weight, 0.0)
        _check_min("data.text.repeat", self.repeat, 1)


@dataclass(frozen=True)
class PydocSource:
    max_chars: int = 200_000  # docstrings of stdlib modules (sorted, excluding the code task's modules)
    weight: float = 1.0

    def __post_init__(self) -> None:
        _check_min("data.pydoc.max_chars", self.max_chars, 1)
        _check_min("data.pydoc.weight", self.weight, 0.0)


@dataclass(frozen=True)
class RecallSource:
    """Copy drills: a random list (sandbox-style keys, values, TX ids, balances) written twice; the loss is on the
    repeat only. They make a tiny model form induction (copy) heads early, which every sandbox task builds on."""

    count: int
    seed: int = 7
    min_items: int = 4
    max_items: int = 24
    weight: float = 1.0

    def __post_init__(self) -> None:
        _check_min("data.recall.count", self.count, 1)
        _check_min("data.recall.seed", self.seed, 0)
        _check_min("data.recall.min_items", self.min_items, 1)
        _check_min("data.recall.max_items", self.max_items, self.min_items)
        _check_min("data.recall.weight", self.weight, 0.0)


@dataclass(frozen=True)
class DataSection:
    seq_len: int = 512  # packed row length (pretraining); longest allowed document / example
    pack: bool = True  # pretraining: pack documents into rows; false = one document per row (no cross-document
    #                    attention: retrieval tasks must not find candidates in their neighbours), length-bucketed
    heldout: float = 0.02  # fraction of documents / rows held out for the eval loss
    sandbox: tuple[SandboxSource, ...] = ()
    text: tuple[TextSource, ...] = ()
    pydoc: PydocSource | None = None
    recall: RecallSource | None = None
    jsonl: str = ""  # SFT: {prompt, completion} rows; DPO: {prompt, chosen, rejected} rows
    prompt_weight: float = 0.0  # SFT: loss weight of prompt tokens (0 = train on the completion only)

    def __post_init__(self) -> None:
        _check_min("data.seq_len", self.seq_len, 8)
        _check_range("data.heldout", self.heldout, 0.0, 0.5)
        _check_min("data.prompt_weight", self.prompt_weight, 0.0)


@dataclass(frozen=True)
class OptimSection:
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    max_steps: int = 1000
    batch_size: int = 8  # rows per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float = 1.0  # max global grad norm (0 = off)
    weight_decay: float = 0.1  # on matrices and embeddings only
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    bf16_autocast: bool = False  # CPU/GPU autocast to bfloat16 for speed (weights and optimizer stay float32)

    def __post_init__(self) -> None:
        _check_min("optim.lr", self.lr, 0.0, strict=True)
        _check_range("optim.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        _check_min("optim.warmup_steps", self.warmup_steps, 0)
        _check_min("optim.max_steps", self.max_steps, 1)
        _check_min("optim.batch_size", self.batch_size, 1)
        _check_min("optim.grad_accum", self.grad_accum, 1)
        _check_min("optim.grad_clip", self.grad_clip, 0.0)
        _check_min("optim.weight_decay", self.weight_decay, 0.0)
        _check_range("optim.beta1", self.beta1, 0.0, 1.0)
        _check_range("optim.beta2", self.beta2, 0.0, 1.0)
        _check_min("optim.eps", self.eps, 0.0, strict=True)


@dataclass(frozen=True)
class EvalSection:
    every: int = 100  # steps between evaluations (0 = only at the end)
    max_batches: int = 16  # cap on held-out micro-batches per evaluation
    task_samples: int = 0  # pretraining: sandbox examples per task for a greedy accuracy check (0 = off)
    task_length: int = 256
    task_thinking: bool = False

    def __post_init__(self) -> None:
        _check_min("eval.every", self.every, 0)
        _check_min("eval.max_batches", self.max_batches, 1)
        _check_min("eval.task_samples", self.task_samples, 0)
        _check_min("eval.task_length", self.task_length, 64)


@dataclass(frozen=True)
class CheckpointSection:
    every: int = 200  # steps between checkpoints (0 = only at the end)
    keep: int = 2  # most recent checkpoints kept

    def __post_init__(self) -> None:
        _check_min("checkpoint.every", self.every, 0)
        _check_min("checkpoint.keep", self.keep, 1)


@dataclass(frozen=True)
class DPOSection:
    beta: float = 0.1

    def __post_init__(self) -> None:
        _check_min("dpo.beta", self.beta, 0.0, strict=True)


@dataclass(frozen=True)
class ExportSection:
    dir: str = ""  # where the final model is written in HF format ("" = only out_dir/final)
    dtype: str = "float32"  # float32 or bfloat16 weights in the export
    card_samples: int = 0  # held-out sandbox examples per task for the model card (0 = no card)
    card_lengths: tuple[int, ...] = (256,)

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise CtxlabError(f"export.dtype {self.dtype!r} is not supported; valid: float32, bfloat16")
        _check_min("export.card_samples", self.card_samples, 0)
        for n in self.card_lengths:
            _check_min("export.card_lengths", n, 64)


@dataclass(frozen=True)
class TrainConfig:
    out_dir: str
    seed: int = 0
    threads: int = 0  # 0 = leave torch's default
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    dpo: DPOSection = field(default_factory=DPOSection)
    export: ExportSection = field(default_factory=ExportSection)

    def __post_init__(self) -> None:
        if not self.out_dir:
            raise CtxlabError("out_dir must name a directory")
        _check_min("seed", self.seed, 0)
        _check_min("threads", self.threads, 0)

    def check_kind(self, kind: str) -> None:
        """Kind-specific requirements (what data a pretraining / SFT / DPO run needs)."""
        if kind not in KINDS:
            raise CtxlabError(f"unknown training kind {kind!r}; valid: {', '.join(KINDS)}")
        d = self.data
        if kind == "pretrain":
            if not (d.sandbox or d.text or d.pydoc or d.recall):
                raise CtxlabError("pretraining needs data: add [[data.sandbox]], [[data.text]], [data.pydoc] or "
                                  "[data.recall]")
            if d.jsonl:
                raise CtxlabError("data.jsonl is for sft/dpo; pretraining reads data.sandbox, data.text, data.pydoc")
        else:
            if not d.jsonl:
                raise CtxlabError(f"{kind} needs data.jsonl (a JSONL file of "
                                  f"{'{prompt, completion}' if kind == 'sft' else '{prompt, chosen, rejected}'} rows)")
            if d.sandbox or d.text or d.pydoc or d.recall:
                raise CtxlabError(f"{kind} reads data.jsonl only; remove data.sandbox/text/pydoc/recall")
            if self.model.init == "scratch":
                raise CtxlabError(f"{kind} starts from a trained model: set model.init to a checkpoint")
        for t in d.text:
            if not Path(t.path).is_file():
                raise CtxlabError(f"data.text file not found: {t.path}")
        if d.jsonl and not Path(d.jsonl).is_file():
            raise CtxlabError(f"data.jsonl file not found: {d.jsonl}")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


# --------------------------------------------------------------------------------------------- loading


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a TOML (.toml) or JSON (.json) training config."""
    p = Path(path)
    if not p.is_file():
        raise CtxlabError(f"config file not found: {p}")
    try:
        if p.suffix == ".toml":
            if tomllib is None:
                raise CtxlabError("TOML configs need Python 3.11+ (tomllib); use a .json config")
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        elif p.suffix == ".json":
            raw = json.loads(p.read_text(encoding="utf-8"))
        else:
            raise CtxlabError(f"config {p.name} must be a .toml or .json file")
    except (ValueError, UnicodeDecodeError) as e:
        raise CtxlabError(f"cannot parse {p}: {e}") from None
    return config_from_dict(raw)


def config_from_dict(raw: Any) -> TrainConfig:
    return _build(TrainConfig, raw, "")


def _build(cls: type, raw: Any, where: str) -> Any:
    name = where or "config"
    if not isinstance(raw, dict):
        raise CtxlabError(f"{name} must be a table/object, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    unknown = [k for k in raw if k not in valid]
    if unknown:
        raise CtxlabError(f"unknown key {_join(where, unknown[0])!r} in {name}; valid keys: {', '.join(valid)}")
    kw: dict[str, Any] = {}
    for f in fields(cls):
        key = _join(where, f.name)
        if f.name not in raw:
            if f.default is MISSING and f.default_factory is MISSING:
                raise CtxlabError(f"missing required key {key!r}")
            continue
        kw[f.name] = _convert(hints[f.name], raw[f.name], key)
    return cls(**kw)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # X | None
        inner = [a for a in args if a is not type(None)]
        return None if value is None else _convert(inner[0], value, key)
    if is_dataclass(tp):
        return _build(tp, value, key)
    if origin is tuple:
        if not isinstance(value, list):
            raise CtxlabError(f"{key} must be a list, got {type(value).__name__}")
        return tuple(_convert(args[0], v, key) for v in value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise CtxlabError(f"{key} must be a table/object, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise CtxlabError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if not is_int(value):
            raise CtxlabError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if not is_number(value):  # NaN and infinity are never a meaningful setting
            raise CtxlabError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise CtxlabError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")  # a bug in this module, not user input


def to_plain(obj: Any) -> Any:
    """A config (or section) as plain dicts / lists (JSON- and weights_only-safe)."""
    if is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _check_min(key: str, value: float, lo: float, strict: bool = False) -> None:
    if value < lo or (strict and value == lo):
        raise CtxlabError(f"{key} must be {'>' if strict else '>='} {lo}, got {value!r}")


def _check_range(key: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise CtxlabError(f"{key} must be in [{lo}, {hi}], got {value!r}")

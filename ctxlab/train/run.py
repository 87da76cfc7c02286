"""`ctxlab train pretrain|sft|dpo --config FILE [--resume]`: build model, data and objective from a TrainConfig,
run the loop, export the final model (optionally with a model card).

    ctxlab train pretrain --config configs/bundled.toml [--resume]
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console

from ctxlab.errors import CtxlabError
from ctxlab.fileio import check_writable_dir
from ctxlab.models.loading import load_model, resolve_model_path, save_model
from ctxlab.tokenizer import Tokenizer
from ctxlab.train.config import TrainConfig, load_config
from ctxlab.train.data import (
    PaddedDataset,
    PairDataset,
    build_pretrain_data,
    dpo_pairs,
    sft_docs,
    special_ids,
    split_heldout,
    tokenizer_corpus,
)
from ctxlab.train.loop import TrainResult, checkpoint_dirs, run_info, train
from ctxlab.train.objectives import DPOObjective, LMObjective

_CHUNKS_NOTE = "a dash stays attached to the following word and numbers split into groups of up to 3 digits"
PRETOKENIZER_NOTES = {
    "bytelevel": "GPT-2 pre-tokenisation",
    "digits": "numbers split into single digits",
    "chunks": _CHUNKS_NOTE + ", so dash-joined keys and numbers are short, distinctive token sequences",
    "chunks-sep": _CHUNKS_NOTE + "; a number's first group also takes the punctuation mark and space before it "
                                 "(`key: 823923` → `key`, `: 823`, `923`), so a value's first token directly follows "
                                 "its key",
}


def init_scratch(cfg: TrainConfig, out: Path, console: Console) -> Path:
    """Train the tokenizer on the configured data and write the initial weights to out/init (reused on resume)."""
    from ctxlab.train.scratch import build_checkpoint

    init = out / "init"
    if (init / "model.safetensors").is_file() and (init / "tokenizer.json").is_file():
        return init
    m = cfg.model
    console.log(f"training a {m.vocab_size}-token tokenizer on {m.tokenizer_docs} sandbox examples + text")
    texts = tokenizer_corpus(cfg.data, m.tokenizer_docs)
    overrides = {"num_hidden_layers": m.num_layers} if m.num_layers else {}
    tmp = out / "init.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    build_checkpoint(tmp, texts, size=m.size, vocab_size=m.vocab_size, max_len=m.max_position_embeddings,
                     seed=cfg.seed, pretokenizer=m.pretokenizer, copy_init=m.copy_init,
                     induction_init=m.induction_init, **overrides)
    tmp.rename(init)
    return init


def run_training(kind: str, config_path: str | Path, resume: bool = False,
                 console: Console | None = None) -> TrainResult:
    """Validate the config for `kind`, then train; returns the TrainResult (history, final dir)."""
    console = console or Console(stderr=True)
    cfg = load_config(config_path)
    cfg.check_kind(kind)
    out = check_writable_dir(cfg.out_dir, "out_dir")
    if cfg.export.dir:
        check_writable_dir(cfg.export.dir, "export.dir")
    if not resume and checkpoint_dirs(out):
        raise CtxlabError(f"{out} already holds checkpoints; pass --resume to continue or choose another out_dir")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if kind == "pretrain" and cfg.model.init == "scratch":
        start_dir = init_scratch(cfg, out, console)
    else:
        start_dir = resolve_model_path(cfg.model.init)
    model = load_model(start_dir, dtype="float32").model
    tok = Tokenizer.from_dir(start_dir)
    n_params = sum(p.numel() for p in model.parameters())
    console.log(f"{kind}: {type(model).__name__} {n_params / 1e6:.2f}M parameters from {start_dir} ({run_info()})")

    d = cfg.data
    end_id, pad_id = special_ids(tok)
    task_eval = None
    run_cfg = cfg
    if kind == "pretrain":
        train_data, eval_data = build_pretrain_data(d, tok, start_dir, out, cfg.seed, group=cfg.optim.batch_size)
        if not d.pack:  # an item of the bucketed dataset is a whole micro-batch of optim.batch_size documents
            run_cfg = replace(cfg, optim=replace(cfg.optim, batch_size=1))
        objective = LMObjective()
        if cfg.eval.task_samples:
            from ctxlab.train.evaluate import make_task_eval

            task_eval = make_task_eval(tok, cfg.eval.task_length, cfg.eval.task_samples, cfg.eval.task_thinking,
                                       tasks=sorted({s.task for s in d.sandbox}))
    elif kind == "sft":
        tr, ev = split_heldout(sft_docs(Path(d.jsonl), tok, d.seq_len, d.prompt_weight), d.heldout, cfg.seed)
        train_data, eval_data = PaddedDataset(tr, pad_id), PaddedDataset(ev, pad_id) if ev else None
        objective = LMObjective()
    else:
        pairs = dpo_pairs(Path(d.jsonl), tok, d.seq_len)
        tr, ev = split_heldout(pairs, d.heldout, cfg.seed)
        train_data, eval_data = PairDataset(tr, pad_id), PairDataset(ev, pad_id) if ev else None
        objective = DPOObjective(load_model(start_dir, dtype="float32").model, cfg.dpo.beta)
    rows = f"{len(train_data)} train / {len(eval_data) if eval_data else 0} held-out rows"
    if hasattr(train_data, "n_tokens"):
        rows += f", {train_data.n_tokens / 1e6:.2f}M weighted tokens"
    console.log(f"data ready in {time.perf_counter() - t0:.0f}s: {rows}")

    result = train(model, objective, train_data, run_cfg, eval_data=eval_data, tokenizer_dir=start_dir, resume=resume,
                   task_eval=task_eval, console=console)
    if cfg.export.dir:
        export(model, tok, cfg, start_dir, result, n_params, train_data, eval_data, console, config_path)
    return result


def export(model, tok: Tokenizer, cfg: TrainConfig, tokenizer_dir: Path, result: TrainResult, n_params: int,
           train_data, eval_data, console: Console, config_path: str | Path = "FILE") -> Path:
    """Write the final model to export.dir in export.dtype, with the loss curve and (card_samples > 0) a card."""
    from ctxlab.train.evaluate import accuracy_table, format_table, write_model_card

    dest = Path(cfg.export.dir)
    dtype = torch.bfloat16 if cfg.export.dtype == "bfloat16" else torch.float32
    for f in ("model.safetensors", "model.safetensors.index.json"):
        (dest / f).unlink(missing_ok=True)
    save_model(model.to(dtype), dest, source_dir=tokenizer_dir)
    model.float()
    shutil.copyfile(result.out_dir / "loss.csv", dest / "loss.csv")
    console.log(f"exported {cfg.export.dtype} weights to {dest}")
    if cfg.export.card_samples:
        # Evaluate the exported weights as users load them (bf16 rounding included).
        exported = load_model(dest, dtype="float32").model
        scores = accuracy_table(exported, tok, cfg.export.card_lengths, cfg.export.card_samples)
        table = format_table(scores)
        console.print(table)
        hist = result.history
        ev = result.eval_rows
        src = cfg.data.sandbox
        run = {
            "parameters": n_params, "steps": cfg.optim.max_steps,
            "command": f"`ctxlab train pretrain --config {config_path}`",
            "lr": cfg.optim.lr, "warmup": cfg.optim.warmup_steps,
            "min_lr_ratio": cfg.optim.min_lr_ratio, "weight_decay": cfg.optim.weight_decay,
            "batch": cfg.optim.batch_size * cfg.optim.grad_accum, "seq_len": cfg.data.seq_len,
            "lengths": sorted({n for s in src for n in s.lengths}), "examples": sum(s.count for s in src),
            "prompt_weight": src[0].prompt_weight if src else 1.0,
            "pretokenizer_note": PRETOKENIZER_NOTES.get(cfg.model.pretokenizer, cfg.model.pretokenizer)
            if cfg.model.init == "scratch" else f"the tokenizer of {cfg.model.init}",
            "train_tokens": hist[-1]["tokens"] if hist else 0, "rows": _rows(train_data), "eval_rows": _rows(eval_data),
            "packed": cfg.data.pack, "recall": cfg.data.recall.count if cfg.data.recall else 0,
            "copy_init": cfg.model.init == "scratch" and cfg.model.copy_init > 0,
            "induction_init": cfg.model.init == "scratch" and cfg.model.induction_init > 0,
            "wall_min": hist[-1]["elapsed"] / 60 if hist else 0,
            "final_train_loss": sum(r["train_loss"] for r in hist[-20:]) / max(1, len(hist[-20:])),
            "final_eval_loss": ev[-1]["eval_loss"] if ev else float("nan"),
        }
        write_model_card(dest, table=table, n=cfg.export.card_samples, run=run)
        (dest / "eval_results.json").write_text(_scores_json(scores))
    return dest


def _rows(data) -> int:
    """Training rows: documents for a bucketed (unpacked) dataset, packed rows otherwise."""
    if data is None:
        return 0
    return len(data.inner) if hasattr(data, "inner") else len(data)


def _scores_json(scores) -> str:
    import json
    from dataclasses import asdict

    return json.dumps([asdict(s) for s in scores], indent=2)

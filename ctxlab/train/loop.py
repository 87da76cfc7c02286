"""The generic training loop (pretraining, SFT and DPO differ only in data and objective).

AdamW (weight decay on matrices and embeddings only), linear warmup then cosine decay to `lr * min_lr_ratio`,
global-norm gradient clipping, gradient accumulation (the step's loss is the mean over all its micro-batches,
see objectives.py), periodic held-out loss plus an optional task callback, checkpoints and exact resume.

Out dir layout:
    checkpoints/step-000200/   HF-format weights (float32) + tokenizer files + trainer_state.pt
    final/                     the final weights in HF format
    loss.csv, loss.png         the loss curve (train loss per step, eval loss / task metrics per evaluation)

trainer_state.pt is a plain dict (step, optimizer, scheduler, RNG states, history) saved with torch.save and read
back with weights_only=True; weights only ever travel as safetensors. The data order is a pure function of the seed
and the step (epoch permutations from seeded generators), so a resumed run sees the same batches and, on the same
machine and thread count, produces bit-identical losses to an uninterrupted one.
"""

from __future__ import annotations

import csv
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import TextColumn
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from ctxlab.errors import CtxlabError
from ctxlab.models.loading import load_weights, save_model
from ctxlab.progress import progress_bar
from ctxlab.train.config import TrainConfig
from ctxlab.train.data import Dataset
from ctxlab.train.objectives import Objective

TaskEval = Callable[[nn.Module, int], dict[str, float]]
STATE_FILE = "trainer_state.pt"


@dataclass
class TrainResult:
    out_dir: Path
    final_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)  # one row per step (+ eval fields)

    @property
    def losses(self) -> list[float]:
        return [r["train_loss"] for r in self.history]

    @property
    def eval_rows(self) -> list[dict[str, float]]:
        return [r for r in self.history if not math.isnan(r.get("eval_loss", math.nan))]


# -------------------------------------------------------------------------------------------- schedule / optim


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak LR for optimizer step `step` (0-based): linear warmup, then cosine to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, LambdaLR]:
    o = cfg.optim
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for _, p in params if p.dim() >= 2]  # matrices and embeddings; norms (1-D) are not decayed
    no_decay = [p for _, p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
    )
    sched = LambdaLR(opt, lambda s: lr_factor(s, o.warmup_steps, o.max_steps, o.min_lr_ratio))
    return opt, sched


def batch_indices(n: int, batch_size: int, micro: int, seed: int) -> list[int]:
    """Rows of the `micro`-th micro-batch in an endless stream of seeded epoch permutations of range(n)."""
    out: list[int] = []
    perms: dict[int, Tensor] = {}
    for pos in range(micro * batch_size, (micro + 1) * batch_size):
        epoch = pos // n
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(perms[epoch][pos % n]))
    return out


# ------------------------------------------------------------------------------------------------ checkpoints


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    root = out_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file())


def save_checkpoint(path: Path, model: nn.Module, tokenizer_dir: Path | None, state: dict) -> None:
    """Write to a temporary directory, then rename: a crash never leaves a half-written checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model(model, tmp, source_dir=tokenizer_dir)
    torch.save(state, tmp / STATE_FILE)
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def load_state(path: Path) -> dict:
    try:
        return torch.load(path / STATE_FILE, weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt / foreign file: one line for the user
        raise CtxlabError(f"cannot read {path / STATE_FILE}: {e}") from None


# --------------------------------------------------------------------------------------------------- the loop


def evaluate_loss(model: nn.Module, objective: Objective, data: Dataset, batch_size: int, max_batches: int,
                  autocast) -> float:
    """Mean held-out loss over the first `max_batches` batches (in order)."""
    total, norm = 0.0, 0.0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for b in range(min(max_batches, math.ceil(len(data) / batch_size))):
            batch = data.batch(range(b * batch_size, min(len(data), (b + 1) * batch_size)))
            with autocast():
                loss, _ = objective(model, batch)
            total += float(loss)
            norm += objective.normaliser(batch)
    model.train(was_training)
    return total / max(norm, 1e-12)


def train(
    model: nn.Module,
    objective: Objective,
    train_data: Dataset,
    cfg: TrainConfig,
    *,
    eval_data: Dataset | None = None,
    tokenizer_dir: str | Path | None = None,
    resume: bool = False,
    task_eval: TaskEval | None = None,
    stop_at: int | None = None,
    console: Console | None = None,
) -> TrainResult:
    """Train `model` in place with `objective` and write checkpoints / curves under cfg.out_dir.

    `tokenizer_dir`: where the tokenizer / generation files come from (copied into every checkpoint).
    `resume`: continue from the latest checkpoint in out_dir (weights, optimizer, scheduler, RNG, history).
    `task_eval(model, step) -> {metric: value}` runs at every evaluation (e.g. sandbox accuracy).
    `stop_at`: stop (with a checkpoint) after this many steps, as if interrupted; resume continues the schedule.
    """
    console = console or Console(stderr=True)
    out = Path(cfg.out_dir)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else None
    o = cfg.optim
    if len(train_data) == 0:
        raise CtxlabError("the training data is empty")
    existing = checkpoint_dirs(out)
    start, history, elapsed0 = 0, [], 0.0
    state: dict | None = None
    if resume:
        if not existing:
            raise CtxlabError(f"nothing to resume: no checkpoint in {out / 'checkpoints'}")
        ckpt = existing[-1]
        state = load_state(ckpt)
        load_weights(model, ckpt, torch.float32, next(model.parameters()).device)
        start, history, elapsed0 = int(state["step"]), list(state["history"]), float(state.get("elapsed", 0.0))
        console.log(f"resuming from {ckpt} (step {start})")
    elif existing:
        raise CtxlabError(f"{out} already holds checkpoints; pass --resume to continue or choose another out_dir")
    model.train()
    opt, sched = make_optimizer(model, cfg)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(_py_rng(state["rng"]["python"]))
    else:
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    use_bf16 = o.bf16_autocast

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()

    params = [p for p in model.parameters() if p.requires_grad]
    end = o.max_steps if stop_at is None else min(o.max_steps, stop_at)
    log_every = max(1, min(50, o.max_steps // 20))
    t0 = time.perf_counter()
    tokens_seen = tokens_start = history[-1]["tokens"] if history else 0.0

    def snapshot(step: int) -> dict:
        return {
            "step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": list(_flatten_py_rng(random.getstate()))},
            "history": history, "elapsed": elapsed0 + time.perf_counter() - t0, "config": cfg.to_dict(),
        }

    with progress_bar(console, enabled=console.is_terminal, extra=(TextColumn("{task.fields[info]}"),)) as progress:
        task = progress.add_task("train", total=o.max_steps, completed=start, info="")
        for step in range(start, end):
            micro = [train_data.batch(batch_indices(len(train_data), o.batch_size, step * o.grad_accum + a, cfg.seed))
                     for a in range(o.grad_accum)]
            denom = sum(objective.normaliser(b) for b in micro)
            if denom <= 0:
                raise CtxlabError(f"step {step}: the batch has no token with a positive loss weight")
            loss_sum = 0.0
            metrics: dict[str, float] = {}
            for b in micro:
                with autocast():
                    loss, m = objective(model, b)
                (loss / denom).backward()
                loss_sum += float(loss.detach())
                tokens_seen += float(b["ids"].numel())
                for k, v in m.items():
                    metrics[k] = metrics.get(k, 0.0) + v
            train_loss = loss_sum / denom
            if not math.isfinite(train_loss):
                raise CtxlabError(f"the loss became {train_loss} at step {step + 1}; lower optim.lr or check the data")
            gnorm = torch.nn.utils.clip_grad_norm_(params, o.grad_clip if o.grad_clip > 0 else float("inf"))
            lr = opt.param_groups[0]["lr"]
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            row = {"step": float(step + 1), "lr": lr, "train_loss": train_loss, "grad_norm": float(gnorm),
                   "tokens": tokens_seen, "elapsed": elapsed0 + time.perf_counter() - t0, "eval_loss": math.nan,
                   **{f"train_{k}": v / denom for k, v in metrics.items()}}
            n = step + 1
            if (cfg.eval.every and n % cfg.eval.every == 0) or n == o.max_steps:
                if eval_data is not None and len(eval_data):
                    row["eval_loss"] = evaluate_loss(model, objective, eval_data, o.batch_size, cfg.eval.max_batches,
                                                     autocast)
                if task_eval is not None:
                    model.eval()
                    row.update({k: float(v) for k, v in task_eval(model, n).items()})
                    model.train()
            history.append(row)
            info = f"loss {train_loss:.4f} lr {lr:.2e}"
            if not math.isnan(row["eval_loss"]):
                info += f" eval {row['eval_loss']:.4f}"
            progress.update(task, completed=n, info=info)
            extra = {k: v for k, v in row.items() if k not in _BASE_FIELDS and not k.startswith("train_")}
            if n % log_every == 0 or extra or n == end:
                tok_s = (tokens_seen - tokens_start) / max(1e-9, time.perf_counter() - t0)
                more = " ".join(f"{k} {v:.4f}" for k, v in extra.items() if not math.isnan(v))
                console.log(f"step {n}/{o.max_steps} {info} gnorm {float(gnorm):.2f} {tok_s:.0f} tok/s {more}".rstrip())
            if (cfg.checkpoint.every and n % cfg.checkpoint.every == 0) or n == end:
                save_checkpoint(out / "checkpoints" / f"step-{n:06d}", model, tok_dir, snapshot(n))
                for old in checkpoint_dirs(out)[: -cfg.checkpoint.keep]:
                    shutil.rmtree(old)
                write_curve(history, out)
    final = out / "final"
    if end == o.max_steps:
        save_model(model, final, source_dir=tok_dir)
    return TrainResult(out, final, history)


_BASE_FIELDS = ("step", "lr", "train_loss", "grad_norm", "tokens", "elapsed", "eval_loss")


def _flatten_py_rng(state: tuple) -> Iterator:
    # random.getstate() = (version, tuple of 625 ints, gauss_next); stored as a flat list for weights_only loading
    version, internal, gauss = state
    yield version
    yield list(internal)
    yield gauss


def _py_rng(flat: list) -> tuple:
    version, internal, gauss = flat
    return version, tuple(internal), gauss


# ---------------------------------------------------------------------------------------------------- curves


def write_curve(history: list[dict[str, float]], out_dir: Path) -> None:
    """loss.csv (every step; eval fields empty between evaluations) and loss.png (matplotlib, Agg canvas)."""
    if not history:
        return
    keys = list(_BASE_FIELDS) + sorted({k for r in history for k in r} - set(_BASE_FIELDS))
    with open(out_dir / "loss.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for r in history:
            vals = {k: r.get(k, math.nan) for k in keys}  # NaN = not measured at this step → empty cell
            w.writerow(["" if math.isnan(v) else int(v) if k == "step" else f"{v:.6g}" for k, v in vals.items()])
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    steps = [r["step"] for r in history]
    ax.plot(steps, [r["train_loss"] for r in history], lw=0.8, alpha=0.6, label="train")
    if len(history) >= 20:  # a moving average makes the trend readable
        k = max(5, len(history) // 50)
        vals = [r["train_loss"] for r in history]
        smooth = [sum(vals[max(0, i - k + 1) : i + 1]) / len(vals[max(0, i - k + 1) : i + 1]) for i in range(len(vals))]
        ax.plot(steps, smooth, lw=1.5, label=f"train (mean of {k})")
    ev = [r for r in history if not math.isnan(r.get("eval_loss", math.nan))]
    if ev:
        ax.plot([r["step"] for r in ev], [r["eval_loss"] for r in ev], "o-", ms=3, label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "loss.png")


def run_info() -> str:
    return f"python {sys.version.split()[0]}, torch {torch.__version__}, {torch.get_num_threads()} threads"

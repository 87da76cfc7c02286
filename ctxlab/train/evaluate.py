"""Sandbox accuracy of a trained model (greedy decoding through ctxlab.engine) and the bundled model's card.

Evaluation examples use seeds 0, 1, ... (training sources start at 1_000_000) and the model's own tokenizer as the
length counter, so `n_tokens` is the real prompt length the model reads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ctxlab.engine import SamplingParams, generate
from ctxlab.errors import CtxlabError
from ctxlab.tasks.sandbox import SCORERS, chance_level, example_near, render_prompt
from ctxlab.tokenizer import Tokenizer

TASKS = ("bank", "code", "kv")
MAX_NEW = {False: 32, True: 192}  # direct answers are short; scratchpads run to ~120 tokens


@dataclass(frozen=True)
class TaskScore:
    task: str
    n_tokens: int
    thinking: bool
    accuracy: float
    n: int
    mean_prompt_tokens: float
    chance: float  # accuracy of a uniform guess among the answer's candidates in the prompt (see chance_level)


def eval_examples(task: str, n_tokens: int, n: int, tok: Tokenizer, seed: int = 0) -> list:
    """n held-out examples (seeds seed, seed+1, ...) of about n_tokens prompt tokens (see `example_near`)."""
    return [example_near(task, s, n_tokens, tok.count_tokens) for s in range(seed, seed + n)]


def sandbox_accuracy(model: nn.Module, tok: Tokenizer, task: str, n_tokens: int, n: int = 50, *, seed: int = 0,
                     thinking: bool = False, batch_size: int = 8) -> TaskScore:
    """Greedy-decode answers for n held-out examples and score them with the task's lenient parser."""
    if task not in TASKS:
        raise CtxlabError(f"unknown sandbox task {task!r}; valid: {', '.join(TASKS)}")
    examples = eval_examples(task, n_tokens, n, tok, seed)
    prompts = [tok.encode(render_prompt(ex, thinking), add_special_tokens=False) for ex in examples]
    params = SamplingParams(max_new_tokens=MAX_NEW[thinking], temperature=0.0)
    order = sorted(range(n), key=lambda i: len(prompts[i]))  # similar lengths per batch: less padding
    correct = 0
    was_training = model.training
    model.eval()
    for b in range(0, n, batch_size):
        idx = order[b : b + batch_size]
        gens = generate(model, [prompts[i] for i in idx], params, eos_ids=tok.eos_token_ids)
        for i, g in zip(idx, gens, strict=True):
            correct += bool(SCORERS[task](tok.decode(g.ids, skip_special_tokens=True), examples[i]))
    model.train(was_training)
    return TaskScore(task, n_tokens, thinking, correct / n, n, sum(map(len, prompts)) / n,
                     chance_level(task, examples))


def make_task_eval(tok: Tokenizer, n_tokens: int, n: int, thinking: bool = False, tasks: Sequence[str] = TASKS):
    """A `task_eval(model, step)` callback for the training loop: {"acc_<task>": accuracy}."""

    def task_eval(model: nn.Module, step: int) -> dict[str, float]:
        with torch.no_grad():
            return {f"acc_{t}": sandbox_accuracy(model, tok, t, n_tokens, n, thinking=thinking).accuracy
                    for t in tasks}

    return task_eval


def accuracy_table(model: nn.Module, tok: Tokenizer, lengths: Sequence[int], n: int) -> list[TaskScore]:
    return [sandbox_accuracy(model, tok, t, L, n, thinking=th)
            for L in lengths for t in TASKS for th in (False, True)]


def format_table(scores: Sequence[TaskScore]) -> str:
    lines = ["| task | prompt tokens (target / mean) | direct | thinking | chance |", "|---|---|---|---|---|"]
    keyed = {(s.task, s.n_tokens, s.thinking): s for s in scores}
    for L in dict.fromkeys(s.n_tokens for s in scores):
        for t in TASKS:
            d, th = keyed.get((t, L, False)), keyed.get((t, L, True))
            if d is None or th is None:
                continue
            lines.append(f"| {t} | {L} / {d.mean_prompt_tokens:.0f} | {d.accuracy:.0%} | {th.accuracy:.0%} | "
                         f"{d.chance:.1%} |")
    return "\n".join(lines)


_INIT_NOTES = (  # run key → what the model card says about that initialisation
    ("copy_init", "Initialisation: every attention head starts as a copier (mimetic value/output init)."),
    ("induction_init", "Layers 0-1 start as an induction circuit (a previous-token head feeding an induction head, "
                       "`ctxlab.train.scratch.induction_circuit_init`): the model copies the token that followed an "
                       "earlier occurrence of the current one before any training."),
)


def write_model_card(out_dir: Path, *, table: str, n: int, run: dict, notes: str = "") -> Path:
    """README.md for an exported model: what it is, data, training, results (`table`), `notes`, licence."""
    cfg = json.loads((out_dir / "config.json").read_text())
    nan = float("nan")
    arch = (f"{run.get('parameters', 0) / 1e6:.1f}M-parameter Qwen3-architecture decoder ({cfg['num_hidden_layers']} "
            f"layers, hidden {cfg['hidden_size']}, MLP {cfg['intermediate_size']}, "
            f"{cfg['num_attention_heads']} query / "
            f"{cfg['num_key_value_heads']} KV heads, head dim {cfg['head_dim']}, tied embeddings, RoPE theta "
            f"{cfg['rope_theta']:g}, max_position_embeddings {cfg['max_position_embeddings']})")
    tokenizer = (f"its own {cfg['vocab_size']}-token byte-level BPE tokenizer trained with `tokenizers` "
                 f"({run.get('pretokenizer_note', 'GPT-2 pre-tokenisation')})")
    layout = (f"packed rows of {run.get('seq_len')} tokens" if run.get("packed", True) else
              "documents, one per row (no packing: attention never crosses into another example), batched by length")
    recall = (f"- {run['recall']:,} copy drills: a random list of sandbox-style keys, values and TX ids, then the same "
              "list again; loss on the repeat only.\n" if run.get("recall") else "")
    init = " ".join(note for key, note in _INIT_NOTES if run.get(key))
    init = f"{init}\n\n" if init else ""
    text = f"""---
license: apache-2.0
library_name: ctxlab
tags: [qwen3, long-context, sandbox, tiny]
---

# ctxlab bundled sandbox model

A {arch} with {tokenizer}, trained from scratch with {run.get('command', '`ctxlab train pretrain --config FILE`')}
on the ctxlab sandbox tasks. It exists so the long-context demo (in-context vs thinking vs qTTT over a length
sweep) runs on a CPU in minutes. It is a toy: it knows nothing beyond the three sandbox formats and a little
stdlib prose.

## Data

- Sandbox tasks (`ctxlab/tasks/sandbox`): `bank` (name the one anomalous transaction in a ledger), `code` (locate
  the injected bug in line-numbered stdlib excerpts), `kv` (key-value retrieval among look-alike keys);
  {run.get('examples', '?')} examples, training seeds from 1,000,000 (evaluation uses seeds from 0). Prompt lengths
  {run.get('lengths')} tokens of this tokenizer, cycled. Half of the examples use the "think step by step" prompt and
  carry the task's scratchpad before `Final: <answer>`; the rest answer directly.
- Loss: next-token loss on every token; prompt tokens (context, question) weigh {run.get('prompt_weight')}, target
  tokens (scratchpad, answer, end token) 1.0. The prompt term still teaches the formats (key lists, ledgers, code),
  the target term carries most of the task signal.
{recall}- A little natural text: docstrings of standard-library modules (not the code task's modules), weight 1.0.
- {run.get('rows')} {layout} ({run.get('eval_rows')} held out).

## Training

{init}{run.get('steps')} AdamW steps (peak LR {run.get('lr')}, {run.get('warmup')} warmup steps, cosine decay to
{run.get('min_lr_ratio')} x peak, weight decay {run.get('weight_decay')}, gradient clipping 1.0), {run.get('batch')}
rows per step ({run.get('train_tokens', 0) / 1e6:.1f}M tokens seen), bfloat16 autocast
on CPU, {run.get('wall_min', 0):.0f} minutes on one thread of a shared 2-core machine.
Final train loss {run.get('final_train_loss', nan):.3f} (mean of the last 20 steps), held-out loss
{run.get('final_eval_loss', nan):.3f} (both weighted as in training). Curve: `loss.csv`.
Weights are stored in {cfg.get('torch_dtype', 'float32')}; ctxlab loads them as float32 on CPU.

## Results

Greedy decoding through `ctxlab.engine` on {n} held-out examples per task and length (seeds 0-{n - 1}), prompt
lengths counted with this tokenizer. "direct": the no-thinking prompt (answer after `Final:`); "thinking": the
think-step-by-step prompt (the model writes a scratchpad first). Chance: a uniform guess among the candidates shown
(kv: the listed values; bank: 4 anomaly types x the transactions; code: the shown lines of the bug's file).

{table}
{notes}
## Licence

Apache-2.0 (weights, tokenizer, code). The code task's contexts are excerpts of CPython standard-library sources
(PSF License).
"""
    path = out_dir / "README.md"
    path.write_text(text)
    return path

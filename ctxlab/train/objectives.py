"""Training objectives: the pluggable piece of the training loop.

An objective turns a batch into a *summed* loss plus its normaliser. The loop divides every micro-batch's sum by
the normaliser total of the whole optimizer step, so gradient accumulation gives exactly the gradient of the
mean over the step, however it is split (and the held-out loss is the same mean over the eval set).

- `LMObjective`: next-token cross-entropy; optional per-token weights (`batch["weights"]`, the weight of
  predicting each token; 0 masks it: SFT trains on completion tokens only, pretraining can up-weight answers).
- `DPOObjective`: Direct Preference Optimization (Rafailov et al. 2023) against a frozen reference model:
  loss = -log σ(β · [(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))]), log-probabilities summed
  over response tokens. At initialisation (policy == reference) every pair's loss is log 2.

Shapes: B batch · T tokens · V vocab.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Objective(Protocol):
    name: str

    def normaliser(self, batch: dict[str, Tensor]) -> float:
        """This batch's share of the denominator of the step's mean loss (token weight, number of pairs)."""
        ...

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """(summed loss, summed metrics) for one micro-batch; metrics are divided by the normaliser total too."""
        ...


def token_logprobs(model: nn.Module, ids: Tensor) -> Tensor:
    """log p(ids[:, t] | ids[:, :t]) for t >= 1: (B, T-1) float32."""
    logits, _ = model(ids)  # (B, T, V)
    logits = logits[:, :-1].float()  # (B, T-1, V): position t predicts token t+1
    return -F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)


class LMObjective:
    """Weighted next-token loss. batch: ids (B, T) and optional weights (B, T) (weight of predicting token t)."""

    name = "lm"

    def normaliser(self, batch: dict[str, Tensor]) -> float:
        w = batch.get("weights")
        if w is None:
            ids = batch["ids"]
            return float(ids.shape[0] * (ids.shape[1] - 1))
        return float(w[:, 1:].sum())

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        ids = batch["ids"]
        nll = -token_logprobs(model, ids)  # (B, T-1)
        w = batch.get("weights")
        if w is None:
            return nll.sum(), {}
        w = w[:, 1:].to(nll.dtype)  # (B, T-1)
        return (nll * w).sum(), {}


class DPOObjective:
    """batch: ids (2B, T) = B chosen rows then B rejected rows, mask (2B, T) True on response tokens.
    `reference` is kept frozen (eval mode, no gradients); `beta` scales the implicit reward."""

    name = "dpo"

    def __init__(self, reference: nn.Module, beta: float = 0.1):
        self.reference = reference.eval().requires_grad_(False)
        self.beta = beta

    def normaliser(self, batch: dict[str, Tensor]) -> float:
        return float(batch["ids"].shape[0] // 2)

    @staticmethod
    def sequence_logprob(model: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
        """Sum of log p over the masked (response) tokens of each row: (2B,)."""
        lp = token_logprobs(model, ids)  # (2B, T-1)
        return (lp * mask[:, 1:].to(lp.dtype)).sum(-1)

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        ids, mask = batch["ids"], batch["mask"]
        B = ids.shape[0] // 2
        policy = self.sequence_logprob(model, ids, mask)  # (2B,)
        with torch.no_grad():
            ref = self.sequence_logprob(self.reference, ids, mask)  # (2B,)
        ratio = policy - ref  # (2B,) implicit rewards / beta
        margin = self.beta * (ratio[:B] - ratio[B:])  # (B,)
        loss = -F.logsigmoid(margin)
        metrics = {
            "reward_acc": float((margin > 0).float().sum()),
            "reward_margin": float(margin.detach().sum()),
        }
        return loss.sum(), metrics

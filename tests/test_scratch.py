"""Scratch checkpoints: the initialisations that give a tiny model its first copying circuits."""

from __future__ import annotations

import pytest
import torch

from ctxlab.errors import CtxlabError
from ctxlab.models import model_class
from ctxlab.strategies.diagnostics import attention_probe, attention_probs
from ctxlab.train.scratch import induction_circuit_init, init_weights, scratch_hf_config


def _model(size: str = "tiny", **init) -> torch.nn.Module:
    cls = model_class("qwen3")
    model = cls(cls.config_cls.from_hf_config(scratch_hf_config(500, size, max_len=4096)))
    init_weights(model, seed=0, **init)
    return model.eval()


def _probs(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    rec: list[torch.Tensor] = []
    with attention_probe(lambda q, k, m, c, s: rec.append(attention_probs(q, k, m, c, s)[0])), torch.no_grad():
        logits, _ = model(ids)
    return logits[0], rec  # (T, V), per layer (nh, T, T)


@pytest.mark.parametrize("L", [64, 600])
def test_induction_init_copies_a_repeated_random_sequence_before_any_training(L):
    seq = torch.randint(0, 500, (1, L), generator=torch.Generator().manual_seed(L))
    ids = torch.cat([seq, seq], 1)  # (1, 2L)
    T = 2 * L
    logits, probs = _probs(_model("small", copy_init=1.0, induction_init=3.0), ids)
    assert probs[0][0, torch.arange(1, T), torch.arange(T - 1)].min() > 0.9  # layer 0 head 0: previous token
    assert probs[1][0, torch.arange(L, T - 1), torch.arange(1, L)].mean() > 0.4  # layer 1 head 0: after the match
    assert (logits[L:-1].argmax(-1) == ids[0, L + 1 :]).float().mean() > 0.5  # the repeat is predicted
    plain, _ = _probs(_model("small", copy_init=1.0), ids)
    assert (plain[L:-1].argmax(-1) == ids[0, L + 1 :]).float().mean() < 0.1


def test_copy_init_makes_an_attended_token_raise_its_own_logit():
    model = _model("small", copy_init=1.0)
    a = model.blocks[0].attn
    emb = model.tok_emb.weight  # (V, H)
    # head 0 attending fully to token v writes wo[:, head 0] @ wv[kv 0] @ e_v; its logit gain on v beats the rest
    wv = a.wv.weight[: a.hd]  # (hd, H) KV head 0
    wo = a.wo.weight[:, : a.hd]  # (H, hd) query head 0
    out = (emb @ wv.T) @ wo.T  # (V, H): what attending to each token writes
    gains = out @ emb.T  # (V, V): logit change of every token
    assert (gains.argmax(dim=1) == torch.arange(emb.shape[0])).float().mean() > 0.9


def test_induction_init_refuses_models_without_qk_norm():
    cls = model_class("llama")
    hf = {**scratch_hf_config(100, "tiny"), "model_type": "llama"}
    with pytest.raises(CtxlabError, match="Qwen3-style"):
        induction_circuit_init(cls(cls.config_cls.from_hf_config(hf)))
    with pytest.raises(CtxlabError, match="rotary pairs"):  # head dim 16: too few rotary pairs
        induction_circuit_init(_model("tiny"))

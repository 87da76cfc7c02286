"""Parity of the dense families (Qwen3, Llama, Gemma) against transformers on tiny random configs, fp32."""

from __future__ import annotations

import pytest
import torch

from ctxlab.models.loading import load_model, save_model
from tests.hf_utils import hf_classes, make_hf, save_hf

CASES = [
    ("qwen3", {}),
    ("qwen3", {"tie_word_embeddings": False}),
    ("llama", {}),
    ("gemma", {}),
    ("gemma", {"num_key_value_heads": 4}),
]
TOL = 1e-4


def _ids(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=CASES, ids=lambda c: f"{c[0]}-{'-'.join(f'{k}={v}' for k, v in c[1].items()) or 'base'}")
def pair(request, tmp_path):
    family, overrides = request.param
    hf = make_hf(family, **overrides)
    save_hf(hf, tmp_path / "hf")
    ours = load_model(tmp_path / "hf").model
    return family, hf, ours, tmp_path


def test_logits_match(pair):
    _, hf, ours, _ = pair
    ids = _ids(2, 24)
    with torch.no_grad():
        ref = hf(ids).logits
        got, _ = ours(ids)
    assert (got - ref).abs().max().item() <= TOL


def test_cached_decode_equals_full_forward(pair):
    _, _, ours, _ = pair
    ids = _ids(2, 28)
    with torch.no_grad():
        full, _ = ours(ids)
        cache = ours.new_cache(2, 64)
        out, cache = ours(ids[:, :10], cache)
        steps = [out]
        for t in range(10, 28):  # 18 single-token steps through the cache
            out, cache = ours(ids[:, t : t + 1], cache)
            steps.append(out)
    assert cache.length == 28
    assert (torch.cat(steps, 1) - full).abs().max().item() <= TOL


def test_left_padded_batch_equals_single_prompts(pair):
    _, _, ours, _ = pair
    lens = [20, 13, 7]
    prompts = [_ids(1, n, seed=10 + i)[0] for i, n in enumerate(lens)]
    T = max(lens)
    ids = torch.zeros(len(lens), T, dtype=torch.long)
    valid = torch.zeros(len(lens), T, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = p
        valid[i, T - len(p) :] = True
    with torch.no_grad():
        cache = ours.new_cache(len(lens), T + 8)
        batched, cache = ours(ids, cache, valid)
        nxt = torch.randint(0, 256, (len(lens), 1))
        step, _ = ours(nxt, cache)
        for i, p in enumerate(prompts):
            single, c1 = ours(p[None], ours.new_cache(1, T + 8))
            assert (batched[i, T - len(p) :] - single[0]).abs().max().item() <= TOL
            one, _ = ours(nxt[i : i + 1], c1)
            assert (step[i] - one[0]).abs().max().item() <= TOL


def test_save_then_transformers_load(pair):
    family, hf, ours, tmp_path = pair
    save_model(ours, tmp_path / "ours", source_dir=tmp_path / "hf")
    _, model_cls = hf_classes(family)
    back = model_cls.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    ids = _ids(2, 16)
    with torch.no_grad():
        assert (back(ids).logits - hf(ids).logits).abs().max().item() <= TOL
    reloaded = load_model(tmp_path / "ours").model
    with torch.no_grad():
        assert torch.equal(reloaded(ids)[0], ours(ids)[0])


def test_sharded_checkpoint_loads(pair, tmp_path):
    _, hf, ours, _ = pair
    save_model(ours, tmp_path / "sharded", max_shard_bytes=20_000)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ids = _ids(1, 12)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "sharded").model(ids)[0], ours(ids)[0])

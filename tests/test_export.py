"""Licence-aware export: Llama naming rule, attribution and licence files; model cards for every preset."""

from __future__ import annotations

import json

import pytest
import torch

from ctxlab.errors import CtxlabError
from ctxlab.licensing import detect_license
from ctxlab.modelinfo import model_card
from ctxlab.models.loading import load_model, save_model
from ctxlab.presets import PRESETS
from tests.hf_utils import hf_classes, make_hf, save_hf

LLAMA32_TEXT = "LLAMA 3.2 COMMUNITY LICENSE AGREEMENT\nLlama 3.2 Version Release Date: September 25, 2024\n..."


@pytest.fixture
def llama_src(tmp_path):
    src = save_hf(make_hf("llama"), tmp_path / "src")
    (src / "LICENSE.txt").write_text(LLAMA32_TEXT)
    (src / "README.md").write_text("---\nlicense: llama3.2\n---\n# a Llama 3.2 checkpoint\n")
    return src


def test_llama_derived_name_must_begin_with_llama(llama_src, tmp_path):
    model = load_model(llama_src).model
    with pytest.raises(CtxlabError, match="begin with 'Llama'"):
        save_model(model, tmp_path / "my-finetune", source_dir=llama_src)
    assert not (tmp_path / "my-finetune").exists()  # refused before anything was written
    with pytest.raises(CtxlabError, match="begin with 'Llama'"):
        save_model(model, tmp_path / "Llama-ok-dir", source_dir=llama_src, name="finetuned-llama")


def test_llama_derived_export_carries_terms(llama_src, tmp_path):
    model = load_model(llama_src).model
    out = save_model(model, tmp_path / "Llama-3.2-tiny-sft", source_dir=llama_src)
    card = (out / "README.md").read_text()
    assert "Built with Llama" in card and "license: llama3.2" in card
    assert (out / "LICENSE.txt").read_text() == LLAMA32_TEXT
    assert detect_license(out).name == "Llama 3.2 Community License Agreement"  # the terms propagate
    _, cls = hf_classes("llama")
    back = cls.from_pretrained(out, dtype=torch.float32)
    ids = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        assert (back(ids).logits - model(ids)[0]).abs().max() <= 1e-4
    # a derivative of the derivative still obeys the rule
    with pytest.raises(CtxlabError, match="begin with 'Llama'"):
        save_model(model, tmp_path / "renamed", source_dir=out)


def test_sharded_export_card_names_the_model_not_a_shard(llama_src, tmp_path):
    """A sharded save from a source directory titles its card after the model (the shard loop once overwrote it)."""
    model = load_model(llama_src).model
    out = save_model(model, tmp_path / "Llama-3.2-tiny-sharded", source_dir=llama_src, max_shard_bytes=4096)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded
    card = (out / "README.md").read_text()
    assert "Llama-3.2-tiny-sharded" in card and "model-00001-of" not in card
    back = load_model(out).model
    ids = torch.randint(0, 256, (1, 7))
    with torch.no_grad():
        assert torch.equal(back(ids)[0], model(ids)[0])


def test_llama_export_refused_without_licence_file(llama_src, tmp_path):
    (llama_src / "LICENSE.txt").unlink()
    with pytest.raises(CtxlabError, match="licence file"):
        save_model(load_model(llama_src).model, tmp_path / "Llama-x", source_dir=llama_src)


def test_llama3_requires_llama3_prefix(tmp_path):
    src = save_hf(make_hf("llama"), tmp_path / "src")
    (src / "LICENSE").write_text("META LLAMA 3 COMMUNITY LICENSE AGREEMENT\n...")
    model = load_model(src).model
    with pytest.raises(CtxlabError, match="'Llama 3'"):
        save_model(model, tmp_path / "Llama-tiny", source_dir=src)
    out = save_model(model, tmp_path / "Llama-3-tiny", source_dir=src)
    assert "Built with Meta Llama 3" in (out / "README.md").read_text()


def test_apache_and_gemma_have_no_naming_rule(tmp_path):
    for family, readme, expected in [("qwen3", "license: apache-2.0", "Apache 2.0"),
                                     ("gemma", "license: gemma", "Gemma Terms of Use")]:
        src = save_hf(make_hf(family), tmp_path / f"src-{family}")
        (src / "README.md").write_text(f"---\n{readme}\n---\n")
        out = save_model(load_model(src).model, tmp_path / f"any-name-{family}", source_dir=src)
        assert detect_license(out).name == expected


@pytest.mark.parametrize("hub_id", sorted(PRESETS))
def test_model_card_for_every_preset(hub_id):
    card = json.loads(model_card(hub_id, "json"))
    p = PRESETS[hub_id]
    assert card["published_parameters"] == p.params
    assert card["published_context"] == p.context
    assert card["license"] == p.license.name
    if p.family == "llama4":
        assert card["published_active_parameters"] == "17B"
    md = model_card(hub_id, "md")
    assert p.license.name in md and p.context in md


def test_model_card_errors(tmp_path):
    with pytest.raises(CtxlabError, match="neither a local checkpoint nor a known preset"):
        model_card(str(tmp_path / "nothing"))
    with pytest.raises(CtxlabError, match="unknown card format"):
        model_card("Qwen/Qwen3-4B", "pdf")

"""Training loop, objectives, data and config: loss goes down, resume is exact, SFT masks prompts, DPO starts at
log 2 and improves, bad configs fail with one clear line. Tiny Qwen3 models from ctxlab.train.scratch, CPU float32."""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from ctxlab.errors import CtxlabError
from ctxlab.models.loading import load_model
from ctxlab.tokenizer import Tokenizer
from ctxlab.train import (
    DPOObjective,
    LMObjective,
    PackedDataset,
    PairDataset,
    config_from_dict,
    load_config,
    lr_factor,
    pack,
    run_training,
    train,
)
from ctxlab.train.data import Doc, Pair, dpo_pairs, sft_docs
from ctxlab.train.scratch import build_checkpoint

CORPUS = ["A list of key: value pairs. Each key appears once.\namber-falcon-river: 123456\n" * 4,
          "Question: is the sky blue? Answer: yes. Question: is fire cold? Answer: no.\n" * 4]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("tiny") / "m", CORPUS, size="tiny", vocab_size=320,
                            max_len=512, pretokenizer="chunks")


def _cfg(out: Path, **sections) -> object:
    raw = {"out_dir": str(out), "seed": 0,
           "optim": {"lr": 3e-3, "max_steps": 24, "warmup_steps": 3, "batch_size": 4},
           "eval": {"every": 0, "max_batches": 2}, "checkpoint": {"every": 0}}
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v}
    return config_from_dict(raw)


def _repetitive_rows(n: int, seq_len: int, vocab: int, seed: int = 0) -> PackedDataset:
    """Rows cycling through short random patterns: learnable in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        pat = torch.randint(5, vocab, (int(torch.randint(3, 6, (1,), generator=g)),), generator=g)
        rows.append(pat.repeat(seq_len // len(pat) + 1)[:seq_len])
    ids = torch.stack(rows)
    return PackedDataset(ids, torch.ones(ids.shape))


def _fresh(ckpt: Path) -> nn.Module:
    return load_model(ckpt).model.train()


def test_loop_lowers_loss_and_writes_hf_checkpoints(ckpt, tmp_path):
    data = _repetitive_rows(32, 48, 300)
    cfg = _cfg(tmp_path / "run", optim={"grad_accum": 2, "batch_size": 2}, eval={"every": 12},
               checkpoint={"every": 12})
    res = train(_fresh(ckpt), LMObjective(), data, cfg, eval_data=_repetitive_rows(4, 48, 300, seed=1),
                tokenizer_dir=ckpt)
    first, last = sum(res.losses[:3]) / 3, sum(res.losses[-3:]) / 3
    assert len(res.losses) == 24 and last < first - 1.0, (first, last)
    assert len(res.eval_rows) == 2 and res.eval_rows[-1]["eval_loss"] < res.eval_rows[0]["eval_loss"] + 1e-6
    # HF-format checkpoint with the tokenizer files, loadable by ctxlab; trainer state loads with weights_only
    ck = tmp_path / "run" / "checkpoints" / "step-000024"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in ck.iterdir()}
    state = torch.load(ck / "trainer_state.pt", weights_only=True)
    assert state["step"] == 24 and len(state["history"]) == 24
    reloaded = load_model(res.final_dir).model
    Tokenizer.from_dir(res.final_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    model = _fresh(ckpt)  # untrained weights differ from the final ones
    assert not torch.equal(reloaded(ids)[0], model(ids)[0])
    rows = list(csv.DictReader(open(tmp_path / "run" / "loss.csv")))
    assert len(rows) == 24 and rows[11]["eval_loss"] and not rows[10]["eval_loss"]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


def test_resume_reproduces_uninterrupted_losses_exactly(ckpt, tmp_path):
    data = _repetitive_rows(10, 40, 300)  # 10 rows, batch 3: micro-batches straddle epoch boundaries
    cfg = _cfg(tmp_path / "a", optim={"max_steps": 10, "batch_size": 3, "grad_accum": 2}, checkpoint={"every": 4})
    full = train(_fresh(ckpt), LMObjective(), data, cfg, tokenizer_dir=ckpt).losses
    cfg_b = replace(cfg, out_dir=str(tmp_path / "b"))
    part = train(_fresh(ckpt), LMObjective(), data, cfg_b, tokenizer_dir=ckpt, stop_at=6)  # "interrupted"
    assert len(part.losses) == 6 and not (tmp_path / "b" / "final").exists()
    with pytest.raises(CtxlabError, match="--resume"):
        train(_fresh(ckpt), LMObjective(), data, cfg_b, tokenizer_dir=ckpt)
    # resume from the step-4 checkpoint (the step-6 one is removed to test an older restart point)
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-000006")
    resumed = train(_fresh(ckpt), LMObjective(), data, cfg_b, tokenizer_dir=ckpt, resume=True).losses
    assert resumed == full  # bit-for-bit: same weights, optimizer, schedule and batches


def test_lr_schedule():
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, 0.1) == pytest.approx(0.55)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)


class _PositionModel(nn.Module):
    """Logits depend on the position only, so changing a token changes nothing but its own target."""

    def __init__(self, T: int, V: int):
        super().__init__()
        self.table = nn.Parameter(torch.randn(T, V))

    def forward(self, ids, cache=None):
        return self.table[: ids.shape[1]].expand(ids.shape[0], -1, -1), cache


def test_sft_loss_ignores_prompt_targets(ckpt, tmp_path):
    tok = Tokenizer.from_dir(ckpt)
    rows = [{"prompt": "Question: is the sky blue?\nAnswer:", "completion": " yes"},
            {"prompt": "Question: is fire cold?\nAnswer:", "completion": " no"}]
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    docs = sft_docs(path, tok, 64, prompt_weight=0.0)
    n_prompt = len(tok.encode(rows[0]["prompt"], add_special_tokens=False))
    n_done = len(tok.encode(rows[0]["completion"], add_special_tokens=False)) + 1  # + end token
    assert docs[0].weights == (0.0,) * n_prompt + (1.0,) * n_done
    from ctxlab.train.data import PaddedDataset

    batch = PaddedDataset(docs, tok.pad_id).batch([0, 1])
    model = _PositionModel(batch["ids"].shape[1], 400)
    obj = LMObjective()
    base, _ = obj(model, batch)
    changed = {**batch, "ids": batch["ids"].clone()}
    changed["ids"][:, 1:n_prompt - 2] = (changed["ids"][:, 1:n_prompt - 2] + 7) % 300  # prompt-token targets only
    assert torch.equal(obj(model, changed)[0], base)
    unmasked = {"ids": changed["ids"]}  # the same change without the mask does move the loss
    assert not torch.equal(obj(model, unmasked)[0], obj(model, {"ids": batch["ids"]})[0])
    changed["ids"][0, n_prompt] = (changed["ids"][0, n_prompt] + 7) % 300  # a completion target: counted
    assert not torch.equal(obj(model, changed)[0], base)
    assert obj.normaliser(batch) == float(sum(sum(d.weights[1:]) for d in docs))


def _dpo_set(tok: Tokenizer, n: int) -> list[Pair]:
    pairs = []
    for i in range(n):
        prompt = tuple(tok.encode(f"Question {i}: is it true?\nAnswer:", add_special_tokens=False))
        pairs.append(Pair(prompt, tuple(tok.encode(" yes", add_special_tokens=False)),
                          tuple(tok.encode(" no", add_special_tokens=False))))
    return pairs


def test_dpo_starts_at_log2_and_decreases(ckpt, tmp_path):
    tok = Tokenizer.from_dir(ckpt)
    data = PairDataset(_dpo_set(tok, 8), tok.pad_id)
    obj = DPOObjective(load_model(ckpt).model, beta=0.5)
    policy = _fresh(ckpt)
    batch = data.batch(range(8))
    loss, metrics = obj(policy, batch)
    assert float(loss.detach()) / obj.normaliser(batch) == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["reward_margin"] == 0.0
    cfg = _cfg(tmp_path / "dpo", optim={"max_steps": 12, "lr": 5e-3, "warmup_steps": 1})
    res = train(policy, obj, data, cfg, tokenizer_dir=ckpt)
    assert res.losses[0] == pytest.approx(math.log(2), abs=1e-6)
    assert res.losses[-1] < 0.5 * math.log(2), res.losses
    assert all(not p.requires_grad for p in obj.reference.parameters())


def test_dpo_jsonl_rows(ckpt, tmp_path):
    tok = Tokenizer.from_dir(ckpt)
    path = tmp_path / "dpo.jsonl"
    path.write_text(json.dumps({"prompt": "Q:", "chosen": " yes", "rejected": " no"}) + "\n")
    (pair,) = dpo_pairs(path, tok, 64)
    batch = PairDataset([pair], tok.pad_id).batch([0])
    assert batch["ids"].shape[0] == 2 and batch["mask"][0].sum() == len(pair.chosen)
    path.write_text(json.dumps({"prompt": "Q:", "chosen": " yes"}) + "\n")
    with pytest.raises(CtxlabError, match="dpo.jsonl: row 1: needs string fields prompt, chosen, rejected"):
        dpo_pairs(path, tok, 64)


def test_packing_keeps_documents_whole():
    docs = [Doc((1, 2, 3), (0.1, 0.1, 1.0)), Doc((4, 5, 6, 7), (1.0,) * 4), Doc((8,) * 9, (1.0,) * 9)]
    ids, w = pack(docs, 6, pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 0, 0, 0], [4, 5, 6, 7, 0, 0], [8] * 6, [8, 8, 8, 0, 0, 0]]
    assert w[0].tolist() == pytest.approx([0.1, 0.1, 1.0, 0, 0, 0])


def test_pretrain_cli_on_sandbox_data(ckpt, tmp_path):
    cfg = {"out_dir": str(tmp_path / "run"), "model": {"init": str(ckpt)},
           "data": {"seq_len": 400, "heldout": 0.2, "sandbox": [{"task": "kv", "count": 10, "lengths": [96]}]},
           "optim": {"max_steps": 3, "batch_size": 2, "warmup_steps": 1}, "eval": {"every": 0}}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    res = run_training("pretrain", path)
    assert len(res.losses) == 3 and res.eval_rows and (res.final_dir / "model.safetensors").is_file()
    cached = list((tmp_path / "run").glob("docs-*.pt"))
    assert len(cached) == 1 and set(torch.load(cached[0], weights_only=True)) == {"train", "eval"}
    with pytest.raises(CtxlabError, match="already holds checkpoints"):
        run_training("pretrain", path)
    # unpacked: one document per row in length-sorted groups of batch_size; the cached documents are reused
    cfg["data"]["pack"] = False
    cfg["out_dir"] = str(tmp_path / "run2")
    path.write_text(json.dumps(cfg))
    (tmp_path / "run2").mkdir()
    shutil.copy(cached[0], tmp_path / "run2" / cached[0].name)  # same sources and tokenizer: the cache is reused
    res = run_training("pretrain", path)
    assert len(res.losses) == 3


def test_scratch_pretrain_exports_a_model_card(tmp_path):
    sandbox = [{"task": t, "count": 4, "lengths": [64], "seed": 1_000_000} for t in ("kv", "code", "bank")]
    cfg = {"out_dir": str(tmp_path / "run"), "threads": 1,
           "model": {"init": "scratch", "size": "small", "vocab_size": 600, "tokenizer_docs": 30,
                     "pretokenizer": "chunks-sep", "copy_init": 1.0, "induction_init": 3.0},
           "data": {"seq_len": 512, "pack": False, "heldout": 0.1, "sandbox": sandbox,
                    "recall": {"count": 4, "max_items": 6}},
           "optim": {"max_steps": 2, "batch_size": 2, "warmup_steps": 1}, "eval": {"every": 0},
           "export": {"dir": str(tmp_path / "export"), "card_samples": 1, "card_lengths": [64]}}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    run_training("pretrain", path)
    card = (tmp_path / "export" / "README.md").read_text()
    assert "4 copy drills" in card and "induction circuit" in card and "`: 823`" in card
    assert json.loads((tmp_path / "export" / "eval_results.json").read_text())
    Tokenizer.from_dir(tmp_path / "export")


def test_bucketed_dataset_keeps_one_document_per_row():
    from ctxlab.train.data import BucketedDataset

    docs = [Doc((7,) * n, (1.0,) * n) for n in (5, 2, 9, 3, 4)]
    data = BucketedDataset(docs, pad_id=0, group=2)
    assert len(data) == 3 and data.groups == [[1, 3], [4, 0], [2]]  # sorted by length
    b = data.batch([1])
    assert b["ids"].tolist() == [[7, 7, 7, 7, 0], [7, 7, 7, 7, 7]] and b["weights"].sum() == 9


@pytest.mark.parametrize("raw, message", [
    ({"out_dir": "x", "optim": {"lrate": 1}}, "unknown key 'optim.lrate' in optim; valid keys: lr, min_lr_ratio"),
    ({"out_dir": "x", "optimizer": {}}, "unknown key 'optimizer' in config; valid keys: out_dir, seed"),
    ({"seed": 1}, "missing required key 'out_dir'"),
    ({"out_dir": "x", "optim": {"lr": "fast"}}, "optim.lr must be a finite number"),
    ({"out_dir": "x", "optim": {"lr": float("nan")}}, "optim.lr must be a finite number, got nan"),
    ({"out_dir": "x", "data": {"heldout": float("inf")}}, "data.heldout must be a finite number, got inf"),
    ({"out_dir": "x", "optim": {"max_steps": 0}}, "optim.max_steps must be >= 1"),
    ({"out_dir": "x", "data": {"sandbox": [{"task": "chess", "count": 1}]}}, "data.sandbox.task 'chess'"),
    ({"out_dir": "x", "data": {"sandbox": [{"task": "kv"}]}}, "missing required key 'data.sandbox.count'"),
    ({"out_dir": "x", "data": {"sandbox": [{"task": "kv", "count": 1, "colour": 1}]}},
     "unknown key 'data.sandbox.colour'"),
    ({"out_dir": "x", "export": {"dtype": "int8"}}, "export.dtype 'int8' is not supported"),
    ({"out_dir": "x", "optim": {"bf16_autocast": 1}}, "optim.bf16_autocast must be true or false"),
])
def test_bad_config_is_one_clear_error(raw, message):
    with pytest.raises(CtxlabError) as e:
        config_from_dict(raw)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_config_files_and_kind_checks(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('out_dir = "r"\n[optim]\nlr = 1e-3\n[[data.sandbox]]\ntask = "kv"\ncount = 2\n')
    cfg = load_config(toml)
    assert cfg.optim.lr == 1e-3 and cfg.data.sandbox[0].lengths == (256,)
    with pytest.raises(CtxlabError, match="sft needs data.jsonl"):
        cfg.check_kind("sft")
    with pytest.raises(CtxlabError, match="unknown training kind 'rl'"):
        cfg.check_kind("rl")
    (tmp_path / "bad.toml").write_text("out_dir = \n")
    with pytest.raises(CtxlabError, match="cannot parse"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(CtxlabError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(CtxlabError, match="pretraining needs data"):
        config_from_dict({"out_dir": "r"}).check_kind("pretrain")


def test_bundled_configs_are_valid():
    root = Path(__file__).resolve().parents[1] / "configs"
    cfg = load_config(root / "bundled.toml")
    cfg.check_kind("pretrain")
    assert cfg.model.max_position_embeddings >= 8192 and {s.task for s in cfg.data.sandbox} == {"bank", "code", "kv"}
    assert cfg.model.init == "scratch" and cfg.model.induction_init > 0
    stage2 = load_config(root / "bundled_stage2.toml")
    stage2.check_kind("pretrain")
    assert stage2.model.init == f"{cfg.out_dir}/final" and stage2.export.dir == "ctxlab/assets/bundled"
    train_seeds = {s.seed for s in cfg.data.sandbox} | {s.seed for s in stage2.data.sandbox}
    assert min(train_seeds) >= 1_000_000  # disjoint from the evaluation seeds 0, 1, ...
    # stage 1 trains the tokenizer both stages use, on the first tokenizer_docs / 3 examples of each task
    assert all(s.count >= cfg.model.tokenizer_docs // 3 for s in cfg.data.sandbox)


def test_chunks_pretokenizer_keeps_dash_words_and_digit_groups():
    from ctxlab.train.scratch import _pre_tokenizer

    pieces = [p for p, _ in _pre_tokenizer("chunks").pre_tokenize_str("amber-falcon-river: 1234567, A2 -> -15")]
    assert pieces == ["amber", "-falcon", "-river", ":", "Ġ", "123", "456", "7", ",", "ĠA", "2", "Ġ->", "Ġ-", "15"]


def test_chunks_sep_pretokenizer_joins_separator_and_first_digit_group():
    from ctxlab.train.scratch import _pre_tokenizer

    pieces = [p for p, _ in _pre_tokenizer("chunks-sep").pre_tokenize_str("river: 1234567, A2 -> -15\n 12 | x")]
    assert pieces == ["river", ":Ġ123", "456", "7", ",", "ĠA", "2", "Ġ->", "Ġ-", "15", "Ċ", "Ġ12", "Ġ|", "Ġx"]


def test_recall_drills_weigh_the_repeat_only(ckpt):
    from ctxlab.train.config import RecallSource
    from ctxlab.train.data import recall_docs

    tok = Tokenizer.from_dir(ckpt)
    docs = list(recall_docs(RecallSource(count=3, min_items=2, max_items=3), tok, end_id=1))
    assert docs == list(recall_docs(RecallSource(count=3, min_items=2, max_items=3), tok, end_id=1))  # seeded
    for d in docs:
        text = tok.decode(d.ids[:-1])
        first, again = text.split("Once more:\n")
        assert first.endswith(again + "\n")  # the repeat is an exact copy of the list
        n_again = sum(1 for w in d.weights if w == 1.0)
        assert tok.decode(d.ids[len(d) - n_again : -1]) == again and set(d.weights[: len(d) - n_again]) == {0.0}

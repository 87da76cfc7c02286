"""Training: one loop for pretraining, SFT and DPO with pluggable objectives.

- config.py      TrainConfig (frozen dataclasses) from TOML/JSON with strict validation
- data.py        documents with per-token loss weights; packing (pretraining), padding (SFT), pairs (DPO)
- objectives.py  LMObjective (weighted / masked next-token loss), DPOObjective (frozen reference, beta)
- loop.py        AdamW + warmup/cosine, clipping, accumulation, eval, HF checkpoints, exact resume, curves
- evaluate.py    sandbox accuracy by greedy decoding through ctxlab.engine; model card
- cli.py         run_training(kind, config_path, resume): what `ctxlab train pretrain|sft|dpo` runs
"""

from ctxlab.train.config import TrainConfig, config_from_dict, load_config
from ctxlab.train.data import PackedDataset, PaddedDataset, PairDataset, pack
from ctxlab.train.loop import TrainResult, lr_factor, train
from ctxlab.train.objectives import DPOObjective, LMObjective, Objective
from ctxlab.train.run import run_training

__all__ = [
    "DPOObjective", "LMObjective", "Objective", "PackedDataset", "PaddedDataset", "PairDataset", "TrainConfig",
    "TrainResult", "config_from_dict", "load_config", "lr_factor", "pack", "train", "run_training",
]

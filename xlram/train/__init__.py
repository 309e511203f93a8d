"""One training engine for every model: typed config, AdamW with warm-up and cosine decay, clipping and
accumulation, bf16 autocast, torch.compile, exact resume from atomic checkpoints, DDP and FSDP.

    from xlram.train import LMTask, TrainConfig, Trainer
    trainer = Trainer(model, LMTask("docs", seq_len=128), TrainConfig(max_steps=500, out_dir="runs/lm"))
    trainer.fit()

Names are imported on first use, so that building the ``xlram`` command line does not import torch.
"""

import importlib

_EXPORTS = {
    "CheckpointError": "xlram.checkpoint",
    "RESUMABLE_FIELDS": "xlram.train.config",
    "TrainConfig": "xlram.train.config",
    "StopTraining": "xlram.train.engine",
    "Trainer": "xlram.train.engine",
    "WarmupCosine": "xlram.train.optim",
    "build_optimizer": "xlram.train.optim",
    "lr_at": "xlram.train.optim",
    "param_groups": "xlram.train.optim",
    "CheckpointWriteError": "xlram.train.state",
    "find_checkpoint": "xlram.train.state",
    "list_checkpoints": "xlram.train.state",
    "load_training_checkpoint": "xlram.train.state",
    "BatchIndex": "xlram.train.tasks",
    "LMTask": "xlram.train.tasks",
    "Task": "xlram.train.tasks",
    "load_lm_corpus": "xlram.train.tasks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'xlram.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

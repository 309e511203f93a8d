"""Small trainers for the engine's tests: a tiny byte-level xLSTM on the docs corpus, a few steps."""

import functools

import torch

from xlram.data.text import load_corpus
from xlram.models.registry import create_model
from xlram.train import LMTask, TrainConfig, Trainer

MODEL = "lm-xlstm[1:0]-tiny"
SEQ_LEN = 32


@functools.lru_cache(maxsize=1)
def docs_corpus():
    return load_corpus("docs")


def lm_task(**overrides) -> LMTask:
    return LMTask(docs_corpus(), **{"seq_len": SEQ_LEN, "eval_windows": 4, **overrides})


def train_config(out_dir, **overrides) -> TrainConfig:
    defaults = dict(max_steps=12, batch_size=8, lr=3e-3, warmup_steps=3, out_dir=str(out_dir), progress=False,
                    tensorboard=False, ckpt_every=4, keep_last=0, seed=0)
    return TrainConfig(**{**defaults, **overrides})


def lm_trainer(out_dir, *, model_kwargs=None, task_kwargs=None, callbacks=(), **config) -> Trainer:
    """A trainer of the tiny LM; the weights depend only on the seed, as in the CLI."""
    torch.manual_seed(0)
    model = create_model(MODEL, vocab_size=256, **(model_kwargs or {}))
    task = lm_task(**(task_kwargs or {}))
    return Trainer(model, task, train_config(out_dir, **config), callbacks=callbacks)


def losses(records) -> list[float]:
    return [r["loss"] for r in records]

"""The engine's loop: gradient accumulation, bf16 autocast, checkpoints kept, logs written, any model."""

import csv
import math

import pytest
import torch
from torch import nn

from xlram.models import XLSTMLM
from xlram.train import StopTraining, Task, TrainConfig, Trainer, list_checkpoints
from xlram.train.logs import tensorboard_available

from .helpers import lm_trainer, losses


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    # 2 micro-batches of 4 rows and 1 batch of 8 rows see the same global batch and take the same steps.
    big = lm_trainer(tmp_path / "big", batch_size=8, grad_accum_steps=1, max_steps=8)
    accum = lm_trainer(tmp_path / "accum", batch_size=8, grad_accum_steps=2, max_steps=8)
    a, b = big.fit(), accum.fit()
    assert max(abs(x - y) for x, y in zip(losses(a), losses(b), strict=True)) < 1e-5
    for (name, p), q in zip(big.raw_model.named_parameters(), accum.raw_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
    assert [r["tokens"] for r in b] == [8 * 32] * 8


def test_bf16_autocast_trains(tmp_path):
    fp32 = lm_trainer(tmp_path / "fp32", max_steps=6, ckpt_every=0)
    bf16 = lm_trainer(tmp_path / "bf16", max_steps=6, ckpt_every=0, bf16=True)
    a, b = losses(fp32.fit()), losses(bf16.fit())
    assert all(math.isfinite(x) for x in b)
    assert abs(a[0] - b[0]) / a[0] < 2e-2  # the same first step, up to bf16 rounding
    assert b[-1] < b[0]
    assert all(p.dtype == torch.float32 for p in bf16.raw_model.parameters())  # weights stay fp32


def test_keep_last_prunes_old_checkpoints_only_after_the_new_one(tmp_path):
    trainer = lm_trainer(tmp_path, max_steps=10, ckpt_every=2, keep_last=2)
    trainer.fit()
    root = tmp_path / "checkpoints"
    assert [s for s, _ in list_checkpoints(root)] == [8, 10]
    assert (root / "latest").read_text().strip() == "step-00000010"
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary directories left


def test_logs_csv_and_tensorboard(tmp_path):
    trainer = lm_trainer(tmp_path, max_steps=6, eval_every=3, tensorboard=True)
    history = trainer.fit()
    with open(tmp_path / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [float(r["loss"]) for r in rows] == losses(history)  # written exactly (repr)
    assert {"lr", "grad_norm", "bpb", "tokens_per_s"} <= set(rows[0])
    with open(tmp_path / "eval.csv", newline="") as f:
        evals = list(csv.DictReader(f))
    assert [int(r["step"]) for r in evals] == [3, 6] and float(evals[-1]["val_bpb"]) > 0
    if tensorboard_available():
        assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_checkpoint_loads_with_from_pretrained(tmp_path):
    trainer = lm_trainer(tmp_path, max_steps=4)
    trainer.fit()
    model = XLSTMLM.from_pretrained(trainer.last_checkpoint)
    for (name, p), q in zip(trainer.raw_model.named_parameters(), model.parameters(), strict=True):
        assert torch.equal(p.detach().cpu(), q), name


def test_a_new_run_refuses_an_out_dir_with_checkpoints(tmp_path):
    lm_trainer(tmp_path, max_steps=2).fit()
    with pytest.raises(ValueError, match="already holds checkpoints.*resume=True"):
        lm_trainer(tmp_path, max_steps=4).fit()


def test_a_callback_can_stop_the_run_and_it_is_saved(tmp_path):
    def stop_at_5(trainer, record):
        if record["step"] == 5:
            raise StopTraining

    trainer = lm_trainer(tmp_path, max_steps=12, ckpt_every=0, callbacks=[stop_at_5])
    assert len(trainer.fit()) == 5
    assert trainer.last_checkpoint.name == "step-00000005"


class _Regression(Task):
    """y = x @ w_true + noise from the global torch, NumPy and Python generators (as dropout would use)."""

    name = "toy-regression"

    def batch(self, index):
        g = index.generator()
        x = torch.randn(index.size, 6, generator=g)[index.rows]
        return x, x @ torch.arange(6.0).unsqueeze(1)

    def loss(self, model, batch):
        import random

        import numpy as np

        x, y = batch
        noise = torch.rand(()) * 1e-2 + float(np.random.rand()) * 1e-3 + random.random() * 1e-4  # noqa: NPY002
        loss = nn.functional.mse_loss(model(x), y) + noise
        return loss, {"noise": noise}

    def num_tokens(self, batch):
        return batch[0].shape[0]


def _toy_trainer(out_dir, **config):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.1), nn.Tanh(), nn.Linear(16, 1))
    defaults = dict(max_steps=10, batch_size=4, lr=1e-2, warmup_steps=2, out_dir=str(out_dir),
                    progress=False, tensorboard=False, ckpt_every=3, keep_last=0)
    return Trainer(model, _Regression(), TrainConfig(**{**defaults, **config}))


def test_any_model_and_task_resume_exactly_with_their_random_state(tmp_path):
    # No typed config, dropout and noise from all three global generators: the saved RNG states matter.
    full = losses(_toy_trainer(tmp_path / "full").fit())
    first = losses(_toy_trainer(tmp_path / "cut").fit(stop_at=4))
    rest = losses(_toy_trainer(tmp_path / "cut").fit(resume=True))
    assert first + rest == full
    assert not (tmp_path / "cut" / "checkpoints" / "step-00000004" / "config.json").exists()


@pytest.mark.slow
def test_torch_compile_trains_like_eager(tmp_path):
    eager = losses(lm_trainer(tmp_path / "eager", max_steps=3, ckpt_every=0).fit())
    compiled = losses(lm_trainer(tmp_path / "compiled", max_steps=3, ckpt_every=0, compile=True).fit())
    assert max(abs(a - b) for a, b in zip(eager, compiled, strict=True)) < 1e-4

"""Exact resume: a run interrupted and resumed gives the losses of one that never stopped, step for step."""

import csv

import pytest

from .helpers import lm_trainer, losses


class Crash(RuntimeError):
    pass


def _crash_after(step):
    def callback(trainer, record):
        if record["step"] == step:
            raise Crash(f"simulated crash after step {step}")
    return callback


def _csv_losses(path):
    with open(path, newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def test_crash_and_resume_repeat_the_losses_exactly(tmp_path):
    full = lm_trainer(tmp_path / "full", max_steps=12, ckpt_every=4)
    reference = losses(full.fit())

    crashed = lm_trainer(tmp_path / "run", max_steps=12, ckpt_every=4, callbacks=[_crash_after(7)])
    with pytest.raises(Crash):
        crashed.fit()
    assert losses(crashed.history) == reference[:7]
    assert crashed.last_checkpoint.name == "step-00000004"  # steps 5-7 are lost and are redone

    resumed = lm_trainer(tmp_path / "run", max_steps=12, ckpt_every=4)
    after = resumed.fit(resume=True)
    assert [r["step"] for r in after] == list(range(5, 13))
    assert losses(after) == reference[4:]  # bit for bit, not merely close
    assert resumed.eval_history == full.eval_history
    # The CSV of the crashed-and-resumed run reads like the uninterrupted one (rows 5-7 replaced).
    assert _csv_losses(tmp_path / "run" / "train.csv") == _csv_losses(tmp_path / "full" / "train.csv")


def test_stop_and_resume_twice_with_accumulation(tmp_path):
    config = dict(max_steps=9, ckpt_every=0, grad_accum_steps=2, clip_grad_norm=0.05)
    reference = losses(lm_trainer(tmp_path / "full", **config).fit())
    parts = []
    for stop in (2, 6, None):
        trainer = lm_trainer(tmp_path / "run", **config)
        parts += losses(trainer.fit(resume=stop != 2, stop_at=stop))
    assert parts == reference


def test_resume_from_an_explicit_earlier_checkpoint(tmp_path):
    trainer = lm_trainer(tmp_path / "run", max_steps=8, ckpt_every=2)
    reference = losses(trainer.fit())
    again = lm_trainer(tmp_path / "run", max_steps=8, ckpt_every=2)
    assert losses(again.fit(resume=tmp_path / "run" / "checkpoints" / "step-00000002")) == reference[2:]


def test_tied_weights_resume_exactly(tmp_path):
    config = dict(max_steps=6, ckpt_every=0, model_kwargs={"tie_weights": True})
    reference = losses(lm_trainer(tmp_path / "full", **config).fit())
    first = losses(lm_trainer(tmp_path / "run", **config).fit(stop_at=3))
    assert first + losses(lm_trainer(tmp_path / "run", **config).fit(resume=True)) == reference


def test_a_second_fit_of_the_same_trainer_goes_on(tmp_path):
    reference = losses(lm_trainer(tmp_path / "full", max_steps=6, ckpt_every=0).fit())
    trainer = lm_trainer(tmp_path / "run", max_steps=6, ckpt_every=0)
    assert losses(trainer.fit(stop_at=2)) + losses(trainer.fit()) == reference

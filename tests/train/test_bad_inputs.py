"""Bad input gives a clear error, and the last good checkpoint survives every failure."""

import errno
import json
import os

import pytest

from xlram import checkpoint as ckpt
from xlram.train import CheckpointError, CheckpointWriteError, find_checkpoint, load_training_checkpoint

from .helpers import lm_trainer, losses


@pytest.fixture
def run_dir(tmp_path):
    """A run of 4 steps with checkpoints at 2 and 4."""
    lm_trainer(tmp_path, max_steps=4, ckpt_every=2).fit()
    return tmp_path


def _resume(out_dir, **config):
    return lm_trainer(out_dir, **{"max_steps": 4, "ckpt_every": 2, **config}).fit(resume=True)


def test_resume_without_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint to resume from in .*checkpoints"):
        _resume(tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nowhere"):
        lm_trainer(tmp_path, max_steps=4).fit(resume=tmp_path / "nowhere")


def test_latest_pointer_to_a_missing_directory(run_dir):
    (run_dir / "checkpoints" / "latest").write_text("step-00000099\n")
    with pytest.raises(CheckpointError, match="names step-00000099.*does not exist; available: "
                                              "\\['step-00000002', 'step-00000004'\\]"):
        _resume(run_dir)


@pytest.mark.parametrize("damage, message", [
    ("truncate", "model.safetensors has \\d+ bytes, trainer.json records \\d+ \\(truncated"),
    ("flip", "model.safetensors is corrupt or from another save: its SHA-256"),
    ("delete", "model.safetensors is missing"),
])
def test_corrupt_weights(run_dir, damage, message):
    path = run_dir / "checkpoints" / "step-00000004" / "model.safetensors"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-10] + bytes(b ^ 0xFF for b in data[-10:]))
    else:
        path.unlink()
    with pytest.raises(CheckpointError, match=message):
        _resume(run_dir)
    # The earlier checkpoint is untouched and still resumes.
    assert load_training_checkpoint(run_dir / "checkpoints" / "step-00000002").step == 2


def test_truncated_safetensors_without_a_record_is_still_caught(run_dir):
    # Even when the record's size and hash are removed, a truncated file fails safetensors' own check.
    step = run_dir / "checkpoints" / "step-00000004"
    record = json.loads((step / "trainer.json").read_text())
    del record["files"]["optimizer.safetensors"]
    (step / "trainer.json").write_text(json.dumps(record))
    data = (step / "optimizer.safetensors").read_bytes()
    (step / "optimizer.safetensors").write_bytes(data[:100])
    with pytest.raises(CheckpointError, match="optimizer.safetensors is not a readable safetensors file"):
        load_training_checkpoint(step)


def test_corrupt_record(run_dir):
    record = run_dir / "checkpoints" / "step-00000004" / "trainer.json"
    record.write_text(record.read_text()[:50])
    with pytest.raises(CheckpointError, match="trainer.json is not valid JSON"):
        _resume(run_dir)


def test_train_config_mismatch_names_the_fields(run_dir):
    with pytest.raises(CheckpointError, match="(?s)does not match this run.*lr: 0.003 != 0.001.*"
                                              "seed: 0 != 1"):
        _resume(run_dir, lr=1e-3, seed=1)


def test_model_mismatch_names_config_and_shapes(run_dir):
    with pytest.raises(CheckpointError, match="(?s)model config xlstm.*weight 'embedding.weight': shape "
                                              "\\(256, 32\\) in the checkpoint, \\(256, 48\\) in the model"):
        _resume(run_dir, model_kwargs={"embedding_dim": 48})


def test_task_mismatch(run_dir):
    with pytest.raises(CheckpointError, match="task seq_len: 32 != 16"):
        _resume(run_dir, task_kwargs={"seq_len": 16})


def test_what_may_change_on_resume(run_dir):
    # Where files go and how often they are written do not change the computation.
    assert _resume(run_dir, max_steps=4, keep_last=1, eval_every=1, ckpt_every=1) == []


class _FillingFile:
    """A file on a disk that fills: a write stores half its bytes, then fails with ENOSPC."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


class _OsWithFullDisk:
    """The ``os`` module as ``xlram.checkpoint`` sees it, except that after ``writes_before_full`` files
    every file it opens is on a full disk. The real atomic-write code runs, clean-up included."""

    def __init__(self, writes_before_full: int):
        self.writes_left = writes_before_full

    def fdopen(self, fd, *args, **kwargs):
        f = os.fdopen(fd, *args, **kwargs)
        self.writes_left -= 1
        return f if self.writes_left >= 0 else _FillingFile(f)

    def __getattr__(self, name):
        return getattr(os, name)


def _fill_disk_after(monkeypatch, writes_before_full: int):
    monkeypatch.setattr(ckpt, "os", _OsWithFullDisk(writes_before_full))


# A checkpoint is 5 writes: weights, config.json, optimizer, rng, trainer.json; then the latest pointer.
@pytest.mark.parametrize("writes_before_full", [0, 2, 4, 5], ids=["weights", "optimizer", "record", "latest"])
def test_disk_full_while_saving_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, writes_before_full):
    reference = losses(lm_trainer(tmp_path / "full", max_steps=6, ckpt_every=2).fit())

    def full_disk_at_step_4(trainer, record):
        if record["step"] == 4:
            _fill_disk_after(monkeypatch, writes_before_full)

    trainer = lm_trainer(tmp_path / "run", max_steps=6, ckpt_every=2, callbacks=[full_disk_at_step_4])
    with pytest.raises(CheckpointWriteError, match="step-00000004: the disk is full.*it was not saved and "
                                                   "the last good checkpoint .*step-00000002 is intact") as e:
        trainer.fit()
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000002"]  # no partial leftovers
    assert find_checkpoint(root).name == "step-00000002"
    # Space freed, the run resumes from the surviving checkpoint and continues exactly.
    after = lm_trainer(tmp_path / "run", max_steps=6, ckpt_every=2).fit(resume=True)
    assert losses(after) == reference[2:]

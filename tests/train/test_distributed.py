"""torchrun on CPU with gloo: 2 processes give the losses of 1 process with the same global batch.

Each test launches ``python -m torch.distributed.run --nproc_per_node=2 -m xlram.train lm ...`` in a
subprocess and compares ``train.csv`` with an in-process run of the same command.
"""

import csv
import os
import shutil
import subprocess
import sys

import pytest

from xlram.train.commands import main

ARGS = ["--model", "lm-xlstm[1:0]-tiny", "--steps", "20", "--batch-size", "8", "--seq-len", "32",
        "--eval-windows", "4", "--ckpt-every", "10", "--no-progress", "--no-tensorboard", "--device", "cpu"]
TOLERANCE = 1e-5


def _losses(out_dir) -> dict[int, float]:
    with open(out_dir / "train.csv", newline="") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def _torchrun(out_dir, *extra, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "xlram.train", "lm", *ARGS, "--out", str(out_dir), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, (f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n"
                                    f"{result.stderr[-5000:]}")
    return result.stdout


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(abs(a[k] - b[k]) for k in a)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    assert main(["lm", *ARGS, "--out", str(out)]) == 0
    return _losses(out)


def test_ddp_two_processes_match_one(tmp_path, one_process):
    stdout = _torchrun(tmp_path / "ddp")
    assert "2 process(es), strategy ddp" in stdout
    two = _losses(tmp_path / "ddp")
    assert sorted(two) == list(range(1, 21))
    diff = _max_diff(two, one_process)
    print(f"DDP 2 processes vs 1: max |delta loss| over 20 steps = {diff:.3g}")
    assert diff < TOLERANCE

    # Crash after step 10 (its checkpoint survives); two processes resume and match again.
    shutil.rmtree(tmp_path / "ddp" / "checkpoints" / "step-00000020")
    (tmp_path / "ddp" / "checkpoints" / "latest").unlink()
    assert "resumed from" in _torchrun(tmp_path / "ddp", "--resume")
    resumed = _losses(tmp_path / "ddp")
    assert {k: resumed[k] for k in range(11, 21)} == {k: two[k] for k in range(11, 21)}  # exactly


def test_fsdp_two_processes_match_one_and_resume_in_one(tmp_path, one_process):
    stdout = _torchrun(tmp_path / "fsdp", "--strategy", "fsdp")
    assert "strategy fsdp" in stdout
    sharded = _losses(tmp_path / "fsdp")
    diff = _max_diff(sharded, one_process)
    print(f"FSDP 2 processes vs 1: max |delta loss| over 20 steps = {diff:.3g}")
    assert diff < TOLERANCE

    # The gathered FSDP checkpoint of step 10 resumes in a single process.
    shutil.rmtree(tmp_path / "fsdp" / "checkpoints" / "step-00000020")
    (tmp_path / "fsdp" / "checkpoints" / "latest").unlink()
    with pytest.warns(UserWarning, match="saved by 2 processes"):
        assert main(["lm", *ARGS, "--out", str(tmp_path / "fsdp"), "--resume"]) == 0
    resumed = _losses(tmp_path / "fsdp")
    later = range(11, 21)
    assert _max_diff({k: resumed[k] for k in later}, {k: sharded[k] for k in later}) < TOLERANCE


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    import torch

    from xlram.train.distributed import setup

    monkeypatch.setenv("LOCAL_RANK", str(torch.cuda.device_count()))
    with pytest.raises(ValueError, match=r"CUDA device\(s\)\. Start at most .* or pass --device cpu"):
        setup("cuda")

"""``xlram train lm`` as the CLI runs it: training, resume, and bad input reported with exit codes."""

import argparse
import json

import pytest

from xlram.models import XLSTMLM
from xlram.train.commands import add_train_parser

ARGS = ["--model", "lm-xlstm[1:0]-tiny", "--batch-size", "4", "--seq-len", "16", "--eval-windows", "2",
        "--no-progress", "--no-tensorboard"]


def xlram(*argv) -> int:
    """Run ``xlram train ...`` through a parser built the way xlram/cli.py builds it."""
    parser = argparse.ArgumentParser(prog="xlram")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_train_then_resume_to_more_steps_is_refused_then_continues(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert xlram("train", "lm", *ARGS, "--steps", "4", "--out", out) == 0
    printed = capsys.readouterr().out
    assert "done, step 4" in printed and "val" in printed
    step_dir = tmp_path / "run" / "checkpoints" / "step-00000004"
    record = json.loads((step_dir / "trainer.json").read_text())
    assert record["train_config"]["max_steps"] == 4 and record["task"]["corpus"] == "docs"
    assert XLSTMLM.from_pretrained(step_dir).config.vocab_size == 256

    assert xlram("train", "lm", *ARGS, "--steps", "4", "--out", out) == 1  # a new run over an old one
    assert "already holds checkpoints" in capsys.readouterr().err
    assert xlram("train", "lm", *ARGS, "--steps", "8", "--out", out, "--resume") == 1  # another schedule
    assert "train config max_steps: 4 != 8" in capsys.readouterr().err
    assert xlram("train", "lm", *ARGS, "--steps", "4", "--out", out, "--resume", "--keep-last", "1") == 0


@pytest.mark.parametrize("argv, message", [
    (["--corpus", "{tmp}/empty.txt"], "is empty"),
    (["--corpus", "{tmp}/missing.txt"], "is neither"),
    (["--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["--batch-size", "6", "--accum", "4"], "multiple of grad_accum_steps"),
    (["--lr", "-1"], "TrainConfig.lr must be a positive number"),
])
def test_bad_input_exits_with_a_message(tmp_path, capsys, argv, message):
    (tmp_path / "empty.txt").write_text("")
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert xlram("train", "lm", *ARGS, "--steps", "2", "--out", str(tmp_path / "run"), *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("xlram train lm: ") and message in err


def test_resume_without_checkpoints_exits_1(tmp_path, capsys):
    assert xlram("train", "lm", *ARGS, "--steps", "2", "--out", str(tmp_path), "--resume") == 1
    assert "no checkpoint to resume from" in capsys.readouterr().err

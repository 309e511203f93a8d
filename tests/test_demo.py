"""`xlram demo` end to end on a tiny time budget: it trains, evaluates, samples, measures and saves."""

import argparse
import json

import pytest
import torch

from xlram import demo
from xlram.models import XLSTMLM


@pytest.fixture
def one_thread():
    # Intra-op threads stall badly when the cores are shared with other jobs (a CI runner, a parallel
    # test run); this end-to-end test only needs to run, not to be fast, so it runs on one thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_demo_runs_and_the_loss_decreases(tmp_path, monkeypatch, capsys, one_thread):
    # Fewer evaluation windows and shorter samples keep the test short; the training loop is the real one.
    monkeypatch.setattr(demo, "EVAL_WINDOWS", 16)
    monkeypatch.setattr(demo, "EVAL_POINTS", 1)
    monkeypatch.setattr(demo, "SAMPLE_TOKENS", 24)
    monkeypatch.setattr(demo, "SPEED_PREFILL_LEN", 128)
    monkeypatch.setattr(demo, "SPEED_GEN_TOKENS", 16)
    assert demo.run(argparse.Namespace(minutes=0.05, out=str(tmp_path), seed=0)) == 0
    printed = capsys.readouterr().out
    for text in ("val bpb before training", "val bpb after", "samples", "tokens/s", "ms/token"):
        assert text in printed

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] >= 1
    assert metrics["val_bpb_after"] < metrics["val_bpb_before"]
    assert min(metrics["train_losses"]) <= metrics["train_losses"][0]
    assert metrics["train_tokens_per_s"] > 0 and metrics["generation_ms_per_token"] > 0
    assert len(metrics["samples"]) == len(demo.PROMPTS)

    png = (tmp_path / "loss_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000

    model = XLSTMLM.from_pretrained(tmp_path / "model")
    assert model.num_params() == metrics["params"]
    with torch.no_grad():
        logits, _ = model(torch.tensor([[72, 105]]))
    assert torch.isfinite(logits).all()

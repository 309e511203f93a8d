"""`xlram bench lm` at a tiny size: matched models, the rows it returns, the files it writes, and resuming."""

import json

import pytest
import torch

import benchmarks.lm as lm
from benchmarks import SUITES
from xlram.data.text import ByteCorpus, encode

TINY = lm.Plan(name="tiny", dim=32, num_blocks=2, seq_len=16, batch_size=2, steps=2, lrs=(1e-3, 1e-2),
               sweep_steps=1, curve_points=2, curve_windows=2, final_windows=4, seeds=2)
MODELS = ("xlstm[7:1]", "lstm")  # two of the four keep the test fast; all four are built below
TEXT = "A byte-level model reads this sentence, and then it reads the next one. " * 40


def _load(name):
    data = encode(f"{name}: {TEXT}")
    return ByteCorpus(name=name, train=data[:2000], val=data[2000:], source=f"fake {name}")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm")
    lines = []
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lm, "pyplot", lambda: None)  # importing matplotlib alone takes seconds
        rows = lm.run_plan(TINY, out, corpora=("english",), models=MODELS, load=_load, log=lines.append)
    return out, rows, lines


def test_suite_is_registered():
    assert SUITES["lm"] == "benchmarks.lm"


@pytest.mark.parametrize("plan", [lm.FULL, lm.QUICK, TINY])
def test_models_have_matched_parameter_counts(plan):
    models = lm.model_factories(plan)
    assert list(models) == list(lm.MODELS)
    counts = [n for _, n, _ in models.values()]
    assert max(counts) / min(counts) < 1.1 and all(abs(n / counts[0] - 1) <= lm.TOLERANCE for n in counts)
    if plan is TINY:  # the counts are those of the models built
        for factory, n, _ in models.values():
            model = factory()
            assert sum(p.numel() for p in model.parameters()) == n
            assert model(torch.zeros(1, 4, dtype=torch.long))[0].shape == (1, 4, 256)


def test_rows_have_the_keys_of_every_metric(tiny_run):
    _, rows, lines = tiny_run
    runs = [r for r in rows if r["metric"] == "val_bpb"]
    assert {(r["model"], r["seed"]) for r in runs} == {(m, s) for m in MODELS for s in (0, 1)}
    for r in runs:
        assert {"value", "corpus", "params", "tokens", "lr", "train_bpb", "wall_s", "cpu_s"} <= set(r)
        assert r["corpus"] == "english" and r["tokens"] == TINY.tokens and 0 < r["value"] < 9
    means = [r for r in rows if r["metric"] == "val_bpb_mean"]
    assert sorted(r["rank"] for r in means) == [1, 2] and all(r["n_seeds"] == 2 for r in means)
    gaps = [r for r in rows if r["metric"] == "bpb_gap"]
    assert [(r["model"], r["vs"], r["n_seeds"]) for r in gaps] == [("xlstm[7:1]", "lstm", 2)]
    assert gaps[0]["wins"] in (0, 1, 2)
    curve = [r for r in rows if r["metric"] == "val_bpb_curve"]
    assert {r["tokens"] for r in curve} == {TINY.batch_size * TINY.seq_len * s for s in (1, 2)}
    sweep = [r for r in rows if r["metric"] == "sweep_val_bpb"]
    assert len(sweep) == 4 and sum(r["chosen"] for r in sweep) == 2
    chosen = {r["model"]: r["lr"] for r in sweep if r["chosen"]}
    assert all(r["lr"] == chosen[r["model"]] for r in runs)
    assert len(lines) == 8 and all(line.startswith("[lm ") for line in lines)


def test_files_are_written(tiny_run):
    out, _, _ = tiny_run
    files = sorted(p.name for p in (out / "lm_runs" / "tiny" / "english").iterdir())
    assert len(files) == 8 and all(f.endswith(".json") for f in files)  # no temporary file left
    record = json.loads((out / "lm_runs" / "tiny" / "english" / "lstm-seed1.json").read_text())
    assert record["key"]["plan"]["name"] == "tiny" and len(record["curve"]) == 2
    assert "| xlstm[7:1] |" in (out / "lm.md").read_text()


def test_resume_skips_finished_runs(tiny_run, monkeypatch):
    out, rows, _ = tiny_run
    (out / "lm_runs" / "tiny" / "english" / "lstm-seed1.json").unlink()
    trained = []
    real = lm.train_run

    def counting(*args, **kwargs):
        trained.append(kwargs["seed"])
        return real(*args, **kwargs)

    monkeypatch.setattr(lm, "train_run", counting)
    monkeypatch.setattr(lm, "pyplot", lambda: None)
    lines = []
    again = lm.run_plan(TINY, out, corpora=("english",), models=MODELS, load=_load, log=lines.append)
    assert trained == [1]  # only the deleted run trains again
    assert sum("done earlier" in line for line in lines) == 7
    before = {(r["model"], r["seed"]): r["value"] for r in rows if r["metric"] == "val_bpb"}
    after = {(r["model"], r["seed"]): r["value"] for r in again if r["metric"] == "val_bpb"}
    assert before == after  # the engine's runs are deterministic


def test_a_changed_plan_does_not_reuse_runs(tiny_run, monkeypatch):
    out, _, _ = tiny_run
    store = lm._Store(out / "lm_runs" / "tiny")
    key = {"plan": lm._plan_key(TINY), "model": "lstm", "corpus": "english", "seed": 0}
    assert store.get("english", "lstm-seed0", key) is None  # a key that differs (no lr, steps...) misses

"""The formal and MQAR suites end to end on tiny models and few steps: rows with the right keys, one
result file per run, finished runs skipped when the suite runs again."""

import json
import types

import pytest

from benchmarks import SUITES, formal, mqar, synthetic
from benchmarks.synthetic import ModelSpec


def _tiny_plan(tasks, models, lrs=(1e-2,), seeds=(0,)):
    return {"tasks": tasks, "models": models, "seeds": list(seeds), "lrs": lrs, "steps": 2, "batch": 4,
            "num_test": 8, "num_val": 4}


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(formal, "model_spec", lambda name: ModelSpec(name, 16, heads=2, mlstm_heads=1,
                                                                     slstm_heads=1))
    monkeypatch.setattr(mqar, "model_spec", lambda name: ModelSpec(name, 16, heads=2, mlstm_heads=2,
                                                                   slstm_heads=2))


def _args(tmp_path, seeds=None):
    return types.SimpleNamespace(quick=False, out=str(tmp_path), device="cpu", seeds=seeds)


def test_formal_rows_and_resume(tiny, tmp_path, monkeypatch):
    assert SUITES["formal"] == "benchmarks.formal"
    monkeypatch.setattr(formal, "plan", lambda quick, seeds: _tiny_plan(
        ("parity",), ("xlstm[1:0]",), lrs=(1e-2, 3e-3), seeds=(0, 1)))
    rows = formal.run(_args(tmp_path))
    runs = sorted(p.name for p in (tmp_path / "runs" / "formal").iterdir())
    # The sweep: both rates on seed 0; seed 1 only at each model's chosen rate.
    assert len(runs) == 2 + 1, runs
    per_seed = [r for r in rows if r["metric"] == "test_accuracy" and r["seed"] != "mean"]
    expected = {("xlstm[1:0]", 0), ("xlstm[1:0]", 1)}
    assert {(r["model"], r["seed"]) for r in per_seed} == expected
    for r in per_seed:
        assert {"metric", "value", "model", "task", "seed", "lr", "raw_accuracy", "steps"} <= set(r)
        assert r["value"] == pytest.approx((r["raw_accuracy"] - 0.5) / 0.5, abs=1e-3)
    assert {r["metric"] for r in rows} == {"test_accuracy", "accuracy", "test_accuracy_by_length",
                                          "val_accuracy"}
    by_len = [r for r in rows if r["metric"] == "test_accuracy_by_length"]
    assert by_len and all(40 <= r["length_min"] <= r["length_max"] <= 256 for r in by_len)
    assert sum(r["chosen"] for r in rows if r["metric"] == "val_accuracy") == 1
    assert (tmp_path / "formal_table.md").is_file()
    stored = json.loads(next((tmp_path / "runs" / "formal").iterdir()).read_text())
    assert {"spec", "final", "curve", "evals", "seconds", "params"} <= set(stored)

    # Again: every run is read back, none is trained, and the rows are the same.
    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(synthetic, "train_run", no_training)
    again = formal.run(_args(tmp_path))
    strip = lambda rs: [{k: v for k, v in r.items() if k != "load"} for r in rs]
    assert strip(again) == strip(rows)


def test_changed_settings_train_again(tiny, tmp_path, monkeypatch):
    plan = _tiny_plan(("even_pairs",), ("lstm",))
    monkeypatch.setattr(formal, "plan", lambda quick, seeds: plan)
    formal.run(_args(tmp_path))
    trained = []
    real = synthetic.train_run
    monkeypatch.setattr(synthetic, "train_run",
                        lambda spec, task, **k: trained.append(spec) or real(spec, task, **k))
    plan["steps"] = 3  # another number of steps is another run
    formal.run(_args(tmp_path))
    assert len(trained) == 1 and trained[0].steps == 3


def test_mqar_rows(tiny, tmp_path, monkeypatch):
    assert SUITES["mqar"] == "benchmarks.mqar"
    monkeypatch.setattr(mqar, "plan", lambda quick, seeds: _tiny_plan(
        ("cl64_kv4",), ("xlstm[1:0]", "xlstm[1:0]-noconv")))
    rows = mqar.run(_args(tmp_path))
    acc = [r for r in rows if r["metric"] == "accuracy" and r["seed"] == 0]
    assert {r["model"] for r in acc} == {"xlstm[1:0]", "xlstm[1:0]-noconv"}
    for r in acc:
        assert {"value", "task", "S", "kv", "lr", "steps"} <= set(r) and r["S"] == 64 and r["kv"] == 4
        assert 0 <= r["value"] <= 1
    sizes = {r["model"]: r["params"] for r in acc}
    assert sizes["xlstm[1:0]-noconv"] < sizes["xlstm[1:0]"]  # the conv is really gone
    text = (tmp_path / "mqar_table.md").read_text()
    assert "| xlstm[1:0]-noconv | " in text and "cl64_kv4" in text and "(n=1, lr 0.01)" in text
    if formal.pyplot() is not None:  # plots need matplotlib
        assert (tmp_path / "mqar_curves.png").is_file()


def test_noconv_model_has_no_conv():
    model = ModelSpec("xlstm[1:0]-noconv", 16, mlstm_heads=2).build(10)
    assert not any("conv" in name for name, _ in model.named_parameters())
    assert any("conv" in name for name, _ in ModelSpec("xlstm[1:0]", 16, mlstm_heads=2).build(10)
               .named_parameters())
    with pytest.raises(ValueError, match="unknown model 'mamba'"):
        ModelSpec("mamba", 16).build(10)


def test_mqar_baselines_get_the_wider_sweep(tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("XLRAM_BENCH_LRS", raising=False)
    full = mqar.plan(False, None)
    assert full["lrs"] == mqar.LRS and len(mqar.BASELINE_LRS) > len(mqar.LRS)
    for model in ("lstm", "transformer", synthetic.NO_CONV):
        assert synthetic.lrs_of(full, model) == mqar.BASELINE_LRS
    assert synthetic.lrs_of(full, "xlstm[1:0]") == mqar.LRS
    monkeypatch.setenv("XLRAM_BENCH_LRS", "1e-3")  # one list for every model
    assert mqar.plan(False, None)["lrs_by_model"] == {}

    p = _tiny_plan(("cl64_kv4",), ("xlstm[1:0]", "lstm"), seeds=(0, 1))
    p["lrs_by_model"] = {"lstm": (1e-2, 3e-3)}
    monkeypatch.setattr(mqar, "plan", lambda quick, seeds: p)
    rows = mqar.run(_args(tmp_path))
    runs = [json.loads(f.read_text())["spec"] for f in (tmp_path / "runs" / "mqar").iterdir()]
    # lstm: both rates on seed 0 (with a validation split), seed 1 at the chosen one; xLSTM: one rate.
    assert sorted((s["model"]["name"], s["seed"]) for s in runs) == [
        ("lstm", 0), ("lstm", 0), ("lstm", 1), ("xlstm[1:0]", 0), ("xlstm[1:0]", 1)]
    assert all(s["task_kwargs"]["num_val"] == (4 if s["model"]["name"] == "lstm" else 0) for s in runs)
    sweep = [r for r in rows if r["metric"] == "val_accuracy"]
    assert {r["model"] for r in sweep} == {"lstm"} and sum(r["chosen"] for r in sweep) == 1
    chosen = next(r["lr"] for r in sweep if r["chosen"])
    assert {r["lr"] for r in rows if r["metric"] == "accuracy" and r["model"] == "lstm"} == {chosen}


def test_formal_best_val_selection_runs_apart(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(formal, "EVAL_EVERY", 1)
    plan = {**_tiny_plan(("parity",), ("xlstm[1:0]",)), "select": "best_val"}
    results, _ = formal.run_plan(plan, tmp_path, log=lambda _: None)
    (r,) = results
    assert r["spec"]["suite"] == "formal-bestval" and r["spec"]["eval_every"] == 1
    assert (tmp_path / "runs" / "formal-bestval").is_dir() and not (tmp_path / "runs" / "formal").exists()
    evals = r["evals"]
    assert len(evals) == 2 and max(e["val_accuracy_now"] for e in evals) == r["final"]["val_accuracy"]

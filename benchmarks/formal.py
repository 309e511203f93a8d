"""`xlram bench formal`: formal languages (xLSTM paper §4.1, Fig. 4): length generalisation from training
lengths 3-40 to test lengths 40-256, accuracy on the answer tokens only.

Models (2 blocks each, width 64; sLSTM with one head as the official parity configs, mLSTM with four
heads as SLiCE's rerun of the official package, so that its forget-gate biases spread over [3, 6]: with
one head, every mLSTM memory starts at bias 3 and xLSTM[1:0] forgets the first symbol of long Even Pairs
inputs: 0.75 against 0.99 scaled accuracy, same seed, steps and rate): ``xlstm[0:1]``,
``xlstm[1:0]``, ``xlstm[1:1]`` (sLSTM blocks without conv, recurrent weights initialised normally as in
the paper's App. B.1.1), ``transformer`` (Llama-style, 4 heads, RoPE) and ``lstm`` (2 layers).
Training: AdamW (0.9, 0.99), weight decay 0.1, 10% warm-up then cosine to 1e-5, clip 1.0; every model
sees the same batches for a given seed. The paper trains 100k steps at batch 256; a CPU run here is
``STEPS`` steps at batch ``BATCH``: far less, so a model that fails here may succeed with more training.

Learning rates: every model gets the same small sweep; on seed 0 every rate in ``LRS`` is trained,
the rate with the best validation accuracy (512 samples of the test lengths, another fixed set than the
test set) is kept, and the other seeds train at that rate only.

Rows (per task and model, at the chosen rate):

- ``test_accuracy``: the paper's scaled accuracy ``(acc - chance) / (1 - chance)`` on the fixed test set
  (1024 samples of lengths 40-256), one row per seed and a ``seed: "mean"`` row (with ``std``);
  ``raw_accuracy``, ``steps``, ``seconds``, ``params`` ride along;
- ``accuracy``: the raw accuracy, per seed;
- ``test_accuracy_by_length``: the scaled accuracy per bin of test lengths (``length_min``,
  ``length_max``), mean over seeds;
- ``val_accuracy``: the sweep, per learning rate on seed 0, ``chosen`` marks the kept rate.

Plots in the out dir: ``formal_length.png`` (accuracy against test length), ``formal_heatmap.png``
(model x task, the paper's Fig. 4 layout) and ``formal_table.md`` (the same as a table).

Selection (``XLRAM_BENCH_SELECT``): ``last`` (default) reports the model after its last step;
``best_val`` evaluates every ``EVAL_EVERY`` steps and reports the test accuracy at the evaluation
with the best validation accuracy (SLiCE's protocol for this benchmark; the later one on a tie), the
learning rate chosen by that same validation accuracy. Its runs are stored in ``runs/formal-bestval/``.

Resumable: each finished run is stored in ``OUT/runs/formal/`` and skipped when the suite runs again
with the same settings. ``--quick``: Parity and Even Pairs, one seed, one rate, few steps (minutes; the
figures are then far from converged). Environment overrides for partial runs: ``XLRAM_BENCH_TASKS``,
``XLRAM_BENCH_MODELS`` (comma-separated), ``XLRAM_BENCH_STEPS``, ``XLRAM_BENCH_LRS``.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from benchmarks.common import atomic_write_text
from benchmarks.limits import pyplot, save_plot, setup_threads, stamp
from benchmarks.synthetic import (
    MODELS,
    ModelSpec,
    RunSpec,
    env_list,
    mean_table,
    seeds_from,
    sweep_rows,
    sweep_then_seeds,
)

SUITE = "formal"
TASKS = ("parity", "even_pairs", "cycle_navigation", "modular_arithmetic", "majority")
QUICK_TASKS = ("parity", "even_pairs")
DIM = 64
STEPS, BATCH, LRS = 1000, 64, (1e-3, 3e-3, 1e-2)
QUICK_STEPS, QUICK_BATCH, QUICK_LRS = 300, 32, (3e-3,)
NUM_TEST, NUM_VAL = 1024, 512
EVAL_EVERY = 100  # with XLRAM_BENCH_SELECT=best_val


def model_spec(name: str, dim: int = DIM) -> ModelSpec:
    return ModelSpec(name, dim, num_blocks=2, heads=4, mlstm_heads=4, slstm_heads=1)


def plan(quick: bool, num_seeds: int | None) -> dict:
    """The suite's settings: tasks, models, seeds, rates, steps, batch, test and validation sizes."""
    seeds = list(range(num_seeds or (1 if quick else 3)))
    return {
        "tasks": env_list("XLRAM_BENCH_TASKS", QUICK_TASKS if quick else TASKS),
        "models": env_list("XLRAM_BENCH_MODELS", MODELS),
        "seeds": seeds,
        "lrs": env_list("XLRAM_BENCH_LRS", QUICK_LRS if quick else LRS, float),
        "steps": int(os.environ.get("XLRAM_BENCH_STEPS", QUICK_STEPS if quick else STEPS)),
        "batch": QUICK_BATCH if quick else BATCH,
        "num_test": 256 if quick else NUM_TEST,
        "num_val": 0 if quick else NUM_VAL,
        "select": os.environ.get("XLRAM_BENCH_SELECT", "last"),
    }


def _spec(p: dict, task: str, model: str, seed: int, lr: float) -> RunSpec:
    kwargs = {"num_test": p["num_test"], "num_val": p["num_val"]}
    if p.get("select") == "best_val":  # evaluated every EVAL_EVERY steps; runs stored apart from the others
        return RunSpec(f"{SUITE}-bestval", model_spec(model), task, seed, lr, p["steps"], p["batch"],
                       eval_every=EVAL_EVERY, task_kwargs={**kwargs, "select": "best_val"})
    return RunSpec(SUITE, model_spec(model), task, seed, lr, p["steps"], p["batch"], task_kwargs=kwargs)


def _make_task(spec: RunSpec):
    from xlram.train.synthetic_tasks import FormalLanguageTask

    return FormalLanguageTask(spec.task, **spec.task_kwargs)


def run_plan(p: dict, out_dir, *, device: str = "cpu", log=print) -> tuple[list[dict], dict]:
    """Train (or read) every run of the plan; see :func:`benchmarks.synthetic.sweep_then_seeds`."""
    return sweep_then_seeds(p, lambda t, m, s, lr: _spec(p, t, m, s, lr), _make_task, out_dir,
                            device=device, log=log)


def _rows(results: list[dict], sweep: dict, chance: dict[str, float]) -> list[dict]:
    rows = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        s = r["spec"]
        groups.setdefault((s["task"], s["model"]["name"]), []).append(r)
        base = {"model": s["model"]["name"], "task": s["task"], "seed": s["seed"], "lr": s["lr"]}
        raw = r["final"]["test_accuracy"]
        rows.append({"metric": "test_accuracy", **base, "value": round(r["final"]["test_scaled_accuracy"], 4),
                     "raw_accuracy": round(raw, 4), "steps": s["steps"], "batch": s["batch_size"],
                     "seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"], "params": r["params"]})
        rows.append({"metric": "accuracy", **base, "value": round(raw, 4),
                     "chance": round(chance[s["task"]], 4)})
    for (task, model), rs in groups.items():
        scaled = [r["final"]["test_scaled_accuracy"] for r in rs]
        rows.append({"metric": "test_accuracy", "model": model, "task": task, "seed": "mean",
                     "lr": rs[0]["spec"]["lr"], "value": round(statistics.fmean(scaled), 4),
                     "std": round(statistics.pstdev(scaled), 4), "seeds": len(rs),
                     "raw_accuracy": round(statistics.fmean(r["final"]["test_accuracy"] for r in rs), 4)})
        bins = [r["details"]["bins"] for r in rs if r.get("details")]
        for j, b in enumerate(bins[0] if bins else []):
            acc = statistics.fmean(x[j]["accuracy"] for x in bins)
            c = chance[task]
            rows.append({"metric": "test_accuracy_by_length", "model": model, "task": task,
                         "length_min": b["lo"], "length_max": b["hi"], "samples": b["count"],
                         "value": round((acc - c) / (1 - c), 4), "raw_accuracy": round(acc, 4),
                         "seeds": len(bins)})
    return rows + sweep_rows(sweep)


def heatmap_table(rows: list[dict]) -> str:
    """Markdown table: mean scaled test accuracy (± std over seeds), models as rows, tasks as columns."""
    return mean_table(rows, "test_accuracy",
                      lambda r: f"{r['value']:.2f} ± {r['std']:.2f} (n={r['seeds']})")


def _plot(rows: list[dict], out_dir, title: str) -> None:
    plt = pyplot()
    if plt is None:
        return
    import numpy as np

    by_len = [r for r in rows if r["metric"] == "test_accuracy_by_length"]
    tasks = list(dict.fromkeys(r["task"] for r in by_len))
    if tasks:
        fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
        for ax, task in zip(axes[0], tasks, strict=True):
            for model in dict.fromkeys(r["model"] for r in by_len if r["task"] == task):
                pts = [((r["length_min"] + r["length_max"]) / 2, r["value"]) for r in by_len
                       if r["task"] == task and r["model"] == model]
                ax.plot(*zip(*pts, strict=True), "o-", label=model, ms=3)
            ax.set_title(task)
            ax.set_xlabel("test length")
            ax.set_ylim(-0.15, 1.05)
            ax.axhline(0, color="gray", lw=0.5)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("scaled accuracy")
        axes[0][-1].legend(fontsize=7)
        fig.suptitle(title, fontsize=9)
        save_plot(fig, out_dir, "formal_length.png")
        plt.close(fig)
    means = {(r["model"], r["task"]): r["value"] for r in rows
             if r["metric"] == "test_accuracy" and r["seed"] == "mean"}
    models = list(dict.fromkeys(m for m, _ in means))
    tasks = list(dict.fromkeys(t for _, t in means))
    if models and tasks:
        grid = np.array([[means.get((m, t), np.nan) for t in tasks] for m in models])
        fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 2, 0.6 * len(models) + 1.5))
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(models)), models, fontsize=8)
        for i in range(len(models)):
            for j in range(len(tasks)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if grid[i, j] < 0.6 else "black")
        fig.colorbar(im, ax=ax, label="scaled test accuracy (40-256)")
        ax.set_title(title, fontsize=9)
        save_plot(fig, out_dir, "formal_heatmap.png")
        plt.close(fig)


def run(args) -> list[dict]:
    from xlram.data.formal import get_task

    setup_threads()
    quick = bool(getattr(args, "quick", False))
    out_dir = Path(getattr(args, "out", "results"))
    p = plan(quick, getattr(args, "seeds", None))
    seeds_from(args, len(p["seeds"]))
    print(f"formal: tasks {list(p['tasks'])}, models {list(p['models'])}, seeds {p['seeds']}, "
          f"lrs {list(p['lrs'])}, {p['steps']} steps at batch {p['batch']}", flush=True)
    results, sweep = run_plan(p, out_dir, device=getattr(args, "device", "cpu"))
    rows = _rows(results, sweep, {t: get_task(t).chance_accuracy for t in p["tasks"]})
    stamp(rows, 0.0)
    title = (f"formal languages: train 3-40, test 40-256; {p['steps']} steps x batch {p['batch']}, "
             f"up to {len(p['seeds'])} seed(s)")
    if p.get("select") == "best_val":
        title += f"; test accuracy at the best validation accuracy (evaluated every {EVAL_EVERY} steps)"
    table = heatmap_table(rows)
    print(table)
    atomic_write_text(out_dir / "formal_table.md",
                      f"{title}\n\nscaled test accuracy, mean ± std over seeds\n\n{table}\n")
    _plot(rows, out_dir, title)
    return rows

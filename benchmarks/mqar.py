"""`xlram bench mqar`: Multi-Query Associative Recall (xLSTM paper §4.1, Fig. 5, Zoology's design).

Settings (context length, key-value pairs): (64, 4) and (128, 8); (256, 16) when named in
``XLRAM_BENCH_TASKS`` (``cl256_kv16``). Vocabulary 8192, model width 128, 2 blocks each:
``xlstm[1:0]``, ``xlstm[1:1]`` (4 heads), ``lstm`` (2 layers), ``transformer`` (Llama-style, 2 heads of
64), and the ablation ``xlstm[1:0]-noconv``: the same mLSTM blocks without their causal conv
(``mlstm_conv_kernel_size=0``; q and k then come straight from the up-projection).

Every model ties its output head to its token embedding, as Zoology's models and the paper's do (its
"Mamba (noWT)" is the untied exception); untied, a 2-block xLSTM[1:0] at batch 64 was still at 1%
accuracy after 1000 steps here, tied it passes 69% train accuracy at step 400 of batch 32.

Training: fresh random sequences every step (the paper cycles 100,000 fixed ones for 64 epochs at
batch 512); AdamW (0.9, 0.99), weight decay 0.1, 10% warm-up then cosine to 1e-5, clip 1.0. A CPU run
is ``STEPS`` steps at batch ``BATCH``: about 26,000 sequences, 0.4% of the paper's 6.4 million.
Learning rates: the xLSTMs train at ``LRS`` (3e-3 alone), the baselines and the no-conv ablation get
the wider sweep ``BASELINE_LRS``, so that no gap in their disfavour comes from tuning. Where a model has
several rates, all are trained on seed 0, the one with the best accuracy on a validation split (another
fixed split than the test split) is kept and the other seeds train at it. ``XLRAM_BENCH_LRS`` sets one
list for every model.

Rows: ``accuracy`` on the fixed test split (3000 sequences; every query scored), per seed and a
``seed: "mean"`` row (``std``); ``val_accuracy`` of the sweep (``chosen`` marks the kept rate). Table:
``mqar_table.md``, the mean accuracy per model and setting.
``S`` is the context length, ``kv`` the number of pairs. Plot: ``mqar_curves.png``, the training
accuracy at the answer positions against the step, per setting and model (seed 0, chosen rate).

Resumable like ``formal``: finished runs are kept in ``OUT/runs/mqar/``. ``--quick``: (64, 4) only,
one seed, one rate, few steps. Environment overrides: ``XLRAM_BENCH_TASKS`` (setting names),
``XLRAM_BENCH_MODELS``, ``XLRAM_BENCH_STEPS``, ``XLRAM_BENCH_LRS``.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from benchmarks.common import atomic_write_text
from benchmarks.limits import pyplot, save_plot, setup_threads, stamp
from benchmarks.synthetic import (
    NO_CONV,
    ModelSpec,
    RunSpec,
    env_list,
    lrs_of,
    mean_table,
    seeds_from,
    sweep_rows,
    sweep_then_seeds,
)

SUITE = "mqar"
SETTINGS = ("cl64_kv4", "cl128_kv8")
MODELS = ("xlstm[1:0]", "xlstm[1:1]", "lstm", "transformer", NO_CONV)
DIM = 128
STEPS, BATCH, LRS = 800, 32, (3e-3,)
BASELINE_LRS = (1e-3, 3e-3, 1e-2)
QUICK_STEPS, QUICK_BATCH, QUICK_LRS = 150, 32, (3e-3,)
NUM_TEST, NUM_VAL = 3000, 500


def model_spec(name: str, dim: int = DIM) -> ModelSpec:
    return ModelSpec(name, dim, num_blocks=2, heads=2, mlstm_heads=4, slstm_heads=4, tie=True)


def plan(quick: bool, num_seeds: int | None) -> dict:
    lrs = env_list("XLRAM_BENCH_LRS", QUICK_LRS if quick else LRS, float)
    models = env_list("XLRAM_BENCH_MODELS", MODELS)
    # The baselines and the ablation get the wider sweep, unless --quick or XLRAM_BENCH_LRS says otherwise.
    widen = not quick and not os.environ.get("XLRAM_BENCH_LRS")
    baselines = [m for m in models if m == NO_CONV or not m.startswith("xlstm[")]
    return {
        "tasks": env_list("XLRAM_BENCH_TASKS", SETTINGS[:1] if quick else SETTINGS),
        "models": models,
        "seeds": list(range(num_seeds or (1 if quick else 3))),
        "lrs": lrs,
        "lrs_by_model": {m: BASELINE_LRS for m in baselines} if widen else {},
        "steps": int(os.environ.get("XLRAM_BENCH_STEPS", QUICK_STEPS if quick else STEPS)),
        "batch": QUICK_BATCH if quick else BATCH,
        "num_test": 500 if quick else NUM_TEST,
        "num_val": NUM_VAL,
    }


def _spec(p: dict, setting: str, model: str, seed: int, lr: float) -> RunSpec:
    num_val = p["num_val"] if len(lrs_of(p, model)) > 1 else 0  # a validation split only to choose a rate
    return RunSpec(SUITE, model_spec(model), setting, seed, lr, p["steps"], p["batch"],
                   task_kwargs={"num_test": p["num_test"], "num_val": num_val})


def _make_task(spec: RunSpec):
    from xlram.train.synthetic_tasks import MQARTask

    return MQARTask(spec.task, **spec.task_kwargs)


def _rows(results: list[dict], sweep: dict) -> list[dict]:
    from xlram.data.mqar import get_setting

    rows, groups = [], {}
    for r in results:
        s = r["spec"]
        st = get_setting(s["task"])
        groups.setdefault((s["task"], s["model"]["name"]), []).append(r)
        rows.append({"metric": "accuracy", "model": s["model"]["name"], "task": s["task"],
                     "S": st.context_len, "kv": st.num_kv_pairs, "seed": s["seed"], "lr": s["lr"],
                     "value": round(r["final"]["accuracy"], 4),
                     "test_loss": round(r["final"]["test_loss"], 4),
                     "steps": s["steps"], "batch": s["batch_size"], "seconds": r["seconds"],
                     "cpu_seconds": r["cpu_seconds"], "params": r["params"]})
    for (task, model), rs in groups.items():
        st = get_setting(task)
        acc = [r["final"]["accuracy"] for r in rs]
        rows.append({"metric": "accuracy", "model": model, "task": task, "S": st.context_len,
                     "kv": st.num_kv_pairs, "seed": "mean", "lr": rs[0]["spec"]["lr"],
                     "value": round(statistics.fmean(acc), 4), "std": round(statistics.pstdev(acc), 4),
                     "seeds": len(rs)})
    return rows + sweep_rows(sweep)


def table(rows: list[dict]) -> str:
    """Markdown table: mean test accuracy (± std over seeds, the rate used), models as rows, settings as
    columns."""
    return mean_table(rows, "accuracy",
                      lambda r: f"{r['value']:.3f} ± {r['std']:.3f} (n={r['seeds']}, lr {r['lr']:g})")


def _plot(results: list[dict], out_dir, title: str) -> None:
    plt = pyplot()
    if plt is None:
        return
    if not results:
        return
    first = [r for r in results if r["spec"]["seed"] == min(x["spec"]["seed"] for x in results)]
    settings = list(dict.fromkeys(r["spec"]["task"] for r in first))
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 3.6), squeeze=False)
    for ax, setting in zip(axes[0], settings, strict=True):
        for r in first:
            if r["spec"]["task"] != setting:
                continue
            pts = [(c["step"], c["accuracy"]) for c in r["curve"]]
            line, = ax.plot(*zip(*pts, strict=True), label=f"{r['spec']['model']['name']} "
                                                          f"(lr {r['spec']['lr']:g})")
            evals = [(e["step"], e["accuracy"]) for e in r["evals"]]
            ax.plot(*zip(*evals, strict=True), "o", color=line.get_color(), ms=4)
        ax.set_title(f"MQAR {setting} (line: train, dots: test)")
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy at the answer positions")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    save_plot(fig, out_dir, "mqar_curves.png")
    plt.close(fig)


def run(args) -> list[dict]:
    setup_threads()
    quick = bool(getattr(args, "quick", False))
    out_dir = Path(getattr(args, "out", "results"))
    p = plan(quick, getattr(args, "seeds", None))
    seeds_from(args, len(p["seeds"]))
    print(f"mqar: settings {list(p['tasks'])}, models {list(p['models'])}, seeds {p['seeds']}, "
          f"lrs {list(p['lrs'])} (other models: {p.get('lrs_by_model') or 'the same'}), "
          f"{p['steps']} steps at batch {p['batch']}, width {DIM}", flush=True)
    results, sweep = sweep_then_seeds(p, lambda t, m, s, lr: _spec(p, t, m, s, lr), _make_task, out_dir,
                                      device=getattr(args, "device", "cpu"))
    rows = _rows(results, sweep)
    stamp(rows, 0.0)
    title = f"MQAR, width {DIM}, 2 blocks; {p['steps']} steps x batch {p['batch']}"
    text = table(rows)
    print(text)
    atomic_write_text(out_dir / "mqar_table.md",
                      f"{title}\n\ntest accuracy, mean ± std over seeds\n\n{text}\n")
    _plot(results, out_dir, title)
    return rows

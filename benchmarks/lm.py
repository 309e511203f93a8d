"""`xlram bench lm`: byte-level language modelling, xLSTM against a Llama-style Transformer and an LSTM of
matched parameter counts, on English prose and on Python code.

Models (``MODELS``): ``xlstm[1:0]`` and ``xlstm[7:1]`` (width ``dim``, ``num_blocks`` blocks, tied
embedding), ``transformer`` (``xlram.baselines.TransformerLM``: RMSNorm, RoPE, SwiGLU; the xLSTM's
width, 4 heads, depth chosen by ``matched_config``) and ``lstm`` (two layers, tied embedding, width
chosen by ``matched_config``); every model's parameter count is within 5 % of ``xlstm[1:0]``'s.

Corpora (``CORPORA``, see ``xlram.data.text``): ``english``, the Linux kernel documentation of Debian's
``linux-doc-6.1`` package (about 20 MB of train bytes, a fixed document-level split), and ``code``, the
CPython standard library (a fixed block-level split).

Every model trains through the project's engine (``xlram.train.Trainer`` with an ``LMTask``) on the same
windows: the same tokens, batch, sequence length and schedule (AdamW, linear warm-up over the first
tenth, cosine to a tenth of the peak, weight decay 0.1, gradient clip 1). Tuning budget: every model gets
the same learning-rate sweep (``Plan.lrs``) per corpus, short runs of ``sweep_steps`` steps with their
own schedule and a seed of their own (``SWEEP_SEED``), scored on a quarter of ``final_windows``; the
learning rate with the lowest validation bpb then trains ``seeds`` full runs (seeds 0, 1, ...: initial
weights and data order). A sweep shorter than the runs it tunes leans towards larger learning rates;
it does so for every model alike.

Rows:

- ``val_bpb``: one per (model, corpus, seed): validation bits per byte after the run, on
  ``final_windows`` fixed windows of the val split; with ``params``, ``tokens``, ``lr``, ``train_bpb``
  (mean over the last tenth of the steps), ``wall_s`` and ``cpu_s`` of the run;
- ``val_bpb_mean``: one per (model, corpus): mean over the seeds, ``std`` (sample), ``rank`` (1 = lowest);
- ``bpb_gap``: one per (xLSTM, baseline, corpus): baseline minus xLSTM mean bpb (positive: the xLSTM is
  better), ``wins`` = seeds where the xLSTM's bpb is the lower of the two with the same seed;
- ``val_bpb_curve``: the learning curves, validation bpb (``curve_windows`` windows) against tokens,
  mean and ``std`` over the seeds;
- ``sweep_val_bpb``: the sweep, one per (model, corpus, lr), ``chosen`` marks the lr used.

Besides ``DIR/lm.json`` (written by the CLI) the suite writes ``DIR/lm.md`` (the tables, rewritten after
every run, so a stopped run leaves its figures so far) and ``DIR/lm.png`` (the learning curves).

Resumable: each finished run (sweep or seed) is saved atomically as JSON under
``DIR/lm_runs/<plan>/<corpus>/`` and skipped when the suite runs again with the same plan, corpus
bytes and learning rate; an interrupted run starts over. One progress line per run goes to stderr.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.common import atomic_write_text
from benchmarks.limits import load_average, pyplot, save_plot, setup_threads

MODELS = ("xlstm[1:0]", "xlstm[7:1]", "transformer", "lstm")
CORPORA = ("english", "code")
XLSTMS = ("xlstm[1:0]", "xlstm[7:1]")
BASELINES = ("transformer", "lstm")
SWEEP_SEED = 1000
VOCAB = 256
TOLERANCE = 0.05  # largest relative difference of parameter counts


@dataclass(frozen=True)
class Plan:
    """Sizes and budgets of one mode of the suite (``QUICK`` or ``FULL``)."""

    name: str
    dim: int  # xLSTM width (and the Transformer's)
    num_blocks: int
    seq_len: int
    batch_size: int
    steps: int  # optimizer steps of a full run: tokens = steps * batch_size * seq_len
    lrs: tuple[float, ...]  # the learning-rate sweep, the same for every model
    sweep_steps: int  # steps of a sweep run (0: no sweep, a single lr is required)
    curve_points: int  # evaluations during a run (the learning curve)
    curve_windows: int  # validation windows per learning-curve evaluation
    final_windows: int  # validation windows of the final evaluation (the reported val_bpb)
    seeds: int

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size * self.seq_len


# About 0.9M parameters and 0.82M training tokens per run. CPU time of one core (2-core EPYC): an xLSTM
# takes about 1.1 s per step (4,096 tokens), the Transformer 0.45 s, the LSTM 0.2 s; the 24 runs and the
# sweep (3 lrs x 50 steps per model and corpus) about 4,700 CPU seconds, about 2.5 hours of wall clock on
# a machine shared with another job.
FULL = Plan(name="full", dim=128, num_blocks=8, seq_len=256, batch_size=16, steps=200,
            lrs=(1e-3, 3e-3, 1e-2), sweep_steps=50, curve_points=10, curve_windows=64,
            final_windows=512, seeds=3)
# About 0.26M parameters, 61k tokens per run, a two-point sweep: about 3 minutes in all.
QUICK = Plan(name="quick", dim=64, num_blocks=8, seq_len=128, batch_size=8, steps=60, lrs=(3e-3, 1e-2),
             sweep_steps=20, curve_points=4, curve_windows=16, final_windows=64, seeds=1)


# --------------------------------------------------------------------------------------------------
# Models


Factory = Callable[[], torch.nn.Module]


def model_factories(plan: Plan, vocab_size: int = VOCAB) -> dict[str, tuple[Factory, int, str]]:
    """``{model name: (factory, parameter count, shape)}`` of the four models at ``plan``'s size.

    The baselines are sized to ``xlstm[1:0]``'s count by ``matched_config``; raises ``ValueError`` when a
    model misses it by more than ``TOLERANCE``.
    """
    from xlram.baselines import LSTMLM, TransformerLM, count_params, matched_config
    from xlram.models.registry import create_model

    xl = {"vocab_size": vocab_size, "embedding_dim": plan.dim, "num_blocks": plan.num_blocks,
          "tie_weights": True}
    target = create_model("lm-xlstm[1:0]-tiny", **xl).num_params()
    m71 = create_model("lm-xlstm[7:1]-tiny", **xl)
    n71, slstm = m71.num_params(), m71.config.xlstm.slstm_indices
    # The xLSTM's width and 4 heads where a depth matches the count, else the width is searched too; the
    # SwiGLU size is rounded to 64 as the xLSTM's feed-forwards.
    kw = {"ffn_round_to": 64, "tie_weights": True, "tolerance": TOLERANCE}
    head_dim = max(2, plan.dim // 4)
    try:
        tcfg = matched_config(target, "transformer", vocab_size, dim=plan.dim, head_dim=head_dim, **kw)
    except ValueError:
        tcfg = matched_config(target, "transformer", vocab_size, head_dim=head_dim, aspect=32, **kw)
    lcfg = matched_config(target, "lstm", vocab_size, tie_weights=True, tolerance=TOLERANCE)
    t = tcfg.transformer
    out = {
        "xlstm[1:0]": (lambda: create_model("lm-xlstm[1:0]-tiny", **xl), target,
                       f"D{plan.dim}, {plan.num_blocks} mLSTM blocks"),
        "xlstm[7:1]": (lambda: create_model("lm-xlstm[7:1]-tiny", **xl), n71,
                       f"D{plan.dim}, {plan.num_blocks} blocks, sLSTM at {slstm}"),
        "transformer": (lambda: TransformerLM(tcfg), count_params(tcfg),
                        f"D{t.dim}, {t.num_layers} layers, {t.num_heads} heads"),
        "lstm": (lambda: LSTMLM(lcfg), count_params(lcfg), f"D{lcfg.dim}, {lcfg.num_layers} layers"),
    }
    for name, (_, n, _) in out.items():
        if abs(n - target) / target > TOLERANCE:
            raise ValueError(f"bench lm: {name} has {n} parameters, more than {TOLERANCE:.0%} away from "
                             f"xlstm[1:0]'s {target}")
    return out


# --------------------------------------------------------------------------------------------------
# One run


def train_run(factory: Factory, corpus, plan: Plan, *, seed: int, lr: float, steps: int, curve: bool = True,
              device: str = "cpu", work_dir: str | Path | None = None) -> dict:
    """Train one model with the engine and evaluate it; returns the run's record (JSON-able).

    ``corpus`` is a :class:`~xlram.data.text.ByteCorpus`. With ``curve`` the engine evaluates
    ``curve_points`` times on ``curve_windows`` windows and the final ``val_bpb`` is on ``final_windows``
    windows; without (the sweep), there is no learning curve and the final evaluation takes a quarter of
    ``final_windows``. A diverging run (non-finite loss) is recorded with ``diverged: true`` and a NaN
    ``val_bpb``.
    """
    from xlram.train.config import TrainConfig
    from xlram.train.engine import Trainer
    from xlram.train.tasks import LMTask

    torch.manual_seed(seed)  # the initial weights
    model = factory()
    task = LMTask(corpus, seq_len=plan.seq_len, eval_windows=plan.curve_windows if curve else 0)
    final_windows = plan.final_windows if curve else max(1, plan.final_windows // 4)
    final_task = LMTask(corpus, seq_len=plan.seq_len, eval_windows=final_windows)
    tmp = Path(tempfile.mkdtemp(prefix="run-", dir=work_dir))
    config = TrainConfig(max_steps=steps, batch_size=plan.batch_size, lr=lr, warmup_steps=max(1, steps // 10),
                         min_lr_ratio=0.1, weight_decay=0.1, clip_grad_norm=1.0, seed=seed,
                         strategy="single", device=device, out_dir=str(tmp), ckpt_every=0, keep_last=1,
                         eval_every=max(1, steps // plan.curve_points) if curve else 0, progress=False,
                         tensorboard=False)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    diverged = False
    try:
        trainer = Trainer(model, task, config)
        try:
            trainer.fit()
        except FloatingPointError:
            diverged = True
        finally:
            trainer.close()
        final = None if diverged else final_task.evaluate(trainer.raw_model)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tokens_per_step = plan.batch_size * plan.seq_len
    last = trainer.history[-max(1, len(trainer.history) // 10):]
    return {
        "val_bpb": final["val_bpb"] if final else float("nan"),
        "train_bpb": statistics.fmean(r["bpb"] for r in last) if last else float("nan"),
        "diverged": diverged,
        "steps": trainer.step,
        "tokens": trainer.step * tokens_per_step,
        "params": sum(p.numel() for p in model.parameters()),
        "curve": [{"step": e["step"], "tokens": e["step"] * tokens_per_step, "val_bpb": e["val_bpb"]}
                  for e in trainer.eval_history],
        "wall_s": round(time.perf_counter() - wall0, 1),
        "cpu_s": round(time.process_time() - cpu0, 1),
    }


# --------------------------------------------------------------------------------------------------
# The suite


def _slug(model: str) -> str:
    return model.replace("[", "-").replace(":", "-").replace("]", "")


def _plan_key(plan: Plan) -> dict:
    return json.loads(json.dumps(asdict(plan)))


class _Store:
    """Finished runs as JSON files under ``root``; a record counts only if its key matches."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, corpus: str, name: str) -> Path:
        return self.root / corpus / f"{name}.json"

    def get(self, corpus: str, name: str, key: dict) -> dict | None:
        path = self.path(corpus, name)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return record if record.get("key") == key else None

    def put(self, corpus: str, name: str, record: dict) -> None:
        atomic_write_text(self.path(corpus, name), json.dumps(record, indent=1))


def run_plan(plan: Plan, out_dir: str | Path, *, seeds: int | None = None, corpora: Sequence[str] = CORPORA,
             models: Sequence[str] = MODELS, device: str = "cpu",
             load: Callable[[str], object] | None = None, log=None) -> list[dict]:
    """Run (or resume) the suite at ``plan``'s size; returns the rows. ``load(name)`` gives a corpus
    (default: ``xlram.data.text.load_corpus``); ``log(line)`` gets the progress lines (default: stderr)."""
    from xlram.data.text import load_corpus

    load = load or load_corpus
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    seeds = plan.seeds if seeds is None else seeds
    if seeds < 1:
        raise ValueError(f"bench lm: seeds must be >= 1, got {seeds}")
    if not plan.sweep_steps and len(plan.lrs) != 1:
        raise ValueError(f"bench lm: plan {plan.name!r} has no sweep (sweep_steps=0) but {len(plan.lrs)} lrs")
    out_dir = Path(out_dir)
    store = _Store(out_dir / "lm_runs" / plan.name)
    work = out_dir / "lm_runs" / "tmp"
    work.mkdir(parents=True, exist_ok=True)
    factories = model_factories(plan)
    plan_key = _plan_key(plan)
    sweeping = bool(plan.sweep_steps) and len(plan.lrs) > 1
    total = len(corpora) * len(models) * (seeds + (len(plan.lrs) if sweeping else 0))
    done = 0
    records: list[dict] = []  # finished seed runs
    sweeps: list[dict] = []
    chosen: dict[tuple[str, str], float] = {}
    loaded: dict[str, object] = {}

    def run_one(kind: str, corpus: str, model: str, seed: int, lr: float, steps: int) -> dict:
        nonlocal done
        if corpus not in loaded:
            loaded[corpus] = load(corpus)
        source = loaded[corpus].source
        key = {"plan": plan_key, "model": model, "corpus": corpus, "seed": seed, "lr": lr, "steps": steps,
               "source": source}
        name = f"sweep-{_slug(model)}-lr{lr:g}" if kind == "sweep" else f"{_slug(model)}-seed{seed}"
        done += 1
        tag = f"[lm {done}/{total}] {kind} {corpus} {model} seed {seed} lr {lr:g}"
        record = store.get(corpus, name, key)
        if record is not None:
            log(f"{tag}: done earlier, val_bpb {record['val_bpb']:.4f}")
            return record
        result = train_run(factories[model][0], loaded[corpus], plan, seed=seed, lr=lr, steps=steps,
                           curve=kind == "seed", device=device, work_dir=work)
        record = {"key": key, "kind": kind, "model": model, "corpus": corpus, "seed": seed, "lr": lr,
                  **result, "load": load_average()}
        store.put(corpus, name, record)
        note = " DIVERGED" if result["diverged"] else ""
        log(f"{tag}: val_bpb {result['val_bpb']:.4f}{note} ({result['tokens']} tokens, "
            f"{result['wall_s']:.0f} s wall, {result['cpu_s']:.0f} s CPU)")
        return record

    # Seed 0 on every corpus first (each corpus's sweep just before it), then the other seeds: a run
    # stopped part-way has the comparison on every corpus at one seed before the repeats.
    for seed in range(seeds):
        for corpus in corpora:
            if seed == 0:
                for model in models:
                    if sweeping:
                        tried = [run_one("sweep", corpus, model, SWEEP_SEED, lr, plan.sweep_steps)
                                 for lr in plan.lrs]
                        sweeps += tried
                        finite = [r for r in tried if not math.isnan(r["val_bpb"])]
                        best = min(finite or tried, key=lambda r: (r["val_bpb"], r["lr"]))
                        chosen[corpus, model] = best["lr"]
                    else:
                        chosen[corpus, model] = plan.lrs[0]
            for model in models:
                records.append(run_one("seed", corpus, model, seed, chosen[corpus, model], plan.steps))
                write_report(plan, records, sweeps, chosen, out_dir, factories)
    shutil.rmtree(work, ignore_errors=True)
    rows = make_rows(plan, records, sweeps, chosen)
    _plot(records, out_dir, plan)
    return rows


def run(args) -> list[dict]:
    setup_threads()
    plan = QUICK if getattr(args, "quick", False) else FULL
    return run_plan(plan, getattr(args, "out", "results"), seeds=getattr(args, "seeds", None),
                    device=getattr(args, "device", "cpu") or "cpu")


# --------------------------------------------------------------------------------------------------
# Rows, tables, plot


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _summary(records: list[dict]) -> dict[tuple[str, str], dict]:
    """Per (corpus, model): mean, std, per-seed values, lr, params, tokens, mean wall seconds."""
    out: dict[tuple[str, str], dict] = {}
    for r in records:
        s = out.setdefault((r["corpus"], r["model"]), {"by_seed": {}, "lr": r["lr"], "params": r["params"],
                                                        "tokens": r["tokens"], "wall": [], "cpu": []})
        s["by_seed"][r["seed"]] = r["val_bpb"]
        s["wall"].append(r["wall_s"])
        s["cpu"].append(r["cpu_s"])
    for s in out.values():
        s["mean"], s["std"] = _mean_std(list(s["by_seed"].values()))
    return out


def make_rows(plan: Plan, records: list[dict], sweeps: list[dict], chosen: dict) -> list[dict]:
    rows = []
    for r in records:
        rows.append({"metric": "val_bpb", "model": r["model"], "corpus": r["corpus"], "seed": r["seed"],
                     "value": round(r["val_bpb"], 4), "train_bpb": round(r["train_bpb"], 4),
                     "params": r["params"], "tokens": r["tokens"], "lr": r["lr"], "wall_s": r["wall_s"],
                     "cpu_s": r["cpu_s"], "plan": plan.name})
    summary = _summary(records)
    for corpus in dict.fromkeys(c for c, _ in summary):
        ranked = sorted((s["mean"], m) for (c, m), s in summary.items() if c == corpus)
        for rank, (_, model) in enumerate(ranked, 1):
            s = summary[corpus, model]
            rows.append({"metric": "val_bpb_mean", "model": model, "corpus": corpus,
                         "value": round(s["mean"], 4), "std": round(s["std"], 4),
                         "n_seeds": len(s["by_seed"]), "rank": rank, "params": s["params"],
                         "tokens": s["tokens"], "lr": s["lr"], "cpu_s": round(statistics.fmean(s["cpu"]), 1),
                         "wall_s": round(statistics.fmean(s["wall"]), 1), "plan": plan.name})
        for x in XLSTMS:
            for b in BASELINES:
                if (corpus, x) not in summary or (corpus, b) not in summary:
                    continue
                sx, sb = summary[corpus, x], summary[corpus, b]
                common = sorted(set(sx["by_seed"]) & set(sb["by_seed"]))
                wins = sum(sx["by_seed"][k] < sb["by_seed"][k] for k in common)
                rows.append({"metric": "bpb_gap", "model": x, "vs": b, "corpus": corpus,
                             "value": round(sb["mean"] - sx["mean"], 4), "wins": wins, "n_seeds": len(common),
                             "plan": plan.name})
    for (corpus, model), points in _curves(records).items():
        for tokens, (step, values) in sorted(points.items()):
            mean, std = _mean_std(values)
            rows.append({"metric": "val_bpb_curve", "model": model, "corpus": corpus, "tokens": tokens,
                         "step": step, "value": round(mean, 4), "std": round(std, 4), "n_seeds": len(values),
                         "plan": plan.name})
    for r in sweeps:
        rows.append({"metric": "sweep_val_bpb", "model": r["model"], "corpus": r["corpus"], "lr": r["lr"],
                     "seed": r["seed"], "value": round(r["val_bpb"], 4), "tokens": r["tokens"],
                     "chosen": chosen.get((r["corpus"], r["model"])) == r["lr"], "plan": plan.name})
    return rows


def _curves(records: list[dict]) -> dict[tuple[str, str], dict[int, tuple[int, list[float]]]]:
    out: dict = {}
    for r in records:
        points = out.setdefault((r["corpus"], r["model"]), {})
        for p in r["curve"]:
            points.setdefault(p["tokens"], (p["step"], []))[1].append(p["val_bpb"])
    return out


def write_report(plan: Plan, records: list[dict], sweeps: list[dict], chosen: dict, out_dir: Path,
                 factories: dict) -> Path:
    """``out_dir/lm.md``: mean ± std per (corpus, model), per-seed figures, the sweep; written atomically."""
    summary = _summary(records)
    shape = {name: f[2] for name, f in factories.items()}
    lines = [f"# xlram bench lm ({plan.name}): validation bits per byte", "",
             f"{plan.tokens:,} training tokens per run ({plan.steps} steps of {plan.batch_size} x "
             f"{plan.seq_len} bytes), val bpb on {plan.final_windows} fixed windows of {plan.seq_len} bytes; "
             f"lr sweep {', '.join(f'{lr:g}' for lr in plan.lrs)}"
             + (f" ({plan.sweep_steps} steps, seed {SWEEP_SEED})" if len(plan.lrs) > 1 else "") + ".", ""]
    for corpus in dict.fromkeys(r["corpus"] for r in records):
        lines += [f"## {corpus}", "", "| model | shape | params | lr | val bpb (mean ± std) | per seed | "
                  "CPU s / run | wall s / run |", "|---|---|---|---|---|---|---|---|"]
        for model in sorted((m for c, m in summary if c == corpus), key=lambda m: summary[corpus, m]["mean"]):
            s = summary[corpus, model]
            per_seed = ", ".join(f"{s['by_seed'][k]:.4f}" for k in sorted(s["by_seed"]))
            lines.append(f"| {model} | {shape[model]} | {s['params']:,} | {s['lr']:g} | {s['mean']:.4f} ± "
                         f"{s['std']:.4f} | {per_seed} | {statistics.fmean(s['cpu']):.0f} | "
                         f"{statistics.fmean(s['wall']):.0f} |")
        lines.append("")
        for x in XLSTMS:
            parts = []
            for b in BASELINES:
                if (corpus, x) in summary and (corpus, b) in summary:
                    sx, sb = summary[corpus, x]["by_seed"], summary[corpus, b]["by_seed"]
                    common = sorted(set(sx) & set(sb))
                    wins = sum(sx[k] < sb[k] for k in common)
                    gap = summary[corpus, b]["mean"] - summary[corpus, x]["mean"]
                    parts.append(f"below {b} in {wins}/{len(common)} seeds (mean gap {gap:+.4f} bpb)")
            if parts:
                lines.append(f"- {x}: " + "; ".join(parts))
        lines.append("")
    if sweeps:
        lines += ["## learning-rate sweep (val bpb)", "", "| corpus | model | "
                  + " | ".join(f"lr {lr:g}" for lr in plan.lrs) + " | chosen |",
                  "|---|---|" + "---|" * (len(plan.lrs) + 1)]
        by = {(r["corpus"], r["model"], r["lr"]): r["val_bpb"] for r in sweeps}
        for corpus, model in dict.fromkeys((r["corpus"], r["model"]) for r in sweeps):
            cells = [f"{by[corpus, model, lr]:.4f}" if (corpus, model, lr) in by else "" for lr in plan.lrs]
            lines.append(f"| {corpus} | {model} | " + " | ".join(cells)
                         + f" | {chosen.get((corpus, model), float('nan')):g} |")
        lines.append("")
    path = out_dir / "lm.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _plot(records: list[dict], out_dir: Path, plan: Plan):
    plt = pyplot()
    if plt is None or not records:
        return None
    curves = _curves(records)
    corpora = list(dict.fromkeys(r["corpus"] for r in records))
    fig, axes = plt.subplots(1, len(corpora), figsize=(5.5 * len(corpora), 4), squeeze=False)
    for ax, corpus in zip(axes[0], corpora, strict=True):
        for model in MODELS:
            points = curves.get((corpus, model))
            if not points:
                continue
            xs = sorted(points)
            stats = [_mean_std(points[x][1]) for x in xs]
            lows = [min(points[x][1]) for x in xs]
            highs = [max(points[x][1]) for x in xs]
            ax.plot([x / 1e6 for x in xs], [m for m, _ in stats], "o-", ms=3, label=model)
            ax.fill_between([x / 1e6 for x in xs], lows, highs, alpha=0.2)
        ax.set_xlabel("training tokens (millions of bytes)")
        ax.set_ylabel("validation bits per byte")
        ax.set_title(f"{corpus}: mean over seeds (band: min-max)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        finals = [_mean_std(pts[max(pts)][1])[0] for (c, _), pts in curves.items() if c == corpus]
        if finals:  # the early, steep part would flatten the differences that matter
            ax.set_ylim(min(finals) - 0.1, max(finals) + 1.0)
    fig.suptitle(f"xlram bench lm ({plan.name}): matched-parameter byte-level LMs", fontsize=9)
    path = save_plot(fig, out_dir, "lm.png")
    plt.close(fig)
    return path

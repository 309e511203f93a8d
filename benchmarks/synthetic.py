"""Shared plumbing of the synthetic-task suites (``formal``, ``mqar``): models, one training run through
the engine, resumable per-run result files and the learning-rate selection.

A *run* is one (model, task, seed, learning rate) training job. Its result (test metrics, a thinned
learning curve, time, parameter count) is written to ``OUT/runs/SUITE/<key>.json`` atomically as soon as
it finishes; a later invocation with the same settings reads it instead of training again, so a long
full run can be stopped and restarted. A run file whose recorded settings differ from the current
ones is ignored and trained again. With ``XLRAM_BENCH_ONLY_FINISHED=1`` nothing is trained: the suite
reports the runs finished so far (e.g. while a long run goes on in another process).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from benchmarks.common import atomic_write_text

MODELS = ("xlstm[0:1]", "xlstm[1:0]", "xlstm[1:1]", "transformer", "lstm")
NO_CONV = "xlstm[1:0]-noconv"  # the ablation: mLSTM blocks without their causal conv


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model: its bench name, width, depth and heads.

    ``xlstm[a:b]``: 2-block stacks of the paper's NeurIPS blocks; the sLSTM block without conv and with
    normally initialised recurrent weights (the paper's formal-language setting, App. B.1.1).
    ``xlstm[1:0]-noconv``: mLSTM blocks whose causal conv is removed (``mlstm_conv_kernel_size=0``).
    ``transformer``: the Llama-style baseline (RMSNorm, RoPE, SwiGLU), ``heads`` heads.
    ``lstm``: a plain ``num_blocks``-layer LSTM of width ``dim``.
    """

    name: str
    dim: int
    num_blocks: int = 2
    heads: int = 4
    mlstm_heads: int = 4
    slstm_heads: int = 4
    tie: bool = False  # share the embedding with the output head (Zoology's and the paper's MQAR models)

    def build(self, vocab_size: int) -> torch.nn.Module:
        if self.name.startswith("xlstm["):
            from xlram.blocks import xlstm_config
            from xlram.models.lm import XLSTMLM, XLSTMLMConfig

            variant = self.name.removesuffix("-noconv")
            kw = dict(mlstm_num_heads=self.mlstm_heads, slstm_num_heads=self.slstm_heads,
                      slstm_conv_kernel_size=0, slstm_recurrent_init="standard")
            if self.name.endswith("-noconv"):
                kw["mlstm_conv_kernel_size"] = 0
            cfg = xlstm_config(variant, self.dim, self.num_blocks, **kw)
            return XLSTMLM(XLSTMLMConfig(vocab_size=vocab_size, xlstm=cfg, tie_weights=self.tie))
        if self.name == "transformer":
            from xlram.baselines import TransformerConfig, TransformerLM, TransformerLMConfig

            t = TransformerConfig(dim=self.dim, num_layers=self.num_blocks, num_heads=self.heads)
            lm = TransformerLMConfig(vocab_size=vocab_size, transformer=t, tie_weights=self.tie)
            return TransformerLM(lm)
        if self.name == "lstm":
            from xlram.baselines import LSTMLM, LSTMLMConfig

            return LSTMLM(LSTMLMConfig(vocab_size=vocab_size, dim=self.dim, num_layers=self.num_blocks,
                                       tie_weights=self.tie))
        raise ValueError(f"unknown model {self.name!r}; expected one of {(*MODELS, NO_CONV)}")


@dataclass(frozen=True)
class RunSpec:
    """One training run: what is trained on what, and how. Everything here enters the result file."""

    suite: str
    model: ModelSpec
    task: str  # a formal-language name or an MQAR setting name
    seed: int
    lr: float
    steps: int
    batch_size: int
    warmup_frac: float = 0.1
    min_lr: float = 1e-5
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    clip: float = 1.0
    eval_every: int = 0
    task_kwargs: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.model.name)
        return f"{self.task}__{name}__seed{self.seed}__lr{self.lr:g}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        """Inverse of :meth:`to_dict`; fields added since a file was written take their defaults."""
        d = dict(d)
        d["model"] = ModelSpec(**d["model"])
        d["betas"] = tuple(d["betas"])
        return cls(**d)


def run_path(out_dir: str | Path, spec: RunSpec) -> Path:
    return Path(out_dir) / "runs" / spec.suite / f"{spec.key}.json"


def load_finished(out_dir: str | Path, spec: RunSpec) -> dict | None:
    """The stored result of ``spec`` when it exists and was made with the same settings, else None."""
    path = run_path(out_dir, spec)
    try:
        result = json.loads(path.read_text())
        stored = RunSpec.from_dict(result["spec"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return result if stored == spec else None


def train_run(spec: RunSpec, task, *, device: str = "cpu", curve_points: int = 50) -> dict:
    """Train ``spec.model`` on ``task`` (an engine Task) with AdamW, warm-up and cosine decay; return the
    final evaluation, the learning curve (train loss/accuracy, every evaluation), time and size."""
    from xlram.train import TrainConfig, Trainer

    torch.manual_seed(spec.seed)
    model = spec.model.build(task.vocab_size)
    params = sum(p.numel() for p in model.parameters())
    tmp = tempfile.mkdtemp(prefix="xlram-bench-")
    try:
        cfg = TrainConfig(max_steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr,
                          warmup_steps=int(spec.warmup_frac * spec.steps),
                          min_lr_ratio=min(1.0, spec.min_lr / spec.lr), weight_decay=spec.weight_decay,
                          betas=spec.betas, clip_grad_norm=spec.clip, seed=spec.seed, device=device,
                          strategy="single", out_dir=tmp, ckpt_every=0, keep_last=1,
                          eval_every=spec.eval_every, progress=False, tensorboard=False)
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        with Trainer(model, task, cfg) as trainer:
            history = trainer.fit()
            evals = list(trainer.eval_history)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    every = max(1, len(history) // curve_points)
    window = max(1, every)
    curve = []
    for end in range(every, len(history) + 1, every):  # means over windows, not single noisy steps
        chunk = history[end - window:end]
        curve.append({"step": chunk[-1]["step"],
                      "loss": sum(r["loss"] for r in chunk) / len(chunk),
                      "accuracy": sum(r.get("accuracy", float("nan")) for r in chunk) / len(chunk)})
    final = dict(evals[-1]) if evals else {}
    final.pop("step", None)
    return {"final": final, "evals": evals, "curve": curve, "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu_seconds, 1), "params": params,
            "ms_per_step": round(1e3 * seconds / max(1, len(history)), 1),
            "details": getattr(task, "last_eval", None)}


ENV_ONLY_FINISHED = "XLRAM_BENCH_ONLY_FINISHED"


def run_all(specs: list[RunSpec], make_task: Callable[[RunSpec], object], out_dir: str | Path, *,
            device: str = "cpu", log: Callable[[str], None] = print) -> list[dict]:
    """Run every spec (or read its stored result), one progress line each; return the results in order."""
    results = []
    total = len(specs)
    only_finished = os.environ.get(ENV_ONLY_FINISHED, "") not in ("", "0")
    for i, spec in enumerate(specs, 1):
        label = f"[{i}/{total}] {spec.task} {spec.model.name} seed={spec.seed} lr={spec.lr:g}"
        result = load_finished(out_dir, spec)
        if result is not None:
            log(f"{label}: done before ({_summary(result)})")
        elif only_finished:
            log(f"{label}: not run yet, left out ({ENV_ONLY_FINISHED} is set)")
            continue
        else:
            result = {"spec": spec.to_dict(), **train_run(spec, make_task(spec), device=device)}
            atomic_write_text(run_path(out_dir, spec), json.dumps(result, indent=1))
            log(f"{label}: {_summary(result)}, {result['seconds']:.0f}s, {spec.steps} steps")
        results.append(result)
    return results


def _summary(result: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in result["final"].items() if isinstance(v, float))


def pick_lr(results: list[dict], metric: str) -> dict[tuple[str, str], float]:
    """Per (task, model): the learning rate with the best mean ``final[metric]`` over its seeds (the
    validation metric; ties go to the smaller learning rate)."""
    scores: dict[tuple[str, str, float], list[float]] = {}
    for r in results:
        s = r["spec"]
        scores.setdefault((s["task"], s["model"]["name"], s["lr"]), []).append(r["final"].get(metric, -1.0))
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for (task, model, lr), vals in sorted(scores.items(), key=lambda kv: kv[0][2]):
        mean = sum(vals) / len(vals)
        if (task, model) not in best or mean > best[(task, model)][1] + 1e-9:
            best[(task, model)] = (lr, mean)
    return {k: v[0] for k, v in best.items()}


def lrs_of(p: dict, model: str) -> tuple[float, ...]:
    """The learning rates the plan ``p`` sweeps for ``model``: ``p["lrs_by_model"][model]`` where given,
    else ``p["lrs"]``."""
    return tuple(p.get("lrs_by_model", {}).get(model, p["lrs"]))


def sweep_then_seeds(p: dict, make_spec: Callable[[str, str, int, float], RunSpec],
                     make_task: Callable[[RunSpec], object], out_dir, *, device: str = "cpu",
                     log: Callable[[str], None] = print) -> tuple[list[dict], dict]:
    """The plan ``p`` (``tasks``, ``models``, ``seeds``, ``lrs``, optional ``lrs_by_model``): on the first
    seed every rate of a model (:func:`lrs_of`) is trained and, where there are several, the one with the
    best ``val_accuracy`` is chosen per (task, model); the other seeds train at the chosen rate only.
    Returns ``(results at the chosen rates, {"sweep": seed-0 results, "chosen": ...})``.
    """
    first, rest = p["seeds"][0], p["seeds"][1:]
    sweep_specs = [make_spec(t, m, first, lr) for t in p["tasks"] for m in p["models"] for lr in lrs_of(p, m)]
    sweep = run_all(sweep_specs, make_task, out_dir, device=device, log=log)
    swept = [r for r in sweep if len(lrs_of(p, r["spec"]["model"]["name"])) > 1]
    chosen = pick_lr(swept, "val_accuracy")
    chosen.update({(t, m): lrs_of(p, m)[0] for t in p["tasks"] for m in p["models"]
                   if len(lrs_of(p, m)) == 1})
    more = [make_spec(t, m, s, chosen[(t, m)]) for t in p["tasks"] for m in p["models"] for s in rest
            if (t, m) in chosen]  # a pair is missing only when its sweep was left out (ONLY_FINISHED)
    results = [r for r in sweep if r["spec"]["lr"] == chosen[(r["spec"]["task"], r["spec"]["model"]["name"])]]
    results += run_all(more, make_task, out_dir, device=device, log=log)
    return results, {"sweep": sweep, "chosen": chosen}


def env_list(name: str, default, cast=str) -> tuple:
    """A comma-separated override from environment variable ``name`` (items cast), else ``default``."""
    raw = os.environ.get(name)
    return tuple(cast(x) for x in raw.split(",") if x.strip()) if raw else tuple(default)


def sweep_rows(sweep: dict) -> list[dict]:
    """``val_accuracy`` rows of a :func:`sweep_then_seeds` sweep, one per seed-0 run that has one;
    ``chosen`` marks the rate kept for its (task, model)."""
    rows = []
    for r in sweep["sweep"]:
        s = r["spec"]
        if "val_accuracy" in r["final"]:
            key = (s["task"], s["model"]["name"])
            rows.append({"metric": "val_accuracy", "model": key[1], "task": key[0], "seed": s["seed"],
                         "lr": s["lr"], "value": round(r["final"]["val_accuracy"], 4),
                         "chosen": sweep["chosen"][key] == s["lr"]})
    return rows


def mean_table(rows: list[dict], metric: str, cell: Callable[[dict], str]) -> str:
    """Markdown table of the ``seed: "mean"`` rows of ``metric``: models as rows, tasks as columns,
    each cell ``cell(row)``."""
    means = {(r["model"], r["task"]): r for r in rows if r["metric"] == metric and r["seed"] == "mean"}
    models = list(dict.fromkeys(m for m, _ in means))
    tasks = list(dict.fromkeys(t for _, t in means))
    lines = ["| model | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for m in models:
        cells = ["" if (m, t) not in means else cell(means[(m, t)]) for t in tasks]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seeds_from(args, default: int) -> list[int]:
    n = getattr(args, "seeds", None) or default
    if n < 1:
        raise ValueError(f"--seeds must be >= 1, got {n}")
    return list(range(n))

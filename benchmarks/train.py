"""`xlram bench train`: training throughput and peak memory of one language model, xlram against the
official package on the same weights, side by side in one run.

The model is the issue's anchor, a 3.5M-parameter xLSTM[7:1] (see ``benchmarks/step.py``). One
training step = forward over ``batch`` sequences of ``context`` tokens, next-token cross-entropy,
backward, AdamW update; both implementations run the same step on the same batch.

Rows:

- ``tokens_per_s`` (``value`` by CPU time, ``wall_tokens_per_s`` by the wall clock) at the issue's
  contexts: 256 (batch 8), 1024 (batch 2), 4096 (batch 1; official only in a full run, where one of its
  steps takes about a minute); ``speedup`` = xlram / official.
- ``peak_mem_mb``: the peak resident memory one training step adds, measured in a fresh subprocess per
  (implementation, context) at batch 1, after one warm-up step on 16 tokens (the high-water mark
  ``VmHWM`` after the step minus the resident size before it); xlram at 256..4096 (16,384 in a full
  run), the official up to 2048 (4096 in a full run).
  ``mb_per_1k_tokens`` = peak / context, flat for linear growth, and the rows' ``growth`` = the
  log-log slope of peak memory over context (1 = linear, 2 = quadratic).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

from benchmarks.limits import (
    limit_rows,
    load_average,
    machine_limits,
    measure,
    med,
    pyplot,
    save_plot,
    setup_threads,
    stamp,
)
from benchmarks.step import MODEL, OFFICIAL, official_lm, xlram_lm

VOCAB = 256


def _train_step(model, opt, ids, official: bool):
    out = model(ids[:, :-1])
    logits = out if official else out[0]
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def _pair(context: int, with_official: bool, seed: int = 0):
    off = official_lm(context, seed) if with_official else None
    ours = xlram_lm(off if off is not None else official_lm(context, seed), seed)
    models = {"xlram": ours}
    if off is not None:
        models[OFFICIAL] = off
    return {name: (m.train(), torch.optim.AdamW(m.parameters(), lr=1e-4)) for name, m in models.items()}


def _stepper(model, opt, ids, official: bool):
    return lambda: _train_step(model, opt, ids, official)


def _throughput_rows(settings, repeats):
    rows = []
    for context, batch, with_official in settings:
        pair = _pair(context, with_official)
        ids = torch.randint(0, VOCAB, (batch, context + 1), generator=torch.Generator().manual_seed(context))
        fns = {name: _stepper(m, o, ids, name == OFFICIAL) for name, (m, o) in pair.items()}
        reps = repeats if (context <= 1024 or OFFICIAL not in fns) else 2
        t = measure(fns, repeats=reps, warmup=1)
        tokens = batch * context
        base = t.get(OFFICIAL)
        for impl, ti in t.items():
            row = {"metric": "tokens_per_s", "model": MODEL, "impl": impl, "context": context, "batch": batch,
                   "value": round(tokens / (med(ti["cpu_ms"]) * 1e-3), 1),
                   "wall_tokens_per_s": round(tokens / (med(ti["wall_ms"]) * 1e-3), 1),
                   "ms": round(med(ti["cpu_ms"]), 1), "repeats": reps}
            if impl != OFFICIAL and base is not None:
                row["speedup"] = round(med(base["cpu_ms"]) / med(ti["cpu_ms"]), 2)
                row["speedup_wall"] = round(med(base["wall_ms"]) / med(ti["wall_ms"]), 2)
            rows.append(row)
        del pair
    return rows


def _peak_memory_child(impl: str, context: int, batch: int) -> dict:
    """Run in a fresh process: one training step (no warm-up); the peak resident memory it added, MB."""
    setup_threads()
    pair = _pair(context, impl == OFFICIAL)
    model, opt = pair[impl]
    ids = torch.randint(0, VOCAB, (batch, context + 1), generator=torch.Generator().manual_seed(0))
    # One step on 16 tokens first: it loads what any step loads once (numba's compiled kernels, ~150 MB
    # of JIT memory; the optimiser's moments), so that the measured step adds only what grows with
    # the context.
    _train_step(model, opt, ids[:, :17], impl == OFFICIAL)
    rss_before = _status_kb("VmRSS")
    try:  # reset the high-water mark to the current size (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    _train_step(model, opt, ids, impl == OFFICIAL)
    # VmHWM, not ru_maxrss: the latter keeps the parent's size at fork across the exec.
    return {"peak_mb": (_status_kb("VmHWM") - rss_before) / 1024}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _peak_memory_rows(plan, batch=1):
    rows = []
    for impl, contexts in plan.items():
        points = []
        for context in contexts:
            cmd = [sys.executable, "-c",
                   "import json, sys; from benchmarks.train import _peak_memory_child as f; "
                   f"print(json.dumps(f({impl!r}, {context}, {batch})))"]
            env = {**os.environ, "PYTHONWARNINGS": "ignore"}
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
            row = {"metric": "peak_mem_mb", "model": MODEL, "impl": impl, "context": context, "batch": batch}
            if res.returncode != 0:
                err = (res.stderr.strip().splitlines() or ["?"])[-1][:120]
                rows.append({**row, "value": float("nan"), "error": err})
                continue
            mb = json.loads(res.stdout.strip().splitlines()[-1])["peak_mb"]
            points.append((context, mb))
            rows.append({**row, "value": round(mb, 1), "mb_per_1k_tokens": round(mb / context * 1000, 2)})
        if len(points) >= 2:
            (c0, m0), (c1, m1) = points[-2], points[-1]
            slope = math.log(max(m1, 1e-3) / max(m0, 1e-3)) / math.log(c1 / c0)
            for r in rows:
                if r["impl"] == impl and r["metric"] == "peak_mem_mb":
                    r["growth"] = round(slope, 2)
    return rows


def _plot(rows, limits, out_dir):
    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, ylabel in ((axes[0], "tokens_per_s", "training tokens/s (CPU time)"),
                               (axes[1], "peak_mem_mb", "peak memory of one step, batch 1 (MB)")):
        sel = [r for r in rows if r["metric"] == metric and r["value"] == r["value"]]
        for impl in dict.fromkeys(r["impl"] for r in sel):
            pts = sorted((r["context"], r["value"]) for r in sel if r["impl"] == impl)
            ax.plot(*zip(*pts, strict=True), "o-", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title(f"{MODEL} LM, 3.5M params: training step")
    axes[1].set_title("memory against context (log-log: slope 1 linear, 2 quadratic)")
    fig.suptitle(f"{limits['threads']} thread(s), load {limits['load_avg_1m']}", fontsize=9)
    path = save_plot(fig, out_dir, "train.png")
    plt.close(fig)
    return path


def run(args) -> list[dict]:
    setup_threads()
    quick = bool(getattr(args, "quick", False))
    load0 = load_average()
    limits = machine_limits(quick)
    have_official = official_lm(16) is not None
    settings = [(256, 8, have_official), (1024, 2, have_official), (4096, 1, have_official and not quick)]
    rows = _throughput_rows(settings, 3 if quick else 5)
    plan = {"xlram": [256, 1024, 4096] if quick else [256, 1024, 4096, 16384]}
    if have_official:
        plan[OFFICIAL] = [256, 512, 1024, 2048] if quick else [256, 512, 1024, 2048, 4096]
    rows += _peak_memory_rows(plan)
    rows += limit_rows(limits)
    stamp(rows, load0, limits["threads"])
    _plot(rows, limits, getattr(args, "out", "results"))
    return rows

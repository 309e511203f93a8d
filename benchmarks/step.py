"""`xlram bench step`: generation step and prefill of one language model, xlram against the official
package on the same weights, side by side in one run.

The model is the issue's anchor: a 3.5M-parameter xLSTM[7:1] (``xlstm-2.0.6`` ``xLSTMLMModel``: width
256, 8 blocks, sLSTM at block 1, 4 heads, vocab 256, ``backend="vanilla"``), seeded; xlram's model is
``xlram.interop.from_official_xlstm`` of it, so both compute the same logits from the same weights.

Rows (``value`` = median CPU milliseconds, ``wall_ms`` the same by the wall clock):

- ``ms_per_step`` at batch 1 and 16 for ``xlstm-2.0.6`` (``model.step``, one token per call),
  ``xlram`` (``model.step`` under ``no_grad``, the default inference path ``xlram.fused_step``: one
  numba call per block, the projections as ``cpu_blas`` matmuls from batch 8; it covers this model at both
  batches), ``xlram-torch``
  (the same with ``stack.fused_step = False``: the in-place torch step) and ``xlram-compiled`` (the
  torch step after ``model.stack.compile_step()``); ``speedup`` = official / xlram. ``bound_ms`` is the
  memory bound of a step: the weights read once (all but the embedding table) plus the recurrent
  state read and written once, at the copy bandwidth measured in this run (or the FLOPs at the matmul
  peak, if larger); ``of_bound`` = bound_ms / ms. ``compile_s``: the first call's time (torch.compile;
  numba's compile, or its cache load).
- ``max_abs_diff``: logits of the xlram paths against the official after the same steps.
- ``tokens_per_s`` of a prefill (forward, no grad, batch 1): xlram in chunkwise form up to 16,384
  tokens, the official forward (its quadratic parallel form) up to 1,024 (4,096 in a full run).
"""

from __future__ import annotations

import time

import torch

from benchmarks.limits import (
    limit_rows,
    load_average,
    machine_limits,
    measure,
    med,
    pyplot,
    save_plot,
    setup_threads,
    spread,
    stamp,
)

OFFICIAL = "xlstm-2.0.6"
MODEL = "xlstm[7:1]"


def official_lm(context_length: int, seed: int = 0):
    """The issue's anchor model, built by the official package (None if it is not installed)."""
    try:
        from xlstm import (
            FeedForwardConfig,
            mLSTMBlockConfig,
            mLSTMLayerConfig,
            sLSTMBlockConfig,
            sLSTMLayerConfig,
            xLSTMLMModel,
            xLSTMLMModelConfig,
        )
    except ImportError:
        return None
    cfg = xLSTMLMModelConfig(
        mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(
            num_heads=4, conv1d_kernel_size=4, qkv_proj_blocksize=4, proj_factor=2.0)),
        slstm_block=sLSTMBlockConfig(
            slstm=sLSTMLayerConfig(backend="vanilla", num_heads=4, conv1d_kernel_size=4,
                                   bias_init="powerlaw_blockdependent"),
            feedforward=FeedForwardConfig(proj_factor=1.3, act_fn="gelu")),
        context_length=context_length, num_blocks=8, embedding_dim=256, slstm_at=[1], vocab_size=256)
    torch.manual_seed(seed)
    model = xLSTMLMModel(cfg)
    model.reset_parameters()
    return model


def xlram_lm(official, seed: int = 0):
    """xlram's model with the official model's weights, or the same architecture freshly initialised."""
    if official is not None:
        from xlram.interop import from_official_xlstm

        return from_official_xlstm(official)
    from xlram.blocks import xlstm_config
    from xlram.models.lm import XLSTMLM, XLSTMLMConfig

    torch.manual_seed(seed)
    cfg = xlstm_config("xlstm[7:1]", 256, 8, slstm_at=[1])
    return XLSTMLM(XLSTMLMConfig(vocab_size=256, xlstm=cfg))


def _state_bytes(model, B: int) -> int:
    from xlram.blocks import _leaves

    return sum(t.numel() * t.element_size() for s in model.init_state(B) for t in _leaves(s))


def _step_case(off, impls: dict, B, repeats, limits):
    """Rows for one batch size: compile time, logits check, and the interleaved step timing.
    ``impls``: xlram's implementations by name (models with the official model's weights)."""
    rows = []
    ours = impls["xlram"]
    weight_bytes = sum(p.numel() * p.element_size() for n, p in ours.named_parameters()
                       if n != "embedding.weight")
    weight_bytes += ours.embedding.weight.shape[1] * 4  # one row of the table
    n_params = sum(p.numel() for p in ours.parameters())
    ids = torch.randint(0, 256, (B,), generator=torch.Generator().manual_seed(B))
    st, out = {}, {}

    def stepper(name, model):
        def f():
            out[name], st[name] = model.step(ids, st[name])
        return f

    def f_off():
        out[OFFICIAL], st[OFFICIAL] = off.step(ids[:, None], st[OFFICIAL])

    fns = {OFFICIAL: f_off} if off is not None else {}
    fns.update({name: stepper(name, m) for name, m in impls.items()})

    def reset():
        st.update({name: (None if name == OFFICIAL else impls[name].init_state(B)) for name in fns})

    with torch.no_grad():
        reset()
        for name in fns:  # the first call compiles (torch.compile, numba), timed on its own
            t0 = time.perf_counter()
            fns[name]()
            if name != OFFICIAL:
                rows.append({"metric": "compile_s", "model": MODEL, "impl": name, "batch": B,
                             "value": round(time.perf_counter() - t0, 2)})
        # The same steps from fresh states for the logits check, then the timing from wherever they are.
        reset()
        for _ in range(3):
            for fn in fns.values():
                fn()
        if off is not None:
            ref = out[OFFICIAL][:, 0]
            for name in impls:
                rows.append({"metric": "max_abs_diff", "model": MODEL, "impl": name, "batch": B,
                             "vs": OFFICIAL, "value": float((out[name] - ref).abs().max())})
        # Each round: 10 untimed steps, then 20 timed: a decode loop's steady state, where the model's
        # weights are in cache; right after another model's steps they are not (14 MB each, 32 MB L3).
        t = measure(fns, repeats=repeats, warmup=2, inner=20, settle=10)
    mem_bound = (weight_bytes + 2 * _state_bytes(ours, B)) / (limits["copy_gbs_cpu"] * 1e9) * 1e3
    flop_bound = 2 * n_params * B / (limits["gflops_cpu"] * 1e9) * 1e3
    bound = max(mem_bound, flop_bound)
    base = t.get(OFFICIAL)
    for impl, ti in t.items():
        row = {"metric": "ms_per_step", "model": MODEL, "impl": impl, "batch": B,
               "value": round(med(ti["cpu_ms"]), 3), "wall_ms": round(med(ti["wall_ms"]), 3),
               "spread": round(spread(ti["cpu_ms"]), 3)}
        if impl != OFFICIAL:
            row["bound_ms"] = round(bound, 3)
            row["of_bound"] = round(bound / med(ti["cpu_ms"]), 3)
            if base is not None:
                row["speedup"] = round(med(base["cpu_ms"]) / med(ti["cpu_ms"]), 2)
                row["speedup_wall"] = round(med(base["wall_ms"]) / med(ti["wall_ms"]), 2)
        rows.append(row)
    return rows


def _prefill_rows(ours, off_for, lengths_ours, lengths_off, repeats):
    rows = []
    with torch.no_grad():
        for S in sorted(set(lengths_ours) | set(lengths_off)):
            ids = torch.randint(0, 256, (1, S), generator=torch.Generator().manual_seed(S))
            fns = {}
            if S in lengths_ours:
                fns["xlram"] = lambda ids=ids: ours(ids)
            off = off_for(S) if S in lengths_off else None
            if off is not None:
                fns[OFFICIAL] = lambda ids=ids, off=off: off(ids)
            reps = repeats if S <= 4096 else max(2, repeats // 2)
            t = measure(fns, repeats=reps, warmup=1)
            for impl, ti in t.items():
                rows.append({"metric": "tokens_per_s", "what": "prefill", "model": MODEL, "impl": impl,
                             "batch": 1, "S": S, "value": round(S / (med(ti["cpu_ms"]) * 1e-3), 1),
                             "wall_tokens_per_s": round(S / (med(ti["wall_ms"]) * 1e-3), 1),
                             "spread": round(spread(ti["cpu_ms"]), 3)})
    return rows


def _plot(rows, limits, out_dir):
    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r for r in rows if r["metric"] == "ms_per_step"]
    batches = sorted({r["batch"] for r in steps})
    impls = list(dict.fromkeys(r["impl"] for r in steps))
    width = 0.8 / max(1, len(impls))
    ax = axes[0]
    for j, impl in enumerate(impls):
        vals = [next((r["value"] for r in steps if r["impl"] == impl and r["batch"] == b), 0)
                for b in batches]
        ax.bar([x + j * width for x in range(len(batches))], vals, width, label=impl)
    for x, b in enumerate(batches):
        bound = next((r["bound_ms"] for r in steps if r["batch"] == b and "bound_ms" in r), None)
        if bound:
            ax.hlines(bound, x - width / 2, x + len(impls) * width - width / 2, colors="k", linestyles="--",
                      label="memory bound" if x == 0 else None)
    ticks = [x + width * (len(impls) - 1) / 2 for x in range(len(batches))]
    ax.set_xticks(ticks, [f"batch {b}" for b in batches])
    ax.set_yscale("log")
    ax.set_ylabel("CPU ms per step (median)")
    ax.set_title(f"{MODEL} LM, 3.5M params: one generation step")
    ax.legend(fontsize=8)
    ax = axes[1]
    pre = [r for r in rows if r["metric"] == "tokens_per_s"]
    for impl in dict.fromkeys(r["impl"] for r in pre):
        pts = sorted((r["S"], r["value"]) for r in pre if r["impl"] == impl)
        ax.plot(*zip(*pts, strict=True), "o-", label=impl)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("prompt length S")
    ax.set_ylabel("prefill tokens/s (CPU time)")
    ax.set_title("prefill, batch 1")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"{limits['threads']} thread(s), load {limits['load_avg_1m']}", fontsize=9)
    path = save_plot(fig, out_dir, "step.png")
    plt.close(fig)
    return path


def run(args) -> list[dict]:
    setup_threads()
    quick = bool(getattr(args, "quick", False))
    load0 = load_average()
    limits = machine_limits(quick)
    off = official_lm(256)
    if off is not None:
        off.eval()
    ours = xlram_lm(off).eval()  # its no-grad step is the numba one (xlram.fused_step) where it applies
    plain = xlram_lm(off).eval()
    plain.stack.fused_step = False  # the torch step
    comp = xlram_lm(off).eval()
    comp.stack.compile_step()
    impls = {"xlram": ours, "xlram-torch": plain, "xlram-compiled": comp}
    repeats = 7 if quick else 15
    rows = [r for B in (1, 16) for r in _step_case(off, impls, B, repeats, limits)]

    off_models = {}

    def off_for(S):
        if off is None:
            return None
        if S not in off_models:
            off_models[S] = official_lm(S).eval()
        return off_models[S]

    lengths_ours = [1024, 4096, 16384]
    lengths_off = [1024] if quick else [1024, 4096]
    rows += _prefill_rows(ours, off_for, lengths_ours, lengths_off, 3 if quick else 5)
    rows += limit_rows(limits)
    stamp(rows, load0, limits["threads"])
    _plot(rows, limits, getattr(args, "out", "results"))
    return rows

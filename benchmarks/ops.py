"""`xlram bench ops`: the mLSTM and sLSTM cells against the official kernels, side by side in one run.

Rows (one per op, pass, shape and implementation; ``value`` = median CPU milliseconds per call):

- ``mlstm`` forward+backward and forward (no grad), B=1, H=4, dk=dv=128 (the shapes of the issue's
  anchor figures), S = 1024 and 4096 (``--quick``) or 256..16384: xlram's chunkwise form (custom
  backward, chunk chosen by ``choose_chunk``) against ``mlstm-kernels-2.0.6`` ``chunkwise--native_autograd``
  (chunk 64, S must be a multiple); ``speedup`` = anchor / xlram; ``flops`` the matmul FLOPs of xlram's
  algorithm and ``bound_ms`` = flops / the machine's matmul peak, ``of_bound`` = bound_ms / ms
  (1.0 = at the FLOP bound, 0.5 = within 2x);
- ``mlstm_step``: one recurrent step, B=1 and 16: xlram's in-place ``mlstm_step_`` against
  ``mlstm-kernels`` ``native`` step; ``of_bound`` against reading and writing the state once at the
  machine's copy bandwidth for arrays larger than the caches (a state that stays in the L2/L3 cache
  between steps, 4 MiB at B=16, can beat that bound: ``of_bound`` > 1);
- ``slstm`` forward+backward, D=256, 4 heads: xlram's recurrent form (hand-derived backward through
  time) against the official ``xlstm-2.0.6`` vanilla cell (autograd through its Python loop).

Every comparison is timed interleaved in the same process (``limits.measure``), one thread by default
(``XLRAM_BENCH_THREADS``). ``wall_ms`` and ``speedup_wall`` are the same figures by the wall clock.
Also written: the machine's limits (rows with impl ``machine``) and ``ops.png``.
"""

from __future__ import annotations

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
from xlram.ops.mlstm import mlstm
from xlram.ops.mlstm.dispatch import choose_chunk
from xlram.ops.mlstm.recurrent import mlstm_step_
from xlram.ops.mlstm.state import zero_state
from xlram.ops.slstm import slstm

ANCHOR_KERNELS = "mlstm-kernels-2.0.6"
ANCHOR_XLSTM = "xlstm-2.0.6"


def chunkwise_flops(B: int, H: int, S: int, dk: int, dv: int, L: int, backward: bool) -> float:
    """Matmul FLOPs of xlram's chunkwise form (``xlram/ops/mlstm/chunkwise_fn.py``) over S rounded up
    to whole chunks of L: per step, forward ``q kᵀ``, ``P v`` (2·L·(dk + dv)) and ``q C``, ``kᵀ v``
    (4·dk·dv); backward ``dP``, ``Pᵀ dnum``, ``dS k``, ``dSᵀ q`` (4·L·(dk + dv)) and ``dnum Cᵀ``,
    ``qᵀ dnum``, ``v dCᵀ``, ``(k e) dC`` (8·dk·dv). The normaliser's vector products are left out."""
    n = -(-S // L) * L
    fwd = 2 * L * (dk + dv) + 4 * dk * dv
    bwd = 4 * L * (dk + dv) + 8 * dk * dv
    return float(B * H * n * (fwd + (bwd if backward else 0)))


def _anchor_kernels():
    try:
        from mlstm_kernels.torch import get_mlstm_kernel, get_mlstm_step_kernel
    except ImportError:
        return None, None
    return get_mlstm_kernel("chunkwise--native_autograd"), get_mlstm_step_kernel("native")


def _inputs(B, H, S, d, grad, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, S, d, generator=g) for _ in range(3))
    i = torch.randn(B, H, S, generator=g)
    f = torch.randn(B, H, S, generator=g) + 3.0  # forget gates near 0.95, as after the usual init
    return [t.requires_grad_(grad) for t in (q, k, v, i, f)]


def _row(op, pas, impl, shape, t, **extra):
    row = {"metric": "ms", "op": op, "pass": pas, "impl": impl, **shape,
           "value": round(med(t["cpu_ms"]), 3), "wall_ms": round(med(t["wall_ms"]), 3),
           "spread": round(spread(t["cpu_ms"]), 3)}
    row.update(extra)
    return row


def _speedups(rows, anchor_impl):
    """Add ``speedup`` (CPU) and ``speedup_wall`` to xlram rows that have an anchor row of the same kind."""
    key = lambda r: (r.get("op"), r.get("pass"), r.get("S"), r.get("B"))
    anchors = {key(r): r for r in rows if r["impl"] == anchor_impl}
    for r in rows:
        a = anchors.get(key(r))
        if r["impl"] == "xlram" and a is not None:
            r["speedup"] = round(a["value"] / r["value"], 2)
            r["speedup_wall"] = round(a["wall_ms"] / r["wall_ms"], 2)


def _mlstm_rows(sizes, repeats, peak_gflops):
    anchor, _ = _anchor_kernels()
    B, H, d = 1, 4, 128
    shape0 = {"B": B, "H": H, "dk": d, "dv": d}
    rows = []
    for S in sizes:
        L = choose_chunk(S, d, d)
        shape = {**shape0, "S": S}
        x = _inputs(B, H, S, d, grad=True)

        def ours_fb(x=x, L=L):
            for t in x:
                t.grad = None
            h, _ = mlstm(*x, form="chunkwise", chunk_size=L)
            h.sum().backward()

        def ours_f(x=x, L=L):
            with torch.no_grad():
                mlstm(*x, form="chunkwise", chunk_size=L)

        fb = {"xlram": ours_fb}
        fw = {"xlram": ours_f}
        if anchor is not None and S % 64 == 0 and S <= 16384:

            def anchor_fb(x=x):
                for t in x:
                    t.grad = None
                anchor(*x, chunk_size=64).sum().backward()

            def anchor_f(x=x):
                with torch.no_grad():
                    anchor(*x, chunk_size=64)

            fb[ANCHOR_KERNELS] = anchor_fb
            fw[ANCHOR_KERNELS] = anchor_f
        reps = repeats if S <= 4096 else max(3, repeats // 2)
        for pas, fns, backward in (("fwd+bwd", fb, True), ("fwd", fw, False)):
            t = measure(fns, repeats=reps, warmup=1)
            for impl, ti in t.items():
                extra = {"chunk": L if impl == "xlram" else 64}
                if impl == "xlram":
                    flops = chunkwise_flops(B, H, S, d, d, L, backward)
                    bound = flops / (peak_gflops * 1e9) * 1e3
                    of_bound = round(bound / med(ti["cpu_ms"]), 3)
                    extra.update(flops=flops, bound_ms=round(bound, 3), of_bound=of_bound)
                rows.append(_row("mlstm", pas, impl, shape, ti, **extra))
    _speedups(rows, ANCHOR_KERNELS)
    return rows


def _step_case(B, repeats, copy_gbs, anchor_step):
    H, d = 4, 128
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, H, d, generator=g) for _ in range(3))
    i, f = torch.randn(B, H, generator=g), torch.randn(B, H, generator=g) + 3.0
    ours_state = zero_state(B, H, d, d)
    anchor_state = [torch.zeros(B, H, d, d), torch.zeros(B, H, d), torch.zeros(B, H, 1)]
    fns = {"xlram": lambda: mlstm_step_(q, k, v, i, f, ours_state)}
    if anchor_step is not None:

        def anchor_fn():
            _, st = anchor_step(q, k, v, i[..., None], f[..., None], *anchor_state)
            anchor_state[:] = st

        fns[ANCHOR_KERNELS] = anchor_fn
    with torch.no_grad():
        t = measure(fns, repeats=repeats, warmup=3, inner=50)
    state_bytes = 4.0 * B * H * (d * d + d + 1)
    bound = 2 * state_bytes / (copy_gbs * 1e9) * 1e3  # read and write the state once
    rows = []
    for impl, ti in t.items():
        extra = {}
        if impl == "xlram":
            extra = {"bound_ms": round(bound, 4), "of_bound": round(bound / med(ti["cpu_ms"]), 3)}
        rows.append(_row("mlstm_step", "fwd", impl, {"B": B, "H": H, "dk": d, "dv": d}, ti, **extra))
    return rows


def _step_rows(batches, repeats, copy_gbs):
    _, anchor_step = _anchor_kernels()
    rows = [r for B in batches for r in _step_case(B, repeats, copy_gbs, anchor_step)]
    _speedups(rows, ANCHOR_KERNELS)
    return rows


def _slstm_case(B, S, repeats, cell_cls, cfg_cls):
    D, NH = 256, 4
    DH = D // NH
    g = torch.Generator().manual_seed(2)
    wx = (torch.randn(B, S, 4, NH, DH, generator=g) * 0.5).requires_grad_()
    r = (torch.randn(NH, DH, 4, DH, generator=g) / DH**0.5).requires_grad_()
    b = torch.zeros(4, NH, DH).requires_grad_()

    def ours():
        wx.grad = r.grad = b.grad = None
        h, _ = slstm(wx, r, b)
        h.sum().backward()

    fns = {"xlram": ours}
    if cell_cls is not None:
        cell = cell_cls(cfg_cls(hidden_size=D, num_heads=NH, backend="vanilla", dtype="float32"))
        with torch.no_grad():  # the same weights: vanilla layout (NH, 4·DH, DH) [head, (gate, out), in]
            cell._recurrent_kernel_.copy_(r.detach().permute(0, 2, 3, 1).reshape(NH, 4 * DH, DH))
            cell._bias_.copy_(b.detach().reshape(-1))
        x_off = wx.detach().reshape(B, S, 4 * D).requires_grad_()

        def official():
            x_off.grad = None
            cell.zero_grad(set_to_none=True)
            out, _ = cell(x_off)
            out.sum().backward()

        fns[ANCHOR_XLSTM] = official
    t = measure(fns, repeats=repeats, warmup=1)
    return [_row("slstm", "fwd+bwd", impl, {"B": B, "S": S, "D": D, "NH": NH}, ti) for impl, ti in t.items()]


def _slstm_rows(shapes, repeats):
    try:
        from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig
    except ImportError:
        sLSTMCell = sLSTMCellConfig = None
    rows = [r for B, S in shapes for r in _slstm_case(B, S, repeats, sLSTMCell, sLSTMCellConfig)]
    _speedups(rows, ANCHOR_XLSTM)
    return rows


def _plot(rows, limits, out_dir):
    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, pas in zip(axes, ("fwd+bwd", "fwd"), strict=True):
        sel = [r for r in rows if r.get("op") == "mlstm" and r.get("pass") == pas]
        for impl in dict.fromkeys(r["impl"] for r in sel):
            pts = sorted((r["S"], r["value"]) for r in sel if r["impl"] == impl)
            ax.plot(*zip(*pts, strict=True), "o-", label=impl)
        bound = sorted((r["S"], r["bound_ms"]) for r in sel if r["impl"] == "xlram")
        if bound:
            label = f"FLOP bound ({limits['gflops_cpu']:.0f} GFLOP/s)"
            ax.plot(*zip(*bound, strict=True), "k--", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length S")
        ax.set_ylabel("CPU ms (median)")
        ax.set_title(f"mLSTM {pas}, B=1, H=4, d=128")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{limits['threads']} thread(s), load {limits['load_avg_1m']}", fontsize=9)
    path = save_plot(fig, out_dir, "ops.png")
    plt.close(fig)
    return path


def run(args) -> list[dict]:
    setup_threads()
    quick = bool(getattr(args, "quick", False))
    load0 = load_average()
    limits = machine_limits(quick)
    repeats = 9 if quick else 15
    rows = _mlstm_rows([1024, 4096] if quick else [256, 1024, 4096, 16384], repeats, limits["gflops_cpu"])
    rows += _step_rows([1, 16], repeats, limits["copy_gbs_cpu"])
    rows += _slstm_rows([(4, 256)] if quick else [(4, 256), (1, 1024), (8, 1024)], repeats)
    rows += limit_rows(limits)
    stamp(rows, load0, limits["threads"])
    _plot(rows, limits, getattr(args, "out", "results"))
    return rows

"""What the machine can do, measured in the same run as the speed suites, and the timing helpers they share.

- ``matmul_peak``: fp32 matrix-multiply FLOP/s (best of several square SGEMMs): the FLOP bound;
- ``memory_bandwidth``: copy (read + write) and read-only bandwidth of arrays far larger than the
  caches: the bound of a memory-bound step;
- ``measure``: runs several implementations side by side, interleaved repeat by repeat (the order
  rotates, so none always runs right after another), and reports per repeat both the wall time and
  the CPU time of the process.

Why CPU time too: on a shared machine a process waits for a core a good part of the wall time, and
the wait varies from one call to the next by more than the differences being measured. The CPU time
counts only the time the process actually ran, so with one thread it is the time the work would take
on an idle core. Both are reported; ratios are given for both.

Threads: ``XLRAM_BENCH_THREADS`` (default 1). With two OpenMP threads on a loaded two-core machine
a thread that waits at a barrier for a descheduled partner spins, which made small kernels 5-8x
slower in our measurements; one thread is the stable choice there.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch

ENV_THREADS = "XLRAM_BENCH_THREADS"


def setup_threads() -> int:
    """Set torch's intra-op threads from ``XLRAM_BENCH_THREADS`` (default 1); returns the count.

    OpenBLAS (scipy's, which the numba kernels' matmuls call) gets the same count through
    ``OPENBLAS_NUM_THREADS`` unless that is set: read when the library loads, which in a benchmark is
    after this call (the first numba matmul)."""
    n = int(os.environ.get(ENV_THREADS, "1"))
    torch.set_num_threads(max(1, n))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(torch.get_num_threads()))
    return torch.get_num_threads()


def load_average() -> float:
    """The 1-minute load average (how busy the machine was), or -1 where it is unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return -1.0


def measure(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1, inner: int = 1,
            settle: int = 0) -> dict[str, dict[str, list[float]]]:
    """Time every function in ``fns`` side by side: ``warmup`` untimed calls each, then ``repeats``
    rounds in which each function runs ``settle`` untimed and ``inner`` timed times in a row, in an
    order that rotates per round. ``settle`` measures the steady state of a loop (a decode loop
    keeps one model's weights in cache) rather than the first calls after another function ran.

    Returns, per name, ``{"wall_ms": [...], "cpu_ms": [...]}`` with one value per round: the time of
    one call (the round's total divided by ``inner``).
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    out = {name: {"wall_ms": [], "cpu_ms": []} for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            fn = fns[name]
            for _ in range(settle):
                fn()
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(inner):
                fn()
            c1, w1 = time.process_time(), time.perf_counter()
            out[name]["wall_ms"].append((w1 - w0) * 1e3 / inner)
            out[name]["cpu_ms"].append((c1 - c0) * 1e3 / inner)
    return out


def med(values: list[float]) -> float:
    return float(statistics.median(values))


def spread(values: list[float]) -> float:
    """Half the range between the 25th and 75th percentiles, relative to the median (0.1 = ±10 %)."""
    if len(values) < 4:
        return (max(values) - min(values)) / 2 / max(med(values), 1e-12)
    q = statistics.quantiles(values, n=4)
    return (q[2] - q[0]) / 2 / max(med(values), 1e-12)


def matmul_peak(quick: bool) -> dict:
    """fp32 matmul FLOP/s: the best of a few repeats of square SGEMMs (sizes 512-2048), per CPU second
    and per wall second. The best, not the median: the bound is what the machine can do. Two BLAS
    libraries, the better one counts: torch's (MKL, which on this AMD CPU reached about 100 GFLOP/s
    on one thread), on torch's thread count, and the OpenBLAS of ``xlram.ops.cpu_blas`` whether or not
    it was chosen (its AVX-512 kernels reached about 220 here), which always runs on one thread."""
    from xlram.ops import cpu_blas

    sizes = [512, 1024] if quick else [512, 1024, 2048]
    blas = {"torch": torch.bmm}
    if cpu_blas.available():
        blas["openblas"] = lambda a, b, out: cpu_blas.bmm(a, b, out=out, library="openblas")
    best = {name: [0.0, 0.0] for name in blas}
    per_size = {}
    for n in sizes:
        a, b = torch.randn(1, n, n), torch.randn(1, n, n)
        c = torch.empty(1, n, n)
        reps = max(3, int(4e9 / (2 * n**3)))  # about 4 GFLOP per repeat
        fns = {name: (lambda f=f, a=a, b=b, c=c: f(a, b, out=c)) for name, f in blas.items()}
        times = measure(fns, repeats=5, warmup=1, inner=reps)
        flop = 2.0 * n**3
        for name, t in times.items():
            gc = flop / (min(t["cpu_ms"]) * 1e-3) / 1e9
            gw = flop / (min(t["wall_ms"]) * 1e-3) / 1e9
            best[name] = [max(best[name][0], gc), max(best[name][1], gw)]
            per_size[f"{name}_{n}"] = round(gc, 1)
    out = {f"gflops_cpu_{name}": v[0] for name, v in best.items()}
    if "openblas" in blas:
        out["openblas_core"] = cpu_blas.info()["core"]
    return {"gflops_cpu": max(v[0] for v in best.values()), "gflops_wall": max(v[1] for v in best.values()),
            "gflops_cpu_by_size": per_size, **out}


def memory_bandwidth(quick: bool) -> dict:
    """Copy (read + write) and read (sum) bandwidth in GB/s over arrays far larger than the caches;
    best of a few repeats, per CPU second and per wall second."""
    n = (64 if quick else 256) * 2**20 // 4  # 64 / 256 MiB of fp32
    src, dst = torch.randn(n), torch.empty(n)
    t = measure({"copy": lambda: dst.copy_(src), "read": lambda: src.sum()}, repeats=5, warmup=1)
    nbytes = 4.0 * n
    return {
        "copy_gbs_cpu": 2 * nbytes / (min(t["copy"]["cpu_ms"]) * 1e-3) / 1e9,
        "copy_gbs_wall": 2 * nbytes / (min(t["copy"]["wall_ms"]) * 1e-3) / 1e9,
        "read_gbs_cpu": nbytes / (min(t["read"]["cpu_ms"]) * 1e-3) / 1e9,
        "read_gbs_wall": nbytes / (min(t["read"]["wall_ms"]) * 1e-3) / 1e9,
    }


def machine_limits(quick: bool) -> dict:
    """Matmul peak and memory bandwidth, plus the threads and load they were measured under."""
    return {"threads": torch.get_num_threads(), "load_avg_1m": load_average(),
            **matmul_peak(quick), **memory_bandwidth(quick)}


def limit_rows(limits: dict) -> list[dict]:
    """The limits as result rows (metric ``gflops`` / ``gbs``, impl ``machine``)."""
    rows = [
        {"metric": "gflops", "impl": "machine", "what": "fp32 matmul peak", "clock": clock,
         "value": round(limits[f"gflops_{clock}"], 1)}
        for clock in ("cpu", "wall")
    ]
    for blas in ("torch", "openblas"):
        if f"gflops_cpu_{blas}" in limits:
            core = f" ({limits['openblas_core']} kernels)" if blas == "openblas" else ""
            rows.append({"metric": "gflops", "impl": "machine", "what": f"fp32 matmul, {blas} BLAS{core}",
                         "clock": "cpu", "value": round(limits[f"gflops_cpu_{blas}"], 1)})
    for kind in ("copy", "read"):
        for clock in ("cpu", "wall"):
            rows.append({"metric": "gbs", "impl": "machine", "what": f"memory {kind} bandwidth",
                         "clock": clock, "value": round(limits[f"{kind}_gbs_{clock}"], 1)})
    return rows


def save_plot(fig, out_dir, name: str) -> str:
    """Write a matplotlib figure as ``out_dir/name`` (PNG) atomically; returns the path."""
    from pathlib import Path

    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return str(path)


def pyplot():
    """matplotlib's pyplot with the file-only Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def stamp(rows: list[dict], load0: float, threads: int | None = None) -> list[dict]:
    """Give every row the run's load (the larger of ``load0``, read at its start, and the load now)
    and, when given, the torch thread count; returns ``rows``."""
    load = max(load0, load_average())
    for r in rows:
        if threads is not None:
            r["threads"] = threads
        r["load"] = load
    return rows

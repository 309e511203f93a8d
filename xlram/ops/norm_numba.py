"""LayerNorm of one row as a numba function, shared by the CPU kernels: the generation step's block
and per-head norms (``xlram.kernels.numba_step``) and the mLSTM output path (``ops/mlstm/output_cpu``).
Inlined by numba into its callers (it runs once per row or per head)."""

from __future__ import annotations

import math

import numba


# reassoc: the sums may be reordered, so that they vectorise (one add chain per element otherwise: a
# LayerNorm of the (16, 512) head outputs took 16 µs, latency-bound). Not inline="always": numba's
# inlining would compile them with the caller's flags, without reassoc.
@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def _sum64(x):  # pragma: no cover - compiled
    """sum(x) accumulated in fp64, in any order."""
    t = 0.0
    for j in range(x.shape[0]):
        t += x[j]
    return t


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def _sq_dev64(x, mean):  # pragma: no cover - compiled
    """sum((x - mean)^2) accumulated in fp64, in any order."""
    t = 0.0
    for j in range(x.shape[0]):
        d = x[j] - mean
        t += d * d
    return t


@numba.njit(inline="always", cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def norm_row(x, w, b, eps, out):  # pragma: no cover - compiled
    """out (D,) <- (x - mean(x)) / sqrt(var(x) + eps) * w + b for one row x (D,); w, b (D,) or empty
    where absent. out may be x. Returns (mean, 1/std)."""
    D = x.shape[0]
    mean = _sum64(x) / D
    var = _sq_dev64(x, mean)
    rstd = 1.0 / math.sqrt(var / D + eps)
    for j in range(D):
        y = (x[j] - mean) * rstd
        if w.shape[0]:
            y *= w[j]
        if b.shape[0]:
            y += b[j]
        out[j] = y
    return mean, rstd

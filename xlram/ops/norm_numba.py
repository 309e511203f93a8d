"""LayerNorm of one row as a numba function, shared by the CPU kernels: the generation step's block
and per-head norms (``xlram.kernels.numba_step``) and the mLSTM output path (``ops/mlstm/output_cpu``).
Inlined by numba into its callers (it runs once per row or per head)."""

from __future__ import annotations

import math

import numba


@numba.njit(inline="always", cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def norm_row(x, w, b, eps, out):  # pragma: no cover - compiled
    """out (D,) <- (x - mean(x)) / sqrt(var(x) + eps) * w + b for one row x (D,); w, b (D,) or empty
    where absent. out may be x. Returns (mean, 1/std)."""
    D = x.shape[0]
    mean = 0.0
    for j in range(D):
        mean += x[j]
    mean /= D
    var = 0.0
    for j in range(D):
        d = x[j] - mean
        var += d * d
    rstd = 1.0 / math.sqrt(var / D + eps)
    for j in range(D):
        y = (x[j] - mean) * rstd
        if w.shape[0]:
            y *= w[j]
        if b.shape[0]:
            y += b[j]
        out[j] = y
    return mean, rstd

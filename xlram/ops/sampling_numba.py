"""Inverse-CDF sampling of one token per row as one numba call: the CPU fast path of
``xlram.generation.sample_tokens`` (temperature only, no top-k or nucleus cut).

The torch form is about ten small ops per token (scale, softmax, cumsum, searchsorted, ...). After a
numba generation step torch's code is out of cache, and on the 2-core CPU they cost about 130 µs per
token at batch 1 (generation at temperature 1: 0.76 against 0.63 ms per token, best of alternating
rounds in a loaded hour). Here the same draw is one pass per row in fp64: the same uniform numbers
pick from the same distribution, so a token can differ from the torch form's only where the number
falls within rounding of a boundary of the cumulative distribution.
"""

from __future__ import annotations

import numpy as np

from xlram.ops.numba_math import exp_neg, jit


@jit
def draw(logits, inv_temperature, u, out):  # pragma: no cover - compiled
    """logits (B, V), u (B,) uniform in [0, 1) -> out (B,) int64: per row the first j whose cumulative
    weight exp((logits - max) / T) exceeds u times the total (``searchsorted(..., right=True)``)."""
    B, V = logits.shape
    cdf = np.empty(V, dtype=np.float64)
    for r in range(B):
        x = logits[r]
        top = -np.inf
        for j in range(V):
            top = max(top, x[j] * inv_temperature)
        total = 0.0
        for j in range(V):
            total += exp_neg(x[j] * inv_temperature - top)
            cdf[j] = total
        target = u[r] * total
        k = 0
        while k < V - 1 and cdf[k] <= target:
            k += 1
        out[r] = k

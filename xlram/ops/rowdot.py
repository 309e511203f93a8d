"""Row-wise dot products ``(x * y).sum(-1)`` in one pass (numba on CPU, torch elsewhere).

``torch.linalg.vecdot`` on real CPU tensors multiplies into a temporary of the inputs' full size and
then sums it: three passes over memory where one would do. The chunkwise mLSTM's backward takes
several such dots over (B, H, S, d) and (B, H, NC, dk, dv) tensors. Here a compiled loop reads each
row pair once and keeps the partial sums in registers (summation reordered for SIMD, as a BLAS dot
would). Elsewhere (no numba, ``XLRAM_NUMBA=0``, GPU, other dtypes, gradients needed) it is the torch
form; both agree to rounding (tests/ops/test_rowdot.py).
"""

from __future__ import annotations

import math

import torch

from xlram.ops.numba_kernels import LazyKernels

_DTYPES = (torch.float32, torch.float64)


def _build():
    from xlram.ops.numba_math import dot, jit

    @jit
    def rowdot(x, y, out):  # pragma: no cover - compiled
        """x, y (N, d); out (N,) <- the dot product of each row pair."""
        for i in range(x.shape[0]):
            out[i] = dot(x[i], y[i])

    return rowdot


_KERNEL = LazyKernels(_build)


def rowdot(x: torch.Tensor, y: torch.Tensor, dims: int = 1, x_is_scratch: bool = False) -> torch.Tensor:
    """The sums of ``x * y`` over the last ``dims`` dimensions: x, y (..., *inner) -> (...).

    x and y must have the same shape (no broadcasting); ``dims`` >= 1. ``x_is_scratch``: x is not
    needed afterwards, so the torch form may multiply into it rather than into a new tensor of its
    size (the compiled form never writes it).
    """
    if dims < 1 or dims > x.dim():
        raise ValueError(f"rowdot: dims must be in [1, {x.dim()}], got {dims}")
    if x.shape != y.shape:
        raise ValueError(f"rowdot: x and y must have one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    lead = x.shape[: x.dim() - dims]
    kernel = None
    if (x.device.type == "cpu" and x.dtype in _DTYPES and y.dtype == x.dtype and x.numel() > 0
            and not (torch.is_grad_enabled() and (x.requires_grad or y.requires_grad))):
        kernel = _KERNEL.get()
    if kernel is None:
        prod = x.mul_(y) if x_is_scratch and not x.requires_grad else x * y
        return prod.sum(tuple(range(x.dim() - dims, x.dim())))
    x2 = x.detach().contiguous().view(-1, math.prod(x.shape[x.dim() - dims:]))
    y2 = y.detach().contiguous().view(x2.shape)
    out = torch.empty(x2.shape[0], dtype=x.dtype)
    kernel(x2.numpy(), y2.numpy(), out.numpy())
    return out.view(lead)

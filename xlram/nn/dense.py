"""Dense linear layer whose CPU matmuls go through ``xlram.ops.cpu_blas`` (OpenBLAS, AVX-512).

``Linear`` is ``nn.Linear`` (same parameters, state-dict keys and init) with a forward that, for fp32
or fp64 CPU inputs, runs its product and both gradient products through the OpenBLAS of
``xlram.ops.cpu_blas`` instead of torch's MKL where that module chose OpenBLAS (``cpu_blas.route()``):
on this project's AMD CPU that is the difference between about 100 and 220 GFLOP/s on one thread.
Everywhere else (GPU, other dtypes, autocast, ``torch.compile`` tracing, parameters that are not
plain tensors, torch on more than one thread, no OpenBLAS) it is ``F.linear``. A single row is never
a ``cpu_blas`` product (a (256, 256) LM head at batch 1 took 5.4 µs through F.linear against 9.3 µs
for ``cpu_blas.linear_t``): where it needs no gradient and torch runs on one thread it is the numba
GEMV of ``xlram.ops.gemv_numba`` (the LM head after a numba generation step: 6 against 20 µs), else
``F.linear``.
"""

from __future__ import annotations

import importlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from xlram.ops import cpu_blas
from xlram.ops.numba_kernels import LazyKernels

_DTYPES = (torch.float32, torch.float64)
_GEMV = LazyKernels(lambda: importlib.import_module("xlram.ops.gemv_numba"))
_EMPTY = {torch.float32: np.empty(0, np.float32), torch.float64: np.empty(0, np.float64)}


_PLAIN = (torch.Tensor, nn.Parameter)


def _plain_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """x, weight and bias (or None) are plain (not subclassed) fp32 or fp64 CPU tensors of one dtype."""
    return (x.device.type == "cpu" and weight.device.type == "cpu" and x.dtype in _DTYPES
            and weight.dtype == x.dtype and type(weight) in _PLAIN and type(x) in _PLAIN
            and (bias is None or (bias.dtype == x.dtype and type(bias) in _PLAIN)))


def _uses_blas(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (  # one row first: a generation step's projections check nothing else
        x.numel() > x.shape[-1] and _plain_cpu(x, weight, bias) and not torch.compiler.is_compiling()
        and not torch.is_autocast_enabled("cpu") and cpu_blas.route() == "openblas"
    )


def _matmul_t(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x2 (M, in) @ weightᵀ (in, out) [+ bias] -> (M, out)."""
    M, N = x2.shape[0], weight.shape[0]
    if bias is None:
        return cpu_blas.linear_t(x2, weight)
    out = torch.empty(M, N, dtype=x2.dtype).copy_(bias.expand(M, N))
    return cpu_blas.linear_t(x2, weight, out=out, beta=1.0)


class _BlasLinear(torch.autograd.Function):
    """(x (M, in), weight (out, in), bias (out,) or None) -> (M, out), every product in OpenBLAS."""

    @staticmethod
    def forward(ctx, x2, weight, bias):
        ctx.save_for_backward(x2, weight)
        ctx.has_bias = bias is not None
        return _matmul_t(x2, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x2, weight = ctx.saved_tensors
        dy = dy if dy.stride(-1) == 1 else dy.contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = cpu_blas.bmm(dy[None], weight[None])[0]  # (M, out) @ (out, in)
        if ctx.needs_input_grad[1]:
            dw = cpu_blas.bmm(dy.t()[None], x2[None])[0]  # (out, M) @ (M, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum(0)
        return dx, dw, db


def _one_row_numba(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """The numba GEMV (``xlram.ops.gemv_numba``) where it applies: one row, nothing that needs a
    gradient, fp32/fp64 plain CPU tensors, torch on one thread (its MKL GEMV may use more), not under
    compile or autocast, numba usable. Returns the kernel module or None."""
    if torch.compiler.is_compiling():  # first: dynamo would guard on what the checks below read
        return None
    if not (x.numel() == x.shape[-1] and _plain_cpu(x, weight, bias) and weight.is_contiguous()):
        return None
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return None
    if torch.get_num_threads() != 1 or torch.is_autocast_enabled("cpu"):
        return None
    return _GEMV.get()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: x (..., in), weight (out, in), bias (out,) -> (..., out)."""
    kernel = _one_row_numba(x, weight, bias)
    if kernel is not None:
        b = _EMPTY[x.dtype] if bias is None else bias.detach().numpy()
        y = kernel.gemv(x.detach().reshape(-1).contiguous().numpy(), weight.detach().numpy(), b)
        return torch.from_numpy(y).view(*x.shape[:-1], weight.shape[0])
    if not _uses_blas(x, weight, bias):
        return F.linear(x, weight, bias)
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        y = _BlasLinear.apply(x2, weight, bias)
    else:
        y = _matmul_t(x2, weight, bias)
    return y.view(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` whose CPU products go through OpenBLAS (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

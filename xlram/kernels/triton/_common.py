"""Helpers shared by the Triton kernels: dtype mapping, tile sizes, small jit functions.

Importing this module imports triton; ``xlram.kernels`` only imports it when a kernel is used.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from xlram.kernels import interpreting

_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
SUPPORTED_DTYPES = tuple(_TL_DTYPES)


def dot_dtype(dtype: torch.dtype):
    """The operand dtype of ``tl.dot`` for inputs of ``dtype`` (accumulation is always fp32).

    16-bit inputs multiply in their own dtype on tensor cores, as TFLA does. Under the interpreter
    bf16 dots are not supported (numpy has no bf16: it multiplies the uint16 bit patterns,
    triton-lang/triton#11584), so they run in fp32 there; loads, stores and casts of bf16 still
    go through the bf16 code paths.
    """
    if dtype == torch.bfloat16 and interpreting():
        return tl.float32
    return _TL_DTYPES[dtype]


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of ``tl.dot``: full fp32 for fp32 inputs (TF32 would cost ~1e-3 relative,
    more than a user asking for fp32 expects), the native one for 16-bit inputs."""
    return "ieee" if dtype == torch.float32 else "tf32"


def tl_dtype(dtype: torch.dtype):
    return _TL_DTYPES[dtype]


def pow2_tile(n: int, cap: int, floor: int = 16) -> int:
    """A power-of-two tile for a dimension of size n: ``floor`` <= tile <= ``cap`` (tl.dot needs 16)."""
    return max(floor, min(cap, triton.next_power_of_2(n)))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@triton.jit
def mm(a, b, DT: tl.constexpr, IP: tl.constexpr):
    """a @ b with operands cast to DT and fp32 accumulation."""
    return tl.dot(a.to(DT), b.to(DT), input_precision=IP, out_dtype=tl.float32)


@triton.jit
def logsigmoid(x):
    """log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)), without overflow for any x."""
    e = tl.exp(-tl.abs(x))
    # log1p(e) loses everything below 1e-7 when written log(1 + e); the series is exact there.
    l1p = tl.where(e < 1e-4, e * (1.0 - 0.5 * e), tl.log(1.0 + e))
    return tl.minimum(x, 0.0) - l1p

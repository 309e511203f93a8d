"""Elementwise functions for numba kernels that vectorise (SIMD), in fp64, and a vectorising dot product.

numba has no vector math library: a loop that calls ``math.exp`` makes one scalar libm call per
element (about 3 ns on the 2-core EPYC, more than the rest of an elementwise pass). These are
written from arithmetic, comparisons and one bit cast, so LLVM vectorises the loops that call them.
They compute in fp64, for fp32 arrays too (which then round once, on the store): Cody-Waite
reduction and Taylor polynomials, within 4 ulp of numpy's fp64 results (tests/ops/test_numba_math.py).
One difference: results below fp64's normal range (e^x for x < -708) are 0, not subnormal. A NaN
argument gives NaN. ``silu_like`` picks ``silu_f32`` for fp32 arguments instead: fp32 arithmetic,
within 3 ulp of the fp64 result, 4x faster over an array.

Import this module only where numba is importable. numba keys a function's on-disk cache on its own
file: after editing this file, delete the ``*.nbi``/``*.nbc`` files under ``xlram/`` so that the
kernels that call these functions compile again.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

_LN2_HI, _LN2_LO = 0.693145751953125, 1.4286068203094172321e-06  # ln 2 = HI + LO, k HI exact for |k| < 2^37
_EXP_MIN = -708.0  # e^x below this is subnormal in fp64

# error_model="numpy": no zero-division checks (they would branch in every loop); "contract": FMA.
jit = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})


# (integer width, exponent bias, mantissa bits, LLVM type) of each float type _pow2 takes
_FLOAT_BITS = {types.float64: (64, 1023, 52, ir.DoubleType()), types.float32: (32, 127, 23, ir.FloatType())}


@intrinsic
def _pow2(typingctx, k):
    """2**k for an integral fp64 or fp32 k in that type's normal range, from its bits (vectorises,
    unlike ldexp); the result has k's type."""
    if k not in _FLOAT_BITS:
        return None
    width, bias, mantissa, float_type = _FLOAT_BITS[k]

    def codegen(context, builder, sig, args):
        int_type = ir.IntType(width)
        biased = builder.add(builder.fptosi(args[0], int_type), int_type(bias))
        return builder.bitcast(builder.shl(biased, int_type(mantissa)), float_type)

    return k(k), codegen


@jit
def exp_parts(x):  # pragma: no cover - compiled
    """(2**k, r Q(r)) with e^x = 2**k (1 + r Q(r)), for fp64 x in [-708, 0]."""
    k = np.floor(x * 1.4426950408889634 + 0.5)  # round(x / ln 2)
    r = (x - k * _LN2_HI) - k * _LN2_LO  # |r| <= ln 2 / 2
    # Q(r) = sum_n r^n / (n + 1)! = 1 + r/2 (1 + r/3 (1 + ...)), to r^13 / 14! < 1e-17. A loop over
    # constants that LLVM unrolls and folds (a loop over a tuple it would not, nor vectorise).
    q = 1.0
    for n in range(14, 1, -1):
        q = 1.0 + q * (r * (1.0 / n))
    return _pow2(k), r * q


@jit
def exp_neg(x):  # pragma: no cover - compiled
    """e^x for x <= 0."""
    x = float(x)
    p, rq = exp_parts(max(x, _EXP_MIN))
    r = p + p * rq if x >= _EXP_MIN else 0.0
    return r if x == x else x  # NaN stays NaN (max() above would have dropped it)


@jit
def expm1_neg(x):  # pragma: no cover - compiled
    """e^x - 1 for x <= 0, exact to an ulp near 0 (where e^x - 1 would cancel)."""
    x = float(x)
    p, rq = exp_parts(max(x, _EXP_MIN))
    r = rq if p == 1.0 else (p - 1.0) + p * rq
    return r if x == x else x  # NaN stays NaN


@jit
def log1p_unit(u):  # pragma: no cover - compiled
    """log(1 + u) for u in [0, 1]."""
    # 2 atanh(s) = 2 s sum_n s^2n / (2n + 1), s = u / (2 + u) <= 1/3: to s^32 / 33 (9^-16 / 33 < 1e-17)
    s = float(u) / (2.0 + float(u))
    s2 = s * s
    q = 0.0
    for n in range(16, -1, -1):
        q = q * s2 + 1.0 / (2 * n + 1)
    return 2.0 * s * q


@jit
def sigmoid(x):  # pragma: no cover - compiled
    """1 / (1 + e^-x), from one exp of -|x| (no overflow)."""
    x = float(x)
    e = exp_neg(-abs(x))
    return (1.0 if x >= 0.0 else e) / (1.0 + e)


@jit
def silu(x):  # pragma: no cover - compiled
    """x sigmoid(x)."""
    return float(x) * sigmoid(x)


@jit
def tanh(x):  # pragma: no cover - compiled
    """tanh x = -expm1(-2|x|) / (2 + expm1(-2|x|)) with the sign of x (no cancellation near 0)."""
    x = float(x)
    em = expm1_neg(-2.0 * abs(x))
    return math.copysign(-em / (2.0 + em), x)


@jit
def log_sigmoid(x):  # pragma: no cover - compiled
    """log sigmoid(x) = min(x, 0) - log(1 + e^-|x|)."""
    x = float(x)
    return min(x, 0.0) - log1p_unit(exp_neg(-abs(x)))


_F32 = np.float32


@jit
def exp_neg_f32(x):  # pragma: no cover - compiled
    """e^x for fp32 x <= 0 in fp32 arithmetic (0 below -87, where fp32 turns subnormal)."""
    xc = max(x, _F32(-87.0))
    k = np.floor(xc * _F32(1.4426950408889634) + _F32(0.5))
    r = (xc - k * _F32(0.693359375)) - k * _F32(-2.12194440e-4)  # ln 2 in two parts, |r| <= ln 2 / 2
    # Taylor to r^7 (r^8 / 8! < 2e-9 relative), written out: a loop over a tuple would not vectorise
    q = _F32(1.0 / 5040) * r + _F32(1.0 / 720)
    q = q * r + _F32(1.0 / 120)
    q = q * r + _F32(1.0 / 24)
    q = q * r + _F32(1.0 / 6)
    q = q * r + _F32(0.5)
    q = q * r + _F32(1.0)
    q = q * r + _F32(1.0)
    e = _pow2(k) * q
    return e if xc > _F32(-87.0) else _F32(0.0)


@jit
def silu_f32(x):  # pragma: no cover - compiled
    """x sigmoid(x) for fp32 x in fp32 arithmetic: within 3 ulp of the fp64 result where that is
    above 1e-30 (torch's fp32 SiLU: 2), a quarter of ``silu``'s time over fp32 arrays."""
    e = exp_neg_f32(-abs(x))
    return x * ((_F32(1.0) if x >= _F32(0.0) else e) / (_F32(1.0) + e))


def _by_precision(name: str, doc: str, f32, other):
    """A function for numba code that calls ``f32`` on an fp32 argument and ``other`` otherwise."""

    def stub(x):
        raise NotImplementedError(f"{name} is for numba-compiled code")

    stub.__name__ = stub.__qualname__ = name
    stub.__doc__ = doc

    @overload(stub)
    def _impl(x):
        if x == types.float32:
            return lambda x: f32(x)
        return lambda x: other(x)

    return stub


exp_neg_like = _by_precision("exp_neg_like", "e^x for x <= 0 in x's own precision: ``exp_neg_f32`` for "
                             "fp32 (in fp32), else ``exp_neg``.", exp_neg_f32, exp_neg)
silu_like = _by_precision("silu_like", "SiLU in x's own precision: ``silu_f32`` for fp32, else ``silu``.",
                          silu_f32, silu)


# reassoc: the partial sums may be reordered (vectorised), as in a BLAS dot. Not inline="always":
# numba's own inlining compiles the body with the caller's flags, without reassoc (6x slower, measured).
@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def dot(a, b):  # pragma: no cover - compiled
    """a · b for 1-D a, b of one length, summed in a's dtype in any order."""
    t = a.dtype.type(0)
    for c in range(a.shape[0]):
        t += a[c] * b[c]
    return t


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def total(a):  # pragma: no cover - compiled
    """The sum of a 1-D array in its dtype, in any order (vectorised)."""
    t = a.dtype.type(0)
    for c in range(a.shape[0]):
        t += a[c]
    return t

"""The chunkwise mLSTM's row-wise passes over (B, H, NC, L, d) tensors: one compiled pass each on CPU.

Notation of ``chunkwise_fn``. Between its batched matmuls the chunkwise form scales rows, adds
per-chunk vectors and takes row dot products. As torch ops each of those is a pass of its own over
an 8 MB tensor at S = 4,096 (B = 1, H = 4, d = 128), and a dot product is two (``vecdot`` multiplies
into a temporary, then sums). Here each group below reads its rows once while they are in cache. On
GPU, without numba, with ``XLRAM_NUMBA=0``, for other dtypes and under ``torch.compile``'s tracing
it is the torch form; both agree to rounding (tests/ops/test_mlstm_rows.py).

Shapes: x (B, H, NC, L, d) "rows", per-step (B, H, NC, L), per-chunk (B, H, NC, d).

    keys(k, e)                                  -> ke = k e, Kn = sum_t k_t e_t
    outputs(num, QC, q, nst, w0, psum, mrow, eps) -> h = (num + w0 QC) / den (into num), qn, den
    grad_outputs(dh, h, den, qn, mrow)          -> dnum, dqn, dmrow
    grad_queries(X, dqn, nst, q, w0, dnum)      -> dlw0; X <- (X + dqn nstᵀ) w0, dnum <- dnum w0
    grad_keys(T1, dnn, k, e, dk)                -> da, ke; dk += (T1 + dnn) e
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from xlram.ops.mlstm.decay import max_weight
from xlram.ops.numba_kernels import LazyKernels, numpy_views

_DTYPES = (torch.float32, torch.float64)


def _compiled(*xs: torch.Tensor):
    """The compiled kernels where they apply (CPU, one fp32/fp64 dtype, no tracing), else None."""
    x = xs[0]
    if (x.device.type != "cpu" or x.dtype not in _DTYPES or any(y.dtype != x.dtype for y in xs)
            or torch.compiler.is_compiling()):
        return None
    return _KERNELS.get()


def _np(*xs):
    """numpy views with (B, H, NC) as one dim."""
    return numpy_views(3, *xs)


def keys(k, e):
    """ke = k ⊙ e (rows scaled), Kn = the sum of ke over each chunk's rows."""
    kern = _compiled(k, e)
    if kern is None:
        ke = k * e[..., None]
        return ke, ke.sum(-2)
    ke = torch.empty_like(k, memory_format=torch.contiguous_format)
    Kn = k.new_empty(*k.shape[:3], k.shape[-1])
    kern.keys(*_np(k, e, ke, Kn))
    return ke, Kn


def outputs(num, QC, q, nst, w0, psum, mrow, eps: float):
    """h = (num + w0 QC) / den into num (contiguous), with qn = w0 (q · n_c) + psum and
    den = max(|qn|, exp(-mrow)) + eps; returns h, qn, den."""
    kern = _compiled(num, QC, q, nst, w0, psum, mrow)
    if kern is None:
        qn = torch.linalg.vecdot(q, nst[..., None, :]).mul_(w0).add_(psum)
        den = torch.maximum(qn.abs(), torch.exp(-mrow)).add_(eps)
        return num.add_(QC.mul_(w0[..., None])).div_(den[..., None]), qn, den
    qn, den = torch.empty_like(w0), torch.empty_like(w0)
    kern.outputs(*_np(num, QC, q, nst, w0, psum, mrow), float(eps), *_np(qn, den))
    return num, qn, den


def grad_outputs(dh, h, den, qn, mrow):
    """Back through h = num / den, den = max(|qn|, exp(-mrow)) + eps: dnum, dqn, dmrow. dh may have
    any strides."""
    kern = _compiled(h, den, qn, mrow, dh)
    if kern is None:
        dnum = torch.div(dh, den[..., None])
        dden = torch.linalg.vecdot(dh, h).div_(den).neg_()
        em = torch.exp(-mrow)
        w_abs = max_weight(qn.abs(), em)
        return dnum, dden * w_abs * torch.sign(qn), dden.mul_(1 - w_abs).mul_(em).neg_()
    dnum = torch.empty_like(h, memory_format=torch.contiguous_format)
    dqn, dmrow = torch.empty_like(qn), torch.empty_like(qn)
    kern.grad_outputs(*_np(dh, h, den, qn, mrow, dnum, dqn, dmrow))
    return dnum, dqn, dmrow


def grad_queries(X, dqn, nst, q, w0, dnum):
    """X <- (X + dqn nstᵀ) w0 and dnum <- dnum w0 (both contiguous, in place); returns
    dlw0 = ((X + dqn nstᵀ) · q) w0, the gradient of log w0."""
    kern = _compiled(X, dqn, nst, q, w0, dnum)
    if kern is None:
        X.addcmul_(dqn[..., None], nst[..., None, :])
        dlw0 = torch.linalg.vecdot(X, q).mul_(w0)
        X.mul_(w0[..., None])
        dnum.mul_(w0[..., None])
        return dlw0
    dlw0 = torch.empty_like(w0)
    kern.grad_queries(*_np(X, dqn, nst, q, w0, dnum, dlw0))
    return dlw0


def grad_keys(T1, dnn, k, e, dk):
    """T1 <- T1 + dnn (rows, in place), dk += T1 e (in place; both contiguous); returns
    da = (k · T1) e and ke = k e."""
    kern = _compiled(T1, dnn, k, e, dk)
    if kern is None:
        T1.add_(dnn[..., None, :])
        dk.addcmul_(T1, e[..., None])
        return torch.linalg.vecdot(k, T1).mul_(e), k * e[..., None]
    da, ke = torch.empty_like(e), torch.empty_like(k, memory_format=torch.contiguous_format)
    kern.grad_keys(*_np(T1, dnn, k, e, dk, da, ke))
    return da, ke


def _build():
    import math

    from xlram.ops.numba_math import dot, jit

    # One chunk each: rows (L, d), per-step (L,), per-chunk (d,).

    @jit
    def keys_chunk(k, e, ke, kn):  # pragma: no cover - compiled
        L, d = k.shape
        for j in range(d):
            kn[j] = 0
        for t in range(L):
            w, kr, ker = e[t], k[t], ke[t]
            for j in range(d):
                x = kr[j] * w
                ker[j] = x
                kn[j] += x

    @jit
    def outputs_chunk(num, QC, q, n, w0, psum, mrow, ep, qn, den):  # pragma: no cover - compiled
        L, dv = num.shape
        for t in range(L):
            w = w0[t]
            s = dot(q[t], n) * w + psum[t]
            em = w0.dtype.type(math.exp(-mrow[t]))
            dn = max(abs(s), em) + ep
            qn[t] = s
            den[t] = dn
            nr, qr = num[t], QC[t]
            for j in range(dv):
                nr[j] = (nr[j] + w * qr[j]) / dn

    @jit
    def grad_outputs_chunk(dh, h, den, qn, mrow, dnum, dqn, dmrow):  # pragma: no cover - compiled
        L, dv = h.shape
        one, half, zero = h.dtype.type(1), h.dtype.type(0.5), h.dtype.type(0)
        for t in range(L):
            dn = den[t]
            dhr, dr = dh[t], dnum[t]
            dden = -(dot(dhr, h[t]) / dn)
            for j in range(dv):
                dr[j] = dhr[j] / dn
            s = qn[t]
            em = h.dtype.type(math.exp(-mrow[t]))
            a = abs(s)
            w_abs = one if a > em else (half if a == em else zero)
            sign = one if s > zero else (-one if s < zero else zero)
            dqn[t] = dden * w_abs * sign
            dmrow[t] = -(dden * (one - w_abs) * em)

    @jit
    def grad_queries_chunk(X, dqn, n, q, w0, dnum, dlw0):  # pragma: no cover - compiled
        L, dk = X.shape
        dv = dnum.shape[1]
        for t in range(L):
            g, w, xr, dr = dqn[t], w0[t], X[t], dnum[t]
            for j in range(dk):
                xr[j] += g * n[j]
            dlw0[t] = dot(xr, q[t]) * w
            for j in range(dk):
                xr[j] *= w
            for j in range(dv):
                dr[j] *= w

    @jit
    def grad_keys_chunk(T1, dn, k, e, dk, da, ke):  # pragma: no cover - compiled
        L, d = k.shape
        for t in range(L):
            w, tr, kr, dkr, ker = e[t], T1[t], k[t], dk[t], ke[t]
            for j in range(d):
                tr[j] += dn[j]
            da[t] = dot(kr, tr) * w
            for j in range(d):
                dkr[j] += tr[j] * w
                ker[j] = kr[j] * w

    # Over N chunks: the arrays above with a leading N.

    @jit
    def keys(k, e, ke, kn):  # pragma: no cover - compiled
        for c in range(k.shape[0]):
            keys_chunk(k[c], e[c], ke[c], kn[c])

    @jit
    def outputs(num, QC, q, nst, w0, psum, mrow, eps, qn, den):  # pragma: no cover - compiled
        ep = w0.dtype.type(eps)
        for c in range(num.shape[0]):
            outputs_chunk(num[c], QC[c], q[c], nst[c], w0[c], psum[c], mrow[c], ep, qn[c], den[c])

    @jit
    def grad_outputs(dh, h, den, qn, mrow, dnum, dqn, dmrow):  # pragma: no cover - compiled
        for c in range(h.shape[0]):
            grad_outputs_chunk(dh[c], h[c], den[c], qn[c], mrow[c], dnum[c], dqn[c], dmrow[c])

    @jit
    def grad_queries(X, dqn, nst, q, w0, dnum, dlw0):  # pragma: no cover - compiled
        for c in range(X.shape[0]):
            grad_queries_chunk(X[c], dqn[c], nst[c], q[c], w0[c], dnum[c], dlw0[c])

    @jit
    def grad_keys(T1, dnn, k, e, dk, da, ke):  # pragma: no cover - compiled
        for c in range(k.shape[0]):
            grad_keys_chunk(T1[c], dnn[c], k[c], e[c], dk[c], da[c], ke[c])

    return _Kernels(keys, outputs, grad_outputs, grad_queries, grad_keys, keys_chunk, outputs_chunk,
                    grad_outputs_chunk, grad_queries_chunk, grad_keys_chunk)


class _Kernels(NamedTuple):
    keys: object
    outputs: object
    grad_outputs: object
    grad_queries: object
    grad_keys: object
    keys_chunk: object  # one chunk of each, for kernels that loop over chunks themselves
    outputs_chunk: object
    grad_outputs_chunk: object
    grad_queries_chunk: object
    grad_keys_chunk: object


_KERNELS = LazyKernels(_build)

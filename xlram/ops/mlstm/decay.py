"""The chunkwise mLSTM's decay work: log decays, stabilisers and the weights on q kᵀ, both directions.

Notation of ``chunkwise_fn``. Per chunk of L steps this is the (L, L) log-decay matrix D, its row
maxima (the stabilisers ``mrow``), ``W = exp(D - mrow)``, ``P = (q kᵀ) ⊙ W`` and its row sums, the
chunk-end quantities (``a = D[L-1]``, the stabilisers ``m_c`` at the chunk starts, ``wo``, ``e``), and
in the backward the sums of ``dP ⊙ P`` over rows and columns with the stabilisers' gradients.

As torch ops (GPU, no numba, ``XLRAM_NUMBA=0``, other dtypes, under ``torch.compile``'s tracing) that
is about ten passes over (B, H, NC, L, L) tensors forward and six backward, plus a Python loop over
chunks for the stabilisers. On CPU it is one compiled pass per chunk each way: D is never stored (each
row is built from running column sums, as the torch form's cumsum builds it); the forward reads q kᵀ
and writes P over it and W; the backward reads dnum vᵀ, W and P, and writes dS over the first.
Both forms agree to rounding (tests/ops/test_mlstm_decay.py).

    chunk_ends(logf, i, m0) -> Ends                       logf, i (B, H, NC, L); m0 (B, H)
    chunk_weights(S, logf, i, ends, scale)                S = q kᵀ (B, H, NC, L, L), overwritten by P
        -> P, W (B, H, NC, L, L); psum, mrow, jD, wstate, w0 (B, H, NC, L)
    weights_backward(dP, dqn, W, P, jD, wstate, dmrow, dlw0)   dP = dnum vᵀ, overwritten by dS
        -> dS (B, H, NC, L, L); di, db (B, H, NC, L); dm_loc (B, H, NC)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from xlram.ops.numba_kernels import LazyKernels, numpy_views

_DTYPES = (torch.float32, torch.float64)


class Ends(NamedTuple):
    """Chunk-end quantities, (B, H, NC, L) or (B, H, NC): ``b`` the running sums of log f, ``ms``
    (B, H, NC + 1) the stabilisers at the chunk starts and the end, ``ja`` the argmax of ``a``, ``wold``
    the share of ``m_{c+1}`` that ``g + m_c`` won, ``wo``, ``e`` the weights of the old state and of each
    step in the end state; ``D`` the log decays (torch form only, else None)."""

    b: torch.Tensor
    ms: torch.Tensor
    ja: torch.Tensor
    wold: torch.Tensor
    wo: torch.Tensor
    e: torch.Tensor
    D: torch.Tensor | None


def _compiled(x: torch.Tensor):
    """The compiled kernels where they apply to x's device and dtype, else None."""
    if x.device.type != "cpu" or x.dtype not in _DTYPES or torch.compiler.is_compiling():
        return None
    return _KERNELS.get()


def chunk_ends(logf: torch.Tensor, i: torch.Tensor, m0: torch.Tensor) -> Ends:
    """Chunk-end quantities and the stabilisers at every chunk boundary (a scan over chunks)."""
    kernels = _compiled(logf)
    if kernels is None:
        return _ends_torch(logf, i, m0)
    B, H, NC, L = logf.shape
    opts = {"dtype": logf.dtype}
    b, e = torch.empty(B, H, NC, L, **opts), torch.empty(B, H, NC, L, **opts)
    wold, wo = torch.empty(B, H, NC, **opts), torch.empty(B, H, NC, **opts)
    ms = torch.empty(B, H, NC + 1, **opts)
    ja = torch.empty(B, H, NC, dtype=torch.int64)
    kernels.ends(*numpy_views(2, logf, i, m0, b, ms, ja, wold, wo, e))
    return Ends(b, ms, ja, wold, wo, e, None)


def chunk_weights(S: torch.Tensor, logf: torch.Tensor, i: torch.Tensor, ends: Ends, scale: float):
    """P = S ⊙ W (into S, contiguous) and the per-row quantities; ``scale`` multiplies W and w0."""
    kernels = _compiled(S) if ends.D is None else None
    if kernels is None:
        D = ends.D if ends.D is not None else _log_decay(logf, i)[0]
        return _weights_torch(S, D, ends.b, ends.ms[..., :-1], scale)
    B, H, NC, L = logf.shape
    opts = {"dtype": S.dtype}
    W = torch.empty(B, H, NC, L, L, **opts)
    psum, mrow, wstate, w0 = (torch.empty(B, H, NC, L, **opts) for _ in range(4))
    jD = torch.empty(B, H, NC, L, dtype=torch.int64)
    kernels.weights(*numpy_views(2, S, logf, i, ends.b, ends.ms), float(scale),
                    *numpy_views(2, W, psum, mrow, jD, wstate, w0))
    return S, W, psum, mrow, jD, wstate, w0


def weights_backward(dP, dqn, W, P, jD, wstate, dmrow, dlw0):
    """dS = (dP + dqn) ⊙ W (into dP, contiguous), and the gradients of i and b from D, W and the
    stabilisers, and of m_c from the chunk's outputs (``dm_loc``)."""
    kernels = _compiled(dP)
    if kernels is None:
        return _backward_torch(dP, dqn, W, P, jD, wstate, dmrow, dlw0)
    B, H, NC, L = dqn.shape
    di, db = torch.empty(B, H, NC, L, dtype=dP.dtype), torch.empty(B, H, NC, L, dtype=dP.dtype)
    dm_loc = torch.empty(B, H, NC, dtype=dP.dtype)
    kernels.backward(*numpy_views(2, dP, dqn, W, P, jD, wstate, dmrow, dlw0, di, db, dm_loc))
    return dP, di, db, dm_loc


# ---- torch form -------------------------------------------------------------------------------


def _log_decay(logf: torch.Tensor, i: torch.Tensor):
    """``parallel.log_decay`` with fewer passes over the (..., L, L) matrix (all in place).

    D[t, j] = sum_{j<s<=t} logf_s + i_j for j <= t, -inf above the diagonal; the sums are running
    sums down each column (never differences of prefix sums, which cancel in fp32). Returns D,
    b = cumsum(logf), a = D[..., L-1, :] and g = sum(logf).
    """
    L = logf.shape[-1]
    strict = torch.ones(L, L, dtype=logf.dtype, device=logf.device).tril_(-1)
    D = torch.mul(logf[..., :, None], strict)  # D[t, j] = logf_t for t > j, else 0
    D.cumsum_(dim=-2)
    D.add_(i[..., None, :]).masked_fill_(strict.T.bool(), float("-inf"))
    b = logf.cumsum(-1)
    return D, b, D[..., -1, :], b[..., -1]


def max_weight(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The share of ``max(x, y)``'s gradient that goes to x: 1 where x wins, 1/2 on a tie, else 0."""
    return (x > y).to(x.dtype) + 0.5 * (x == y).to(x.dtype)


def _ends_torch(logf, i, m0) -> Ends:
    D, b, a, g = _log_decay(logf, i)
    amax, ja = a.max(-1)  # (B, H, NC)
    B, H, NC = g.shape
    ms = torch.empty(B, H, NC + 1, dtype=logf.dtype, device=logf.device)
    ms[..., 0] = m0
    m_t, gm = ms.unbind(-1), torch.empty(B, H, dtype=logf.dtype, device=logf.device)
    for c in range(NC):
        torch.maximum(torch.add(g[..., c], m_t[c], out=gm), amax[..., c], out=m_t[c + 1])
    m_start, m_end = ms[..., :-1], ms[..., 1:]
    wo = torch.exp(g + m_start - m_end)
    e = torch.exp(a - m_end[..., None])
    return Ends(b, ms, ja, max_weight(g + m_start, amax), wo, e, D)


def _weights_torch(S, D, b, m_start, scale):
    Dmax, jD = D.max(-1)  # (B, H, NC, L)
    lw0 = b + m_start[..., None]  # log weight of the start state at each step
    mrow = torch.maximum(Dmax, lw0)
    mrow_s = mrow - math.log(scale)  # exp(x - mrow_s) = scale * exp(x - mrow)
    W = torch.exp(D.sub_(mrow_s[..., None]))  # D is not needed any more
    w0 = torch.exp(lw0 - mrow_s)
    P = S.mul_(W)
    return P, W, P.sum(-1), mrow, jD, max_weight(lw0, Dmax), w0


def _backward_torch(dP, dqn, W, P, jD, wstate, dmrow, dlw0):
    dP.add_(dqn[..., None])
    dD = dP * P  # dW ⊙ W = dP ⊙ S ⊙ W = dP ⊙ P
    dS = dP.mul_(W)
    # W = exp(D - mrow), w0 = exp(b + m_c - mrow), mrow = max(max_j D_tj, b_t + m_c)
    dmrow = dmrow - (dD.sum(-1) + dlw0)
    to_state = dmrow * wstate
    db = dlw0 + to_state
    dm_loc = db.sum(-1)
    dD.scatter_add_(-1, jD[..., None], (dmrow - to_state)[..., None])
    di = dD.sum(-2)
    db += dD.sum(-1) - di  # D_tj = b_t - b_j + i_j
    return dS, di, db, dm_loc


# ---- compiled form ----------------------------------------------------------------------------


def _build():
    import numpy as np

    from xlram.ops.numba_math import exp_neg_like, jit, total

    @jit
    def ends(logf, ig, m0, b, ms, ja, wold, wo, e):  # pragma: no cover - compiled
        """logf, ig, b, e (N, NC, L); m0 (N,); ms (N, NC + 1); ja, wold, wo (N, NC)."""
        N, NC, L = logf.shape
        one, half, zero = logf.dtype.type(1), logf.dtype.type(0.5), logf.dtype.type(0)
        acc = np.empty(L, np.float64)  # running column sums, accumulated in fp64 as torch's cumsum
        a = np.empty(L, logf.dtype)
        for r in range(N):
            m = m0[r]
            ms[r, 0] = m
            for c in range(NC):
                lf, ic, bc = logf[r, c], ig[r, c], b[r, c]
                run = 0.0
                for t in range(L):
                    run += lf[t]
                    bc[t] = run
                for j in range(L):
                    acc[j] = 0.0
                for t in range(1, L):
                    x = np.float64(lf[t])
                    for j in range(t):
                        acc[j] += x
                for j in range(L):
                    a[j] = logf.dtype.type(acc[j]) + ic[j]  # a = D[L - 1]
                amax, jmax = a[0], 0
                for j in range(1, L):
                    if a[j] > amax:
                        amax, jmax = a[j], j
                gm = bc[L - 1] + m
                m_next = max(gm, amax)
                ja[r, c] = jmax
                wold[r, c] = one if gm > amax else (half if gm == amax else zero)
                wo[r, c] = exp_neg_like(gm - m_next)
                ec = e[r, c]
                for j in range(L):
                    ec[j] = exp_neg_like(a[j] - m_next)
                ms[r, c + 1] = m_next
                m = m_next

    @jit
    def weights_chunk(S, lf, ic, bc, m_start, sc, W, psum, mrow, jD, wstate, w0, acc, d):  # pragma: no cover
        """One chunk of ``weights``: S, W (L, L); lf, ic, bc, psum, mrow, jD, wstate, w0 (L,); scratch
        acc (L,) fp64, d (L,)."""
        L = lf.shape[0]
        one, half, zero = lf.dtype.type(1), lf.dtype.type(0.5), lf.dtype.type(0)
        ninf = lf.dtype.type(-np.inf)
        for j in range(L):
            acc[j] = 0.0
        for t in range(L):
            x = np.float64(lf[t])
            for j in range(t):
                acc[j] += x
            for j in range(L):  # D[t, j], -inf above the diagonal (W = 0 there)
                d[j] = lf.dtype.type(acc[j]) + ic[j] if j <= t else ninf
            dmax = d[0]
            for j in range(1, t + 1):
                dmax = max(dmax, d[j])
            jmax = t  # the first argmax, as torch's max (an integer min: it vectorises)
            for j in range(t + 1):
                jmax = min(jmax, j if d[j] == dmax else t)
            lw0 = bc[t] + m_start
            mr = max(dmax, lw0)
            St, Wt = S[t], W[t]
            for j in range(L):
                w = exp_neg_like(d[j] - mr) * sc
                Wt[j] = w
                St[j] *= w
            psum[t] = total(St)
            mrow[t] = mr
            jD[t] = jmax
            wstate[t] = one if lw0 > dmax else (half if lw0 == dmax else zero)
            w0[t] = exp_neg_like(lw0 - mr) * sc

    @jit
    def weights(S, logf, ig, b, ms, scale, W, psum, mrow, jD, wstate, w0):  # pragma: no cover - compiled
        """S, W (N, NC, L, L); logf, ig, b, psum, mrow, jD, wstate, w0 (N, NC, L); ms (N, NC + 1)."""
        N, NC, L = logf.shape
        sc = logf.dtype.type(scale)
        acc, d = np.empty(L, np.float64), np.empty(L, logf.dtype)
        for r in range(N):
            for c in range(NC):
                weights_chunk(S[r, c], logf[r, c], ig[r, c], b[r, c], ms[r, c], sc, W[r, c], psum[r, c],
                              mrow[r, c], jD[r, c], wstate[r, c], w0[r, c], acc, d)

    @jit
    def backward_chunk(dP, dqn, W, P, jD, wstate, dmrow, dlw0, di, db, col, dd, rowtot):  # pragma: no cover
        """One chunk of ``backward``: dP, W, P (L, L); the rest (L,), col, dd, rowtot scratch. Returns
        dm_loc."""
        L = dqn.shape[0]
        zero = dP.dtype.type(0)
        for j in range(L):
            col[j] = zero  # column sums of dD
        dm = zero
        for t in range(L):
            x_row, Wt, Pt, q = dP[t], W[t], P[t], dqn[t]
            for j in range(L):
                x = x_row[j] + q
                x_row[j] = x * Wt[j]
                y = x * Pt[j]  # dD = dP ⊙ P
                dd[j] = y
                col[j] += y
            rs = total(dd)
            dl = dlw0[t]
            dmr = dmrow[t] - (rs + dl)
            to_state = dmr * wstate[t]
            dbt = dl + to_state
            dm += dbt
            extra = dmr - to_state  # to the argmax of row t of D
            col[jD[t]] += extra
            rowtot[t] = rs + extra
            db[t] = dbt
        for t in range(L):
            di[t] = col[t]
            db[t] += rowtot[t] - col[t]
        return dm

    @jit
    def backward(dP, dqn, W, P, jD, wstate, dmrow, dlw0, di, db, dm_loc):  # pragma: no cover - compiled
        """dP, W, P (N, NC, L, L); dqn, jD, wstate, dmrow, dlw0, di, db (N, NC, L); dm_loc (N, NC)."""
        N, NC, L = dqn.shape
        col, dd, rowtot = np.empty(L, dP.dtype), np.empty(L, dP.dtype), np.empty(L, dP.dtype)
        for r in range(N):
            for c in range(NC):
                dm_loc[r, c] = backward_chunk(dP[r, c], dqn[r, c], W[r, c], P[r, c], jD[r, c], wstate[r, c],
                                              dmrow[r, c], dlw0[r, c], di[r, c], db[r, c], col, dd, rowtot)

    return _Kernels(ends, weights, backward, weights_chunk, backward_chunk)


class _Kernels(NamedTuple):
    ends: object
    weights: object
    backward: object
    weights_chunk: object  # one chunk of each, for kernels that loop over chunks themselves
    backward_chunk: object


_KERNELS = LazyKernels(_build)

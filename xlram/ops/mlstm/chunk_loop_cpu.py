"""The chunkwise mLSTM on CPU as one compiled loop over chunks each way, its products in OpenBLAS.

Notation of ``chunkwise_fn``, whose batched form (one batched matmul or pass per step of the
algorithm, over all chunks at once) this computes step for step. Batched, each intermediate is a
tensor of all chunks, 8-16 MB at S = 4,096 (B = 1, H = 4, d = 128), written to memory by one step
and read back by the next; the forward's three products ran at 183 GFLOP/s on operands in cache
against 131 from memory (fp32, one thread, timed alone). Here one chunk goes through every step
before the next starts, so its q kᵀ, weights, memory, outputs and, backward, its gradients stay in
cache; only what the backward needs is stored. The products are OpenBLAS's ``cblas_?gemm`` called
from the kernel (``blas_numba``); the elementwise work per chunk is the batched passes' own (``decay``
and ``rows``). fwd+bwd, one thread: the batched form with the same passes took 14.4 ms at S = 1,024
and 55.7 at 4,096, the loop 11.0 and 42.1 (each the best of alternating rounds against session 8's
code in one process, two runs a few minutes apart).

It applies on CPU, in fp32 and fp64, where ``cpu_blas`` chose OpenBLAS (loaded, and faster than
torch's BLAS in its race) and numba is on; elsewhere ``chunkwise_fn`` runs its batched form. Both
agree to rounding (tests/ops/test_mlstm_chunk_loop.py). The loop runs on one thread, OpenBLAS's
products included, whatever torch's thread count: with torch on two threads it still beat the
batched form there (fwd+bwd, B=1, H=4, d=128, wall time: S=1,024 9.34 against 10.58 ms, S=4,096
37.6 against 45.1).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from xlram.cpu_allocator import empty
from xlram.ops import cpu_blas
from xlram.ops.cpu_blas import gemm_address
from xlram.ops.mlstm import decay, rows
from xlram.ops.numba_kernels import LazyKernels, numpy_views

_DTYPES = (torch.float32, torch.float64)


def applies(x: torch.Tensor) -> bool:
    """Whether the compiled loop runs for tensors like x (see the module docstring)."""
    return (x.device.type == "cpu" and x.dtype in _DTYPES and not torch.compiler.is_compiling()
            and cpu_blas.chosen() == "openblas" and _KERNELS.get() is not None and gemm_address(x.dtype) != 0)


def _by_chunk(L: int, *xs: torch.Tensor) -> tuple:
    """Each x (B, H, S, d) as a numpy array (B·H, S / L, L, d) (see ``numpy_views``)."""
    return numpy_views(2, *(x.reshape(*x.shape[:2], -1, L, x.shape[-1]) for x in xs))


def forward(qs, k, v, logf, i, C0, n0, m0, L: int, eps: float, keep: bool, scale: float):
    """``chunkwise_forward``: qs, k (B, H, S, dk), v (B, H, S, dv); logf, i (B, H, NC, L); C0, n0, m0 the
    start state. Returns h, C_end, n_end, m_end and with ``keep`` the dict the backward needs."""
    B, H, S, dk = qs.shape
    dv, NC = v.shape[-1], S // L
    NCk = NC if keep else 1  # without keep, one chunk's worth of every per-chunk buffer
    opts = {"dtype": qs.dtype}
    b, e = torch.empty(B, H, NC, L, **opts), torch.empty(B, H, NC, L, **opts)
    ms = torch.empty(B, H, NC + 1, **opts)
    wold, wo = torch.empty(B, H, NC, **opts), torch.empty(B, H, NC, **opts)
    ja = torch.empty(B, H, NC, dtype=torch.int64)
    h = empty(B, H, S, dv, **opts)
    C_end, n_end = torch.empty(B, H, dk, dv, **opts), torch.empty(B, H, dk, **opts)
    Cst, nst = empty(B, H, NCk, dk, dv, **opts), torch.empty(B, H, NCk, dk, **opts)
    P, W = empty(B, H, NCk, L, L, **opts), empty(B, H, NCk, L, L, **opts)
    mrow, wstate, w0, qn, den = (torch.empty(B, H, NCk, L, **opts) for _ in range(5))
    jD = torch.empty(B, H, NCk, L, dtype=torch.int64)
    _KERNELS.get().forward(
        gemm_address(qs.dtype), *_by_chunk(L, qs, k, v), *numpy_views(2, logf, i, m0, C0, n0),
        float(scale), float(eps), keep, *numpy_views(2, b, ms, ja, wold, wo, e),
        *numpy_views(2, Cst, nst, P, W, mrow, jD, wstate, w0, qn, den), *_by_chunk(L, h),
        *numpy_views(2, C_end, n_end))
    m_end = ms[..., -1].clone()
    if not keep:
        return h, C_end, n_end, m_end, None
    saved = {
        "qs": qs, "k": k, "v": v, "Cst": Cst, "nst": nst, "wo": wo, "e": e,
        "ja": ja, "wold": wold, "jD": jD, "wstate": wstate,
        "mrow": mrow, "w0": w0, "W": W, "P": P, "qn": qn, "den": den, "h": h,
    }  # W, w0 and P include the scale of q
    return h, C_end, n_end, m_end, saved


def backward(sv: dict, L: int, dh, dC_end, dn_end, dm_end):
    """``chunkwise_backward`` for the loop's saved dict: the gradients of (qs, k, v, logf, i, C0, n0, m0)."""
    qs, k, v = sv["qs"], sv["k"], sv["v"]
    B, H, S, dk = qs.shape
    dv, NC = v.shape[-1], S // L
    opts = {"dtype": qs.dtype}
    dq, dk_, dv_ = (empty(*x.shape, dtype=x.dtype) for x in (qs, k, v))
    di, dlogf = torch.empty(B, H, S, **opts), torch.empty(B, H, S, **opts)
    dC0, dn0 = torch.empty(B, H, dk, dv, **opts), torch.empty(B, H, dk, **opts)
    dm0 = torch.empty(B, H, **opts)
    names = ("den", "qn", "mrow", "w0", "P", "W", "jD", "wstate", "e", "wo", "Cst", "nst", "wold", "ja")
    _KERNELS.get().backward(
        gemm_address(qs.dtype), *_by_chunk(L, qs, k, v, dh.reshape(B, H, S, dv), sv["h"]),
        *numpy_views(2, *(sv[name] for name in names), dC_end, dn_end, dm_end),
        *_by_chunk(L, dq, dk_, dv_),
        *numpy_views(2, di.view(B, H, NC, L), dlogf.view(B, H, NC, L), dC0, dn0, dm0))
    return dq, dk_, dv_, dlogf, di, dC0, dn0, dm0


def _build():
    import numpy as np

    from xlram.ops.blas_numba import gemm
    from xlram.ops.numba_math import dot, jit, total

    dec, rw = decay._KERNELS.get(), rows._KERNELS.get()
    if dec is None or rw is None:
        return None
    ends, weights_chunk, backward_chunk = dec.ends, dec.weights_chunk, dec.backward_chunk
    keys_chunk, outputs_chunk = rw.keys_chunk, rw.outputs_chunk
    grad_outputs_chunk, grad_queries_chunk, grad_keys_chunk = (
        rw.grad_outputs_chunk, rw.grad_queries_chunk, rw.grad_keys_chunk)

    @jit
    def forward(fn, q, k, v, logf, ig, m0, C0, n0, scale, eps, keep, b, ms, ja, wold, wo, e,
                Cst, nst, P, W, mrow, jD, wstate, w0, qn, den, h, C_end, n_end):  # pragma: no cover
        """q, k (N, NC, L, dk); v, h (N, NC, L, dv); logf, ig (N, NC, L); m0 (N,); C0, C_end (N, dk, dv);
        n0, n_end (N, dk). The chunk ends (``decay.chunk_ends``), written here: b, e (N, NC, L); ms
        (N, NC + 1); ja, wold, wo (N, NC). Per chunk, NCk = NC with ``keep`` (saved for the backward),
        else 1 (scratch): Cst (N, NCk, dk, dv), nst (N, NCk, dk), P, W (N, NCk, L, L), mrow, jD,
        wstate, w0, qn, den (N, NCk, L)."""
        ends(logf, ig, m0, b, ms, ja, wold, wo, e)
        N, NC, L, dK = q.shape
        dV = v.shape[3]
        one, zero = q.dtype.type(1), q.dtype.type(0)
        sc, ep = q.dtype.type(scale), q.dtype.type(eps)
        acc, d, psum = np.empty(L, np.float64), np.empty(L, q.dtype), np.empty(L, q.dtype)
        QC, ke = np.empty((L, dV), q.dtype), np.empty((L, dK), q.dtype)
        kn, KV = np.empty(dK, q.dtype), np.empty((dK, dV), q.dtype)
        for r in range(N):
            C, n = Cst[r, 0], nst[r, 0]
            C[:, :] = C0[r]
            n[:] = n0[r]
            for c in range(NC):
                s = c if keep else 0
                C, n = Cst[r, s], nst[r, s]
                qc, kc, vc, hc, Pc = q[r, c], k[r, c], v[r, c], h[r, c], P[r, s]
                gemm(fn, False, True, L, L, dK, one, qc, dK, kc, dK, zero, Pc, L)  # q kᵀ, then P in place
                weights_chunk(Pc, logf[r, c], ig[r, c], b[r, c], ms[r, c], sc, W[r, s], psum, mrow[r, s],
                              jD[r, s], wstate[r, s], w0[r, s], acc, d)
                gemm(fn, False, False, L, dV, L, one, Pc, L, vc, dV, zero, hc, dV)  # P v
                gemm(fn, False, False, L, dV, dK, one, qc, dK, C, dV, zero, QC, dV)  # q C_c
                outputs_chunk(hc, QC, qc, n, w0[r, s], psum, mrow[r, s], ep, qn[r, s], den[r, s])
                keys_chunk(kc, e[r, c], ke, kn)
                gemm(fn, True, False, dK, dV, L, one, ke, dK, vc, dV, zero, KV, dV)  # (k e)ᵀ v
                if c == NC - 1:
                    C2, n2 = C_end[r], n_end[r]
                elif keep:
                    C2, n2 = Cst[r, c + 1], nst[r, c + 1]
                else:
                    C2, n2 = C, n
                w = wo[r, c]
                for a in range(dK):
                    Ca, C2a, KVa = C[a], C2[a], KV[a]
                    for j in range(dV):
                        C2a[j] = w * Ca[j] + KVa[j]
                    n2[a] = w * n[a] + kn[a]

    @jit
    def backward(fn, q, k, v, dh, h, den, qn, mrow, w0, P, W, jD, wstate, e, wo, Cst, nst, wold, ja,
                 dC_end, dn_end, dm_end, dq, dk, dv, di, dlogf, dC0, dn0, dm0):  # pragma: no cover - compiled
        """q, k, dq, dk (N, NC, L, dk); v, dh, h, dv (N, NC, L, dv); den, qn, mrow, w0, jD, wstate, e,
        di, dlogf (N, NC, L); P, W (N, NC, L, L); wo, wold, ja (N, NC); Cst (N, NC, dk, dv);
        nst (N, NC, dk); dC_end, dC0 (N, dk, dv); dn_end, dn0 (N, dk); dm_end, dm0 (N,)."""
        N, NC, L, dK = q.shape
        dV = v.shape[3]
        one, zero = q.dtype.type(1), q.dtype.type(0)
        dnum, dP = np.empty((L, dV), q.dtype), np.empty((L, L), q.dtype)
        T1, ke = np.empty((L, dK), q.dtype), np.empty((L, dK), q.dtype)
        dqn, dmrow, dlw0 = np.empty(L, q.dtype), np.empty(L, q.dtype), np.empty(L, q.dtype)
        col, dd, rowtot = np.empty(L, q.dtype), np.empty(L, q.dtype), np.empty(L, q.dtype)
        dC, dCl = np.empty((dK, dV), q.dtype), np.empty((dK, dV), q.dtype)
        dn, dnl = np.empty(dK, q.dtype), np.empty(dK, q.dtype)
        db, da = np.empty((NC, L), q.dtype), np.empty((NC, L), q.dtype)
        dm_loc, s0, s1 = np.empty(NC, q.dtype), np.empty(NC, q.dtype), np.empty(NC, q.dtype)
        for r in range(N):
            dC[:, :] = dC_end[r]  # dC_{c+1} and dn_{c+1} while chunk c runs
            dn[:] = dn_end[r]
            for c in range(NC - 1, -1, -1):
                qc, kc, vc, C, nc = q[r, c], k[r, c], v[r, c], Cst[r, c], nst[r, c]
                dqc, dkc, dvc, w0c = dq[r, c], dk[r, c], dv[r, c], w0[r, c]
                grad_outputs_chunk(dh[r, c], h[r, c], den[r, c], qn[r, c], mrow[r, c], dnum, dqn, dmrow)
                gemm(fn, False, True, L, L, dV, one, dnum, dV, vc, dV, zero, dP, L)  # dnum vᵀ
                gemm(fn, True, False, L, dV, L, one, P[r, c], L, dnum, dV, zero, dvc, dV)  # Pᵀ dnum
                gemm(fn, False, True, L, dK, dV, one, dnum, dV, C, dV, zero, dqc, dK)  # dnum C_cᵀ
                grad_queries_chunk(dqc, dqn, nc, qc, w0c, dnum, dlw0)
                dm_loc[c] = backward_chunk(dP, dqn, W[r, c], P[r, c], jD[r, c], wstate[r, c], dmrow, dlw0,
                                           di[r, c], db[c], col, dd, rowtot)  # dP is dS now
                for t in range(L):
                    dqn[t] *= w0c[t]
                gemm(fn, True, False, dK, dV, L, one, qc, dK, dnum, dV, zero, dCl, dV)  # qᵀ dnum: dC_c local
                for a in range(dK):
                    dnl[a] = zero
                for t in range(L):
                    g, qt = dqn[t], qc[t]
                    for a in range(dK):
                        dnl[a] += qt[a] * g
                gemm(fn, False, False, L, dK, L, one, dP, L, kc, dK, one, dqc, dK)  # dq += dS k
                gemm(fn, True, False, L, dK, L, one, dP, L, qc, dK, zero, dkc, dK)  # dSᵀ q
                # the chunk's end state, C_{c+1} = wo C_c + sum_j e_j k_j v_jᵀ (likewise n)
                gemm(fn, False, True, L, dK, dV, one, vc, dV, dC, dV, zero, T1, dK)  # v dC_{c+1}ᵀ
                grad_keys_chunk(T1, dn, kc, e[r, c], dkc, da[c], ke)
                gemm(fn, False, False, L, dV, dK, one, ke, dK, dC, dV, one, dvc, dV)  # dv += (k e) dC_{c+1}
                w = wo[r, c]
                s0[c] = (dot(dC.reshape(dK * dV), C.reshape(dK * dV)) + dot(dn, nc)) * w
                for a in range(dK):
                    dCa, dCla = dC[a], dCl[a]
                    for j in range(dV):
                        dCa[j] = w * dCa[j] + dCla[j]
                    dn[a] = w * dn[a] + dnl[a]
            dC0[r] = dC
            dn0[r] = dn
            # The stabilisers back through the chunks (as ``chunkwise_backward``'s batched tail): T_c, the
            # gradient reaching m_c, is dm_loc_c + s0_c + wold_c (T_{c+1} - s1_c).
            for c in range(NC):
                s1[c] = s0[c] + total(da[c])
            T = dm_end[r]  # T_{c+1} while chunk c runs
            for c in range(NC - 1, -1, -1):
                wc = wold[r, c]
                dmp = T - s1[c]  # gradient reaching the max that made m_{c+1}
                T = wc * T + (dm_loc[c] + s0[c] - wc * s1[c])
                dac = da[c]
                dac[ja[r, c]] += (one - wc) * dmp
                dg = wc * dmp + s0[c] + total(dac)
                dic, dbc, dlc = di[r, c], db[c], dlogf[r, c]
                for t in range(L):  # a_j = g - b_j + i_j, g = b_{L-1}, b = cumsum(logf)
                    dic[t] += dac[t]
                    dbc[t] -= dac[t]
                dbc[L - 1] += dg
                run = zero
                for t in range(L - 1, -1, -1):
                    run += dbc[t]
                    dlc[t] = run
            dm0[r] = T

    return _Kernels(forward, backward)


class _Kernels(NamedTuple):
    forward: object
    backward: object


_KERNELS = LazyKernels(_build)

"""The chunkwise mLSTM as one autograd Function with a hand-derived backward.

Autograd through the chunkwise form records a graph of a few dozen nodes per chunk and keeps every
intermediate alive; this Function runs the forward without a graph, saves what the backward needs
(linear in S) and computes every gradient with batched matmuls over all chunks at once. Only two
things are sequential, in both directions: the stabiliser ``m`` and the memory ``(C, n)`` from one
chunk to the next (scans over chunks; on CPU those of the memories, and the stabiliser's backward, one
compiled pass each: ``scan_cpu``). The work on the (L, L) decay matrices and the stabilisers, both
ways, is ``decay``: one compiled pass per chunk on CPU, which never stores the log decays; the
row-wise work between the matmuls (row scales, normaliser, row dot products) is ``rows``. On CPU
where ``cpu_blas`` chose OpenBLAS, both directions run instead as one compiled loop over chunks
(``chunk_loop_cpu``), the same steps chunk by chunk, with the same results.

Notation (per batch and head; chunk c of L steps starts from the state (C_c, n_c, m_c)):

- ``b_t = sum_{s<=t} log f_s``, ``D_tj = sum_{j<s<=t} log f_s + i_j`` (j <= t), ``a_j = D_{L-1,j}``,
  ``g = b_{L-1}`` (``_log_decay``, as ``parallel.log_decay``);
- end of chunk: ``m_{c+1} = max(g + m_c, max_j a_j)``, ``C_{c+1} = wo C_c + sum_j e_j k_j v_jᵀ``,
  ``n_{c+1} = wo n_c + sum_j e_j k_j`` with ``wo = exp(g + m_c - m_{c+1})``, ``e_j = exp(a_j - m_{c+1})``;
- outputs: ``mrow_t = max(max_j D_tj, b_t + m_c)`` (exactly the recurrent m_t), ``W = exp(D - mrow)``,
  ``w0 = exp(b + m_c - mrow)``, ``P = (q̂ kᵀ) ⊙ W``, ``num = P v + w0 ⊙ (q̂ C_c)``,
  ``qn = P 1 + w0 ⊙ (q̂ n_c)``, ``den = max(|qn|, exp(-mrow)) + eps``, ``h = num / den``.

The backward (``chunkwise_backward``) is the chain rule through exactly these equations, including
the normaliser and the stabiliser: a gradient reaching a max goes to the argument that won it (half
to each on a tie, as autograd's ``maximum`` does), so it equals autograd through the step-by-step
reference to round-off. Two identities keep it short: ``dW ⊙ W = dP ⊙ P``, and the gradient that
reaches m_{c+1} through the scale of the stabilised end state is
``-<dC_{c+1}, C_{c+1}> - <dn_{c+1}, n_{c+1}>``.

The normaliser is kept apart from C on purpose: folding it in as an extra value column (v' = [v, 1])
saves kernels but makes every d x d matmul d x (d+1), which ran ~30 % slower in MKL here.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from xlram.ops import cpu_blas
from xlram.ops.mlstm import chunk_loop_cpu, rows
from xlram.ops.mlstm.decay import chunk_ends, chunk_weights, weights_backward
from xlram.ops.mlstm.scan_cpu import scan
from xlram.ops.rowdot import rowdot


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched matmul over all leading dims: (..., n, k) @ (..., k, m) -> (..., n, m)."""
    lead = a.shape[:-2]
    out = cpu_blas.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
    return out.view(*lead, a.shape[-2], b.shape[-1])


def _baddbmm(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """c + a @ b over all leading dims, in place into c (contiguous)."""
    cpu_blas.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]), out=c.view(-1, *c.shape[-2:]),
                 beta=1.0)
    return c


def chunkwise_forward(qs, k, v, logf, i, C0, n0, m0, L: int, eps: float, keep: bool, scale: float = 1.0):
    """Forward over NC = S // L whole chunks; all tensors contiguous, in the compute dtype.

    qs, k: (B, H, S, dk); v: (B, H, S, dv); logf, i: (B, H, S); ``scale`` multiplies q (1/sqrt(dk)):
    it is folded into the decay weights W and w0, which multiply every product with q, so q itself is
    never scaled (one pass less each way);
    C0: (B, H, dk, dv); n0: (B, H, dk); m0: (B, H).
    Returns h (B, H, S, dv), the final C, n, m, and with ``keep`` a dict of what the backward needs
    (else None).
    """
    B, H, S, dk = qs.shape
    dv = v.shape[-1]
    NC = S // L
    q_c, k_c, v_c = (x.view(B, H, NC, L, x.shape[-1]) for x in (qs, k, v))
    logf_c, i_c = logf.view(B, H, NC, L), i.view(B, H, NC, L)
    # Stabilisers at the chunk boundaries (a scan over chunks of (B, H) scalars) and chunk-end weights.
    if chunk_loop_cpu.applies(qs):
        return chunk_loop_cpu.forward(qs, k, v, logf_c, i_c, C0, n0, m0, L, eps, keep, scale)
    ends = chunk_ends(logf_c, i_c, m0)
    ms, wo, e = ends.ms, ends.wo, ends.e

    # Memories at the chunk starts: what each chunk adds in one batched matmul, then a scan.
    ke, Kn = rows.keys(k_c, e)  # k_j e_j (B, H, NC, L, dk) and their sum over the chunk (B, H, NC, dk)
    KV = _bmm(ke.transpose(-1, -2), v_c)  # (B, H, NC, dk, dv)
    del ke
    Cst, C_end = scan(KV, wo, C0)  # Cst[:, :, c] = C_c
    nst, n_end = scan(Kn, wo, n0)
    del KV, Kn

    # Outputs of every chunk at once; W, w0 and P include the scale of q.
    S_qk = _bmm(q_c, k_c.transpose(-1, -2))  # (B, H, NC, L, L), becomes P
    P, W, psum, mrow, jD, wstate, w0 = chunk_weights(S_qk, logf_c, i_c, ends, scale)
    QC = _bmm(q_c, Cst)  # (B, H, NC, L, dv)
    h, qn, den = rows.outputs(_bmm(P, v_c), QC, q_c, nst, w0, psum, mrow, eps)  # qn, den (B, H, NC, L)
    del QC
    h = h.view(B, H, S, dv)
    m_fin = ms[..., -1].clone()
    if not keep:
        return h, C_end, n_end, m_fin, None
    saved = {
        "qs": qs, "k": k, "v": v, "Cst": Cst, "nst": nst, "wo": wo, "e": e,
        "ja": ends.ja, "wold": ends.wold, "jD": jD, "wstate": wstate,
        "mrow": mrow, "w0": w0, "W": W, "P": P, "qn": qn, "den": den, "h": h,
    }  # W, w0 and P include the scale of q
    return h, C_end, n_end, m_fin, saved


def _backward_batched(sv: dict, L: int, dh, dC_end, dn_end):
    """The chunk-by-chunk part of ``chunkwise_backward`` as batched products and passes over all chunks:
    returns dq, dk, dv (B, H, NC, L, d), di, db, da (B, H, NC, L), dm_loc, s0 (B, H, NC), dC0, dn0."""
    qs, k, v, Cst, nst = sv["qs"], sv["k"], sv["v"], sv["Cst"], sv["nst"]
    B, H, S, dk = qs.shape
    dv = v.shape[-1]
    NC = S // L
    q_c, k_c, v_c = (x.view(B, H, NC, L, x.shape[-1]) for x in (qs, k, v))
    w0, W, P, den, e = sv["w0"], sv["W"], sv["P"], sv["den"], sv["e"]

    # h = num / den with den = max(|qn|, exp(-mrow)) + eps
    dh = dh.reshape(B, H, NC, L, dv)  # any strides (upstream gradients may be transposed or expanded)
    h = sv["h"].view(B, H, NC, L, dv)
    dnum, dqn, dmrow = rows.grad_outputs(dh, h, den, sv["qn"], sv["mrow"])

    # num = P v + w0 (q̂ C_c), qn = P 1 + w0 (q̂ n_c), P = (q̂ kᵀ) ⊙ W
    dPv = _bmm(dnum, v_c.transpose(-1, -2))  # (B, H, NC, L, L): dP less its dqn term
    dv_ = _bmm(P.transpose(-1, -2), dnum)  # (B, H, NC, L, dv)
    dq = _bmm(dnum, Cst.transpose(-1, -2))  # (..., L, dk), times w0 below
    # dq <- (dq + dqn nstᵀ) w0, dnum <- dnum w0; dlw0: gradient of lw0 = b + m_c, the log of w0
    dlw0 = rows.grad_queries(dq, dqn, nst, q_c, w0, dnum)
    dS, di, db, dm_loc = weights_backward(dPv, dqn, W, P, sv["jD"], sv["wstate"], dmrow, dlw0)
    dqn.mul_(w0)
    dC_loc = _bmm(q_c.transpose(-1, -2), dnum)  # (B, H, NC, dk, dv): gradient of C_c from chunk c
    dn_loc = _bmm(q_c.transpose(-1, -2), dqn[..., None]).squeeze(-1)  # (B, H, NC, dk)
    del dnum, dqn
    _baddbmm(dq, dS, k_c)
    dk_ = _bmm(dS.transpose(-1, -2), q_c)
    del dS, dPv

    # Memories back through the chunks: dC_{c+1}, dn_{c+1} for every chunk c, then the chunk-end terms.
    wo = sv["wo"]
    dCn, dC0 = scan(dC_loc, wo, dC_end, reverse=True)  # dCn[:, :, c] = dC_{c+1}
    dnn, dn0 = scan(dn_loc, wo, dn_end, reverse=True)
    del dC_loc, dn_loc
    # C_{c+1} = wo C_c + sum_j e_j k_j v_jᵀ, n_{c+1} = wo n_c + sum_j e_j k_j
    T1 = _bmm(v_c, dCn.transpose(-1, -2))  # (..., L, dk): dC v_j, plus dn below
    da, ke = rows.grad_keys(T1, dnn, k_c, e, dk_)  # da: gradient of a_j through e_j; dk += T1 e
    del T1
    _baddbmm(dv_, ke, dCn)
    del ke
    # gradient of g + m_c - m_{c+1}; dCn is not needed after this
    s0 = rowdot(dCn, Cst, dims=2, x_is_scratch=True).add_(rowdot(dnn, nst)).mul_(wo)
    return dq, dk_, dv_, di, db, da, dm_loc, s0, dC0, dn0


def chunkwise_backward(sv: dict, L: int, dh, dC_end, dn_end, dm_end):
    """Gradients of (qs, k, v, logf, i, C0, n0, m0) from those of h and of the final C, n, m."""
    qs, v = sv["qs"], sv["v"]
    B, H, S, dk = qs.shape
    dv = v.shape[-1]
    if chunk_loop_cpu.applies(qs):
        return chunk_loop_cpu.backward(sv, L, dh, dC_end, dn_end, dm_end)
    dq, dk_, dv_, di, db, da, dm_loc, s0, dC0, dn0 = _backward_batched(sv, L, dh, dC_end, dn_end)
    # <dC_{c+1}, C_{c+1}> + <dn_{c+1}, n_{c+1}> = s0 + sum_j e_j (k_j·(dC v_j + dn)) = s0 + sum_j da_j
    s1 = s0 + da.sum(-1)
    # Stabilisers back through the chunks: T_c, the gradient reaching m_c, is
    # dm_loc_c + s0_c + wold_c (T_{c+1} - s1_c), where wold is the share of m_{c+1} that g + m_c won.
    wold = sv["wold"]
    u = dm_loc + s0 - wold * s1
    T_next, T0 = scan(u, wold, dm_end, reverse=True)  # T_next[..., c] = T_{c+1}
    dmp = T_next - s1  # gradient reaching the max that made m_{c+1}
    da.scatter_add_(-1, sv["ja"][..., None], ((1 - wold) * dmp)[..., None])
    dg = wold * dmp + s0 + da.sum(-1)
    # a_j = g - b_j + i_j, g = b_{L-1}, b = cumsum(logf)
    di += da
    db -= da
    db[..., -1] += dg
    dlogf = db.flip(-1).cumsum(-1).flip(-1)
    return (
        dq.view(B, H, S, dk), dk_.view(B, H, S, dk), dv_.view(B, H, S, dv),
        dlogf.reshape(B, H, S), di.reshape(B, H, S), dC0, dn0, T0,
    )


class ChunkwiseFunction(torch.autograd.Function):
    """(q, k, v, logf, i, C0, n0, m0, L, eps, scale) -> (h, C_end, n_end, m_end).

    See ``chunkwise_forward``; the backward is ``chunkwise_backward``."""

    @staticmethod
    def forward(ctx, qs, k, v, logf, i, C0, n0, m0, L, eps, scale):
        h, C_end, n_end, m_end, saved = chunkwise_forward(qs, k, v, logf, i, C0, n0, m0, L, eps, True, scale)
        ctx.keys = tuple(saved)
        ctx.save_for_backward(*saved.values())
        ctx.L = L
        return h, C_end, n_end, m_end

    @staticmethod
    @once_differentiable
    def backward(ctx, dh, dC_end, dn_end, dm_end):
        sv = dict(zip(ctx.keys, ctx.saved_tensors, strict=True))
        grads = chunkwise_backward(sv, ctx.L, dh, dC_end, dn_end, dm_end)
        return (*grads, None, None, None)

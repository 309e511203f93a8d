"""mLSTM chunkwise forward in Triton: two kernels, with two levels of tiling as in TFLA.

The sequence is cut into chunks of L steps (the recurrence runs between chunks); inside a chunk
the parallel form is computed in tiles of BQ query rows by BKV key columns, so L is bounded by
neither SRAM nor registers, only by the O(L) work per step it costs. Head sizes are tiled too (BK
for dk, BV for dv), so any dk and dv work.

The gate arithmetic is done beforehand (``mlstm_chunkwise.prepare_gates``) in fp64 and handed to
the kernels as per-step fp32 log weights, all <= 0, the stabiliser included:

    rowlog_t   = b_t - m_t              intra-chunk weight of (t, j): exp(rowlog_t + collog_j), j <= t
    collog_j   = ĩ_j - b_j
    interlog_t = b_t + m_c - m_t        weight of the chunk-start state in h_t
    statelog_j = g - b_j + ĩ_j - m_c+1  weight of step j in the chunk-end state
    eglog_c    = g + m_c - m_c+1        weight of the chunk-start state in the chunk-end state

with b the cumulative log forget gate inside the chunk, g its total, m_t the recurrent stabiliser
and m_c the stabiliser of the state at the start of chunk c. So the kernels hold no max logic and
their m is exactly the recurrent m_t (no clamp such as TFLA's minimum -10).

Layouts, with BH = B * H and Sp = NC * L >= S (the tail chunk is masked, not padded):
q, k (BH, S, DK); v, h (BH, S, DV); per-step vectors (BH, Sp); per-chunk (BH, NC);
states C (BH, NC + 1, DK, DV), n (BH, NC + 1, DK): the state at the start of every chunk and the final one.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import mm


@triton.jit
def mlstm_fw_states_kernel(
    k_ptr, v_ptr, statelog_ptr, eglog_ptr, C0_ptr, n0_ptr, Cs_ptr, ns_ptr,
    S, Sp, NC,
    DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BL: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, DT: tl.constexpr, IP: tl.constexpr,
):
    """Chunk-start states. Grid (cdiv(DK, BK), cdiv(DV, BV), BH); one (BK, BV) tile of C per program,
    a loop over chunks, and inside a chunk a loop over tiles of BL steps."""
    pk, pv, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ok = pk * BK + tl.arange(0, BK)
    ov = pv * BV + tl.arange(0, BV)
    mk, mv = ok < DK, ov < DV
    C_off = ok[:, None] * DV + ov[None, :]
    C_mask = mk[:, None] & mv[None, :]
    C = tl.load(C0_ptr + bh * DK * DV + C_off, mask=C_mask, other=0.0).to(tl.float32)
    n = tl.load(n0_ptr + bh * DK + ok, mask=mk, other=0.0).to(tl.float32)
    k_base = k_ptr + bh.to(tl.int64) * S * DK
    v_base = v_ptr + bh.to(tl.int64) * S * DV
    Cs_base = Cs_ptr + bh.to(tl.int64) * (NC + 1) * DK * DV
    ns_base = ns_ptr + bh.to(tl.int64) * (NC + 1) * DK
    for c in range(NC):
        tl.store(Cs_base + c * DK * DV + C_off, C, mask=C_mask)
        if pv == 0:
            tl.store(ns_base + c * DK + ok, n, mask=mk)
        eg = tl.exp(tl.load(eglog_ptr + bh * NC + c))
        acc_C = tl.zeros((BK, BV), dtype=tl.float32)
        acc_n = tl.zeros((BK,), dtype=tl.float32)
        for lt in range(L // BL):
            t = c * L + lt * BL + tl.arange(0, BL)
            mt = t < S
            a = tl.exp(tl.load(statelog_ptr + bh * Sp + t))  # (BL,), 0 on the masked tail
            kT = tl.load(k_base + t[None, :] * DK + ok[:, None], mask=mk[:, None] & mt[None, :], other=0.0)
            vt = tl.load(v_base + t[:, None] * DV + ov[None, :], mask=mt[:, None] & mv[None, :], other=0.0)
            ka = kT.to(tl.float32) * a[None, :]  # (BK, BL)
            acc_C += mm(ka, vt, DT, IP)
            acc_n += tl.sum(ka, axis=1)
        C = eg * C + acc_C
        n = eg * n + acc_n
    tl.store(Cs_base + NC * DK * DV + C_off, C, mask=C_mask)
    if pv == 0:
        tl.store(ns_base + NC * DK + ok, n, mask=mk)


@triton.jit
def mlstm_fw_out_kernel(
    q_ptr, k_ptr, v_ptr, rowlog_ptr, rowlo_ptr, collog_ptr, collo_ptr, interlog_ptr, m_ptr, Cs_ptr, ns_ptr,
    h_ptr, qn_ptr,
    S, Sp, NC, scale, eps,
    DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BQ: tl.constexpr, BKV: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, DT: tl.constexpr, IP: tl.constexpr,
):
    """Outputs. Grid (cdiv(DV, BV), L // BQ, NC * BH): one (BQ, BV) tile of h per program.

    h_t = (Σ_j P_tj v_j + w_t q̂_t C_c) / (max(|Σ_j P_tj + w_t q̂_t·n_c|, exp(-m_t)) + eps) with
    P_tj = (q̂_t·k_j) exp(rowlog_t + collog_j) and w_t = exp(interlog_t). Also writes the signed
    normaliser q̂·n (the value inside the |.|) for the backward.
    """
    pv, pq, pcb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pcb % NC
    bh = pcb // NC
    t = c * L + pq * BQ + tl.arange(0, BQ)
    mt = t < S
    ov = pv * BV + tl.arange(0, BV)
    mv = ov < DV
    q_base = q_ptr + bh.to(tl.int64) * S * DK
    k_base = k_ptr + bh.to(tl.int64) * S * DK
    v_base = v_ptr + bh.to(tl.int64) * S * DV
    rowlog = tl.load(rowlog_ptr + bh * Sp + t)
    rowlo = tl.load(rowlo_ptr + bh * Sp + t)

    acc = tl.zeros((BQ, BV), dtype=tl.float32)
    qn = tl.zeros((BQ,), dtype=tl.float32)
    # Key tiles up to the diagonal: those holding a position <= the last row of this query tile.
    n_kv = ((pq + 1) * BQ + BKV - 1) // BKV
    for jt in range(n_kv):
        j = c * L + jt * BKV + tl.arange(0, BKV)
        mj = j < S
        s = tl.zeros((BQ, BKV), dtype=tl.float32)
        for kk in range(tl.cdiv(DK, BK)):
            ok = kk * BK + tl.arange(0, BK)
            mk = ok < DK
            qt = tl.load(q_base + t[:, None] * DK + ok[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
            kT = tl.load(k_base + j[None, :] * DK + ok[:, None], mask=mk[:, None] & mj[None, :], other=0.0)
            s += mm(qt, kT, DT, IP)
        collog = tl.load(collog_ptr + bh * Sp + j)
        collo = tl.load(collo_ptr + bh * Sp + j)
        logw = (rowlog[:, None] + collog[None, :]) + (rowlo[:, None] + collo[None, :])
        logw = tl.where(t[:, None] >= j[None, :], logw, float("-inf"))
        p = s * scale * tl.exp(logw)
        qn += tl.sum(p, axis=1)
        vt = tl.load(v_base + j[:, None] * DV + ov[None, :], mask=mj[:, None] & mv[None, :], other=0.0)
        acc += mm(p, vt, DT, IP)

    # The chunk-start state, weighted by exp(interlog_t) per row.
    w = tl.exp(tl.load(interlog_ptr + bh * Sp + t))
    Cs_base = Cs_ptr + (bh.to(tl.int64) * (NC + 1) + c) * DK * DV
    ns_base = ns_ptr + (bh.to(tl.int64) * (NC + 1) + c) * DK
    for kk in range(tl.cdiv(DK, BK)):
        ok = kk * BK + tl.arange(0, BK)
        mk = ok < DK
        qt = tl.load(q_base + t[:, None] * DK + ok[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
        qw = qt.to(tl.float32) * (scale * w)[:, None]
        Ct = tl.load(Cs_base + ok[:, None] * DV + ov[None, :], mask=mk[:, None] & mv[None, :], other=0.0)
        acc += mm(qw, Ct, DT, IP)
        nt = tl.load(ns_base + ok, mask=mk, other=0.0)
        qn += tl.sum(qw * nt[None, :], axis=1)

    m = tl.load(m_ptr + bh * Sp + t)
    den = tl.maximum(tl.abs(qn), tl.exp(-m)) + eps
    h = acc / den[:, None]
    h_base = h_ptr + bh.to(tl.int64) * S * DV
    tl.store(h_base + t[:, None] * DV + ov[None, :], h.to(h_ptr.dtype.element_ty),
             mask=mt[:, None] & mv[None, :])
    if pv == 0:
        tl.store(qn_ptr + bh * Sp + t, qn)


def launch_fw_states(k, v, statelog, eglog, C0, n0, *, S, Sp, NC, L, BL, BK, BV, DT, IP,
                     num_warps=8):
    """Run ``mlstm_fw_states_kernel``; returns Cs (BH, NC + 1, DK, DV), ns (BH, NC + 1, DK) in fp32."""
    import torch

    BH, _, DK = k.shape
    DV = v.shape[-1]
    Cs = torch.empty(BH, NC + 1, DK, DV, dtype=torch.float32, device=k.device)
    ns = torch.empty(BH, NC + 1, DK, dtype=torch.float32, device=k.device)
    grid = (triton.cdiv(DK, BK), triton.cdiv(DV, BV), BH)
    mlstm_fw_states_kernel[grid](
        k, v, statelog, eglog, C0, n0, Cs, ns, S, Sp, NC,
        DK=DK, DV=DV, L=L, BL=BL, BK=BK, BV=BV, DT=DT, IP=IP, num_warps=num_warps,
    )
    return Cs, ns


def launch_fw_out(q, k, v, g, Cs, ns, *, S, Sp, NC, L, BQ, BKV, BK, BV, DT, IP, eps, out_dtype,
                  num_warps=8):
    """Run ``mlstm_fw_out_kernel``; returns h (BH, S, DV) in ``out_dtype`` and q̂·n (BH, Sp) in fp32."""
    import torch

    BH, _, DK = q.shape
    DV = v.shape[-1]
    h = torch.empty(BH, S, DV, dtype=out_dtype, device=q.device)
    qn = torch.empty(BH, Sp, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(DV, BV), L // BQ, NC * BH)
    mlstm_fw_out_kernel[grid](
        q, k, v, g["rowlog"], g["rowlog_lo"], g["collog"], g["collog_lo"], g["interlog"], g["m"],
        Cs, ns, h, qn,
        S, Sp, NC, DK**-0.5, eps,
        DK=DK, DV=DV, L=L, BQ=BQ, BKV=BKV, BK=BK, BV=BV, DT=DT, IP=IP, num_warps=num_warps,
    )
    return h, qn

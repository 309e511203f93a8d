"""mLSTM chunkwise backward in Triton: four kernels, tiled like the forward (see ``mlstm_chunkwise_fw``).

The backward here holds every stabiliser m fixed; ``mlstm_chunkwise.py`` adds the part that flows
through m (only the eps term and the final state depend on it) and turns the per-step sums the
kernels write into the gate gradients. With m fixed, h_t = num_t / den_t where the value side of
the memory is augmented by the normaliser (v'_j = [v_j, 1], C' = [C, n]), so the full gradient,
normaliser included, is the linear-attention backward with

    dnum_t = dh_t / den_t        (a DV-vector)
    r_t    = d(q̂_t·n) = -<dh_t, h_t> / den_t · sign(q̂·n) · [|q̂·n| > exp(-m_t)]    (the extra column)

both computed beforehand per step: ``inv_den`` = 1/den_t and ``r``. In these terms (j <= t in a chunk):

    dP_tj = <dnum_t, v_j> + r_t,  dS_tj = dP_tj W_tj,  W_tj = exp(rowlog_t + collog_j)
    dq̂_t  = Σ_j dS_tj k_j + w_t (C_c dnum_t + r_t n_c)
    dk_j  = Σ_t dS_tj q̂_t + α_j (dC_c+1 v_j + dn_c+1)
    dv_j  = Σ_t P_tj dnum_t + α_j dC_c+1ᵀ k_j
    dC_c  = e_c dC_c+1 + Σ_t w_t q̂_t dnum_tᵀ,   dn_c = e_c dn_c+1 + Σ_t w_t r_t q̂_t

with w_t = exp(interlog_t), α_j = exp(statelog_j), e_c = exp(eglog_c). The kernels also write
q·dq and k·dk per step (summed over their dk tile), from which the gate gradients follow.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import mm


@triton.jit
def mlstm_bw_states_kernel(
    q_ptr, dh_ptr, interlog_ptr, eglog_ptr, inv_den_ptr, r_ptr, dCT_ptr, dnT_ptr, dCs_ptr, dns_ptr,
    S, Sp, NC, scale,
    DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BL: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, DT: tl.constexpr, IP: tl.constexpr,
):
    """Gradients of the chunk-start states, by the reverse recurrence. Grid (cdiv(DK, BK), cdiv(DV, BV), BH).

    dCs[c] is the gradient of the state at the start of chunk c (dCs[0]: the initial state,
    dCs[NC]: the final state, as given)."""
    pk, pv, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ok = pk * BK + tl.arange(0, BK)
    ov = pv * BV + tl.arange(0, BV)
    mk, mv = ok < DK, ov < DV
    C_off = ok[:, None] * DV + ov[None, :]
    C_mask = mk[:, None] & mv[None, :]
    dC = tl.load(dCT_ptr + bh * DK * DV + C_off, mask=C_mask, other=0.0).to(tl.float32)
    dn = tl.load(dnT_ptr + bh * DK + ok, mask=mk, other=0.0).to(tl.float32)
    q_base = q_ptr + bh.to(tl.int64) * S * DK
    dh_base = dh_ptr + bh.to(tl.int64) * S * DV
    dCs_base = dCs_ptr + bh.to(tl.int64) * (NC + 1) * DK * DV
    dns_base = dns_ptr + bh.to(tl.int64) * (NC + 1) * DK
    for cc in range(NC):
        c = NC - 1 - cc
        tl.store(dCs_base + (c + 1) * DK * DV + C_off, dC, mask=C_mask)
        if pv == 0:
            tl.store(dns_base + (c + 1) * DK + ok, dn, mask=mk)
        eg = tl.exp(tl.load(eglog_ptr + bh * NC + c))
        acc_C = tl.zeros((BK, BV), dtype=tl.float32)
        acc_n = tl.zeros((BK,), dtype=tl.float32)
        for lt in range(L // BL):
            t = c * L + lt * BL + tl.arange(0, BL)
            mt = t < S
            w = tl.exp(tl.load(interlog_ptr + bh * Sp + t)) * scale
            inv_den = tl.load(inv_den_ptr + bh * Sp + t)
            r = tl.load(r_ptr + bh * Sp + t)
            qT = tl.load(q_base + t[None, :] * DK + ok[:, None], mask=mk[:, None] & mt[None, :], other=0.0)
            qw = qT.to(tl.float32) * w[None, :]  # (BK, BL)
            dht = tl.load(dh_base + t[:, None] * DV + ov[None, :], mask=mt[:, None] & mv[None, :], other=0.0)
            dnum = dht.to(tl.float32) * inv_den[:, None]  # (BL, BV)
            acc_C += mm(qw, dnum, DT, IP)
            acc_n += tl.sum(qw * r[None, :], axis=1)
        dC = eg * dC + acc_C
        dn = eg * dn + acc_n
    tl.store(dCs_base + C_off, dC, mask=C_mask)
    if pv == 0:
        tl.store(dns_base + ok, dn, mask=mk)


@triton.jit
def mlstm_bw_dq_kernel(
    q_ptr, k_ptr, v_ptr, dh_ptr, rowlog_ptr, rowlo_ptr, collog_ptr, collo_ptr, interlog_ptr,
    inv_den_ptr, r_ptr, Cs_ptr, ns_ptr, dq_ptr, qdq_ptr,
    S, Sp, NC, BH, scale,
    DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BQ: tl.constexpr, BKV: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, DT: tl.constexpr, IP: tl.constexpr,
):
    """dq and q·dq. Grid (cdiv(DK, BK), L // BQ, NC * BH): one (BQ, BK) tile of dq per program."""
    pk, pq, pcb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pcb % NC
    bh = pcb // NC
    t = c * L + pq * BQ + tl.arange(0, BQ)
    mt = t < S
    ok = pk * BK + tl.arange(0, BK)
    mk = ok < DK
    q_base = q_ptr + bh.to(tl.int64) * S * DK
    k_base = k_ptr + bh.to(tl.int64) * S * DK
    v_base = v_ptr + bh.to(tl.int64) * S * DV
    dh_base = dh_ptr + bh.to(tl.int64) * S * DV
    rowlog = tl.load(rowlog_ptr + bh * Sp + t)
    rowlo = tl.load(rowlo_ptr + bh * Sp + t)
    inv_den = tl.load(inv_den_ptr + bh * Sp + t)
    r = tl.load(r_ptr + bh * Sp + t)

    acc = tl.zeros((BQ, BK), dtype=tl.float32)  # dq̂
    n_kv = ((pq + 1) * BQ + BKV - 1) // BKV
    for jt in range(n_kv):
        j = c * L + jt * BKV + tl.arange(0, BKV)
        mj = j < S
        dp = tl.zeros((BQ, BKV), dtype=tl.float32) + r[:, None]
        for vv in range(tl.cdiv(DV, BV)):
            ov = vv * BV + tl.arange(0, BV)
            mv = ov < DV
            dht = tl.load(dh_base + t[:, None] * DV + ov[None, :], mask=mt[:, None] & mv[None, :], other=0.0)
            vT = tl.load(v_base + j[None, :] * DV + ov[:, None], mask=mv[:, None] & mj[None, :], other=0.0)
            dp += mm(dht.to(tl.float32) * inv_den[:, None], vT, DT, IP)
        collog = tl.load(collog_ptr + bh * Sp + j)
        collo = tl.load(collo_ptr + bh * Sp + j)
        logw = (rowlog[:, None] + collog[None, :]) + (rowlo[:, None] + collo[None, :])
        logw = tl.where(t[:, None] >= j[None, :], logw, float("-inf"))
        ds = dp * tl.exp(logw)
        kt = tl.load(k_base + j[:, None] * DK + ok[None, :], mask=mj[:, None] & mk[None, :], other=0.0)
        acc += mm(ds, kt, DT, IP)

    w = tl.exp(tl.load(interlog_ptr + bh * Sp + t))
    Cs_base = Cs_ptr + (bh.to(tl.int64) * (NC + 1) + c) * DK * DV
    for vv in range(tl.cdiv(DV, BV)):
        ov = vv * BV + tl.arange(0, BV)
        mv = ov < DV
        dht = tl.load(dh_base + t[:, None] * DV + ov[None, :], mask=mt[:, None] & mv[None, :], other=0.0)
        dnum_w = dht.to(tl.float32) * (inv_den * w)[:, None]
        CT = tl.load(Cs_base + ok[None, :] * DV + ov[:, None], mask=mv[:, None] & mk[None, :], other=0.0)
        acc += mm(dnum_w, CT, DT, IP)
    nt = tl.load(ns_ptr + (bh.to(tl.int64) * (NC + 1) + c) * DK + ok, mask=mk, other=0.0)
    acc += (w * r)[:, None] * nt[None, :]

    dq = acc * scale
    tl.store(dq_ptr + bh.to(tl.int64) * S * DK + t[:, None] * DK + ok[None, :],
             dq.to(dq_ptr.dtype.element_ty), mask=mt[:, None] & mk[None, :])
    qt = tl.load(q_base + t[:, None] * DK + ok[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
    tl.store(qdq_ptr + (pk * BH + bh) * Sp + t, tl.sum(qt.to(tl.float32) * dq, axis=1))


@triton.jit
def mlstm_bw_dk_kernel(
    q_ptr, k_ptr, v_ptr, dh_ptr, rowlog_ptr, rowlo_ptr, collog_ptr, collo_ptr, statelog_ptr,
    inv_den_ptr, r_ptr, dCs_ptr, dns_ptr, dk_ptr, kdk_ptr,
    S, Sp, NC, BH, scale,
    DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BQ: tl.constexpr, BKV: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, DT: tl.constexpr, IP: tl.constexpr,
):
    """dk and k·dk. Grid (cdiv(DK, BK), L // BKV, NC * BH): one (BKV, BK) tile of dk per program."""
    pk, pj, pcb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pcb % NC
    bh = pcb // NC
    j = c * L + pj * BKV + tl.arange(0, BKV)
    mj = j < S
    ok = pk * BK + tl.arange(0, BK)
    mk = ok < DK
    q_base = q_ptr + bh.to(tl.int64) * S * DK
    k_base = k_ptr + bh.to(tl.int64) * S * DK
    v_base = v_ptr + bh.to(tl.int64) * S * DV
    dh_base = dh_ptr + bh.to(tl.int64) * S * DV
    collog = tl.load(collog_ptr + bh * Sp + j)
    collo = tl.load(collo_ptr + bh * Sp + j)

    acc = tl.zeros((BKV, BK), dtype=tl.float32)
    # Query tiles from the one holding this key tile's first position to the end of the chunk.
    for qt_i in range((pj * BKV) // BQ, L // BQ):
        t = c * L + qt_i * BQ + tl.arange(0, BQ)
        mt = t < S
        rowlog = tl.load(rowlog_ptr + bh * Sp + t)
        rowlo = tl.load(rowlo_ptr + bh * Sp + t)
        inv_den = tl.load(inv_den_ptr + bh * Sp + t)
        r = tl.load(r_ptr + bh * Sp + t)
        dpT = tl.zeros((BKV, BQ), dtype=tl.float32) + r[None, :]
        for vv in range(tl.cdiv(DV, BV)):
            ov = vv * BV + tl.arange(0, BV)
            mv = ov < DV
            vt = tl.load(v_base + j[:, None] * DV + ov[None, :], mask=mj[:, None] & mv[None, :], other=0.0)
            dhT = tl.load(dh_base + t[None, :] * DV + ov[:, None], mask=mv[:, None] & mt[None, :], other=0.0)
            dpT += mm(vt, dhT.to(tl.float32) * inv_den[None, :], DT, IP)
        logwT = (collog[:, None] + rowlog[None, :]) + (collo[:, None] + rowlo[None, :])
        logwT = tl.where(t[None, :] >= j[:, None], logwT, float("-inf"))
        dsT = dpT * tl.exp(logwT)
        qt = tl.load(q_base + t[:, None] * DK + ok[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
        acc += mm(dsT, qt.to(tl.float32) * scale, DT, IP)

    a = tl.exp(tl.load(statelog_ptr + bh * Sp + j))
    dCs_base = dCs_ptr + (bh.to(tl.int64) * (NC + 1) + c + 1) * DK * DV
    for vv in range(tl.cdiv(DV, BV)):
        ov = vv * BV + tl.arange(0, BV)
        mv = ov < DV
        vt = tl.load(v_base + j[:, None] * DV + ov[None, :], mask=mj[:, None] & mv[None, :], other=0.0)
        dCT = tl.load(dCs_base + ok[None, :] * DV + ov[:, None], mask=mv[:, None] & mk[None, :], other=0.0)
        acc += mm(vt.to(tl.float32) * a[:, None], dCT, DT, IP)
    dnt = tl.load(dns_ptr + (bh.to(tl.int64) * (NC + 1) + c + 1) * DK + ok, mask=mk, other=0.0)
    acc += a[:, None] * dnt[None, :]

    tl.store(dk_ptr + bh.to(tl.int64) * S * DK + j[:, None] * DK + ok[None, :],
             acc.to(dk_ptr.dtype.element_ty), mask=mj[:, None] & mk[None, :])
    kt = tl.load(k_base + j[:, None] * DK + ok[None, :], mask=mj[:, None] & mk[None, :], other=0.0)
    tl.store(kdk_ptr + (pk * BH + bh) * Sp + j, tl.sum(kt.to(tl.float32) * acc, axis=1))


@triton.jit
def mlstm_bw_dv_kernel(
    q_ptr, k_ptr, dh_ptr, rowlog_ptr, rowlo_ptr, collog_ptr, collo_ptr, statelog_ptr, inv_den_ptr,
    dCs_ptr, dv_ptr,
    S, Sp, NC, scale,
    DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BQ: tl.constexpr, BKV: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, DT: tl.constexpr, IP: tl.constexpr,
):
    """dv. Grid (cdiv(DV, BV), L // BKV, NC * BH): one (BKV, BV) tile of dv per program."""
    pv, pj, pcb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pcb % NC
    bh = pcb // NC
    j = c * L + pj * BKV + tl.arange(0, BKV)
    mj = j < S
    ov = pv * BV + tl.arange(0, BV)
    mv = ov < DV
    q_base = q_ptr + bh.to(tl.int64) * S * DK
    k_base = k_ptr + bh.to(tl.int64) * S * DK
    dh_base = dh_ptr + bh.to(tl.int64) * S * DV
    collog = tl.load(collog_ptr + bh * Sp + j)
    collo = tl.load(collo_ptr + bh * Sp + j)

    acc = tl.zeros((BKV, BV), dtype=tl.float32)
    for qt_i in range((pj * BKV) // BQ, L // BQ):
        t = c * L + qt_i * BQ + tl.arange(0, BQ)
        mt = t < S
        rowlog = tl.load(rowlog_ptr + bh * Sp + t)
        rowlo = tl.load(rowlo_ptr + bh * Sp + t)
        inv_den = tl.load(inv_den_ptr + bh * Sp + t)
        sT = tl.zeros((BKV, BQ), dtype=tl.float32)
        for kk in range(tl.cdiv(DK, BK)):
            ok = kk * BK + tl.arange(0, BK)
            mk = ok < DK
            kt = tl.load(k_base + j[:, None] * DK + ok[None, :], mask=mj[:, None] & mk[None, :], other=0.0)
            qT = tl.load(q_base + t[None, :] * DK + ok[:, None], mask=mk[:, None] & mt[None, :], other=0.0)
            sT += mm(kt, qT, DT, IP)
        logwT = (collog[:, None] + rowlog[None, :]) + (collo[:, None] + rowlo[None, :])
        logwT = tl.where(t[None, :] >= j[:, None], logwT, float("-inf"))
        pT = sT * scale * tl.exp(logwT)
        dht = tl.load(dh_base + t[:, None] * DV + ov[None, :], mask=mt[:, None] & mv[None, :], other=0.0)
        acc += mm(pT, dht.to(tl.float32) * inv_den[:, None], DT, IP)

    a = tl.exp(tl.load(statelog_ptr + bh * Sp + j))
    dCs_base = dCs_ptr + (bh.to(tl.int64) * (NC + 1) + c + 1) * DK * DV
    for kk in range(tl.cdiv(DK, BK)):
        ok = kk * BK + tl.arange(0, BK)
        mk = ok < DK
        kt = tl.load(k_base + j[:, None] * DK + ok[None, :], mask=mj[:, None] & mk[None, :], other=0.0)
        dCt = tl.load(dCs_base + ok[:, None] * DV + ov[None, :], mask=mk[:, None] & mv[None, :], other=0.0)
        acc += mm(kt.to(tl.float32) * a[:, None], dCt, DT, IP)

    tl.store(dv_ptr + bh.to(tl.int64) * S * DV + j[:, None] * DV + ov[None, :],
             acc.to(dv_ptr.dtype.element_ty), mask=mj[:, None] & mv[None, :])


def launch_bw(q, k, v, dh, g, Cs, ns, inv_den, r, dCT, dnT, *, S, Sp, NC, L, BL, BQ, BKV, BK, BV, DT, IP,
              num_warps=8):
    """Run the four backward kernels. q, k (BH, S, DK), v, dh (BH, S, DV) contiguous; g the per-step
    log weights; Cs, ns the chunk-start states; inv_den, r (BH, Sp); dCT (BH, DK, DV), dnT (BH, DK).

    Returns dq, dk, dv (dtype of q), dC0 (BH, DK, DV), dn0 (BH, DK) fp32, q·dq and k·dk (BH, Sp) fp32.
    """
    BH, _, DK = q.shape
    DV = v.shape[-1]
    dev = q.device
    scale = DK**-0.5
    nK, nV = triton.cdiv(DK, BK), triton.cdiv(DV, BV)
    dCs = torch.empty(BH, NC + 1, DK, DV, dtype=torch.float32, device=dev)
    dns = torch.empty(BH, NC + 1, DK, dtype=torch.float32, device=dev)
    mlstm_bw_states_kernel[(nK, nV, BH)](
        q, dh, g["interlog"], g["eglog"], inv_den, r, dCT, dnT, dCs, dns, S, Sp, NC, scale,
        DK=DK, DV=DV, L=L, BL=BL, BK=BK, BV=BV, DT=DT, IP=IP, num_warps=num_warps,
    )
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    qdq = torch.empty(nK, BH, Sp, dtype=torch.float32, device=dev)
    kdk = torch.empty(nK, BH, Sp, dtype=torch.float32, device=dev)
    rc = (g["rowlog"], g["rowlog_lo"], g["collog"], g["collog_lo"])
    common = dict(DK=DK, DV=DV, L=L, BQ=BQ, BKV=BKV, BK=BK, BV=BV, DT=DT, IP=IP, num_warps=num_warps)
    mlstm_bw_dq_kernel[(nK, L // BQ, NC * BH)](
        q, k, v, dh, *rc, g["interlog"], inv_den, r, Cs, ns, dq, qdq,
        S, Sp, NC, BH, scale, **common,
    )
    mlstm_bw_dk_kernel[(nK, L // BKV, NC * BH)](
        q, k, v, dh, *rc, g["statelog"], inv_den, r, dCs, dns, dk, kdk,
        S, Sp, NC, BH, scale, **common,
    )
    mlstm_bw_dv_kernel[(nV, L // BKV, NC * BH)](
        q, k, dh, *rc, g["statelog"], inv_den, dCs, dv,
        S, Sp, NC, scale, **common,
    )
    return dq, dk, dv, dCs[:, 0], dns[:, 0], qdq.sum(0), kdk.sum(0)

"""Fused sLSTM over the whole sequence in Triton, forward and backward (no C++/CUDA build).

The official package compiles a CUDA extension at import (and users report builds that fail); these
kernels are plain Triton. One program per (head, tile of BB batch rows) runs the whole time loop:
per step, the block-diagonal recurrent product h_{t-1} R of its head (tiled BD x BD, read from
global memory, where it stays cached), then the pointwise cell (SPEC section 2, the same rules as
``xlram.ops.slstm.reference.cell_pointwise``: m takes ĩ where n_{t-1} == 0, f' is capped at 1).

A step's columns depend on all of h_{t-1}, so each step writes h_t to global memory and the next
step reads it back after a barrier (``tl.debug_barrier``: every thread of the program waits, and
global writes made before it are visible to the program's threads after it); those reads bypass L1
(``.cg``), so no line cached before the write can be returned. The backward runs the
same way in reverse with dh_{t-1} = dpre_t Rᵀ, writing dpre_t (the gradient of the
pre-activations, which is d wx); dR and db are read off dpre afterwards with one einsum.

Buffers (fp32): H (B, S + 1, NH, DH) with slot 0 the initial h; c, n, m likewise (two slots, a
ring, when no backward is needed); pre (B, S, 4, NH, DH) the pre-activations, kept for the backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import SUPPORTED_DTYPES, cdiv, interpreting, logsigmoid, pow2_tile


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    big = (1.0 - e) / (1.0 + e)
    x2 = x * x
    small = tl.abs(x) * (1.0 - x2 * (1.0 / 3.0 - x2 * (2.0 / 15.0)))  # 1 - e loses digits near 0
    y = tl.where(tl.abs(x) < 1e-2, small, big)
    return tl.where(x < 0, -y, y)


@triton.jit
def slstm_fw_kernel(
    wx_ptr, r_ptr, b_ptr, H_ptr, c_ptr, n_ptr, m_ptr, pre_ptr,
    B, S, SL,
    NH: tl.constexpr, DH: tl.constexpr, BB: tl.constexpr, BD: tl.constexpr,
    KEEP: tl.constexpr, EXP_FORGET: tl.constexpr, IP: tl.constexpr,
):
    """Grid (NH, cdiv(B, BB)). c, n, m have SL slots: S + 1 with KEEP (pre is then written too), else 2."""
    hd, pb = tl.program_id(0), tl.program_id(1)
    ob = (pb * BB + tl.arange(0, BB)).to(tl.int64)  # flat offsets reach B·S·4·NH·DH: past int32
    mb = ob < B
    for t in range(S):
        if KEEP:
            s_in = t
            s_out = t + 1
        else:
            s_in = t % 2
            s_out = (t + 1) % 2
        for jt in range(tl.cdiv(DH, BD)):
            oj = jt * BD + tl.arange(0, BD)
            mj = oj < DH
            mbj = mb[:, None] & mj[None, :]
            acc_i = tl.zeros((BB, BD), dtype=tl.float32)
            acc_f = tl.zeros((BB, BD), dtype=tl.float32)
            acc_z = tl.zeros((BB, BD), dtype=tl.float32)
            acc_o = tl.zeros((BB, BD), dtype=tl.float32)
            for kt in range(tl.cdiv(DH, BD)):
                ok = kt * BD + tl.arange(0, BD)
                mk = ok < DH
                # .cg: straight from L2, never a line L1 may hold from before the write
                hp = tl.load(H_ptr + ((ob[:, None] * (S + 1) + t) * NH + hd) * DH + ok[None, :],
                             mask=mb[:, None] & mk[None, :], other=0.0, cache_modifier=".cg")
                # R[hd, k, g, j] at ((hd * DH + k) * 4 + g) * DH + j
                r_off = ((hd * DH + ok[:, None]) * 4) * DH + oj[None, :]
                rm = mk[:, None] & mj[None, :]
                r_i = tl.load(r_ptr + r_off, mask=rm, other=0.0).to(tl.float32)
                r_f = tl.load(r_ptr + r_off + DH, mask=rm, other=0.0).to(tl.float32)
                r_z = tl.load(r_ptr + r_off + 2 * DH, mask=rm, other=0.0).to(tl.float32)
                r_o = tl.load(r_ptr + r_off + 3 * DH, mask=rm, other=0.0).to(tl.float32)
                acc_i += tl.dot(hp, r_i, input_precision=IP)
                acc_f += tl.dot(hp, r_f, input_precision=IP)
                acc_z += tl.dot(hp, r_z, input_precision=IP)
                acc_o += tl.dot(hp, r_o, input_precision=IP)
            # wx[b, t, g, hd, j] at (((b * S + t) * 4 + g) * NH + hd) * DH + j
            wx_off = (((ob[:, None] * S + t) * 4) * NH + hd) * DH + oj[None, :]
            b_off = hd * DH + oj
            pi = acc_i + tl.load(wx_ptr + wx_off, mask=mbj, other=0.0).to(tl.float32) \
                + tl.load(b_ptr + b_off, mask=mj, other=0.0).to(tl.float32)[None, :]
            pf = acc_f + tl.load(wx_ptr + wx_off + NH * DH, mask=mbj, other=0.0).to(tl.float32) \
                + tl.load(b_ptr + NH * DH + b_off, mask=mj, other=0.0).to(tl.float32)[None, :]
            pz = acc_z + tl.load(wx_ptr + wx_off + 2 * NH * DH, mask=mbj, other=0.0).to(tl.float32) \
                + tl.load(b_ptr + 2 * NH * DH + b_off, mask=mj, other=0.0).to(tl.float32)[None, :]
            po = acc_o + tl.load(wx_ptr + wx_off + 3 * NH * DH, mask=mbj, other=0.0).to(tl.float32) \
                + tl.load(b_ptr + 3 * NH * DH + b_off, mask=mj, other=0.0).to(tl.float32)[None, :]

            st_in = ((ob[:, None] * SL + s_in) * NH + hd) * DH + oj[None, :]
            st_out = ((ob[:, None] * SL + s_out) * NH + hd) * DH + oj[None, :]
            c_prev = tl.load(c_ptr + st_in, mask=mbj, other=0.0)
            n_prev = tl.load(n_ptr + st_in, mask=mbj, other=0.0)
            m_prev = tl.load(m_ptr + st_in, mask=mbj, other=0.0)
            if EXP_FORGET:
                a = pf + m_prev
            else:
                a = logsigmoid(pf) + m_prev
            take_i = (n_prev == 0.0) | (pi >= a)
            m_new = tl.where(take_i, pi, a)
            ig = tl.exp(pi - m_new)
            d = a - m_new
            fg = tl.exp(tl.where(d > 0.0, 0.0, d))
            c_new = fg * c_prev + ig * _tanh(pz)
            n_new = fg * n_prev + ig
            h_new = tl.sigmoid(po) * c_new / n_new
            tl.store(c_ptr + st_out, c_new, mask=mbj)
            tl.store(n_ptr + st_out, n_new, mask=mbj)
            tl.store(m_ptr + st_out, m_new, mask=mbj)
            tl.store(H_ptr + ((ob[:, None] * (S + 1) + t + 1) * NH + hd) * DH + oj[None, :], h_new, mask=mbj)
            if KEEP:
                tl.store(pre_ptr + wx_off, pi, mask=mbj)
                tl.store(pre_ptr + wx_off + NH * DH, pf, mask=mbj)
                tl.store(pre_ptr + wx_off + 2 * NH * DH, pz, mask=mbj)
                tl.store(pre_ptr + wx_off + 3 * NH * DH, po, mask=mbj)
        # h_t of every column is read by the next step: make this step's writes visible first.
        tl.debug_barrier()


@triton.jit
def slstm_bw_kernel(
    r_ptr, H_ptr, c_ptr, n_ptr, m_ptr, pre_ptr, dout_ptr, dhS_ptr, dc_ptr, dn_ptr, dm_ptr, dpre_ptr,
    B, S,
    NH: tl.constexpr, DH: tl.constexpr, BB: tl.constexpr, BD: tl.constexpr,
    EXP_FORGET: tl.constexpr, IP: tl.constexpr,
):
    """Grid (NH, cdiv(B, BB)). dout (B, S, NH, DH) the gradient of the outputs; dhS (B, NH, DH) that
    of the final h; dc, dn, dm (B, NH, DH) hold the final-state gradients on entry and the
    initial-state gradients on exit; dpre (B, S, 4, NH, DH) receives the pre-activation gradients."""
    hd, pb = tl.program_id(0), tl.program_id(1)
    ob = (pb * BB + tl.arange(0, BB)).to(tl.int64)  # flat offsets reach B·S·4·NH·DH: past int32
    mb = ob < B
    for tt in range(S):
        t = S - 1 - tt
        for jt in range(tl.cdiv(DH, BD)):
            oj = jt * BD + tl.arange(0, BD)
            mj = oj < DH
            mbj = mb[:, None] & mj[None, :]
            e_off = (ob[:, None] * NH + hd) * DH + oj[None, :]  # (B, NH, DH) layouts
            gh = tl.load(dout_ptr + ((ob[:, None] * S + t) * NH + hd) * DH + oj[None, :], mask=mbj, other=0.0)
            gh = gh.to(tl.float32)
            if t == S - 1:
                gh += tl.load(dhS_ptr + e_off, mask=mbj, other=0.0)
            else:
                # dh_t += Σ_g dpre_{t+1, g} R[hd, :, g, :]ᵀ: rows k of dpre, RT[k, j] = R[hd, j, g, k]
                for kt in range(tl.cdiv(DH, BD)):
                    ok = kt * BD + tl.arange(0, BD)
                    mk = ok < DH
                    dp_off = (((ob[:, None] * S + t + 1) * 4) * NH + hd) * DH + ok[None, :]
                    dpm = mb[:, None] & mk[None, :]
                    rt_off = ((hd * DH + oj[None, :]) * 4) * DH + ok[:, None]
                    rtm = mk[:, None] & mj[None, :]
                    for g in range(4):
                        dp = tl.load(dpre_ptr + dp_off + g * NH * DH, mask=dpm, other=0.0,
                                     cache_modifier=".cg")
                        rt = tl.load(r_ptr + rt_off + g * DH, mask=rtm, other=0.0).to(tl.float32)
                        gh += tl.dot(dp, rt, input_precision=IP)

            p_off = (((ob[:, None] * S + t) * 4) * NH + hd) * DH + oj[None, :]
            pi = tl.load(pre_ptr + p_off, mask=mbj, other=0.0)
            pf = tl.load(pre_ptr + p_off + NH * DH, mask=mbj, other=0.0)
            pz = tl.load(pre_ptr + p_off + 2 * NH * DH, mask=mbj, other=0.0)
            po = tl.load(pre_ptr + p_off + 3 * NH * DH, mask=mbj, other=0.0)
            s_prev = ((ob[:, None] * (S + 1) + t) * NH + hd) * DH + oj[None, :]
            s_cur = ((ob[:, None] * (S + 1) + t + 1) * NH + hd) * DH + oj[None, :]
            c_prev = tl.load(c_ptr + s_prev, mask=mbj, other=0.0)
            n_prev = tl.load(n_ptr + s_prev, mask=mbj, other=0.0)
            m_prev = tl.load(m_ptr + s_prev, mask=mbj, other=0.0)
            n_cur = tl.load(n_ptr + s_cur, mask=mbj, other=1.0)
            m_cur = tl.load(m_ptr + s_cur, mask=mbj, other=0.0)
            h_cur = tl.load(H_ptr + s_cur, mask=mbj, other=0.0)

            if EXP_FORGET:
                a = pf + m_prev
            else:
                a = logsigmoid(pf) + m_prev
            # The forward's comparisons, on the same stored values.
            take_i = (n_prev == 0.0) | (pi >= a)
            ig = tl.exp(pi - m_cur)
            d = a - m_cur
            capped = d > 0.0
            fg = tl.exp(tl.where(capped, 0.0, d))
            z = _tanh(pz)
            o = tl.sigmoid(po)

            dc = tl.load(dc_ptr + e_off, mask=mbj, other=0.0, cache_modifier=".cg")
            dn = tl.load(dn_ptr + e_off, mask=mbj, other=0.0, cache_modifier=".cg")
            dm = tl.load(dm_ptr + e_off, mask=mbj, other=0.0, cache_modifier=".cg")
            dct = dc + gh * o / n_cur  # through h = o c / n
            dnt = dn - gh * h_cur / n_cur
            d_o = gh * h_cur * (1.0 - o)
            d_z = dct * ig * (1.0 - z * z)
            P = (dct * z + dnt) * ig  # gradient of the exponent of i'
            Q = tl.where(capped, 0.0, (dct * c_prev + dnt * n_prev) * fg)  # of the exponent of f'
            # m_t took ĩ or a = log f + m_{t-1}; what reaches m_t (dm - P - Q) goes to the one taken.
            d_i = tl.where(take_i, dm - Q, P)
            d_a = dm - d_i
            if EXP_FORGET:
                d_f = d_a
            else:
                d_f = d_a * tl.sigmoid(-pf)
            tl.store(dpre_ptr + p_off, d_i, mask=mbj)
            tl.store(dpre_ptr + p_off + NH * DH, d_f, mask=mbj)
            tl.store(dpre_ptr + p_off + 2 * NH * DH, d_z, mask=mbj)
            tl.store(dpre_ptr + p_off + 3 * NH * DH, d_o, mask=mbj)
            tl.store(dc_ptr + e_off, dct * fg, mask=mbj)
            tl.store(dn_ptr + e_off, dnt * fg, mask=mbj)
            tl.store(dm_ptr + e_off, d_a, mask=mbj)
        tl.debug_barrier()


def _cfg(wx):
    B, S, _, NH, DH = wx.shape
    BB = 16  # tl.dot needs 16 rows; a smaller batch is masked
    BD = pow2_tile(DH, 64)
    IP = "ieee" if wx.dtype == torch.float32 else "tf32"
    return B, S, NH, DH, BB, BD, IP


def _forward(wx, r, b, h0, c0, n0, m0, forget_gate, keep):
    B, S, NH, DH, BB, BD, IP = _cfg(wx)
    f32 = dict(dtype=torch.float32, device=wx.device)
    slots = S + 1 if keep else 2
    H = torch.empty(B, S + 1, NH, DH, **f32)
    c, n, m = (torch.empty(B, slots, NH, DH, **f32) for _ in range(3))
    for buf, s0 in ((H, h0), (c, c0), (n, n0), (m, m0)):
        buf[:, 0] = s0.reshape(B, NH, DH)
    pre = torch.empty(B, S, 4, NH, DH, **f32) if keep else H  # H: an unused placeholder
    slstm_fw_kernel[(NH, cdiv(B, BB))](
        wx, r, b, H, c, n, m, pre, B, S, slots,
        NH=NH, DH=DH, BB=BB, BD=BD, KEEP=keep, EXP_FORGET=forget_gate == "exp", IP=IP, num_warps=8,
    )
    last = S if keep else S % 2
    return H, c, n, m, pre, last


class _SLSTMTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, wx, r, b, h0, c0, n0, m0, forget_gate):
        B, S, _, NH, DH = wx.shape
        H, c, n, m, pre, last = _forward(wx, r, b, h0, c0, n0, m0, forget_gate, keep=True)
        ctx.save_for_backward(r, H, c, n, m, pre)
        ctx.forget_gate = forget_gate
        ctx.wx_dtype = wx.dtype
        out = H[:, 1:].reshape(B, S, NH * DH).to(wx.dtype)
        return out, *(x[:, last].reshape(B, NH * DH).clone() for x in (H, c, n, m))

    @staticmethod
    def backward(ctx, d_out, d_h, d_c, d_n, d_m):
        r, H, c, n, m, pre = ctx.saved_tensors
        B, S, _, NH, DH = pre.shape
        _, _, _, _, BB, BD, _ = _cfg(pre)
        IP = "ieee" if ctx.wx_dtype == torch.float32 else "tf32"
        f32 = dict(dtype=torch.float32, device=pre.device)

        def grad_or_zero(x, shape):
            return torch.zeros(shape, **f32) if x is None else x.reshape(shape).float().contiguous()

        dout = grad_or_zero(d_out, (B, S, NH, DH))
        dhS = grad_or_zero(d_h, (B, NH, DH))
        dc, dn, dm = (grad_or_zero(x, (B, NH, DH)).clone() for x in (d_c, d_n, d_m))
        dpre = torch.empty_like(pre)
        slstm_bw_kernel[(NH, cdiv(B, BB))](
            r, H, c, n, m, pre, dout, dhS, dc, dn, dm, dpre, B, S,
            NH=NH, DH=DH, BB=BB, BD=BD, EXP_FORGET=ctx.forget_gate == "exp", IP=IP, num_warps=8,
        )
        rf = r.float()
        d_r = torch.einsum("bshk,bsghj->hkgj", H[:, :-1], dpre)
        d_b = dpre.sum((0, 1))
        d_h0 = torch.einsum("bghj,hkgj->bhk", dpre[:, 0], rf).reshape(B, NH * DH)
        return (dpre.to(ctx.wx_dtype), d_r.to(r.dtype), d_b.to(r.dtype), d_h0,
                dc.reshape(B, NH * DH), dn.reshape(B, NH * DH), dm.reshape(B, NH * DH), None)


def slstm_triton(wx, r, b, state=None, *, forget_gate="sigmoid"):
    """The sLSTM over a sequence with the fused Triton kernels.

    wx: (B, S, 4, NH, DH) input contributions (gate order i, f, z, o) in fp32, bf16 or fp16;
    r: (NH, DH, 4, DH), b: (4, NH, DH) in wx's dtype; state: SLSTMState (h, c, n, m), each (B, NH * DH)
    fp32, or None. Returns h (B, S, NH * DH) in wx's dtype and the final SLSTMState (fp32);
    differentiable in wx, r, b and the initial state.
    """
    from xlram.ops.slstm.reference import FORGET_GATES, SLSTMState

    if wx.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"wx: expected one of {SUPPORTED_DTYPES} for the Triton kernels, got {wx.dtype}")
    if wx.device.type != "cuda" and not interpreting():
        raise ValueError(f"wx: expected a CUDA tensor (or TRITON_INTERPRET=1 on CPU), got device {wx.device}")
    if forget_gate not in FORGET_GATES:
        raise ValueError(f"forget_gate: expected one of {FORGET_GATES}, got {forget_gate!r}")
    B, S, _, NH, DH = wx.shape
    if state is None:
        z = torch.zeros(B, NH * DH, dtype=torch.float32, device=wx.device)
        state = (z, z, z, z)
    h0, c0, n0, m0 = (x.float() for x in state)
    wx, r, b = wx.contiguous(), r.contiguous(), b.contiguous()
    if torch.is_grad_enabled() and any(x.requires_grad for x in (wx, r, b, h0, c0, n0, m0)):
        out, *final = _SLSTMTriton.apply(wx, r, b, h0, c0, n0, m0, forget_gate)
    else:
        H, c, n, m, _, last = _forward(wx, r, b, h0, c0, n0, m0, forget_gate, keep=False)
        out = H[:, 1:].reshape(B, S, NH * DH).to(wx.dtype)
        final = [x[:, i].reshape(B, NH * DH).clone() for x, i in ((H, S), (c, last), (n, last), (m, last))]
    return out, SLSTMState(*final)

"""sLSTM, fast recurrent form: one autograd Function with a hand-derived backward through time.

The reference builds an autograd graph of some twenty nodes per time step; here the forward loop
runs without a graph, writing every step's pre-activations and states into preallocated buffers,
and the backward walks the sequence once in reverse. Everything that is not truly recurrent is
taken out of the loops:

- the input part and the bias of the pre-activations are added for all steps before the forward
  loop, which then only adds ``h_{t-1} R`` in place (one ``baddbmm`` over the heads);
- the backward computes the per-step coefficients of the adjoint recurrence for all steps at once,
  from the stored pre-activations, gates and states; the loop is left with about a dozen small
  kernels and one ``bmm`` per step;
- the gradients of R, b and wx are read off the stored pre-activation gradients after the loop
  (one ``bmm`` and one sum), so the backward loop only carries (dh, dc, dn, dm).

Internal layout: (NH, B, DH) per step, so the block-diagonal R is a batched matmul over heads:
R (NH, DH, 4 DH), pre-activations (NH, B, 4 DH) with the gate-major column order (g, j) of
r[h, k, g, j]. Per sequence the buffers are time-major, (S, NH, B, DH): every per-step slice the loops
touch is then contiguous, which matters more than it seems (a ``baddbmm_`` into a strided slice takes
a per-head slow path, ~9x slower at batch 1).

The backward (per element; ``gh`` = upstream dh_t plus the dh_t carried back through R):

    dc~ = dc_t + gh o / n_t                    dn~ = dn_t - gh h_t / n_t
    dõ  = gh h_t (1 - o)                       dz̃  = dc~ i' (1 - z²)
    P   = (dc~ z + dn~) i'                     (gradient of the exponent ĩ - m_t of i')
    Q   = (dc~ c_{t-1} + dn~ n_{t-1}) f'      (of the exponent log f + m_{t-1} - m_t; 0 where capped)
    U   = dm_t - P - Q                         (total gradient reaching m_t, routed to what m_t took)
    dĩ  = P + U [m_t took ĩ]  = m_t took ĩ ? dm_t - Q : P       d(log f + m_{t-1}) = dm_t - dĩ
    df̃  = d(log f + m_{t-1}) sigmoid(-f̃)  (sigmoid gate; 1 for the exp gate)
    dm_{t-1} = d(log f + m_{t-1})   dc_{t-1} = dc~ f'   dn_{t-1} = dn~ f'   dh_{t-1} += dpre_t Rᵀ
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from xlram.ops.slstm import fused_cpu
from xlram.ops.slstm.reference import SLSTMState, cell_pointwise, state_dtype, zero_state


def _to_heads(x: torch.Tensor, NH: int, DH: int) -> torch.Tensor:
    """(B, NH * DH) -> (NH, B, DH), a view where the strides allow (upstream gradients may be expanded)."""
    return x.reshape(x.shape[0], NH, DH).transpose(0, 1)


def _from_heads(x: torch.Tensor) -> torch.Tensor:
    """(NH, B, DH) -> (B, NH * DH), a fresh contiguous tensor."""
    NH, B, DH = x.shape
    return x.transpose(0, 1).reshape(B, NH * DH)


def _forward(
    wx: torch.Tensor,
    r: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    n0: torch.Tensor,
    m0: torch.Tensor,
    forget_gate: str,
    keep_all: bool,
) -> tuple[dict[str, torch.Tensor], int]:
    """Run the recurrence; all tensors already in the compute dtype.

    wx (B, S, 4, NH, DH), r (NH, DH, 4, DH), b (4, NH, DH), h0..m0 (B, NH * DH).
    Every buffer is time-major, so each step's slice is contiguous. Returns buffers by name, and the
    time slot of the final state in CN and M:
      G  (S, NH, B, 4 DH)        pre-activations (h_{t-1} R included), gate-major columns (g, j);
      H  (S + 1, NH, B, DH)      outputs, slot 0 the initial h;
      CN (slots, 2, NH, B, DH)   (c, n), stacked so that one kernel updates both;
      M  (slots, NH, B, DH)      stabiliser;
      IF (steps, 2, NH, B, DH)   (i', f');   ZO (steps, 2, NH, B, DH)   (tanh z̃, 1);
      O  (steps, NH, B, DH)      sigmoid(õ); T (steps, NH, B, DH) bool, where m_t took ĩ;
      cap0 (NH, B, DH) bool      where f' was capped at 1 on the first step.
    With ``keep_all`` (for the backward) slots = S + 1, slot 0 the initial state, and steps = S.
    The backward routes gradients by the very comparisons the forward made (T, cap0), never by
    recomputed ones that could differ in the last bit. Without ``keep_all`` CN and M are two-slot
    ring buffers and the per-step records one step deep: inference needs only the last state.
    """
    B, S, _, NH, DH = wx.shape
    opts = {"dtype": wx.dtype, "device": wx.device}
    R = r.reshape(NH, DH, 4 * DH)
    slots, steps = (S + 1, S) if keep_all else (2, 1)
    # Input part plus bias for every step at once; the loop adds h_{t-1} R in place.
    G = torch.empty(S, NH, B, 4 * DH, **opts)
    torch.add(wx.permute(1, 3, 0, 2, 4), b.transpose(0, 1)[:, None], out=G.view(S, NH, B, 4, DH))
    H = torch.empty(S + 1, NH, B, DH, **opts)
    CN = torch.empty(slots, 2, NH, B, DH, **opts)
    M = torch.empty(slots, NH, B, DH, **opts)
    IF = torch.empty(steps, 2, NH, B, DH, **opts)
    ZO = torch.ones(steps, 2, NH, B, DH, **opts)
    O = torch.empty(steps, NH, B, DH, **opts)
    T = torch.empty(steps, NH, B, DH, dtype=torch.bool, device=wx.device)
    for x, s0 in ((H[0], h0), (CN[0, 0], c0), (CN[0, 1], n0), (M[0], m0)):
        x.copy_(_to_heads(s0, NH, DH))
    # n_{t-1} == 0 can only hold at t = 0: afterwards n_t >= min(1, n_{t-1}) > 0, because one of
    # i', f' is exactly 1. So the first-step rule is a mask computed once.
    first = CN[0, 1] == 0
    cap0 = first  # replaced at t = 0
    # Per-step views, taken once (indexing in the loop costs as much as a small kernel).
    G_t, G4_t = G.unbind(0), G.view(S, NH, B, 4, DH).unbind(0)  # (NH, B, 4 DH), (NH, B, 4, DH)
    H_t, M_t, O_t, T_t = (x.unbind(0) for x in (H, M, O, T))  # (NH, B, DH)
    CN_t, IF_t, ZO_t = (x.unbind(0) for x in (CN, IF, ZO))  # (2, NH, B, DH)
    a = torch.empty(NH, B, DH, **opts)  # log f + m_{t-1}
    for t in range(S):
        p, q = (t, t + 1) if keep_all else (t % 2, (t + 1) % 2)
        k = t if keep_all else 0
        G_t[t].baddbmm_(H_t[t], R)
        gi, gf, gz, go = G4_t[t].unbind(2)  # each (NH, B, DH)
        if forget_gate == "sigmoid":
            torch.add(F.logsigmoid(gf), M_t[p], out=a)
        else:
            torch.add(gf, M_t[p], out=a)
        take_i = torch.ge(gi, a, out=T_t[k])
        if t == 0:
            take_i |= first
            m_t = torch.where(take_i, gi, a, out=M_t[q])
        else:
            m_t = torch.maximum(gi, a, out=M_t[q])  # the same values as the where; a cheaper kernel
        i_f = IF_t[k]
        torch.sub(gi, m_t, out=i_f[0])
        torch.sub(a, m_t, out=i_f[1])
        if t == 0:
            cap0 = i_f[1] > 0  # f' <= 1 binds only here, where it multiplies an empty state
            i_f[1].clamp_(max=0.0)
        i_f.exp_()
        zo = ZO_t[k]
        torch.tanh(gz, out=zo[0])
        # (c, n)_t = f' (c, n)_{t-1} + i' (tanh z̃, 1)
        cn = torch.mul(CN_t[p], i_f[1], out=CN_t[q]).addcmul_(zo, i_f[0])
        torch.div(cn[0], cn[1], out=H_t[t + 1]).mul_(torch.sigmoid(go, out=O_t[k]))
    buf = {"G": G, "H": H, "CN": CN, "M": M, "IF": IF, "ZO": ZO, "O": O, "T": T, "cap0": cap0}
    return buf, S if keep_all else S % 2


def _outputs(buf: dict[str, torch.Tensor], last: int) -> tuple[torch.Tensor, ...]:
    """h (B, S, NH * DH) and the final h, c, n, m (B, NH * DH) from the forward's buffers."""
    H, CN, M = buf["H"], buf["CN"], buf["M"]
    S1, NH, B, DH = H.shape
    out = H[1:].permute(2, 0, 1, 3).reshape(B, S1 - 1, NH * DH)
    return out, *(_from_heads(x) for x in (H[-1], CN[last, 0], CN[last, 1], M[last]))


class _SLSTMFunction(torch.autograd.Function):
    """Inputs wx (B, S, 4, NH, DH), r, b, h0, c0, n0, m0 (B, NH * DH), all in the compute dtype.

    Outputs h (B, S, NH * DH) and the final h, c, n, m (B, NH * DH).
    """

    @staticmethod
    def forward(ctx, wx, r, b, h0, c0, n0, m0, forget_gate):
        buf, last = _forward(wx, r, b, h0, c0, n0, m0, forget_gate, keep_all=True)
        # Intermediates can be saved too (they are freed after the backward unless retain_graph)
        ctx.keys = tuple(buf)
        ctx.save_for_backward(r, *buf.values())
        ctx.forget_gate = forget_gate
        return _outputs(buf, last)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_hS, d_cS, d_nS, d_mS):
        r, *saved = ctx.saved_tensors
        buf = dict(zip(ctx.keys, saved, strict=True))
        G, H, CN, IF, ZO, O = (buf[k] for k in ("G", "H", "CN", "IF", "ZO", "O"))
        S, NH, B, _ = G.shape
        DH = H.shape[-1]
        R_t = r.reshape(NH, DH, 4 * DH).transpose(1, 2).contiguous()  # (NH, 4 DH, DH)

        # Coefficients of the adjoint recurrence for all steps at once, each (S, NH, B, DH) or
        # stacked (S, 2, NH, B, DH), from the gates and states the forward stored.
        i_gate, f_gate, z, o = IF[:, 0], IF[:, 1], ZO[:, 0], O
        h_t, inv_n = H[1:], CN[1:, 1].reciprocal()
        coef_cn = torch.empty_like(IF)  # dh_t -> (dc~, dn~)
        torch.mul(o, inv_n, out=coef_cn[:, 0])
        torch.mul(h_t, inv_n, out=coef_cn[:, 1]).neg_()
        coef_o = h_t * (1 - o)  # dh_t -> dõ
        coef_z = torch.mul(z, z).neg_().add_(1).mul_(i_gate)  # dc~ -> dz̃: i' (1 - z²)
        # (P, Q) = coef_pq_c dc~ + coef_pq_n dn~, P and Q the gradients of the exponents of i' and f'
        coef_pq_c, coef_pq_n = torch.empty_like(IF), torch.empty_like(IF)
        torch.mul(z, i_gate, out=coef_pq_c[:, 0])
        torch.mul(CN[:-1, 0], f_gate, out=coef_pq_c[:, 1])
        coef_pq_n[:, 0].copy_(i_gate)
        torch.mul(CN[:-1, 1], f_gate, out=coef_pq_n[:, 1])
        # A capped f' passes no gradient to its exponent. The cap binds only where n0 == 0, so the
        # n-part of Q is zero there already; the c-part is not when a state has c0 != 0 with n0 == 0.
        coef_pq_c[0, 1].masked_fill_(buf["cap0"], 0.0)
        gf = G.view(S, NH, B, 4, DH)[:, :, :, 1]
        coef_f = torch.sigmoid(gf.neg()) if ctx.forget_gate == "sigmoid" else None  # d log f / d f̃
        del h_t, inv_n

        dH = d_out.reshape(B, S, NH, DH).permute(1, 2, 0, 3)  # (S, NH, B, DH)
        # The carried gradients, updated in place (fresh copies: the upstream ones are not ours).
        dh = _to_heads(d_hS, NH, DH).clone(memory_format=torch.contiguous_format)
        dcn = torch.stack((_to_heads(d_cS, NH, DH), _to_heads(d_nS, NH, DH)))  # (2, NH, B, DH)
        dm = _to_heads(d_mS, NH, DH).clone(memory_format=torch.contiguous_format)
        pq, tmp = torch.empty_like(dcn), torch.empty_like(dm)
        dpre = torch.empty_like(G)  # (S, NH, B, 4 DH): gradient of the pre-activations
        dpre_t = dpre.unbind(0)
        d_i, d_f, d_z, d_o = (x.unbind(0) for x in dpre.view(S, NH, B, 4, DH).unbind(3))
        per_step = [x.unbind(0) for x in (dH, coef_o, coef_z, buf["T"])]  # (NH, B, DH)
        # (2, NH, B, DH); f' as (1, NH, B, DH) to scale both dc and dn
        per_step += [x.unbind(0) for x in (coef_cn, coef_pq_c, coef_pq_n, f_gate.unsqueeze(1))]
        per_step.append(coef_f.unbind(0) if coef_f is not None else [None] * S)
        for t in range(S - 1, -1, -1):
            dH_, c_o, c_z, take, c_cn, c_pqc, c_pqn, f_, c_f = (x[t] for x in per_step)
            gh = dh.add_(dH_)
            dcn.addcmul_(gh, c_cn)  # (dc~, dn~)
            torch.mul(gh, c_o, out=d_o[t])
            torch.mul(dcn[0], c_z, out=d_z[t])
            P, Q = torch.mul(c_pqc, dcn[0], out=pq).addcmul_(c_pqn, dcn[1])
            # m_t is ĩ or log f + m_{t-1}; the gradient reaching m_t, dm - P - Q, goes to the one taken
            torch.where(take, torch.sub(dm, Q, out=tmp), P, out=d_i[t])
            dm.sub_(d_i[t])  # now the gradient of log f + m_{t-1}, hence of m_{t-1}
            if c_f is None:
                d_f[t].copy_(dm)
            else:
                torch.mul(dm, c_f, out=d_f[t])
            dcn.mul_(f_)
            torch.bmm(dpre_t[t], R_t, out=dh)

        d_wx = dpre.view(S, NH, B, 4, DH).permute(2, 0, 3, 1, 4)  # (B, S, 4, NH, DH)
        d_r = d_b = None
        if ctx.needs_input_grad[1]:
            # sum_t h_{t-1}ᵀ dpre_t per head, as one matmul over the rows (t, b)
            h_prev = H[:S].permute(1, 0, 2, 3).reshape(NH, S * B, DH)
            dpre_rows = dpre.permute(1, 0, 2, 3).reshape(NH, S * B, 4 * DH)
            d_r = torch.bmm(h_prev.transpose(1, 2), dpre_rows).view(NH, DH, 4, DH)
        if ctx.needs_input_grad[2]:
            d_b = dpre.sum(0).sum(1).view(NH, 4, DH).transpose(0, 1)  # two contiguous reductions
        d_h0, d_c0, d_n0, d_m0 = (_from_heads(x) for x in (dh, dcn[0], dcn[1], dm))
        return d_wx, d_r, d_b, d_h0, d_c0, d_n0, d_m0, None


def slstm_recurrent(
    wx: torch.Tensor,
    r: torch.Tensor,
    b: torch.Tensor,
    state: SLSTMState | None = None,
    *,
    forget_gate: str = "sigmoid",
) -> tuple[torch.Tensor, SLSTMState]:
    """sLSTM over a sequence, fast form (inputs assumed validated; see ``xlram.ops.slstm.slstm``).

    wx (B, S, 4, NH, DH), r (NH, DH, 4, DH), b (4, NH, DH), state components (B, NH * DH).
    Returns h (B, S, NH * DH) in wx's dtype and the final SLSTMState in ``state_dtype(wx.dtype)``.
    """
    B, S, _, NH, DH = wx.shape
    dt = state_dtype(wx.dtype)
    if state is None:
        state = zero_state(B, NH * DH, dt, wx.device)
    # Casts happen outside the Function, so autograd casts the gradients back. Strides of wx and
    # the state do not matter: the forward copies them into its own buffers first.
    inputs = (wx.to(dt), r.to(dt).contiguous(), b.to(dt).contiguous(), *state)
    if torch.compiler.is_compiling():
        # Opaque to torch.compile: a model compiled around the loop runs it as it is (tracing would
        # unroll S steps of in-place kernels into one graph). Imported here, not at the top:
        # torch.compiler.disable imports torch._dynamo and with it triton, which CPU code never needs.
        from .opaque import run_sequence_opaque

        out, *final = run_sequence_opaque(inputs, forget_gate)
    else:
        out, *final = _run_sequence(inputs, forget_gate)
    return out.to(wx.dtype), SLSTMState(*final)


def _run_sequence(inputs: tuple, forget_gate: str):
    """The loop over time, with its own backward when gradients are needed.

    On a CPU in fp32/fp64 the loops run in numba (``fused_cpu``), else as the torch kernels here.
    """
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in inputs)
    if fused_cpu.applies(inputs[0]):
        return fused_cpu.run_sequence(inputs, forget_gate, grad)
    if grad:
        return _SLSTMFunction.apply(*inputs, forget_gate)
    return _outputs(*_forward(*inputs, forget_gate, keep_all=False))


def slstm_step_unchecked(
    wx_t: torch.Tensor,
    r: torch.Tensor,
    b: torch.Tensor,
    state: SLSTMState | None,
    forget_gate: str,
) -> tuple[torch.Tensor, SLSTMState]:
    """One step (inputs assumed validated; see ``xlram.ops.slstm.slstm_step``).

    wx_t (B, 4, NH, DH), r (NH, DH, 4, DH), b (4, NH, DH), state components (B, NH * DH).
    Plain differentiable torch ops with no host synchronisation, so it can be captured in a graph.
    """
    B, _, NH, DH = wx_t.shape
    dt = state_dtype(wx_t.dtype)
    if state is None:
        state = zero_state(B, NH * DH, dt, wx_t.device)
    h, c, n, m = (s.reshape(B, NH, DH) for s in state)
    # (NH, B, DH) @ (NH, DH, 4 DH) -> (NH, B, 4, DH) -> (B, 4, NH, DH)
    rec = torch.bmm(h.transpose(0, 1), r.to(dt).reshape(NH, DH, 4 * DH)).view(NH, B, 4, DH)
    pre = wx_t.to(dt) + b.to(dt) + rec.permute(1, 2, 0, 3)
    h, c, n, m = cell_pointwise(pre[:, 0], pre[:, 1], pre[:, 2], pre[:, 3], c, n, m, forget_gate)
    new = SLSTMState(*(x.reshape(B, NH * DH) for x in (h, c, n, m)))
    return new.h.to(wx_t.dtype), new

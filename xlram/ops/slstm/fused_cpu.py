"""The sLSTM loop over time, forward and backward, each as one numba call (CPU, fp32/fp64).

The torch form (``recurrent.py``) runs a dozen small kernels per time step; on a CPU at training
sizes that is per-kernel overhead, not arithmetic. Here one compiled loop runs the whole sequence:
per step and head one small matmul (``np.dot``, BLAS) and a few passes over the elements. Measured
on the 2-core EPYC, one thread, fp32, NH = 4, DH = 64, forward + backward (medians of several runs):
B = 8, S = 256 57 -> 27-31 ms; B = 1, S = 1024 85 -> 15-16 ms; B = 16, S = 256 104 -> 46-52 ms. Of
the numba time at B = 8, the three matmuls (two in the loops, dR after) are about 11 ms.

The heads never mix (R is block-diagonal), so both loops run head by head, the time loop inside:
a head's R and state stay in cache for the whole sequence. Layout: head-major, (NH, time, ..., B, DH),
so every per-step slice is a contiguous (B, DH) block, and after the backward the gradient of R is
one batched matmul over the (time, batch) rows of each head.

The elementwise passes are written to vectorise (SIMD): each touches few arrays (LLVM gives up on a
loop that would need many runtime alias checks) and calls no libm function (numba has no vector
math library, and a scalar exp per element costs more than the rest of the step). ``exp``, ``expm1``
and ``log1p`` come from ``xlram.ops.numba_math``, which computes them in fp64 from arithmetic alone.

The values are those of the torch form up to rounding, and the backward routes the gradients of
the max (which of ĩ and log f + m_{t-1} m_t took) and of the f' <= 1 cap by the comparisons the
forward recorded, as the torch form does; see ``recurrent.py`` for the adjoint equations.

numba is optional: without it (or with ``XLRAM_NUMBA=0`` in the environment) ``available()`` is False
and callers use the torch form.
"""

from __future__ import annotations

import torch

from xlram.ops.numba_kernels import LazyKernels

_DTYPES = (torch.float32, torch.float64)
# Per-step records of the forward, REC[head, t, row, B * DH]; the rows are described in
# ``xlram.ops.slstm.cell_numba``.
_ROWS = 7


def _build():
    import numpy as np

    from xlram.ops.numba_math import jit
    from xlram.ops.slstm.cell_numba import cell

    @jit
    def forward(wx, bias, R_t, exp_forget, H, CN, M, REC, out, rec):  # pragma: no cover - compiled
        """wx (B, S, 4, NH, DH), bias (4, NH, DH), R_t (NH, 4 DH, DH) = Rᵀ; out (B, S, NH DH) receives h.

        H (NH, slots, B, DH), CN (NH, slots, 2, B DH) with the initial state in slot 0: slots = S + 1
        keeps every step, slots = 2 is a ring. M (NH, B DH) in place. REC (NH, steps, 7, B DH) the
        records, steps = S or 1 (overwritten). rec (4 DH, B) scratch for (h_{t-1} R)ᵀ.
        """
        B, S, _, NH, DH = wx.shape
        slots, steps = H.shape[1], REC.shape[1]
        for hd in range(NH):  # heads never mix: each runs its whole sequence with its R in cache
            for t in range(S):
                p, q, k = t % slots, (t + 1) % slots, t % steps
                # Rᵀ hᵀ rather than h R: OpenBLAS is about twice as fast at this shape (4 DH, DH) x (DH, B)
                np.dot(R_t[hd], H[hd, p].T, rec)
                rk = REC[hd, k]
                for g in range(4):
                    for b in range(B):
                        for j in range(DH):
                            rk[g, b * DH + j] = wx[b, t, g, hd, j] + bias[g, hd, j] + rec[g * DH + j, b]
                cell(rk, CN[hd, p], CN[hd, q], M[hd], exp_forget, t == 0)
                for b in range(B):
                    for j in range(DH):
                        H[hd, q, b, j] = rk[5, b * DH + j]
                    for j in range(DH):
                        out[b, t, hd * DH + j] = rk[5, b * DH + j]

    @jit
    def cell_backward(rec, cn_prev, cn_new, carry, dpre, first):  # pragma: no cover - compiled
        """The adjoint of ``cell`` for one step of one head.

        rec, cn_prev, cn_new as ``cell`` left them. carry (4, B DH): rows dc, dn, dm of step t on
        entry, of t - 1 on return, and row 3 the total dh_t. dpre (B, 4 DH) receives the gradients of
        the pre-activations (i, f, z, o).
        """
        B, DH4 = dpre.shape
        DH = DH4 // 4
        for b in range(B):
            for j in range(DH):
                e = b * DH + j
                i_g, f_g, z, o = float(rec[0, e]), float(rec[1, e]), float(rec[2, e]), float(rec[3, e])
                h, gh, inv_n = float(rec[5, e]), float(carry[3, e]), 1.0 / cn_new[1, e]
                dc = carry[0, e] + gh * (o * inv_n)  # dc~
                dn = carry[1, e] - gh * (h * inv_n)  # dn~
                # gradients of the exponents of i' and f' (a capped f' passes none)
                P = (z * i_g) * dc + i_g * dn
                Q_c = 0.0 if first & (rec[6, e] == 2.0) else cn_prev[0, e] * f_g * dc
                Q = Q_c + cn_prev[1, e] * f_g * dn
                # m_t is ĩ or log f + m_{t-1}: dm_t - P - Q goes to the one taken
                dm = float(carry[2, e])
                d_i = dm - Q if rec[6, e] != 0.0 else P
                d_a = dm - d_i  # gradient of log f + m_{t-1}, hence of m_{t-1}
                dpre[b, j] = d_i
                dpre[b, DH + j] = d_a * rec[4, e]
                dpre[b, 2 * DH + j] = dc * ((1.0 - z * z) * i_g)
                dpre[b, 3 * DH + j] = gh * (h * (1.0 - o))
                carry[0, e], carry[1, e], carry[2, e] = dc * f_g, dn * f_g, d_a

    @jit
    def backward(d_out, R, CN, REC, dh, carry, dpre):  # pragma: no cover - compiled
        """d_out (B, S, NH DH) upstream dh_t; R (NH, DH, 4 DH); CN, REC as the forward left them
        (slots = S + 1, steps = S).

        dh (NH, DH, B) (transposed, as the matmul writes it) and carry (NH, 4, B DH) rows dc, dn, dm:
        the gradients of the final state on entry, of the initial state on return. dpre (NH, S, B,
        4 DH) receives the gradients of the pre-activations (i, f, z, o).
        """
        NH, S, B, DH4 = dpre.shape
        DH = DH4 // 4
        for hd in range(NH):
            cy = carry[hd]
            for t in range(S - 1, -1, -1):
                for b in range(B):
                    for j in range(DH):
                        cy[3, b * DH + j] = dh[hd, j, b] + d_out[b, t, hd * DH + j]
                cell_backward(REC[hd, t], CN[hd, t], CN[hd, t + 1], cy, dpre[hd, t], t == 0)
                np.dot(R[hd], dpre[hd, t].T, dh[hd])  # (dpre_t Rᵀ)ᵀ, the transposed form as above

    return forward, backward


_KERNELS = LazyKernels(_build)  # (forward, backward)


def available() -> bool:
    """Whether the numba kernels can be used (numba importable and not disabled by ``XLRAM_NUMBA=0``)."""
    return _KERNELS.get() is not None


def applies(wx: torch.Tensor) -> bool:
    """Whether ``run_sequence`` takes these inputs: fp32/fp64 CPU tensors and numba present."""
    return wx.device.type == "cpu" and wx.dtype in _DTYPES and available()


def _np(x: torch.Tensor):
    """A numpy view of a contiguous tensor (detached: inputs of an autograd Function require grad).
    Never of a parameter's own memory: ``.numpy()`` marks a storage as not resizable for good, and
    FSDP frees unsharded parameters by resizing their storage to 0."""
    return x.detach().numpy()


def _heads(x: torch.Tensor, NH: int) -> torch.Tensor:
    """(B, NH * DH) -> (NH, B, DH), a fresh contiguous tensor (never the caller's storage)."""
    B, W = x.shape
    return x.reshape(B, NH, W // NH).transpose(0, 1).clone(memory_format=torch.contiguous_format)


def _unheads(x: torch.Tensor) -> torch.Tensor:
    """(NH, B, DH) -> (B, NH * DH), a fresh contiguous tensor (never a view of the kernels' buffers)."""
    NH, B, DH = x.shape
    return x.transpose(0, 1).clone(memory_format=torch.contiguous_format).view(B, NH * DH)


def _forward(wx, r, b, h0, c0, n0, m0, forget_gate: str, keep_all: bool):
    """Run the recurrence in one numba call; inputs as ``run_sequence`` takes them.

    Returns h (B, S, NH * DH), the final h, c, n, m (B, NH * DH), and with ``keep_all`` (else None)
    what the backward needs: H (NH, S + 1, B, DH), CN (NH, S + 1, 2, B, DH), REC (NH, S, 7, B, DH).
    """
    B, S, _, NH, DH = wx.shape
    slots, steps = (S + 1, S) if keep_all else (2, 1)
    H = torch.empty(NH, slots, B, DH, dtype=wx.dtype)
    CN = torch.empty(NH, slots, 2, B, DH, dtype=wx.dtype)
    for x, s0 in ((H[:, 0], h0), (CN[:, 0, 0], c0), (CN[:, 0, 1], n0)):
        x.copy_(s0.reshape(B, NH, DH).transpose(0, 1))
    M = _heads(m0, NH)
    REC = torch.empty(NH, steps, _ROWS, B, DH, dtype=wx.dtype)
    out = torch.empty(B, S, NH * DH, dtype=wx.dtype)
    rec = torch.empty(4 * DH, B, dtype=wx.dtype)
    R_t = r.reshape(NH, DH, 4 * DH).transpose(1, 2).contiguous()
    # the elementwise passes see each step's (B, DH) blocks flat
    bufs = (H, CN.view(NH, slots, 2, B * DH), M.view(NH, B * DH), REC.view(NH, steps, _ROWS, B * DH), out)
    params = (wx.contiguous(), b.clone(), R_t)  # b: a copy, see _np
    _KERNELS.get()[0](*(_np(x) for x in params), forget_gate == "exp", *(_np(x) for x in bufs), _np(rec))
    last = S % slots
    final = (_unheads(H[:, last]), _unheads(CN[:, last, 0]), _unheads(CN[:, last, 1]), _unheads(M))
    return out, final, ((H, CN, REC) if keep_all else None)


class _FusedSLSTMFunction(torch.autograd.Function):
    """As ``recurrent._SLSTMFunction``, with the loops over time in numba.

    Inputs wx (B, S, 4, NH, DH), r (NH, DH, 4, DH), b (4, NH, DH), h0, c0, n0, m0 (B, NH * DH).
    Outputs h (B, S, NH * DH) and the final h, c, n, m (B, NH * DH).
    """

    @staticmethod
    def forward(ctx, wx, r, b, h0, c0, n0, m0, forget_gate):
        out, final, records = _forward(wx, r, b, h0, c0, n0, m0, forget_gate, keep_all=True)
        ctx.save_for_backward(r, *records)
        return out, *final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_hS, d_cS, d_nS, d_mS):
        r, H, CN, REC = ctx.saved_tensors
        NH, S, _, B, DH = REC.shape
        # The carried gradients, updated in place to those of the initial state: dh transposed (DH, B)
        # per head, as the matmul writes it; dc, dn, dm and a scratch row in one array per head.
        dh = d_hS.reshape(B, NH, DH).permute(1, 2, 0).clone(memory_format=torch.contiguous_format)
        carry = torch.empty(NH, 4, B, DH, dtype=REC.dtype)
        for i, x in enumerate((d_cS, d_nS, d_mS)):
            carry[:, i] = x.reshape(B, NH, DH).transpose(0, 1)
        dpre = torch.empty(NH, S, B, 4 * DH, dtype=REC.dtype)
        args = (d_out.contiguous(), r.reshape(NH, DH, 4 * DH).clone(), CN.view(NH, S + 1, 2, B * DH),
                REC.view(NH, S, _ROWS, B * DH), dh, carry.view(NH, 4, B * DH), dpre)
        _KERNELS.get()[1](*(_np(x) for x in args))
        d_wx = dpre.view(NH, S, B, 4, DH).permute(2, 1, 3, 0, 4)  # (B, S, 4, NH, DH)
        d_r = d_b = None
        if ctx.needs_input_grad[1]:
            # sum_t h_{t-1}ᵀ dpre_t per head, one matmul over the rows (t, b)
            h_prev = H[:, :S].reshape(NH, S * B, DH)
            d_r = torch.bmm(h_prev.transpose(1, 2), dpre.view(NH, S * B, 4 * DH)).view(NH, DH, 4, DH)
        if ctx.needs_input_grad[2]:
            d_b = dpre.view(NH, S * B, 4, DH).sum(1).transpose(0, 1)  # (4, NH, DH)
        d_h0 = _unheads(dh.transpose(1, 2))
        return d_wx, d_r, d_b, d_h0, *(_unheads(carry[:, i]) for i in range(3)), None


def run_sequence(inputs: tuple, forget_gate: str, grad: bool) -> tuple[torch.Tensor, ...]:
    """h (B, S, NH * DH) and the final h, c, n, m (B, NH * DH); see ``recurrent._run_sequence``.

    inputs: wx (B, S, 4, NH, DH), r (NH, DH, 4, DH) and b (4, NH, DH) contiguous, h0, c0, n0, m0
    (B, NH * DH), all CPU tensors of one dtype (see :func:`applies`). ``grad``: record for a backward.
    """
    if grad:
        return _FusedSLSTMFunction.apply(*inputs, forget_gate)
    out, final, _ = _forward(*inputs, forget_gate, keep_all=False)
    return out, *final

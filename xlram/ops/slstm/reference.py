"""sLSTM, reference form: a plain loop over time, differentiated by autograd.

This is the ground truth the fast form is checked against. It favours being obviously right over
being quick; in fp64 it is exact to round-off.

Shapes (SPEC section 2), gate order i, f, z, o:
    wx: (B, S, 4, NH, DH)   input contributions W x_t
    r:  (NH, DH, 4, DH)     block-diagonal recurrent weights, preact[b, g, h, j] += h[b, h, k] r[h, k, g, j]
    b:  (4, NH, DH)         gate biases
    state: SLSTMState(h, c, n, m), each (B, NH * DH)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

FORGET_GATES = ("sigmoid", "exp")


class SLSTMState(NamedTuple):
    """Recurrent state of the sLSTM cell, each component (B, NH * DH).

    h: last output, c: cell, n: normaliser, m: log-space stabiliser. n == 0 marks an empty state
    (before the first step): the stabiliser is then reset to the input gate, per element.
    """

    h: torch.Tensor
    c: torch.Tensor
    n: torch.Tensor
    m: torch.Tensor


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the recurrence runs and the state is kept in: float32 for 16-bit inputs.

    The stabiliser and the normaliser accumulate over thousands of steps; bf16 would lose them.
    """
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def zero_state(batch: int, width: int, dtype: torch.dtype, device: torch.device) -> SLSTMState:
    """An empty state (all zeros, so n == 0 everywhere), each component (B, width)."""
    z = torch.zeros(batch, width, dtype=dtype, device=device)
    return SLSTMState(z, z.clone(), z.clone(), z.clone())


def log_forget(f_pre: torch.Tensor, forget_gate: str) -> torch.Tensor:
    """log f from the forget-gate pre-activation: logsigmoid (default) or identity (exponential gate)."""
    return F.logsigmoid(f_pre) if forget_gate == "sigmoid" else f_pre


def cell_pointwise(
    i_pre: torch.Tensor,
    f_pre: torch.Tensor,
    z_pre: torch.Tensor,
    o_pre: torch.Tensor,
    c: torch.Tensor,
    n: torch.Tensor,
    m: torch.Tensor,
    forget_gate: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of the stabilised sLSTM cell, elementwise on tensors of any one shape.

    Returns (h, c, n, m) of the new step. Every branch is a ``torch.where``, so there is no host
    synchronisation and the first-step rule applies per element.
    """
    a = log_forget(f_pre, forget_gate) + m  # log f + m_{t-1}
    # m_t = ĩ on the first step (n_{t-1} == 0), else max(ĩ, log f + m_{t-1}). Written as one where
    # with ties going to ĩ, so the gradient routing is plain to mirror in a hand-written backward.
    take_i = (n == 0) | (i_pre >= a)
    m_new = torch.where(take_i, i_pre, a)
    i_gate = torch.exp(i_pre - m_new)
    # a - m_t <= 0 except on a first step, where it multiplies an empty state; capping it at 0
    # (f' <= 1, as the official CUDA kernel does) keeps exp from overflowing to inf and inf * 0 = nan.
    d = a - m_new
    f_gate = torch.exp(torch.where(d > 0, torch.zeros_like(d), d))
    c_new = f_gate * c + i_gate * torch.tanh(z_pre)
    n_new = f_gate * n + i_gate
    h_new = torch.sigmoid(o_pre) * c_new / n_new
    return h_new, c_new, n_new, m_new


def slstm_reference(
    wx: torch.Tensor,
    r: torch.Tensor,
    b: torch.Tensor,
    state: SLSTMState | None = None,
    *,
    forget_gate: str = "sigmoid",
) -> tuple[torch.Tensor, SLSTMState]:
    """sLSTM over a sequence by a loop over time (inputs assumed validated).

    wx (B, S, 4, NH, DH), r (NH, DH, 4, DH), b (4, NH, DH), state components (B, NH * DH).
    Returns h (B, S, NH * DH) in wx's dtype and the final SLSTMState in ``state_dtype(wx.dtype)``.
    """
    B, S, _, NH, DH = wx.shape
    dt = state_dtype(wx.dtype)
    if state is None:
        state = zero_state(B, NH * DH, dt, wx.device)
    wx_c, r_c, b_c = wx.to(dt), r.to(dt), b.to(dt)
    h, c, n, m = (s.reshape(B, NH, DH) for s in state)  # (B, NH, DH) each
    outs = []
    for t in range(S):
        # (B, 4, NH, DH): input part + block-diagonal recurrent part + bias
        pre = wx_c[:, t] + torch.einsum("bhk,hkgj->bghj", h, r_c) + b_c
        h, c, n, m = cell_pointwise(pre[:, 0], pre[:, 1], pre[:, 2], pre[:, 3], c, n, m, forget_gate)
        outs.append(h)
    out = torch.stack(outs, dim=1).reshape(B, S, NH * DH).to(wx.dtype)
    final = SLSTMState(*(s.reshape(B, NH * DH) for s in (h, c, n, m)))
    return out, final

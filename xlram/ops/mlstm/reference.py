"""The mLSTM ground truth: one step at a time, exactly as the equations read (slow, fp64-safe).

Every fast form is tested against this function; it is deliberately written without any trick
beyond the stabiliser of the equations themselves, so that it can be read against the paper.
"""

import torch
import torch.nn.functional as F

from .state import MLSTMState, cast_state, state_dtype


def mlstm_reference(q, k, v, i, f, state=None, *, eps: float = 1e-6):
    """Plain step-by-step mLSTM.

    q, k: (B, H, S, dk); v: (B, H, S, dv); i, f: (B, H, S) gate pre-activations;
    state: MLSTMState (C (B, H, dk, dv), n (B, H, dk), m (B, H)) or None for zeros.
    Returns h (B, H, S, dv) in v's dtype and the final MLSTMState in fp64 for fp64 inputs, else fp32.
    No input validation: call ``xlram.ops.mlstm.mlstm`` for that.
    """
    B, H, _, dk = q.shape
    dv = v.shape[-1]
    dt = state_dtype(q.dtype)
    C, n, m = cast_state(state, B, H, dk, dv, dt, q.device)
    q = q.to(dt) * dk**-0.5
    k, v, i, f = k.to(dt), v.to(dt), i.to(dt), f.to(dt)
    logf = F.logsigmoid(f)

    hs = []
    # unbind rather than x[:, :, t], whose backward would write a full-length zero gradient per step.
    for qt, kt, vt, it, lft in zip(*(x.unbind(2) for x in (q, k, v, i, logf)), strict=True):
        m_new = torch.maximum(lft + m, it)  # (B, H)
        fg = torch.exp(lft + m - m_new)
        ig = torch.exp(it - m_new)
        C = fg[..., None, None] * C + ig[..., None, None] * (kt[..., :, None] * vt[..., None, :])
        n = fg[..., None] * n + ig[..., None] * kt
        m = m_new
        num = (qt[..., :, None] * C).sum(-2)  # (B, H, dv)
        den = torch.maximum((qt * n).sum(-1).abs(), torch.exp(-m)) + eps  # (B, H)
        hs.append(num / den[..., None])
    h = torch.stack(hs, dim=2)
    return h.to(v.dtype), MLSTMState(C, n, m)

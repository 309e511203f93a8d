"""The mLSTM recurrent form: one step at a time, O(dk·dv) memory per head in inference whatever the
length.

``mlstm_step`` is the generation path (no host synchronisation, no data-dependent branch, so it
can be captured in a graph); ``mlstm_recurrent`` loops it over a sequence.
"""

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .state import MLSTMState, cast_state, state_dtype

# Autograd through the loop keeps a few (B, H, dk, dv) tensors per step. Past this many elements
# in all (S·B·H·dk·dv, ~128 MiB a copy in fp32), only every _SEGMENT-th state is kept and each segment
# is recomputed in backward: memory / _SEGMENT for 2-4x the time, so small problems skip it.
_CHECKPOINT_ELEMENTS = 1 << 25
_SEGMENT = 64


def _step(qs, k, v, logf, i, C, n, m, eps):
    """One step on pre-scaled q and pre-computed log forget gate, all in the state dtype.

    qs, k: (B, H, dk); v: (B, H, dv); logf, i: (B, H); C, n, m the state. Returns h (B, H, dv), C, n, m.
    """
    m_new = torch.maximum(logf + m, i)
    fg = torch.exp(logf + m - m_new)
    ig = torch.exp(i - m_new)
    # C <- fg C + ig k vᵀ; addcmul and a broadcast outer product beat batched matmuls on these
    # tiny (dk, 1) x (1, dv) products, and stay fast when old memories decay to subnormal numbers.
    C = torch.addcmul(fg[..., None, None] * C, (ig[..., None] * k)[..., :, None], v[..., None, :])
    n = fg[..., None] * n + ig[..., None] * k
    num = (qs[..., :, None] * C).sum(-2)  # (B, H, dv); a matmul here crawls on subnormal memories
    den = torch.maximum((qs * n).sum(-1).abs(), torch.exp(-m_new)) + eps
    return num / den[..., None], C, n, m_new


def mlstm_step(q, k, v, i, f, state=None, eps: float = 1e-6):
    """One mLSTM step.

    q, k: (B, H, dk); v: (B, H, dv); i, f: (B, H) gate pre-activations; state: MLSTMState or None.
    Returns h (B, H, dv) in v's dtype and the new MLSTMState (fp64 for fp64 inputs, else fp32).
    """
    B, H, dk = q.shape
    dv = v.shape[-1]
    dt = state_dtype(q.dtype)
    C, n, m = cast_state(state, B, H, dk, dv, dt, q.device)
    logf = F.logsigmoid(f.to(dt))
    h, C, n, m = _step(q.to(dt) * dk**-0.5, k.to(dt), v.to(dt), logf, i.to(dt), C, n, m, eps)
    return h.to(v.dtype), MLSTMState(C, n, m)


def _run(qs, k, v, logf, i, C, n, m, eps):
    """The loop over a (segment of a) sequence: qs, k (B, H, L, dk) ... -> h (B, H, L, dv), C, n, m."""
    hs = []
    # unbind, not x[:, :, t]: the backward of each index would write a full-length zero gradient
    # (O(S²) in all); unbind's backward is one stack.
    for qt, kt, vt, lft, it in zip(*(x.unbind(2) for x in (qs, k, v, logf, i)), strict=True):
        h, C, n, m = _step(qt, kt, vt, lft, it, C, n, m, eps)
        hs.append(h)
    return torch.stack(hs, dim=2), C, n, m


def mlstm_recurrent(q, k, v, i, f, state=None, *, eps: float = 1e-6):
    """The mLSTM over a sequence, step by step.

    q, k: (B, H, S, dk); v: (B, H, S, dv); i, f: (B, H, S); state: MLSTMState or None.
    Returns h (B, H, S, dv) in v's dtype and the final MLSTMState.
    """
    B, H, S, dk = q.shape
    dv, out_dtype = v.shape[-1], v.dtype
    dt = state_dtype(q.dtype)
    C, n, m = cast_state(state, B, H, dk, dv, dt, q.device)
    qs = q.to(dt) * dk**-0.5
    k, v, i = k.to(dt), v.to(dt), i.to(dt)
    logf = F.logsigmoid(f.to(dt))

    if not (torch.is_grad_enabled() and S > _SEGMENT and S * C.numel() > _CHECKPOINT_ELEMENTS):
        h, C, n, m = _run(qs, k, v, logf, i, C, n, m, eps)
        return h.to(out_dtype), MLSTMState(C, n, m)

    # With gradients: keep only segment-boundary states, recompute each segment in backward.
    hs = []
    for s in range(0, S, _SEGMENT):
        seg = slice(s, s + _SEGMENT)
        h, C, n, m = checkpoint(
            _run, qs[:, :, seg], k[:, :, seg], v[:, :, seg], logf[:, :, seg], i[:, :, seg], C, n, m, eps,
            use_reentrant=False,
        )
        hs.append(h)
    return torch.cat(hs, dim=2).to(out_dtype), MLSTMState(C, n, m)

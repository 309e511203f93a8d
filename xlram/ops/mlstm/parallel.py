"""The mLSTM parallel form: one causal (S, S) log-decay matrix, rows stabilised by their max.

The functions here work on any leading dims ``...`` and one block of L steps that starts from a
given state (C0, n0, m0); the parallel form is one block over the whole sequence, and the chunkwise
form (``chunkwise.py``) runs many blocks at once from the chunk-start states it computes.

In unstabilised terms the memory after step t of a block is
``exp(b_t) C̄0 + Σ_{j<=t} exp(D_tj) k_j v_jᵀ`` with ``b_t = Σ_{s<=t} log f_s`` and
``D_tj = Σ_{j<s<=t} log f_s + ĩ_j``. The initial state enters with log weight ``b_t + m0``; taking it
into the row max makes the stabiliser exactly the recurrent ``m_t`` (the official parallel kernel
leaves it out, which changes the eps term and the returned m).
"""

import torch
import torch.nn.functional as F

from .state import MLSTMState, cast_state, state_dtype


def log_decay(logf, i):
    """Log weights of one block.

    logf, i: (..., L) log forget gates and input pre-activations. Returns
    D (..., L, L): D[t, j] = Σ_{j<s<=t} logf_s + i_j for j <= t, -inf above the diagonal;
    b (..., L): Σ_{s<=t} logf_s, the decay from the block start to the end of step t;
    a (..., L): D[L-1, j], the log weight of step j in the end-of-block state;
    g (...): Σ_s logf_s, the decay over the whole block.
    """
    L = logf.shape[-1]
    ones = torch.ones(L, L, dtype=torch.bool, device=logf.device)
    # Sums over runs of steps, never differences of one long prefix sum: every logf <= 0, so each
    # running sum is monotone and its rounding is relative to itself, while F_t - F_j of two long
    # prefixes loses to cancellation the digits that matter (official `stablef` does the same).
    M = logf[..., :, None].expand(*logf.shape, L).masked_fill(~ones.tril(-1), 0.0)  # M[t, j] = logf_t, t > j
    D = M.cumsum(-2) + i[..., None, :]
    D = D.masked_fill(~ones.tril(), float("-inf"))
    return D, logf.cumsum(-1), D[..., -1, :], logf.sum(-1)


def block_outputs(qs, k, v, D, b, C0, n0, m0, eps):
    """h for every step of a block that starts from (C0, n0, m0).

    qs, k: (..., L, dk) with q already scaled; v: (..., L, dv); D (..., L, L) and b (..., L) from
    ``log_decay``; C0 (..., dk, dv), n0 (..., dk), m0 (...). Returns h (..., L, dv).
    """
    w0_log = b + m0[..., None]  # (..., L) log weight of the initial state at each step
    m = torch.maximum(D.amax(-1), w0_log)  # the recurrent stabiliser m_t, exactly
    W = torch.exp(D - m[..., None])  # (..., L, L)
    w0 = torch.exp(w0_log - m)  # (..., L)
    P = (qs @ k.transpose(-1, -2)) * W  # (..., L, L)
    num = P @ v + w0[..., None] * (qs @ C0)  # (..., L, dv)
    qn = P.sum(-1) + w0 * (qs @ n0[..., None]).squeeze(-1)  # (..., L)
    den = torch.maximum(qn.abs(), torch.exp(-m)) + eps
    return num / den[..., None]


def block_end_state(k, v, a, g, C0, n0, m0):
    """The state after a block: k (..., L, dk), v (..., L, dv), a (..., L), g (...) from ``log_decay``."""
    m = torch.maximum(g + m0, a.amax(-1))  # (...)
    ka = k * torch.exp(a - m[..., None])[..., None]  # (..., L, dk)
    w0 = torch.exp(g + m0 - m)
    C = w0[..., None, None] * C0 + ka.transpose(-1, -2) @ v
    n = w0[..., None] * n0 + ka.sum(-2)
    return MLSTMState(C, n, m)


def mlstm_parallel(q, k, v, i, f, state=None, *, eps: float = 1e-6):
    """The mLSTM over a sequence in one quadratic block (O(S²) time and memory per head).

    q, k: (B, H, S, dk); v: (B, H, S, dv); i, f: (B, H, S); state: MLSTMState or None.
    Returns h (B, H, S, dv) in v's dtype and the final MLSTMState.
    """
    B, H, S, dk = q.shape
    dv, out_dtype = v.shape[-1], v.dtype
    dt = state_dtype(q.dtype)
    C0, n0, m0 = cast_state(state, B, H, dk, dv, dt, q.device)
    qs = q.to(dt) * dk**-0.5
    k, v, i = k.to(dt), v.to(dt), i.to(dt)
    D, b, a, g = log_decay(F.logsigmoid(f.to(dt)), i)
    h = block_outputs(qs, k, v, D, b, C0, n0, m0, eps)
    return h.to(out_dtype), block_end_state(k, v, a, g, C0, n0, m0)

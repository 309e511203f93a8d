"""The mLSTM chunkwise form: recurrence on (C, n, m) between chunks, the parallel form inside them.

Cost per head O(S·L·(dk + dv) + S·dk·dv) for chunks of L steps: linear in S, and all of it matmuls
except a loop over chunks (not steps) of elementwise state updates. A sequence that is not a
multiple of L is run as S // L full chunks plus one shorter tail block, so nothing is padded.
"""

import torch
import torch.nn.functional as F

from .parallel import block_end_state, block_outputs, log_decay
from .state import MLSTMState, cast_state, state_dtype


def _chunk_start_states(k, v, a, g, C0, n0, m0):
    """States at the start of each of NC chunks, and after the last.

    k (B, H, NC, L, dk), v (B, H, NC, L, dv), a (B, H, NC, L), g (B, H, NC) from ``log_decay``;
    C0, n0, m0 the state before the first chunk. Returns MLSTMState with C (B, H, NC, dk, dv),
    n (B, H, NC, dk), m (B, H, NC), and the final MLSTMState.
    """
    # What each chunk adds, under its own stabiliser ma = max_j a_j: one batched matmul for all.
    ma = a.amax(-1)  # (B, H, NC)
    ka = k * torch.exp(a - ma[..., None])[..., None]
    KV = ka.transpose(-1, -2) @ v  # (B, H, NC, dk, dv)
    Kn = ka.sum(-2)  # (B, H, NC, dk)

    Cs, ns, ms = [], [], []
    C, n, m = C0, n0, m0
    # unbind, not KV[:, :, c]: the backward of each index would write a full-size zero gradient,
    # O(NC²) work in all; unbind's backward is one stack.
    for g_c, ma_c, KV_c, Kn_c in zip(g.unbind(2), ma.unbind(2), KV.unbind(2), Kn.unbind(2), strict=True):
        Cs.append(C)
        ns.append(n)
        ms.append(m)
        m_new = torch.maximum(g_c + m, ma_c)
        w_old = torch.exp(g_c + m - m_new)
        w_new = torch.exp(ma_c - m_new)
        C = w_old[..., None, None] * C + w_new[..., None, None] * KV_c
        n = w_old[..., None] * n + w_new[..., None] * Kn_c
        m = m_new
    starts = MLSTMState(torch.stack(Cs, 2), torch.stack(ns, 2), torch.stack(ms, 2))
    return starts, MLSTMState(C, n, m)


def _full_chunks(qs, k, v, logf, i, state, L, eps):
    """h (B, H, NC·L, dv) and the final state for a sequence of exactly NC chunks of L steps."""
    B, H, S, dk = qs.shape
    NC = S // L
    qs, k, v = (x.reshape(B, H, NC, L, x.shape[-1]) for x in (qs, k, v))
    logf, i = logf.reshape(B, H, NC, L), i.reshape(B, H, NC, L)
    D, b, a, g = log_decay(logf, i)
    starts, final = _chunk_start_states(k, v, a, g, *state)
    h = block_outputs(qs, k, v, D, b, *starts, eps)  # (B, H, NC, L, dv)
    return h.reshape(B, H, S, -1), final


def mlstm_chunkwise(q, k, v, i, f, state=None, *, chunk_size: int = 64, eps: float = 1e-6):
    """The mLSTM over a sequence in chunks of ``chunk_size`` steps.

    q, k: (B, H, S, dk); v: (B, H, S, dv); i, f: (B, H, S); state: MLSTMState or None; any S >= 1.
    Returns h (B, H, S, dv) in v's dtype and the final MLSTMState.
    """
    B, H, S, dk = q.shape
    dv, out_dtype = v.shape[-1], v.dtype
    dt = state_dtype(q.dtype)
    state = cast_state(state, B, H, dk, dv, dt, q.device)
    qs = q.to(dt) * dk**-0.5
    k, v, i = k.to(dt), v.to(dt), i.to(dt)
    logf = F.logsigmoid(f.to(dt))

    L = min(chunk_size, S)
    S_full = S - S % L
    h, state = _full_chunks(qs[:, :, :S_full], k[:, :, :S_full], v[:, :, :S_full],
                            logf[:, :, :S_full], i[:, :, :S_full], state, L, eps)
    if S_full < S:  # the tail: one shorter block from the state after the full chunks
        tail = slice(S_full, S)
        D, b, a, g = log_decay(logf[:, :, tail], i[:, :, tail])
        h_tail = block_outputs(qs[:, :, tail], k[:, :, tail], v[:, :, tail], D, b, *state, eps)
        state = block_end_state(k[:, :, tail], v[:, :, tail], a, g, *state)
        h = torch.cat([h, h_tail], dim=2)
    return h.to(out_dtype), state

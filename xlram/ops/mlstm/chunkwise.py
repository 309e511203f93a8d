"""The mLSTM chunkwise form: recurrence on (C, n, m) between chunks, the parallel form inside them.

Cost per head O(S·L·(dk + dv) + S·dk·dv) for chunks of L steps, linear in S in time and memory; all
of it batched matmuls over the chunks except the scans over chunks (not steps) that carry the
stabiliser and the memory from one chunk to the next. The work is one autograd Function with a
hand-derived backward (``chunkwise_fn.py``): no per-chunk autograd graph, and the backward is
batched matmuls too.

A sequence that is not a multiple of L is padded at the end with steps that leave the state exactly
as it is (k = v = q = 0, input gate exp(-inf) = 0, forget gate exp(0) = 1), so the outputs of the
real steps and the final state are those of the unpadded sequence. The chunk length is the caller's
(``dispatch.choose_chunk`` picks one per shape for the layers).
"""

import torch
import torch.nn.functional as F

from . import chunk_loop_cpu
from .chunkwise_fn import ChunkwiseFunction, chunkwise_forward
from .state import MLSTMState, cast_state, state_dtype


def _pad(x: torch.Tensor, n: int, value: float) -> torch.Tensor:
    """x (B, H, S) or (B, H, S, d) with n steps of ``value`` appended along S."""
    if n == 0:
        return x
    pad = (0, n) if x.dim() == 3 else (0, 0, 0, n)
    return F.pad(x, pad, value=value)


# Without gradients nothing has to be kept, so a long sequence runs SEGMENT_CHUNKS chunks at a time,
# the state passed on: the per-chunk buffers (memories at the chunk starts, decay matrices) then
# stay a few MiB instead of growing with S. Past 32 MiB glibc maps every fresh array from the OS and
# faults each page in again: at S = 16,384 (B = 1, H = 4, d = 128) one pass took 3-4x longer. The
# compiled loop over chunks (``chunk_loop_cpu``) keeps one chunk's buffers only, so it runs whole.
SEGMENT_CHUNKS = 32


def _forward_in_segments(q, k, v, logf, i, C, n, m, L, eps, scale):
    """``chunkwise_forward`` over whole chunks, SEGMENT_CHUNKS at a time; returns h, C, n, m."""
    S = q.shape[2]
    seg = SEGMENT_CHUNKS * L
    if S <= seg or chunk_loop_cpu.applies(q):
        h, C, n, m, _ = chunkwise_forward(q, k, v, logf, i, C, n, m, L, eps, False, scale)
        return h, C, n, m
    hs = []
    for a in range(0, S, seg):
        part = [x[:, :, a : a + seg].contiguous() for x in (q, k, v, logf, i)]
        h, C, n, m, _ = chunkwise_forward(*part, C, n, m, L, eps, False, scale)
        hs.append(h)
    return torch.cat(hs, dim=2), C, n, m


def mlstm_chunkwise(q, k, v, i, f, state=None, *, chunk_size: int = 64, eps: float = 1e-6):
    """The mLSTM over a sequence in chunks of ``chunk_size`` steps.

    q, k: (B, H, S, dk); v: (B, H, S, dv); i, f: (B, H, S); state: MLSTMState or None; any S >= 1.
    Returns h (B, H, S, dv) in v's dtype and the final MLSTMState.
    """
    B, H, S, dk = q.shape
    dv, out_dtype = v.shape[-1], v.dtype
    dt = state_dtype(q.dtype)
    C0, n0, m0 = cast_state(state, B, H, dk, dv, dt, q.device)
    L = max(1, min(chunk_size, S))
    pad = -S % L
    q_ = _pad(q.to(dt), pad, 0.0).contiguous()  # scaled by 1/sqrt(dk) inside, through the decay weights
    k_ = _pad(k.to(dt), pad, 0.0).contiguous()
    v_ = _pad(v.to(dt), pad, 0.0).contiguous()
    logf = _pad(F.logsigmoid(f.to(dt)), pad, 0.0).contiguous()
    i_ = _pad(i.to(dt), pad, float("-inf")).contiguous()

    inputs = (q_, k_, v_, logf, i_, C0.contiguous(), n0.contiguous(), m0.contiguous())
    if torch.is_grad_enabled() and any(x.requires_grad for x in inputs):
        h, C, n, m = ChunkwiseFunction.apply(*inputs, L, eps, dk**-0.5)
    else:
        h, C, n, m = _forward_in_segments(*inputs, L, eps, dk**-0.5)
    if pad:
        h = h[:, :, :S]
    return h.to(out_dtype), MLSTMState(C, n, m)

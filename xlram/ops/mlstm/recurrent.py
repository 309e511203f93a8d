"""The mLSTM recurrent form: one step at a time, O(dk·dv) memory per head in inference whatever the
length.

``mlstm_step`` is the generation path (no host synchronisation, no data-dependent branch, so it
can be captured in a graph); ``mlstm_recurrent`` loops it over a sequence.
"""

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import fused_cpu
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


_OPAQUE_BYTES = 1 << 20


def _memory_update_(C, n, fg, kig, v, qs):
    """C <- fg C + kig vᵀ and n <- fg n + kig in place; returns the read-outs C_newᵀ q, n_new·q.

    C (B, H, dk, dv), n (B, H, dk), fg (B, H), kig, qs (B, H, dk), v (B, H, dv). One pass over C
    with numba where it applies (``fused_cpu``), else torch kernels (``_torch_memory_update_``).
    """
    if fused_cpu.applies(C):
        return fused_cpu.memory_update_(C, n, fg, kig, v, qs)
    return _torch_memory_update_(C, n, fg, kig, v, qs)


def _torch_memory_update_(C, n, fg, kig, v, qs):
    """``_memory_update_`` in torch kernels: C is swept three times (scale, rank-1 update, read-out)."""
    C.mul_(fg[..., None, None]).addcmul_(kig[..., :, None], v[..., None, :])
    n.mul_(fg[..., None]).add_(kig)
    q_row = qs[..., None, :]  # (B, H, 1, dk)
    # matmuls for the read-out: on this CPU they do not slow down on subnormal memories (measured)
    num = torch.matmul(q_row, C).squeeze(-2)  # (B, H, dv)
    qn = torch.matmul(q_row, n[..., :, None]).view(fg.shape)
    return num, qn


@torch.library.custom_op("xlram::mlstm_memory_update_", mutates_args=("C", "n"))
def _memory_update_op(C: torch.Tensor, n: torch.Tensor, fg: torch.Tensor, kig: torch.Tensor, v: torch.Tensor,
                      qs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``_memory_update_`` as an opaque op for ``torch.compile``: inductor would otherwise write the
    new memory to a fresh (B, H, dk, dv) buffer and copy it back, an allocation of the state's size
    per block and step (with glibc's default trimming, a page fault per 4 KiB of it)."""
    return _memory_update_(C, n, fg, kig, v, qs)


@_memory_update_op.register_fake
def _(C, n, fg, kig, v, qs):
    return v.new_empty(v.shape), fg.new_empty(fg.shape)


def mlstm_step_(q, k, v, i, f, state: MLSTMState, *, eps: float = 1e-6) -> torch.Tensor:
    """One mLSTM step that updates ``state`` in place: the inference path (no autograd).

    q, k: (B, H, dk); v: (B, H, dv); i, f: (B, H) gate pre-activations; ``state`` an MLSTMState whose
    tensors (C (B, H, dk, dv), n (B, H, dk), m (B, H), contiguous) are overwritten with the new
    state. Returns h (B, H, dv) in v's dtype. The same arithmetic as ``mlstm_step``, written as
    in-place kernels on preallocated memory: a decode loop allocates nothing of the state's size, and
    C is read and written once (numba, ``fused_cpu``) or swept by three torch kernels (scale, rank-1
    update, the read-out matmul).
    Call it under ``torch.no_grad()``; use ``mlstm_step`` where gradients are needed.
    """
    C, n, m = state
    dt, dk = C.dtype, q.shape[-1]
    a = F.logsigmoid(f.to(dt)).add_(m)  # log f + m_{t-1}
    i = i.to(dt)
    torch.maximum(a, i, out=m)  # m_t
    fg = a.sub_(m).exp_()  # f'
    kig = k.to(dt) * torch.sub(i, m).exp_()[..., None]  # i' k
    qs = q.to(dt) * dk**-0.5
    # Compiled, large memories go through the opaque op (no state-sized temporary); small ones stay
    # in the graph, where inductor fuses them (the op's Python dispatch costs ~0.1 ms a call).
    if torch.compiler.is_compiling():
        big = C.numel() * C.element_size() >= _OPAQUE_BYTES
        update = _memory_update_op if big else _torch_memory_update_
    else:
        update = _memory_update_
    num, qn = update(C, n, fg, kig, v.to(dt), qs)
    den = torch.maximum(qn.abs(), torch.neg(m).exp_()).add_(eps)
    return num.div_(den[..., None]).to(v.dtype)


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

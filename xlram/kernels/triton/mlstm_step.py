"""One fused mLSTM step for generation: gates, state update and output in one kernel launch.

Per head (SPEC section 1): m' = max(log f + m, ĩ), C' = f' C + i' k vᵀ, n' = f' n + i' k,
h = C'ᵀ q̂ / (max(|n'·q̂|, exp(-m')) + eps). One program per (dv tile, batch·head) reads its
columns of C once and writes them once, so the step costs one pass over the state: the bound for
a memory-bound op. The new state goes to fresh buffers (or to ``out=`` buffers given by the caller,
which a CUDA graph can own); writing over the input state in place would race, since every program
reads all of n while the first writes it.

The backward (training through single steps is rare) recomputes the step with torch ops.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import SUPPORTED_DTYPES, interpreting, logsigmoid, pow2_tile


@triton.jit
def mlstm_step_kernel(
    q_ptr, k_ptr, v_ptr, i_ptr, f_ptr, C_ptr, n_ptr, m_ptr,
    h_ptr, C_out_ptr, n_out_ptr, m_out_ptr,
    scale, eps,
    DK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    """Grid (cdiv(DV, BV), BH). q, k (BH, DK); v, h (BH, DV); i, f, m (BH); C (BH, DK, DV); n (BH, DK)."""
    pv, bh = tl.program_id(0), tl.program_id(1)
    ov = pv * BV + tl.arange(0, BV)
    mv = ov < DV
    ig = tl.load(i_ptr + bh).to(tl.float32)
    lf = logsigmoid(tl.load(f_ptr + bh).to(tl.float32))
    m = tl.load(m_ptr + bh).to(tl.float32)
    m_new = tl.maximum(lf + m, ig)
    fg = tl.exp(lf + m - m_new)
    igate = tl.exp(ig - m_new)
    v = tl.load(v_ptr + bh * DV + ov, mask=mv, other=0.0).to(tl.float32)
    num = tl.zeros((BV,), dtype=tl.float32)
    qn = tl.zeros((BK,), dtype=tl.float32)
    C_base = bh.to(tl.int64) * DK * DV
    for kk in range(tl.cdiv(DK, BK)):
        ok = kk * BK + tl.arange(0, BK)
        mk = ok < DK
        q = tl.load(q_ptr + bh * DK + ok, mask=mk, other=0.0).to(tl.float32) * scale
        k = tl.load(k_ptr + bh * DK + ok, mask=mk, other=0.0).to(tl.float32)
        off = C_base + ok[:, None] * DV + ov[None, :]
        cm = mk[:, None] & mv[None, :]
        C = tl.load(C_ptr + off, mask=cm, other=0.0).to(tl.float32)
        C = fg * C + (igate * k)[:, None] * v[None, :]
        tl.store(C_out_ptr + off, C, mask=cm)
        num += tl.sum(q[:, None] * C, axis=0)
        n = fg * tl.load(n_ptr + bh * DK + ok, mask=mk, other=0.0).to(tl.float32) + igate * k
        if pv == 0:
            tl.store(n_out_ptr + bh * DK + ok, n, mask=mk)
        qn += q * n
    den = tl.maximum(tl.abs(tl.sum(qn, axis=0)), tl.exp(-m_new)) + eps
    tl.store(h_ptr + bh * DV + ov, (num / den).to(h_ptr.dtype.element_ty), mask=mv)
    if pv == 0:
        tl.store(m_out_ptr + bh, m_new)


def _launch(q, k, v, i, f, C, n, m, eps, out=None):
    B, H, dk = q.shape
    dv = v.shape[-1]
    BK, BV = pow2_tile(dk, 64, floor=1), pow2_tile(dv, 64, floor=1)
    f32 = dict(dtype=torch.float32, device=q.device)
    if out is None:
        out = (torch.empty(B, H, dv, dtype=v.dtype, device=q.device), torch.empty(B, H, dk, dv, **f32),
               torch.empty(B, H, dk, **f32), torch.empty(B, H, **f32))
    h, C_out, n_out, m_out = out
    args = [x.contiguous() for x in (q, k, v, i, f, C, n, m)]
    mlstm_step_kernel[(triton.cdiv(dv, BV), B * H)](
        *args, h, C_out, n_out, m_out, dk**-0.5, float(eps), DK=dk, DV=dv, BK=BK, BV=BV, num_warps=4,
    )
    return h, C_out, n_out, m_out


def _torch_step(q, k, v, i, f, C, n, m, eps):
    """The same step in torch ops (for the backward)."""
    dk = q.shape[-1]
    lf = torch.nn.functional.logsigmoid(f.float())
    m_new = torch.maximum(lf + m, i.float())
    fg, ig = torch.exp(lf + m - m_new), torch.exp(i.float() - m_new)
    kf, vf, qs = k.float(), v.float(), q.float() * dk**-0.5
    C_new = fg[..., None, None] * C + (ig[..., None] * kf)[..., :, None] * vf[..., None, :]
    n_new = fg[..., None] * n + ig[..., None] * kf
    num = (qs[..., :, None] * C_new).sum(-2)
    den = torch.maximum((qs * n_new).sum(-1).abs(), torch.exp(-m_new)) + eps
    return (num / den[..., None]).to(v.dtype), C_new, n_new, m_new


class _MLSTMStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, i, f, C, n, m, eps):
        ctx.save_for_backward(q, k, v, i, f, C, n, m)
        ctx.eps = eps
        return _launch(q, k, v, i, f, C, n, m, eps)

    @staticmethod
    def backward(ctx, *grads):
        inputs = [x.detach().requires_grad_(x.requires_grad) for x in ctx.saved_tensors]
        with torch.enable_grad():
            outs = _torch_step(*inputs, ctx.eps)
        pairs = [(o, g) for o, g in zip(outs, grads, strict=True) if g is not None]
        needed = [x for x in inputs if x.requires_grad]
        outs, grads = [o for o, _ in pairs], [g for _, g in pairs]
        got = iter(torch.autograd.grad(outs, needed, grads, allow_unused=True))
        return (*[next(got) if x.requires_grad else None for x in inputs], None)


def mlstm_step_triton(q, k, v, i, f, state=None, *, eps=1e-6, out=None):
    """One mLSTM step with the fused kernel.

    q, k: (B, H, dk); v: (B, H, dv) in fp32, bf16 or fp16; i, f: (B, H); state: MLSTMState
    (C (B, H, dk, dv), n (B, H, dk), m (B, H), fp32) or None for zeros. ``out``: optional
    preallocated (h, C, n, m) to write into (no allocation per step; not differentiable), which must
    not alias the input state. Returns h (B, H, dv) in v's dtype and the new MLSTMState (fp32).
    """
    from xlram.ops.mlstm.state import MLSTMState

    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"q: expected one of {SUPPORTED_DTYPES} for the Triton kernels, got {q.dtype}")
    if q.device.type != "cuda" and not interpreting():
        raise ValueError(f"q: expected a CUDA tensor (or TRITON_INTERPRET=1 for CPU), got device {q.device}")
    B, H, dk = q.shape
    dv = v.shape[-1]
    if state is None:
        f32 = dict(dtype=torch.float32, device=q.device)
        state = (torch.zeros(B, H, dk, dv, **f32), torch.zeros(B, H, dk, **f32), torch.zeros(B, H, **f32))
    C, n, m = (x.float() for x in state)
    if out is not None:
        if any(o.data_ptr() == s.data_ptr() for o in out[1:] for s in (C, n, m)):
            raise ValueError("out: the output state buffers must not alias the input state")
        h, C, n, m = _launch(q, k, v, i, f, C, n, m, eps, out=out)
    elif torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, i, f, C, n, m)):
        h, C, n, m = _MLSTMStep.apply(q, k, v, i, f, C, n, m, float(eps))
    else:
        h, C, n, m = _launch(q, k, v, i, f, C, n, m, eps)
    return h, MLSTMState(C, n, m)

"""The mLSTM layer's output path in one numba pass each way (CPU, fp32/fp64):

    y = (HeadwiseNorm(h) + skip ⊙ x_c) ⊙ g,     HeadwiseNorm(h) = LayerNorm_per_head(h) ⊙ w + b

with h (B, NH, S, DH) straight from the cell (head-major, no transposing copy), x_c, g (B, S, Di) and
y (B, S, Di). In torch this is a transpose, a layer norm, a scale, a skip multiply-add and the gate
product forward, and about twice as many kernels backward, each a pass over a (B, S, Di) tensor; here
each direction is one pass. The gate ``g = SiLU(z)`` stays in torch (vectorised exp).

Backward, per row and head (n the normalised h, r its 1/std, u = n ⊙ w + b + skip ⊙ x_c):
``du = dy ⊙ g``, ``dg = dy ⊙ u``, ``dx_c = du ⊙ skip``, ``dn = du ⊙ w``,
``dh = r (dn - mean(dn) - n mean(dn ⊙ n))``; dw, db and dskip are sums of ``du ⊙ n``, ``du`` and
``du ⊙ x_c`` over the rows. The values equal the torch form's up to rounding
(tests/ops/test_mlstm_output_cpu.py).
"""

from __future__ import annotations

import torch

from xlram.ops.numba_kernels import LazyKernels

_DTYPES = (torch.float32, torch.float64)


def _build():

    import numba
    import numpy as np

    from xlram.ops.norm_numba import norm_row

    jit = numba.njit(cache=True, nogil=True)

    @jit
    def forward(h, xc, g, w, b, skip, eps, y, stats):  # pragma: no cover - compiled
        """h (B, NH, S, DH); xc, g, y (B, S, NH*DH); w, b (NH*DH,) or empty; skip (NH*DH,);
        stats (2, B, NH, S) <- the mean and 1/std of each head."""
        B, NH, S, DH = h.shape
        n = np.empty(DH, dtype=h.dtype)
        for bb in range(B):
            for s in range(S):
                yr, xr, gr = y[bb, s], xc[bb, s], g[bb, s]
                for hd in range(NH):
                    lo = hd * DH
                    mean, rstd = norm_row(h[bb, hd, s], w[lo:lo + DH], b[lo:lo + DH], eps, n)
                    stats[0, bb, hd, s], stats[1, bb, hd, s] = mean, rstd
                    ys, xs, gs, ks = yr[lo:lo + DH], xr[lo:lo + DH], gr[lo:lo + DH], skip[lo:lo + DH]
                    for j in range(DH):
                        ys[j] = (n[j] + ks[j] * xs[j]) * gs[j]

    @jit
    def backward(dy, h, xc, g, w, b, skip, stats, dh, dxc, dg, dw, db, dskip):  # pragma: no cover
        """Gradients of ``forward``: dh (B, NH, S, DH), dxc, dg (B, S, NH*DH); dw, db, dskip (NH*DH,)
        accumulated here from zero (dw, db empty where w, b are)."""
        B, NH, S, DH = h.shape
        dw[:] = 0
        db[:] = 0
        dskip[:] = 0
        n = np.empty(DH, dtype=h.dtype)
        du = np.empty(DH, dtype=h.dtype)
        dn = np.empty(DH, dtype=h.dtype)
        for bb in range(B):
            for s in range(S):
                for hd in range(NH):
                    lo = hd * DH
                    hr, dhr = h[bb, hd, s], dh[bb, hd, s]
                    mean, rstd = stats[0, bb, hd, s], stats[1, bb, hd, s]
                    dys, xs, gs = dy[bb, s, lo:lo + DH], xc[bb, s, lo:lo + DH], g[bb, s, lo:lo + DH]
                    dxs, dgs = dxc[bb, s, lo:lo + DH], dg[bb, s, lo:lo + DH]
                    ks, dks = skip[lo:lo + DH], dskip[lo:lo + DH]
                    for j in range(DH):
                        n[j] = (hr[j] - mean) * rstd
                    for j in range(DH):
                        du[j] = dys[j] * gs[j]
                    for j in range(DH):  # u = n w + b + skip x_c, rebuilt for dg
                        u = n[j] * w[lo + j] if w.shape[0] else n[j]
                        if b.shape[0]:
                            u += b[lo + j]
                        dgs[j] = dys[j] * (u + ks[j] * xs[j])
                    for j in range(DH):
                        dxs[j] = du[j] * ks[j]
                        dks[j] += du[j] * xs[j]
                    if w.shape[0]:
                        dws = dw[lo:lo + DH]
                        for j in range(DH):
                            dws[j] += du[j] * n[j]
                            dn[j] = du[j] * w[lo + j]
                    else:
                        for j in range(DH):
                            dn[j] = du[j]
                    if b.shape[0]:
                        dbs = db[lo:lo + DH]
                        for j in range(DH):
                            dbs[j] += du[j]
                    m1 = 0.0
                    m2 = 0.0
                    for j in range(DH):
                        m1 += dn[j]
                        m2 += dn[j] * n[j]
                    m1 /= DH
                    m2 /= DH
                    for j in range(DH):
                        dhr[j] = rstd * (dn[j] - m1 - n[j] * m2)

    return {"forward": forward, "backward": backward, "np": np}


_KERNELS = LazyKernels(_build)


def applies(h: torch.Tensor, *tensors: torch.Tensor | None) -> bool:
    """Whether :func:`fused_output` runs here: CPU tensors of one dtype, fp32 or fp64, and numba usable."""
    ts = [h, *(t for t in tensors if t is not None)]
    return (all(t.device.type == "cpu" and t.dtype == h.dtype for t in ts) and h.dtype in _DTYPES
            and _KERNELS.get() is not None)


def _np(t: torch.Tensor | None, like: torch.Tensor):
    if t is None:
        return like.new_empty(0).numpy()
    return t.detach().numpy()


class _FusedOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, xc, g, w, b, skip, eps):
        k = _KERNELS.get()
        B, NH, S, DH = h.shape
        h, xc, g = h.contiguous(), xc.contiguous(), g.contiguous()
        # copies of the parameters: .numpy() would mark their storage as not resizable, which FSDP needs
        w, b, skip = (None if t is None else t.detach().clone() for t in (w, b, skip))
        y = xc.new_empty(B, S, NH * DH)
        stats = h.new_empty(2, B, NH, S)
        k["forward"](_np(h, h), _np(xc, h), _np(g, h), _np(w, h), _np(b, h), _np(skip, h), eps, _np(y, h),
                     _np(stats, h))
        ctx.save_for_backward(h, xc, g, w, b, skip, stats)
        return y

    @staticmethod
    def backward(ctx, dy):
        k = _KERNELS.get()
        h, xc, g, w, b, skip, stats = ctx.saved_tensors
        dy = dy.contiguous()
        dh, dxc, dg = torch.empty_like(h), torch.empty_like(xc), torch.empty_like(g)
        dw = torch.empty_like(w) if w is not None else h.new_empty(0)
        db = torch.empty_like(b) if b is not None else h.new_empty(0)
        dskip = torch.empty_like(skip)
        arrays = (dy, h, xc, g, w, b, skip, stats, dh, dxc, dg, dw, db, dskip)
        k["backward"](*(_np(t, h) for t in arrays))
        return (dh, dxc, dg, dw if w is not None else None, db if b is not None else None, dskip, None)


def fused_output(h, xc, g, w, b, skip, eps: float) -> torch.Tensor:
    """``(HeadwiseNorm(h) + skip ⊙ x_c) ⊙ g`` -> (B, S, NH*DH), differentiable in every tensor.

    h (B, NH, S, DH); x_c, g (B, S, NH*DH); w, b (NH*DH,) or None (the norm's weight and bias);
    skip (NH*DH,). Call only where :func:`applies` holds.
    """
    return _FusedOutput.apply(h, xc, g, w, b, skip, eps)

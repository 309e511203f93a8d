"""Block-diagonal linear maps with small square blocks (the mLSTM's 4x4 q/k/v maps) in numba (CPU).

Over a block-diagonal matrix with ``bs x bs`` blocks, output channel c only sees inputs c + d for
the ``2 bs - 1`` offsets d in [-(bs-1), bs-1]. So the map is a sum of ``2 bs - 1`` shifted,
channel-wise products: ``y[c] = sum_d wd[d, c] x[c + d]``, where ``wd[d, h bs + p] = w[h, p, p + d]``
(0 where p + d leaves the block). Every term is a contiguous multiply-add over the channels, which
vectorises; the torch form (``xlram.nn.linear._grouped``) packs the blocks into 16x16 groups for a
batched matmul and transposes the activations to and from a group-major layout on the way in and
out. The gradients are the same sums: ``dx[c + d] += wd[d, c] dy[c]``, ``dwd[d, c] += dy[c] x[c + d]``.

The outputs are written head-major, ``(B, NSEG, S, SEG)`` for channels cut into NSEG segments of SEG
(a multiple of bs): with SEG the head size this is the ``(B, H, S, DH)`` layout the mLSTM cell reads,
so q, k and v need no transposing copy. Up to two weight sets share one pass over x (q and k).

Measured on the 2-core EPYC, one thread, fp32, x (8, 256, 512), 4x4 blocks, q and k to the
(B, H, S, DH) layout, forward + backward: 6.8-7.0 ms against 9.3-9.6 ms for the grouped matmuls and
their transposes (the kernels alone: forward 1.7 ms, backward 3.4 ms). In the training step of the
3.5M-parameter xLSTM[7:1] (context 256, batch 8) this and ``ops/mlstm/output_cpu`` together took the
step from 1.12 to 1.04 s (CPU time, medians of 6 alternating rounds), and with the gate
pre-activations joined to this pass (the ``side`` output) from 1.09 to 1.01 s in a later run. The
checks against the torch form are in ``tests/ops/test_headwise_fused_cpu.py``.
"""

from __future__ import annotations

import torch

from xlram.ops.numba_kernels import LazyKernels

_DTYPES = (torch.float32, torch.float64)
MAX_BLOCK = 16  # wider blocks are matmuls worth BLAS: the torch form


def _build():
    import numba
    import numpy as np

    from xlram.ops.numba_math import dot

    jit = numba.njit(cache=True, nogil=True)

    @jit
    def diagonals(w, out):  # pragma: no cover - compiled
        """w (M, NB, bs, bs) -> out (M, 2 bs - 1, NB bs): out[m, q - p + bs - 1, h bs + p] = w[m, h, p, q]."""
        M, NB, bs, _ = w.shape
        out[:] = 0
        for m in range(M):
            for h in range(NB):
                for p in range(bs):
                    for q in range(bs):
                        out[m, q - p + bs - 1, h * bs + p] = w[m, h, p, q]

    @jit
    def undiagonals(dwd, out):  # pragma: no cover - compiled
        """The inverse gather: dwd (M, 2 bs - 1, NB bs) -> out (M, NB, bs, bs)."""
        M, NB, bs, _ = out.shape
        for m in range(M):
            for h in range(NB):
                for p in range(bs):
                    for q in range(bs):
                        out[m, h, p, q] = dwd[m, q - p + bs - 1, h * bs + p]

    @jit
    def _diagonal_sum(w, xp, acc):  # pragma: no cover - compiled
        """acc (C) <- sum_di w[di] * xp[di:di + C]: y[c] = sum_d w[d, c] x[c + d] on a padded row."""
        ND, C = w.shape
        w0, x0 = w[0], xp[0:C]
        for c in range(C):
            acc[c] = w0[c] * x0[c]
        for di in range(1, ND):
            wr, xs = w[di], xp[di:di + C]
            for c in range(C):
                acc[c] += wr[c] * xs[c]

    @jit
    def forward(x, wd, y0, y1, wg, side):  # pragma: no cover - compiled
        """x (B, S, C); wd (M, 2 bs - 1, C), M <= 2; y0, y1 (B, NSEG, S, SEG) the outputs of weight
        sets 0 and 1 (y1 unused when M = 1); side (B, S, G) <- x wgᵀ for a dense wg (G, C), G >= 0.
        Each row of x is copied into a zero-padded buffer, so every diagonal is one multiply-add over
        the whole row (long loops; the padding meets zero weights)."""
        B, S, C = x.shape
        M, ND, _ = wd.shape
        NSEG, SEG = y0.shape[1], y0.shape[3]
        mid = (ND - 1) // 2
        xp = np.zeros(C + 2 * mid, dtype=x.dtype)  # xp[mid + c] = x[c]
        acc = np.empty(C, dtype=x.dtype)
        for b in range(B):
            for s in range(S):
                xr = x[b, s]
                xp[mid:mid + C] = xr
                for m in range(M):
                    _diagonal_sum(wd[m], xp, acc)
                    y = y0 if m == 0 else y1
                    for g in range(NSEG):
                        y[b, g, s, :] = acc[g * SEG:(g + 1) * SEG]
                for j in range(wg.shape[0]):
                    side[b, s, j] = dot(wg[j], xr)

    @jit
    def backward(x, wd, wdt, dy0, dy1, dx, dwd, wg, dside, dwg):  # pragma: no cover - compiled
        """Gradients for ``forward``: dy0, dy1 (B, NSEG, S, SEG), dside (B, S, G) -> dx (B, S, C),
        dwd (M, 2 bs - 1, C), dwg (G, C). wdt: the diagonals of the transposed blocks (dx is the
        forward map with wᵀ)."""
        B, S, C = x.shape
        M, ND, _ = wd.shape
        NSEG, SEG = dy0.shape[1], dy0.shape[3]
        mid = (ND - 1) // 2
        dwd[:] = 0
        dwg[:] = 0
        xp = np.zeros(C + 2 * mid, dtype=x.dtype)
        dyp = np.zeros(C + 2 * mid, dtype=x.dtype)
        acc = np.empty(C, dtype=x.dtype)
        for b in range(B):
            for s in range(S):
                xp[mid:mid + C] = x[b, s]
                dxr = dx[b, s]
                for m in range(M):
                    dy = dy0 if m == 0 else dy1
                    for g in range(NSEG):
                        dyp[mid + g * SEG:mid + (g + 1) * SEG] = dy[b, g, s]
                    _diagonal_sum(wdt[m], dyp, acc)
                    if m == 0:
                        dxr[:] = acc
                    else:
                        for c in range(C):
                            dxr[c] += acc[c]
                    dyr = dyp[mid:mid + C]
                    for di in range(ND):  # dwd[d, c] += dy[c] x[c + d]
                        gw, xs = dwd[m, di], xp[di:di + C]
                        for c in range(C):
                            gw[c] += dyr[c] * xs[c]
                xr = x[b, s]
                for j in range(wg.shape[0]):
                    a, wr, gr = dside[b, s, j], wg[j], dwg[j]
                    for c in range(C):
                        dxr[c] += a * wr[c]
                    for c in range(C):
                        gr[c] += a * xr[c]

    return {"diagonals": diagonals, "undiagonals": undiagonals, "forward": forward, "backward": backward,
            "np": np}


_KERNELS = LazyKernels(_build)


def applies(x: torch.Tensor, w: torch.Tensor, seg: int) -> bool:
    """Whether :func:`headwise_heads` runs here: x (B, S, C) and w (M, NB, bs, bs) on the CPU, both
    fp32 or both fp64, M <= 2 square blocks of at most ``MAX_BLOCK``, ``seg`` a multiple of bs that
    divides C, and numba usable."""
    M, NB, bo, bi = w.shape
    return (x.device.type == "cpu" and w.device.type == "cpu" and x.dtype in _DTYPES and w.dtype == x.dtype
            and x.dim() == 3 and 1 <= M <= 2 and bo == bi <= MAX_BLOCK and NB * bi == x.shape[-1]
            and seg % bi == 0 and x.shape[-1] % seg == 0 and _KERNELS.get() is not None)


def _np(t: torch.Tensor):
    """A numpy view of ``t``. Never of a parameter's own memory: ``.numpy()`` marks a storage as not
    resizable for good, and FSDP frees unsharded parameters by resizing their storage to 0."""
    return t.detach().numpy()


class _HeadwiseHeads(torch.autograd.Function):
    """(x (B, S, C), w (M, NB, bs, bs), seg, wg (G, C) or None) -> M outputs (B, C/seg, S, seg), then
    x wgᵀ (B, S, G) where wg is given; see :func:`headwise_heads`."""

    @staticmethod
    def forward(ctx, x, w, seg, wg):
        k = _KERNELS.get()
        B, S, C = x.shape
        M, _, bs, _ = w.shape
        x = x.contiguous()
        wd = k["np"].empty((M, 2 * bs - 1, C), dtype=_np(x).dtype)
        k["diagonals"](_np(w.clone()), wd)  # a copy: see _np
        ys = [x.new_empty(B, C // seg, S, seg) for _ in range(M)]
        wg_ = x.new_empty(0, C) if wg is None else wg.contiguous()
        side = x.new_empty(B, S, wg_.shape[0])
        k["forward"](_np(x), wd, _np(ys[0]), _np(ys[-1]), _np(wg_), _np(side))
        ctx.save_for_backward(x, w, wg_)
        ctx.wd, ctx.out_shape, ctx.has_side = wd, ys[0].shape, wg is not None
        return (*ys, side) if wg is not None else tuple(ys)

    @staticmethod
    def backward(ctx, *grads):
        k = _KERNELS.get()
        x, w, wg = ctx.saved_tensors
        wd = ctx.wd
        wdt = k["np"].empty_like(wd)
        k["diagonals"](_np(w.transpose(-1, -2).contiguous()), wdt)
        dys, dside = (grads[:-1], grads[-1]) if ctx.has_side else (grads, None)
        dys = [x.new_zeros(ctx.out_shape) if d is None else d.contiguous() for d in dys]
        dside = x.new_zeros(x.shape[0], x.shape[1], wg.shape[0]) if dside is None else dside.contiguous()
        dx = torch.empty_like(x)
        dwd = k["np"].empty_like(wd)
        dwg = torch.empty_like(wg)
        k["backward"](_np(x), wd, wdt, _np(dys[0]), _np(dys[-1]), _np(dx), dwd, _np(wg), _np(dside), _np(dwg))
        dw = torch.empty_like(w)
        k["undiagonals"](dwd, _np(dw))
        return dx, dw, None, dwg if ctx.has_side else None


def headwise_heads(x: torch.Tensor, w: torch.Tensor, seg: int,
                   side: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """``x (B, S, C)`` through M <= 2 block-diagonal maps ``w (M, NB, bs, bs)`` (blocks in
    ``nn.Linear``'s (out, in) layout, NB bs = C), each output head-major: ``(B, C/seg, S, seg)``,
    i.e. ``y_m.transpose(1, 2).reshape(B, S, C) == x @ blockdiag(w[m])ᵀ``. With a dense ``side``
    (G, C), one more output ``x @ sideᵀ`` (B, S, G) from the same pass over x (the mLSTM's gate
    pre-activations). Differentiable in x, w and side. Call only where :func:`applies` holds."""
    return _HeadwiseHeads.apply(x, w, seg, side)

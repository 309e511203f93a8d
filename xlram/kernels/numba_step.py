"""One inference step of an mLSTM or sLSTM block as a single numba function (CPU, fp32 or fp64).

The torch step is dozens of small kernels per block; at batch 1 their dispatch costs more than the
arithmetic (3.8 ms for the whole step of the 3.5M-parameter LM, of which its matmuls alone took 0.34
ms; measured). Here every block step is one call: the projections go to the OpenBLAS of
``xlram.ops.cpu_blas`` through a pointer (``_project``) or, without it, to scipy's BLAS through
``np.dot``; everything elementwise runs in plain loops, and the recurrent state is updated in place.
exp, SiLU, sigmoid and tanh come from ``xlram.ops.numba_math`` (they vectorise, libm's do not), and
the sLSTM cell is the training loop's (``xlram.ops.slstm.cell_numba``) over head-major copies of the
pre-activations and state. Against libm calls and a per-element cell over the (B, D) arrays, whole
step of the 3.5M-parameter LM, medians of 10 alternating rounds: 5.70 against 6.39 ms at batch 16,
0.434 against 0.458 ms at batch 1.

The math is the torch step's (``xlram.layers.mlstm.MLSTMLayer.step_``, ``SLSTMLayer.step``, the
blocks' residual pattern), written out per element; ``xlram.fused_step`` gathers a stack's weights and
checks that the result equals the torch path's (tests/test_fused_step.py). Absent biases are passed
as empty arrays, an absent conv as a ``(C, 0)`` weight.

Shapes: x (B, D) is updated in place (x + block(x)); mLSTM state C (B, NH, DH, DH), n (B, NH, DH),
m (B, NH), conv (B, K-1, Di); sLSTM state h, c, n, m (B, D), conv (B, K-1, D).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from xlram.ops import cpu_blas
from xlram.ops.blas_numba import gemm
from xlram.ops.mlstm.memory_numba import update_head
from xlram.ops.norm_numba import norm_row
from xlram.ops.numba_math import dot, exp_neg, log_sigmoid, silu, silu_like
from xlram.ops.numba_math import jit as _jit
from xlram.ops.slstm.cell_numba import cell

# Activation codes of the sLSTM block's gated FFN (``xlram.nn.ffn.ACTIVATIONS`` names).
FFN_ACTS = {"gelu": 0, "swish": 1, "silu": 1, "relu": 2}


@_jit
def _layer_norm(x, w, b, eps):
    """LayerNorm over the last dim of x (B, D) with weight w and optional bias b: a new array."""
    out = np.empty_like(x)
    for r in range(x.shape[0]):
        norm_row(x[r], w, b, eps, out[r])
    return out


@_jit
def _head_norm(x, nh, w, b, eps):
    """Per-head LayerNorm of x (B, NH*DH) in place, then the optional weight w and bias b (NH*DH)."""
    dh = x.shape[1] // nh
    for r in range(x.shape[0]):
        for h in range(nh):
            lo = h * dh
            seg = x[r, lo:lo + dh]
            norm_row(seg, w[lo:lo + dh], b[lo:lo + dh], eps, seg)  # an empty w or b slices to empty


@_jit
def _linear(x, w, b):
    """x (B, In) @ w (Out, In)ᵀ + b: a new (B, Out) array, one BLAS matrix-vector product per row.
    OpenBLAS's sgemm repacks the weight on every call (~0.1 ms for 1 MiB), which costs more than the
    rows' GEMVs at a few rows (measured on one thread, (B, 256) x (256, 1024): B=2 26 against 114 µs;
    the whole step of the 3.5M-parameter LM at B=8 2.8-3.0 against 3.2-4.7 ms, at B=16 5.0-5.3
    against 4.95 ms, when the alternative was torch's MKL); ``_project`` without OpenBLAS, which
    ``xlram.fused_step`` calls below ``GEMM_ROWS`` rows (torch matmuls from there)."""
    y = np.empty((x.shape[0], w.shape[0]), dtype=x.dtype)
    for r in range(x.shape[0]):
        y[r] = np.dot(w, x[r])
    if b.shape[0]:
        y += b
    return y


_block_rows = numba.njit(cache=True, nogil=True)(cpu_blas.small_block)


@_jit
def _project(x, w, b, fn):
    """``_linear(x, w, b)`` for x (B, In) contiguous; with ``fn`` the address of OpenBLAS's ?gemm
    (``cpu_blas.gemm_address``) as small-matrix products over blocks of the weight's rows, which skip
    packing the weight (``cpu_blas.linear_t``'s blocks, called from here: (16, 256) x (256, 1,024)
    40 µs against 55 through ``xlram.nn.dense.linear``, one thread); with ``fn`` 0 as ``_linear``."""
    if fn == 0:
        return _linear(x, w, b)
    m, k = x.shape
    n = w.shape[0]
    block = _block_rows(m, k)
    one, zero = x.dtype.type(1), x.dtype.type(0)
    y = np.empty((m, n), dtype=x.dtype)
    for lo in range(0, n, block):
        gemm(fn, False, True, m, min(block, n - lo), k, one, x, k, w[lo:], k, zero, y[:, lo:], n)
    if b.shape[0]:
        y += b
    return y


@_jit
def project(x, w, b, fn):  # pragma: no cover - compiled
    """``_project`` called from Python: x (B, In) contiguous -> a new (B, Out) array."""
    return _project(x, w, b, fn)


@_jit
def _headwise(x, w, b):
    """Block-diagonal linear map: x (B, NH*i), w (NH, o, i), b (NH*o,) or empty -> (B, NH*o)."""
    B = x.shape[0]
    nh, o, i = w.shape
    y = np.empty((B, nh * o), dtype=x.dtype)
    if i == 4 and o == 4:  # xLSTM's q/k/v blocks, written out: 1.43 -> 1.02 µs at (1, 512)
        for r in range(B):
            for hh in range(nh):
                lo = 4 * hh
                x0, x1, x2, x3 = x[r, lo], x[r, lo + 1], x[r, lo + 2], x[r, lo + 3]
                for p in range(4):
                    y[r, lo + p] = w[hh, p, 0] * x0 + w[hh, p, 1] * x1 + w[hh, p, 2] * x2 + w[hh, p, 3] * x3
    elif i >= 16:  # big blocks: a vectorised dot per output (sLSTM gates, (B, 256) x (4, 64, 64): at
        # B = 1, 2, 16 1.37, 1.95, 9.8 µs against 2.16, 7.96, 13.1 for a BLAS call per head)
        for r in range(B):
            for hh in range(nh):
                xs = x[r, hh * i:(hh + 1) * i]
                for p in range(o):
                    y[r, hh * o + p] = dot(w[hh, p], xs)
    elif B >= 4:  # channel-major: each multiply-add is one vector over the rows
        xt = np.ascontiguousarray(x.T)  # (NH*i, B)
        yt = np.zeros((nh * o, B), dtype=x.dtype)
        for h in range(nh):
            for p in range(o):
                yr = yt[h * o + p]
                for q in range(i):
                    wv = w[h, p, q]
                    xr = xt[h * i + q]
                    for r in range(B):
                        yr[r] += wv * xr[r]
        y[:, :] = yt.T
    else:
        for r in range(B):
            for h in range(nh):
                for p in range(o):
                    s = 0.0
                    for q in range(i):
                        s += w[h, p, q] * x[r, h * i + q]
                    y[r, h * o + p] = s
    if b.shape[0]:
        y += b
    return y


@_jit
def _conv_rows(x, wt, b, state, y):  # pragma: no cover - compiled
    """``_conv_step``'s work with the weight as wt (K, C), into y (B, C)."""
    B, C = x.shape
    K = wt.shape[0]
    wl = wt[K - 1]
    for r in range(B):
        yr = y[r]
        xr = x[r]
        for c in range(C):
            yr[c] = wl[c] * xr[c]
        if b.shape[0]:
            for c in range(C):
                yr[c] += b[c]
        for j in range(K - 1):
            sj = state[r, j]
            wj = wt[j]
            for c in range(C):
                yr[c] += wj[c] * sj[c]
        for c in range(C):
            yr[c] = silu_like(yr[c])
        for j in range(K - 2):
            dst = state[r, j]
            src = state[r, j + 1]
            for c in range(C):
                dst[c] = src[c]
        if K > 1:
            last = state[r, K - 2]
            for c in range(C):
                last[c] = xr[c]


@_jit
def _conv_step(x, w, b, state):
    """Causal depthwise conv over the last K-1 inputs (``state`` (B, K-1, C), shifted in place) and x
    (B, C), then SiLU; w (C, K), b (C,) or empty. Returns a new (B, C) array.

    Every loop runs over contiguous channels with at most three arrays, so that LLVM vectorises it
    (its alias checks give up on more), and the shift is written as loops (a slice assignment within
    one array copies through a temporary). From 4 rows on the weight is first copied tap-major; below,
    its columns are read in place. Batch 16, 512 channels: 19 -> 12 µs; batch 1: 2.7 -> 2.1 µs."""
    y = np.empty_like(x)
    if x.shape[0] >= 4:
        _conv_rows(x, np.ascontiguousarray(w.T), b, state, y)
    else:
        _conv_rows(x, w.T, b, state, y)
    return y


@_jit
def mlstm_mid(up, conv_w, conv_b, conv_state, q_w, q_b, k_w, k_b, v_w, v_b, i_w, i_b, f_w, f_b, C, n, m,
              out_w, out_b, out_eps, skip, eps):  # pragma: no cover - compiled
    """The mLSTM layer between its two projections: from ``up = proj_up(LayerNorm(x))`` (B, 2 Di), the
    conv, q/k/v, gates, the cell step (C, n, m and the conv state in place), the per-head norm, skip
    and output gate; returns proj_down's input (B, Di)."""
    B = up.shape[0]
    Di = up.shape[1] // 2
    NH, DH = C.shape[1], C.shape[2]
    x_m = np.ascontiguousarray(up[:, :Di])
    x_c = _conv_step(x_m, conv_w, conv_b, conv_state) if conv_w.shape[1] else x_m
    qkv = np.empty((B, 3 * Di), dtype=up.dtype)
    qkv[:, :Di] = _headwise(x_c, q_w, q_b)
    qkv[:, Di:2 * Di] = _headwise(x_c, k_w, k_b)
    qkv[:, 2 * Di:] = _headwise(x_m, v_w, v_b)
    ig = np.empty((B, NH), dtype=up.dtype)  # gate pre-activations: a vectorised dot per row and head
    fg = np.empty((B, NH), dtype=up.dtype)  # (batch 16: 12.4 -> 7.8 µs against BLAS GEMVs)
    for r in range(B):
        for h in range(NH):
            ig[r, h] = dot(i_w[h], qkv[r]) + (i_b[h] if i_b.shape[0] else 0.0)
            fg[r, h] = dot(f_w[h], qkv[r]) + (f_b[h] if f_b.shape[0] else 0.0)
    scale = 1.0 / math.sqrt(DH)
    hid = np.empty((B, Di), dtype=up.dtype)
    kig = np.empty(DH, dtype=C.dtype)  # scalars and rows in the state's dtype, so the inner loop of
    qs = np.empty(DH, dtype=C.dtype)  # the update vectorises without conversions
    decay = np.empty(1, dtype=C.dtype)
    num = np.empty(DH, dtype=C.dtype)
    for r in range(B):
        for h in range(NH):
            a = log_sigmoid(fg[r, h]) + m[r, h]
            i_pre = ig[r, h]
            m_new = max(a, i_pre)
            m[r, h] = m_new
            decay[0] = exp_neg(a - m_new)
            gain = exp_neg(i_pre - m_new)
            lo = h * DH
            for p in range(DH):
                kig[p] = qkv[r, Di + lo + p] * gain
                qs[p] = qkv[r, lo + p] * scale
            v = qkv[r, 2 * Di + lo:2 * Di + lo + DH]
            qn = update_head(C[r, h], n[r, h], decay[0], kig, v, qs, num)
            den = max(abs(qn), math.exp(-m_new)) + eps
            for j in range(DH):
                hid[r, lo + j] = num[j] / den
    _head_norm(hid, NH, out_w, out_b, out_eps)
    for r in range(B):
        for j in range(Di):
            hid[r, j] = (hid[r, j] + skip[j] * x_c[r, j]) * silu_like(up[r, Di + j])
    return hid


@_jit
def mlstm_block_step(x, fn, norm_w, norm_b, norm_eps, up_w, up_b, conv_w, conv_b, conv_state,
                     q_w, q_b, k_w, k_b, v_w, v_b, i_w, i_b, f_w, f_b, C, n, m,
                     out_w, out_b, out_eps, skip, eps, down_w, down_b):  # pragma: no cover - compiled
    """``x += MLSTMLayer(LayerNorm(x))`` for one step, the cell state (C, n, m) and conv state in place.

    fn: the projections' ?gemm address, or 0 for GEMVs (``_project``). The arguments after it: the
    block norm's, proj_up's, ``mlstm_mid``'s after ``up``, proj_down's.
    up_w (2 Di, D); conv_w (Di, K) or (Di, 0); q/k/v_w (Di/bs, bs, bs); i_w, f_w (NH, 3 Di);
    out_w (Di,) the per-head norm's weight; skip (Di,); down_w (D, Di).
    """
    up = _project(_layer_norm(x, norm_w, norm_b, norm_eps), up_w, up_b, fn)  # (B, 2 Di)
    hid = mlstm_mid(up, conv_w, conv_b, conv_state, q_w, q_b, k_w, k_b, v_w, v_b, i_w, i_b, f_w, f_b,
                    C, n, m, out_w, out_b, out_eps, skip, eps)
    x += _project(hid, down_w, down_b, fn)


@_jit
def _ffn_act(x, code):
    if code == 0:
        return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))
    if code == 1:
        return silu(x)
    return max(x, 0.0)


@_jit
def _recurrent(h_s, R, h):  # pragma: no cover - compiled
    """Head h's recurrent pre-activations h_s[:, head h] (B, DH) @ R[h] (DH, 4 DH) -> (B, 4 DH). Below
    16 rows as row updates (4 heads at B = 4, 8: 9.8, 18.9 µs against 25.2, 30.0 for BLAS; equal at 1)."""
    B = h_s.shape[0]
    DH, W = R.shape[1], R.shape[2]
    if B >= 16:
        return np.dot(np.ascontiguousarray(h_s[:, h * DH:(h + 1) * DH]), R[h])
    rec = np.zeros((B, W), dtype=h_s.dtype)
    for r in range(B):
        rr = rec[r]
        for j in range(DH):
            a = h_s[r, h * DH + j]
            Rj = R[h, j]
            for c in range(W):
                rr[c] += a * Rj[c]
    return rec


@_jit
def slstm_pre(x, norm_w, norm_b, norm_eps, conv_w, conv_b, conv_state, i_w, f_w, z_w, o_w, R, bias,
              h_s, c_s, n_s, m_s, exp_forget, out_w, out_b, out_eps, ffn_norm_w, ffn_norm_b,
              ffn_norm_eps):  # pragma: no cover - compiled
    """``x += SLSTMLayer(LayerNorm(x))`` for one step (the cell state (h, c, n, m) and the conv state in
    place); returns the FFN's input ``LayerNorm(x)`` (B, D).

    i/f/z/o_w (NH, DH, DH) headwise gate maps; R (NH, DH, 4 DH) recurrent weights, columns (gate, j);
    bias (4, NH, DH); out_w/out_b the per-head norm's.
    """
    B, D = x.shape
    NH, DH = R.shape[0], R.shape[1]
    xn = _layer_norm(x, norm_w, norm_b, norm_eps)
    x_c = _conv_step(xn, conv_w, conv_b, conv_state) if conv_w.shape[1] else xn
    empty = np.empty(0, dtype=x.dtype)
    pre_i = _headwise(x_c, i_w, empty)
    pre_f = _headwise(x_c, f_w, empty)
    pre_z = _headwise(xn, z_w, empty)
    pre_o = _headwise(xn, o_w, empty)
    y = np.empty((B, D), dtype=x.dtype)
    # Per head: the pre-activations and the state gathered head-major, so that the cell (the training
    # loop's, xlram.ops.slstm.cell_numba) runs as one vectorised pass over B * DH elements.
    rk = np.empty((7, B * DH), dtype=x.dtype)
    cn_prev = np.empty((2, B * DH), dtype=c_s.dtype)
    cn_new = np.empty((2, B * DH), dtype=c_s.dtype)
    m_h = np.empty(B * DH, dtype=m_s.dtype)
    for h in range(NH):
        rec = _recurrent(h_s, R, h)  # (B, 4 DH)
        lo = h * DH
        for r in range(B):
            e0 = r * DH
            for j in range(DH):
                rk[0, e0 + j] = pre_i[r, lo + j] + rec[r, j] + bias[0, h, j]
                rk[1, e0 + j] = pre_f[r, lo + j] + rec[r, DH + j] + bias[1, h, j]
            for j in range(DH):
                rk[2, e0 + j] = pre_z[r, lo + j] + rec[r, 2 * DH + j] + bias[2, h, j]
                rk[3, e0 + j] = pre_o[r, lo + j] + rec[r, 3 * DH + j] + bias[3, h, j]
            for j in range(DH):
                cn_prev[0, e0 + j] = c_s[r, lo + j]
                cn_prev[1, e0 + j] = n_s[r, lo + j]
                m_h[e0 + j] = m_s[r, lo + j]
        # first=True: the rule for n_{t-1} == 0 applies wherever n is 0, which is the first step only
        cell(rk, cn_prev, cn_new, m_h, exp_forget, True)
        for r in range(B):
            e0 = r * DH
            for j in range(DH):
                c_s[r, lo + j] = cn_new[0, e0 + j]
                n_s[r, lo + j] = cn_new[1, e0 + j]
                m_s[r, lo + j] = m_h[e0 + j]
                y[r, lo + j] = rk[5, e0 + j]
    h_s[:, :] = y
    _head_norm(y, NH, out_w, out_b, out_eps)
    x += y
    return _layer_norm(x, ffn_norm_w, ffn_norm_b, ffn_norm_eps)


@_jit
def gated_act(up, act):  # pragma: no cover - compiled
    """The gated FFN's middle: up (B, 2 Dff) -> act(up[:, :Dff]) * up[:, Dff:] (B, Dff)."""
    B = up.shape[0]
    dff = up.shape[1] // 2
    g = np.empty((B, dff), dtype=up.dtype)
    for r in range(B):
        for j in range(dff):
            g[r, j] = _ffn_act(up[r, j], act) * up[r, dff + j]
    return g


@_jit
def slstm_block_step(x, fn, norm_w, norm_b, norm_eps, conv_w, conv_b, conv_state, i_w, f_w, z_w, o_w, R, bias,
                     h_s, c_s, n_s, m_s, exp_forget, out_w, out_b, out_eps,
                     ffn_norm_w, ffn_norm_b, ffn_norm_eps, act, ffn_up_w, ffn_up_b, ffn_down_w,
                     ffn_down_b):  # pragma: no cover - compiled
    """``x += SLSTMLayer(LayerNorm(x))`` then ``x += GatedFFN(LayerNorm(x))`` for one step.

    fn as in ``mlstm_block_step``; after it ``slstm_pre``'s arguments, the FFN's activation code, its
    proj_up's and proj_down's;
    ffn_up_w (2 Dff, D), ffn_down_w (D, Dff)."""
    xn = slstm_pre(x, norm_w, norm_b, norm_eps, conv_w, conv_b, conv_state, i_w, f_w, z_w, o_w, R, bias,
                   h_s, c_s, n_s, m_s, exp_forget, out_w, out_b, out_eps, ffn_norm_w, ffn_norm_b,
                   ffn_norm_eps)
    g = gated_act(_project(xn, ffn_up_w, ffn_up_b, fn), act)
    x += _project(g, ffn_down_w, ffn_down_b, fn)


@_jit
def layer_norm(x, w, b, eps):  # pragma: no cover - compiled
    """LayerNorm(x (B, D)) as a new array."""
    return _layer_norm(x, w, b, eps)


@_jit
def layer_norm_(x, w, b, eps):  # pragma: no cover - compiled
    """x (B, D) <- LayerNorm(x) in place (the stack's final norm)."""
    x[:, :] = _layer_norm(x, w, b, eps)

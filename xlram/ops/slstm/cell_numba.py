"""One step of the sLSTM cell over one head's elements, as a numba function that vectorises.

Shared by the training loop (``xlram.ops.slstm.fused_cpu``, which keeps the records for its backward)
and the inference step (``xlram.kernels.numba_step``). The math is ``xlram.ops.slstm.recurrent``'s:
exponential input gate, exponential or sigmoid forget gate, the stabiliser m, the normaliser n.

Record rows of ``rec`` (7, B DH): 0-3 the pre-activations (i, f, z, o) on entry, which the cell
overwrites with i', f', tanh z̃, sigmoid õ; then d log f / d f̃, h, and the branch taken: 0 where m_t
took log f + m_{t-1}, 1 where it took ĩ, 2 where it took ĩ and f' was capped at 1.
"""

from __future__ import annotations

from xlram.ops.numba_math import exp_neg, jit, log1p_unit, sigmoid, tanh


@jit
def cell(rec, cn_prev, cn_new, m, exp_forget, first):  # pragma: no cover - compiled
    """One step of one head, over its B * DH elements.

    rec (7, B DH): the pre-activations in rows 0-3 on entry, every record row on return (see
    the module's docstring). cn_prev, cn_new (2, B DH): (c, n) of t - 1 and t. m (B DH) in place.
    """
    for e in range(rec.shape[1]):
        gi, gf, gz, go = float(rec[0, e]), float(rec[1, e]), float(rec[2, e]), float(rec[3, e])
        if exp_forget:
            log_f, dlog_f = gf, 1.0
        else:
            # logsigmoid and its derivative sigmoid(-f̃) from one exp, stably
            ef = exp_neg(-abs(gf))
            log_f = min(gf, 0.0) - log1p_unit(ef)
            dlog_f = (ef if gf >= 0.0 else 1.0) / (1.0 + ef)
        a = log_f + m[e]  # log f + m_{t-1}
        # first-step rule: n_{t-1} == 0 only at t = 0 (see recurrent.py); ties go to ĩ
        take = (gi >= a) | (first & (cn_prev[1, e] == 0.0))
        # The gate whose exponent m_t took is exp(0) = 1 exactly: one exp, not two.
        d = a - gi if take else gi - a
        capped = first & (d > 0.0)  # f' <= 1 binds only where a first step took ĩ < log f + m
        ex = exp_neg(min(d, 0.0))
        i_g, f_g = (1.0, ex) if take else (ex, 1.0)
        m[e] = gi if take else a
        z = tanh(gz)
        o = sigmoid(go)
        c = cn_prev[0, e] * f_g + z * i_g
        n = cn_prev[1, e] * f_g + i_g
        cn_new[0, e], cn_new[1, e] = c, n
        rec[0, e], rec[1, e], rec[2, e], rec[3, e], rec[4, e] = i_g, f_g, z, o, dlog_f
        rec[5, e] = c / n * o
        rec[6, e] = (2.0 if capped else 1.0) if take else 0.0

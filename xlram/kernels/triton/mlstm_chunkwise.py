"""The mLSTM over a sequence with the Triton chunkwise kernels, forward and backward.

``mlstm_chunkwise_triton(q, k, v, i, f, state)`` computes what ``xlram.ops.mlstm.mlstm_reference``
computes, gradients included (through the normaliser, the stabiliser's eps term, the initial state
and the final state), for fp32, bf16 and fp16 inputs with fp32 states and any S >= 1.

Work split:

- ``prepare_gates`` (torch, fp64): the recurrent stabiliser m_t of every step in closed form,
  ``m_t = B_t + max(m_0, max_{j<=t} (ĩ_j - B_j))`` with B the cumulative log forget gate (one cumsum
  and one cummax), and from it the per-step log weights the kernels use. fp64 because B grows
  linearly in S and the weights are differences of B; the vectors are O(S) and cost nothing next
  to the O(S·L·d) kernels.
- ``mlstm_chunkwise_fw`` kernels: chunk-start states, then outputs.
- ``mlstm_chunkwise_bw`` kernels: with every m held fixed, dq, dk, dv, the state gradients and
  per-step q·dq, k·dk.
- ``_gate_grads`` (torch): the gate gradients from those sums. Writing every weight as
  exp(B_row - B_col + ...), d log f_s = Σ_{t >= s} (q_t·dq_t - k_t·dk_t) + <dC_T, C_T> + <dn_T, n_T>
  and dĩ_j = k_j·dk_j. Then the part through m: h_t depends on m_t only through eps,
  ∂h_t/∂m_t = -h_t eps / den_t, and the final state through its scale, so with
  G_t = -eps <dh_t, h_t> / den_t (+ dm_T - <dC_T, C_T> - <dn_T, n_T> at t = S) each G_t goes to the
  input that m_t took its max from: ĩ_j* and log f_{j*+1..t}, or m_0 and log f_{1..t}.

The official kernels drop the normaliser's gradient (their backward is right only when a per-head
norm follows the cell); this one does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import SUPPORTED_DTYPES, cdiv, dot_dtype, dot_precision, interpreting, pow2_tile
from .mlstm_chunkwise_bw import launch_bw
from .mlstm_chunkwise_fw import launch_fw_out, launch_fw_states

DEFAULT_CHUNK = 128  # TFLA's default chunk
# Tiles inside a chunk and over the head dims: 128 for 16-bit inputs, 32 (head dims 64) for fp32,
# whose full-precision dots need more registers. On an H100 (bf16, 16 heads, dk 128, dv 256,
# B x S = 8 x 8,192, chunk 128) the forward took 2.80 ms and forward+backward 13.1 ms with 128-tiles,
# against 5.35 and 20.7 ms with 64-tiles; every other (chunk 64-256, tile 32-128, head tile 32-128)
# combination was slower (results/speed-gpu/tile_sweep.log).
DEFAULT_TILE = {torch.float32: 32, torch.bfloat16: 128, torch.float16: 128}
DEFAULT_HEAD_TILE = {torch.float32: 64, torch.bfloat16: 128, torch.float16: 128}


def prepare_gates(i, f, m0, S: int, L: int):
    """Per-step log weights for chunks of L steps (see ``mlstm_chunkwise_fw``).

    i, f (B, H, S) pre-activations, m0 (B, H). Returns a dict of contiguous fp32 tensors, rowlog,
    collog (with their low parts rowlog_lo, collog_lo), interlog, statelog, m (BH, Sp) and eglog
    (BH, NC), plus, in fp64 and shape (B, H, ...),
    ``m_final`` (B, H), ``cm`` (B, H, S) the running max of ĩ_j - B_j and ``arg`` (B, H, S) its
    position (int64), which say where each m_t took its max (for the backward).
    """
    B, H, _ = i.shape
    NC = cdiv(S, L)
    Sp = NC * L
    ig = i.double()
    lf = F.logsigmoid(f.double())
    if Sp > S:
        # Tail steps with i = -inf, log f = 0: they add nothing and leave the state and m unchanged.
        ig = F.pad(ig, (0, Sp - S), value=float("-inf"))
        lf = F.pad(lf, (0, Sp - S), value=0.0)
    Bg = lf.cumsum(-1)
    cm, arg = (ig - Bg).cummax(-1)
    m0d = m0.double()[..., None]
    m = Bg + torch.maximum(cm, m0d)  # (B, H, Sp), the recurrent stabiliser m_t

    b = lf.view(B, H, NC, L).cumsum(-1)
    g = b[..., -1]
    mc = torch.cat([m0d, m[..., L - 1 :: L]], dim=-1)  # (B, H, NC + 1): m of the chunk-start states
    mv = m.view(B, H, NC, L)
    ic = ig.view(B, H, NC, L)

    def flat(x):
        return x.reshape(B * H, -1).float().contiguous()

    def lo(x, hi):  # what fp32 lost of x: hi + lo carries x to ~fp64 precision
        return flat(torch.nan_to_num(x.reshape(B * H, -1) - hi.double(), nan=0.0))

    rowlog, collog = b - mv, ic - b
    out = {
        "rowlog": flat(rowlog),
        "collog": flat(collog),
        "interlog": flat(b + mc[..., :-1, None] - mv),
        "statelog": flat(g[..., None] - b + ic - mc[..., 1:, None]),
        "eglog": flat(g + mc[..., :-1] - mc[..., 1:]),
        "m": flat(m),
    }
    # The intra-chunk weight is exp(rowlog_t + collog_j): two numbers of the size of the cumulative
    # log forget gate (hundreds when forgetting is strong) whose sum is small. Rounded to fp32 each,
    # the sum would carry their rounding (~1e-5 absolute, 10x the error of an fp32 torch form);
    # hi and lo parts make (hi_t + hi_j) exact to the fp32 rounding of the small result, and
    # (lo_t + lo_j) adds back the rest.
    out["rowlog_lo"] = lo(rowlog, out["rowlog"])
    out["collog_lo"] = lo(collog, out["collog"])
    out["m_final"] = mc[..., -1]
    out["cm"], out["arg"] = cm[..., :S], arg[..., :S]
    return out


def _tiles(S, dk, dv, dtype, chunk_size, tile, head_tile):
    """(L, BQ, BKV, BK, BV): chunk and tile sizes. L is a multiple of the tiles; tiles are >= 16."""
    if chunk_size is None:
        chunk_size = min(DEFAULT_CHUNK, max(16, 1 << (S - 1).bit_length()))
    if tile is None:
        tile = min(DEFAULT_TILE[dtype], chunk_size)
    for name, x in (("chunk_size", chunk_size), ("tile", tile)):
        if x < 16 or x & (x - 1):
            raise ValueError(f"{name}: expected a power of two >= 16 (tl.dot needs tiles of 16), got {x}")
    if chunk_size % tile:
        raise ValueError(f"chunk_size: expected a multiple of the tile size {tile}, got {chunk_size}")
    head_tile = head_tile or DEFAULT_HEAD_TILE[dtype]
    return chunk_size, tile, tile, pow2_tile(dk, head_tile), pow2_tile(dv, head_tile)


class _MLSTMChunkwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, eps, L, BQ, BK, BV):
        B, H, S, dk = q.shape
        dv = v.shape[-1]
        NC = cdiv(S, L)
        Sp = NC * L
        DT, IP = dot_dtype(q.dtype), dot_precision(q.dtype)
        g = prepare_gates(i, f, m0, S, L)
        q3, k3, v3 = (x.reshape(B * H, S, -1).contiguous() for x in (q, k, v))
        C03 = C0.reshape(B * H, dk, dv).float().contiguous()
        n03 = n0.reshape(B * H, dk).float().contiguous()
        dims = dict(S=S, Sp=Sp, NC=NC, L=L, BK=BK, BV=BV, DT=DT, IP=IP)
        Cs, ns = launch_fw_states(k3, v3, g["statelog"], g["eglog"], C03, n03, BL=BQ, **dims)
        h, qn = launch_fw_out(q3, k3, v3, g, Cs, ns, BQ=BQ, BKV=BQ, eps=eps, out_dtype=v.dtype, **dims)
        CT = Cs[:, NC].reshape(B, H, dk, dv)
        nT = ns[:, NC].reshape(B, H, dk)
        mT = g["m_final"].float()
        h = h.view(B, H, S, dv)
        # The states are recomputed in the backward (one cheap recurrent kernel) rather than kept:
        # (NC + 1) dk·dv fp32 per head is the largest buffer here.
        ctx.save_for_backward(q, k, v, i, f, C0, n0, m0, h, qn, CT, nT)
        ctx.cfg = (eps, L, BQ, BK, BV)
        return h, CT, nT, mT

    @staticmethod
    def backward(ctx, dh, dCT, dnT, dmT):
        q, k, v, i, f, C0, n0, m0, h, qn, CT, nT = ctx.saved_tensors
        eps, L, BQ, BK, BV = ctx.cfg
        B, H, S, dk = q.shape
        dv = v.shape[-1]
        NC = cdiv(S, L)
        Sp = NC * L
        DT, IP = dot_dtype(q.dtype), dot_precision(q.dtype)
        g = prepare_gates(i, f, m0, S, L)
        q3, k3, v3 = (x.reshape(B * H, S, -1).contiguous() for x in (q, k, v))
        C03 = C0.reshape(B * H, dk, dv).float().contiguous()
        n03 = n0.reshape(B * H, dk).float().contiguous()
        dims = dict(S=S, Sp=Sp, NC=NC, L=L, BK=BK, BV=BV, DT=DT, IP=IP)
        Cs, ns = launch_fw_states(k3, v3, g["statelog"], g["eglog"], C03, n03, BL=BQ, **dims)

        if dh is None:
            dh = torch.zeros_like(h)
        dh3 = dh.reshape(B * H, S, dv).contiguous()
        # <dh_t, h_t> and the normaliser's share of the gradient, per step.
        dsum = F.pad((dh3.float() * h.reshape(B * H, S, dv).float()).sum(-1), (0, Sp - S))
        expm = torch.exp(-g["m"])
        aqn = qn.abs()
        den = torch.maximum(aqn, expm) + eps
        inv_den = 1.0 / den
        # d max(|qn|, e)/d|qn| as torch.maximum has it: 1, 0, or 1/2 at a tie.
        sel = (aqn > expm).float() + 0.5 * (aqn == expm).float()
        r = (-dsum * inv_den * torch.sign(qn) * sel).contiguous()

        dCT3 = _grad_or_zero(dCT, (B * H, dk, dv), q.device)
        dnT3 = _grad_or_zero(dnT, (B * H, dk), q.device)
        dq, dk_, dv_, dC0, dn0, qdq, kdk = launch_bw(
            q3, k3, v3, dh3, g, Cs, ns, inv_den, r, dCT3, dnT3, BL=BQ, BQ=BQ, BKV=BQ, **dims
        )
        dC0 = dC0.reshape(B, H, dk, dv)
        dn0 = dn0.reshape(B, H, dk)

        # The state-scale terms <dC_T, C_T> + <dn_T, n_T> of the final state.
        fin = (dCT3.view(B, H, dk, dv).double() * CT.double()).sum((-1, -2)) + (
            dnT3.view(B, H, dk).double() * nT.double()
        ).sum(-1)
        G = -eps * (dsum * inv_den).view(B, H, Sp)[..., :S].double()
        G[..., S - 1] += (0.0 if dmT is None else dmT.double()) - fin
        qdq, kdk = qdq.view(B, H, Sp)[..., :S], kdk.view(B, H, Sp)[..., :S]
        di, df, dm0_route = _gate_grads(qdq, kdk, fin, G, g, m0, f)
        dm0 = (dC0.double() * C0.double()).sum((-1, -2)) + (dn0.double() * n0.double()).sum(-1) + dm0_route
        return (
            dq.view(B, H, S, dk), dk_.view(B, H, S, dk), dv_.view(B, H, S, dv),
            di.to(i.dtype), df.to(f.dtype),
            dC0.to(C0.dtype), dn0.to(n0.dtype), dm0.to(m0.dtype),
            None, None, None, None, None,
        )


def _grad_or_zero(x, shape, device):
    """An incoming gradient as a contiguous fp32 tensor of ``shape``, zeros where autograd gave None."""
    if x is None:
        return torch.zeros(shape, dtype=torch.float32, device=device)
    return x.reshape(shape).float().contiguous()


def _rev_cumsum(x):
    return x.flip(-1).cumsum(-1).flip(-1)


def _gate_grads(qdq, kdk, fin, G, g, m0, f):
    """dĩ, df̃ (B, H, S) in fp64 and the share of dm_0 routed through the stabiliser (B, H).

    qdq, kdk (B, H, S): q_t·dq_t and k_t·dk_t; fin (B, H): <dC_T, C_T> + <dn_T, n_T>; G (B, H, S):
    the gradient reaching each m_t (see the module docstring); g from ``prepare_gates``.
    """
    kdk = kdk.double()
    dlogf = _rev_cumsum(qdq.double() - kdk) + fin[..., None]
    # m_t = B_t + max(m_0, cm_t): the initial state wins where m_0 >= cm_t, else step arg_t.
    from_init = m0.double()[..., None] >= g["cm"]
    Z = torch.zeros_like(G).scatter_add_(-1, g["arg"], torch.where(from_init, 0.0, G))
    di = kdk + Z
    # G_t reaches log f_s for s in (j*(t), t]: all later G minus those whose j* is >= s.
    dlogf = dlogf + _rev_cumsum(G) - _rev_cumsum(Z)
    df = dlogf * torch.sigmoid(-f.double())
    return di, df, torch.where(from_init, G, 0.0).sum(-1)


def mlstm_chunkwise_triton(
    q, k, v, i, f, state=None, *, chunk_size=None, eps=1e-6, tile=None, head_tile=None
):
    """The mLSTM over a sequence with the Triton chunkwise kernels.

    q, k: (B, H, S, dk); v: (B, H, S, dv) in fp32, bf16 or fp16 (one dtype); i, f: (B, H, S) gate
    pre-activations of any float dtype; state: (C (B, H, dk, dv), n (B, H, dk), m (B, H)) or None.
    ``chunk_size`` (power of two >= 16, default min(128, S rounded up)) is the recurrence step; the
    parallel part inside a chunk is tiled in ``tile`` x ``tile`` blocks (default min(chunk, 128 for
    16-bit inputs, 32 for fp32)), head dims in tiles of ``head_tile`` (default 128 for 16-bit inputs,
    64 for fp32). Tensors on CUDA, or on CPU under TRITON_INTERPRET=1.

    Returns h (B, H, S, dv) in v's dtype and MLSTMState(C, n, m) in fp32. Differentiable in every input
    and in the initial state.
    """
    from xlram.ops.mlstm.state import MLSTMState

    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"q: expected one of {SUPPORTED_DTYPES} for the Triton kernels, got {q.dtype}")
    if q.device.type != "cuda" and not interpreting():
        raise ValueError(f"q: expected a CUDA tensor (or TRITON_INTERPRET=1 for CPU), got device {q.device}")
    B, H, S, dk = q.shape
    dv = v.shape[-1]
    L, BQ, _, BK, BV = _tiles(S, dk, dv, q.dtype, chunk_size, tile, head_tile)
    if state is None:
        C0 = torch.zeros(B, H, dk, dv, dtype=torch.float32, device=q.device)
        n0 = torch.zeros(B, H, dk, dtype=torch.float32, device=q.device)
        m0 = torch.zeros(B, H, dtype=torch.float32, device=q.device)
    else:
        C0, n0, m0 = state
    h, C, n, m = _MLSTMChunkwise.apply(q, k, v, i, f, C0, n0, m0, float(eps), L, BQ, BK, BV)
    return h, MLSTMState(C, n, m)

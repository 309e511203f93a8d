"""The mLSTM layer of the NeurIPS xLSTM paper ("pre up-projection" block interior, SPEC section 3).

    x (B, S, D) -> proj_up -> [x_m, z]                       each (B, S, Di), Di = round_up(pf * D, 64)
    x_c = SiLU(causal_conv(x_m))                              (B, S, Di)
    q, k = blockdiag(x_c), v = blockdiag(x_m)                 4x4 blocks
    i, f = Linear(cat[q, k, v]) per head                      (B, S, NH)
    h = HeadwiseNorm(mlstm(q, k, v, i, f))                    (B, S, Di)
    y = proj_down((h + skip * x_c) * SiLU(z))                 (B, S, D)

There is no maximum sequence length: the cell runs in any of the ``xlram.ops.mlstm`` forms and the
state (cell memory + the conv buffer) carries across calls.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from xlram.nn import (
    CausalConv1d,
    HeadwiseLinear,
    HeadwiseNorm,
    Linear,
    round_up,
    small_init_,
    wang_init_,
)
from xlram.nn.dense import linear
from xlram.nn.linear import _grouped, _GroupedLinear
from xlram.ops import headwise
from xlram.ops.mlstm import MLSTMState, mlstm, mlstm_step, output_cpu, zero_state
from xlram.ops.mlstm.dispatch import choose_chunk
from xlram.ops.mlstm.recurrent import mlstm_step_

# Rows from which the gate pre-activations are computed from folded weights (see ``_gates``).
_FOLD_ROWS = 64


class MLSTMLayerState(NamedTuple):
    """State of an :class:`MLSTMLayer`: the cell memory and the last ``K-1`` conv inputs.

    cell: MLSTMState (C (B, NH, DH, DH), n (B, NH, DH), m (B, NH)); conv: (B, K-1, Di).
    """

    cell: MLSTMState
    conv: torch.Tensor


class MLSTMLayer(nn.Module):
    """mLSTM layer with pre up-projection (see the module docstring for the data flow).

    Args:
        dim: model width D.
        num_heads: mLSTM heads NH; must divide the inner width Di.
        proj_factor: Di = proj_factor * D rounded up to a multiple of ``round_to``.
        conv_kernel_size: causal conv kernel (0: no conv and no SiLU on the q/k branch).
        qkv_proj_blocksize: block size of the block-diagonal q/k/v projections; must divide Di.
        bias: biases on proj_up, q/k/v and proj_down (the gate projections always have a bias).
        dropout: on the output.
        num_blocks: depth of the residual stack (wang-init of proj_down).
        eps: the cell's denominator epsilon.
        norm_eps: epsilon of the per-head norm.
        form, chunk_size: passed to :func:`xlram.ops.mlstm.mlstm`.

    Shapes: ``forward(x (B, S, D), state) -> (y (B, S, D), state)``; ``step(x_t (B, D), state)``.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int = 4,
        proj_factor: float = 2.0,
        conv_kernel_size: int = 4,
        qkv_proj_blocksize: int = 4,
        bias: bool = False,
        dropout: float = 0.0,
        round_to: int = 64,
        num_blocks: int = 1,
        eps: float = 1e-6,
        norm_eps: float = 1e-5,
        form: str = "auto",
        chunk_size: int | None = None,
    ):
        super().__init__()
        inner = round_up(proj_factor * dim, round_to)
        if inner % num_heads:
            raise ValueError(f"MLSTMLayer: num_heads={num_heads} must divide the inner width {inner}")
        if inner % qkv_proj_blocksize:
            raise ValueError(
                f"MLSTMLayer: qkv_proj_blocksize={qkv_proj_blocksize} must divide the inner width {inner}"
            )
        self.dim, self.inner_dim, self.num_heads = dim, inner, num_heads
        self.head_dim = inner // num_heads
        self.num_blocks = num_blocks
        self.eps, self.form, self.chunk_size = eps, form, chunk_size
        self.conv_kernel_size = conv_kernel_size

        self.proj_up = Linear(dim, 2 * inner, bias=bias)
        self.conv = CausalConv1d(inner, conv_kernel_size) if conv_kernel_size > 0 else None
        n_blocks = inner // qkv_proj_blocksize
        self.q_proj = HeadwiseLinear(inner, inner, n_blocks, bias=bias)
        self.k_proj = HeadwiseLinear(inner, inner, n_blocks, bias=bias)
        self.v_proj = HeadwiseLinear(inner, inner, n_blocks, bias=bias)
        self.igate = Linear(3 * inner, num_heads)
        self.fgate = Linear(3 * inner, num_heads)
        self.outnorm = HeadwiseNorm(num_heads, self.head_dim, eps=norm_eps)
        self.learnable_skip = nn.Parameter(torch.ones(inner))
        self.proj_down = Linear(inner, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's init: small-init in, wang-init out, forget-gate bias spread over [3, 6] so that
        heads start with different memory lengths, input-gate bias N(0, 0.1), gate weights 0."""
        small_init_(self.proj_up.weight, self.dim)
        wang_init_(self.proj_down.weight, self.dim, self.num_blocks)
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            small_init_(proj.weight, self.dim)  # over D, not Di, as the official code does
        for lin in (self.proj_up, self.proj_down, self.q_proj, self.k_proj, self.v_proj):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        if self.conv is not None:
            self.conv.reset_parameters()
        with torch.no_grad():
            nn.init.zeros_(self.fgate.weight)
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, self.num_heads))
            nn.init.zeros_(self.igate.weight)
            nn.init.normal_(self.igate.bias, 0.0, 0.1)
            nn.init.ones_(self.learnable_skip)
        self.outnorm.reset_parameters()

    def init_state(self, batch_size: int, device=None, dtype=None) -> MLSTMLayerState:
        """Zeros (the same as ``state=None``). ``dtype`` is the activation dtype; the cell memory is kept
        in fp32 for 16/32-bit activations and fp64 for fp64 (``xlram.ops.mlstm`` rules)."""
        device = self.proj_up.weight.device if device is None else device
        dtype = self.proj_up.weight.dtype if dtype is None else dtype
        NH, DH = self.num_heads, self.head_dim
        cell = zero_state(batch_size, NH, DH, DH, dtype=dtype, device=device)
        K = max(self.conv_kernel_size, 1)
        conv = torch.zeros(batch_size, K - 1, self.inner_dim, device=device, dtype=dtype)
        return MLSTMLayerState(cell, conv)

    def _conv(self, x_m, conv_state, step: bool):
        """SiLU(conv(x_m)) and the new conv state; the identity when there is no conv."""
        if self.conv is None:
            return x_m, conv_state
        if step:
            y, conv_state = self.conv.step(x_m, conv_state)
            return F.silu(y), conv_state
        return self.conv(x_m, conv_state, silu=True)  # SiLU fused into the conv's kernels

    def _qk(self, x_c):
        """q and k (..., Di) from x_c. Over many rows both come out of one grouped matmul (x_c is read
        once, and its gradient is one matmul instead of two plus their sum)."""
        qp, kp = self.q_proj, self.k_proj
        if x_c.numel() < _FOLD_ROWS * self.inner_dim or qp.group != kp.group:
            return qp(x_c), kp(x_c)
        wg = torch.cat([qp.packed_weight(x_c.dtype), kp.packed_weight(x_c.dtype)], dim=1)  # (ng, 2 go, gi)
        x2 = x_c.reshape(-1, self.inner_dim)
        y = _GroupedLinear.apply(x2, wg) if torch.is_grad_enabled() else _grouped(x2, wg)
        y = y.view(*x_c.shape[:-1], wg.shape[0], 2, wg.shape[1] // 2)
        q, k = y.select(-2, 0).flatten(-2), y.select(-2, 1).flatten(-2)  # (..., Di), strided
        if qp.bias is not None:
            q, k = q + qp.bias, k + kp.bias
        return q, k

    def _gates(self, x_c, x_m):
        """q, k, v (..., Di) and the gate pre-activations i, f (..., NH)."""
        (q, k), v = self._qk(x_c), self.v_proj(x_m)
        if x_c.numel() < _FOLD_ROWS * self.inner_dim:
            w = torch.cat([self.igate.weight, self.fgate.weight])  # (2 NH, 3 Di): both gates in one matmul
            b = torch.cat([self.igate.bias, self.fgate.bias])
            gates = linear(torch.cat([q, k, v], dim=-1), w, b)
        else:
            gates = self._folded_gates(x_c, x_m)
        i, f = gates.split(self.num_heads, dim=-1)
        return q, k, v, i, f

    def _gate_folds(self):
        """The gate pre-activations as maps of x_c and x_m: ``gates = Wc x_c + Wm x_m + b'`` with
        (2 NH, Di) matrices folded from the gate and q/k/v weights. Returns (Wc, Wm, b')."""
        w = torch.cat([self.igate.weight, self.fgate.weight])  # (2 NH, 3 Di)
        b = torch.cat([self.igate.bias, self.fgate.bias])
        wq, wk, wv = w.split(self.inner_dim, dim=1)
        (cq, bq), (ck, bk), (cv, bv) = self.q_proj.fold(wq), self.k_proj.fold(wk), self.v_proj.fold(wv)
        for extra in (bq, bk, bv):
            b = b if extra is None else b + extra
        return cq + ck, cv, b

    def _folded_gates(self, x_c, x_m):
        """Both gates' pre-activations (..., 2 NH) from x_c and x_m through :meth:`_gate_folds`: no
        (..., 3 Di) concatenation of q, k, v, and the gradient matmuls have Di columns instead of 3 Di
        (with only 2 NH rows, they run at memory speed, so their size is their cost)."""
        wc, wm, b = self._gate_folds()
        gates = torch.addmm(b, x_c.reshape(-1, self.inner_dim), wc.t())
        return gates.addmm_(x_m.reshape(-1, self.inner_dim), wm.t()).view(*x_c.shape[:-1], -1)

    def _heads_qkv(self, x_c, x_m):
        """q, k, v (B, NH, S, DH) and the gate pre-activations (B, S, 2 NH) straight from the numba
        block-diagonal maps, which write q/k/v in the cell's layout (no transposing copies) and compute
        the folded gates in the same pass over x_c and x_m; or None where they do not apply (then
        ``_gates`` and a transpose; also under torch.compile, which cannot trace numba and fuses the
        torch form itself)."""
        qp, kp, vp = self.q_proj, self.k_proj, self.v_proj
        if x_c.shape[0] * x_c.shape[1] < _FOLD_ROWS or torch.compiler.is_compiling():
            return None
        wqk, wv, DH = torch.stack([qp.weight, kp.weight]), vp.weight[None], self.head_dim
        if not (headwise.applies(x_c, wqk, DH) and headwise.applies(x_m, wv, DH)):
            return None
        wc, wm, b = self._gate_folds()
        q, k, g_c = headwise.headwise_heads(x_c, wqk, DH, wc)
        v, g_m = headwise.headwise_heads(x_m, wv, DH, wm)
        per_head = lambda bias: bias.view(self.num_heads, 1, self.head_dim)  # noqa: E731
        q, k, v = (t if p.bias is None else t + per_head(p.bias) for t, p in ((q, qp), (k, kp), (v, vp)))
        return q, k, v, g_c + g_m + b

    def _out(self, h, x_c, z):
        """Per-head norm, learnable skip, output gate and down-projection. h, x_c, z: (..., Di)."""
        h = self.outnorm(h) + self.learnable_skip * x_c
        return self.dropout(self.proj_down(h * F.silu(z)))

    def forward(
        self, x: torch.Tensor, state: MLSTMLayerState | None = None
    ) -> tuple[torch.Tensor, MLSTMLayerState]:
        B, S, _ = x.shape
        NH, DH = self.num_heads, self.head_dim
        if state is None:
            state = self.init_state(B, device=x.device, dtype=x.dtype)
        x_m, z = self.proj_up(x).split(self.inner_dim, dim=-1)  # (B, S, Di) each
        x_c, conv_state = self._conv(x_m, state.conv, step=False)
        qkv = self._heads_qkv(x_c, x_m)
        if qkv is None:
            q, k, v, i, f = self._gates(x_c, x_m)
            heads = lambda t: t.view(B, S, NH, DH).transpose(1, 2)  # (B, NH, S, DH)
            q, k, v = heads(q), heads(k), heads(v)
        else:
            q, k, v, gates = qkv
            i, f = gates.split(NH, dim=-1)
        chunk_size = self.chunk_size or choose_chunk(S, DH, DH, like=q)
        h, cell = mlstm(
            q, k, v, i.transpose(1, 2), f.transpose(1, 2), state.cell,
            form=self.form, chunk_size=chunk_size, eps=self.eps,
        )  # h (B, NH, S, DH)
        norm = self.outnorm
        if B * S >= _FOLD_ROWS and not torch.compiler.is_compiling() and output_cpu.applies(
                h, x_c, z, norm.weight, norm.bias, self.learnable_skip):
            # one numba pass each way, reading h head-major (``output_cpu``); the same function as _out
            y = output_cpu.fused_output(h, x_c, F.silu(z), norm.weight, norm.bias, self.learnable_skip,
                                        norm.eps)
            return self.dropout(self.proj_down(y)), MLSTMLayerState(cell, conv_state)
        h = h.transpose(1, 2).reshape(B, S, self.inner_dim)
        return self._out(h, x_c, z), MLSTMLayerState(cell, conv_state)

    def step(
        self, x: torch.Tensor, state: MLSTMLayerState | None = None
    ) -> tuple[torch.Tensor, MLSTMLayerState]:
        B, _ = x.shape
        NH, DH = self.num_heads, self.head_dim
        if state is None:
            state = self.init_state(B, device=x.device, dtype=x.dtype)
        x_m, z = self.proj_up(x).split(self.inner_dim, dim=-1)  # (B, Di) each
        x_c, conv_state = self._conv(x_m, state.conv, step=True)
        q, k, v, i, f = self._gates(x_c, x_m)
        heads = lambda t: t.view(B, NH, DH)
        h, cell = mlstm_step(heads(q), heads(k), heads(v), i, f, state.cell, eps=self.eps)  # (B, NH, DH)
        return self._out(h.reshape(B, self.inner_dim), x_c, z), MLSTMLayerState(cell, conv_state)

    def step_(self, x: torch.Tensor, state: MLSTMLayerState) -> torch.Tensor:
        """One step that updates ``state`` in place and returns y (B, D): the inference path.

        ``state`` must be a full MLSTMLayerState (e.g. from :meth:`init_state`) whose tensors nothing
        else needs (they are overwritten); call under ``torch.no_grad()``. The same function as
        :meth:`step`.
        """
        B, _ = x.shape
        NH, DH = self.num_heads, self.head_dim
        x_m, z = self.proj_up(x).split(self.inner_dim, dim=-1)  # (B, Di) each
        if self.conv is None:
            x_c = x_m
        else:
            y, conv = self.conv.step(x_m, state.conv)
            state.conv.copy_(conv)
            x_c = F.silu(y)
        q, k, v, i, f = self._gates(x_c, x_m)
        heads = lambda t: t.view(B, NH, DH)
        h = mlstm_step_(heads(q), heads(k), heads(v), i, f, state.cell, eps=self.eps)  # (B, NH, DH)
        return self._out(h.reshape(B, self.inner_dim), x_c, z)

"""The sLSTM layer of the NeurIPS xLSTM paper (interior of the "post up-projection" block, SPEC section 3).

    x (B, S, D) -> x_c = SiLU(causal_conv(x))
    i, f = blockdiag(x_c), z, o = blockdiag(x)      one (DH x DH) block per head
    h = sLSTM(W x + R h_prev + b)                    recurrent, memory mixing inside each head
    y = HeadwiseNorm(h)                              (B, S, D)

The convolution feeds only the input and forget gates; the up-projection (gated FFN) lives in the block.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from xlram.nn import CausalConv1d, HeadwiseLinear, HeadwiseNorm, small_init_
from xlram.ops.slstm import SLSTMState, slstm, slstm_step
from xlram.ops.slstm.reference import state_dtype as slstm_state_dtype
from xlram.ops.slstm.reference import zero_state as slstm_zero_state

BIAS_INITS = ("powerlaw_blockdependent", "small_init", "standard", "zeros")
RECURRENT_INITS = ("zeros", "standard")


class SLSTMLayerState(NamedTuple):
    """State of an :class:`SLSTMLayer`: the cell state and the last ``K-1`` conv inputs.

    cell: SLSTMState (h, c, n, m), each (B, D); conv: (B, K-1, D).
    """

    cell: SLSTMState
    conv: torch.Tensor


class SLSTMLayer(nn.Module):
    """sLSTM layer (see the module docstring for the data flow).

    Args:
        dim: width D = NH * DH.
        num_heads: NH; must divide D.
        conv_kernel_size: causal conv on the i/f branch (0: none, and no SiLU either).
        forget_gate: "sigmoid" (the paper's default) or "exp".
        bias_init: forget-gate bias init: "powerlaw_blockdependent" (the paper's: spread per unit, longer
            memories deeper in the stack), "small_init" (linspace(3, 6)), "standard" (uniform, all
            gates) or "zeros".
        recurrent_init: "zeros" (the paper's) or "standard" (uniform +-1/sqrt(D)).
        norm_weight: learnable weight of the per-head norm.
        dropout: on the cell output, before the norm.
        norm_eps: epsilon of the per-head norm.
        block_idx, num_blocks: position in the stack, for the block-dependent forget-gate bias.
        form: passed to :func:`xlram.ops.slstm.slstm`.

    Parameters: gate projections ``igate, fgate, zgate, ogate`` (HeadwiseLinear, no bias),
    ``recurrent_kernel (NH, DH, 4, DH)`` with ``preact[g, h, j] += sum_k h_prev[h, k] R[h, k, g, j]``,
    ``bias (4, NH, DH)``; gate order i, f, z, o.
    Shapes: ``forward(x (B, S, D), state) -> (y (B, S, D), state)``; ``step(x_t (B, D), state)``.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int = 4,
        conv_kernel_size: int = 4,
        forget_gate: str = "sigmoid",
        bias_init: str = "powerlaw_blockdependent",
        recurrent_init: str = "zeros",
        norm_weight: bool = True,
        dropout: float = 0.0,
        norm_eps: float = 1e-5,
        block_idx: int = 0,
        num_blocks: int = 1,
        form: str = "auto",
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"SLSTMLayer: num_heads={num_heads} must divide the width {dim}")
        if bias_init not in BIAS_INITS:
            raise ValueError(f"SLSTMLayer: bias_init must be one of {BIAS_INITS}, got {bias_init!r}")
        if recurrent_init not in RECURRENT_INITS:
            raise ValueError(
                f"SLSTMLayer: recurrent_init must be one of {RECURRENT_INITS}, got {recurrent_init!r}"
            )
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.conv_kernel_size = conv_kernel_size
        self.forget_gate, self.form = forget_gate, form
        self.bias_init, self.recurrent_init = bias_init, recurrent_init
        self.block_idx, self.num_blocks = block_idx, num_blocks
        NH, DH = num_heads, self.head_dim

        self.conv = CausalConv1d(dim, conv_kernel_size) if conv_kernel_size > 0 else None
        self.igate = HeadwiseLinear(dim, dim, NH)
        self.fgate = HeadwiseLinear(dim, dim, NH)
        self.zgate = HeadwiseLinear(dim, dim, NH)
        self.ogate = HeadwiseLinear(dim, dim, NH)
        self.recurrent_kernel = nn.Parameter(torch.zeros(NH, DH, 4, DH))
        self.bias = nn.Parameter(torch.zeros(4, NH, DH))
        self.dropout = nn.Dropout(dropout)
        self.norm = HeadwiseNorm(NH, DH, weight=norm_weight, eps=norm_eps)
        self.reset_parameters()

    def forget_bias_init(self) -> torch.Tensor:
        """The forget-gate bias of one head, (DH,), for ``bias_init``.

        powerlaw_blockdependent: ``-(-5 + 12 * u ** (0.3 + 1.3 * block_idx / (num_blocks - 1)))``,
        u = linspace(0, 1, DH): from +5 (long memory) down to -7 within each head, with deeper blocks
        keeping more units at long memories.
        """
        DH = self.head_dim
        if self.bias_init == "powerlaw_blockdependent":
            ratio = self.block_idx / (self.num_blocks - 1) if self.num_blocks > 1 else 0.0
            u = torch.linspace(0.0, 1.0, DH)
            return -(-5.0 + 12.0 * u ** (0.3 + 1.3 * ratio))
        if self.bias_init == "small_init":
            return torch.linspace(3.0, 6.0, DH)
        return torch.zeros(DH)

    def reset_parameters(self) -> None:
        for proj in (self.igate, self.fgate, self.zgate, self.ogate):
            small_init_(proj.weight, self.dim)
        if self.conv is not None:
            self.conv.reset_parameters()
        bound = 1.0 / math.sqrt(self.dim)
        with torch.no_grad():
            if self.recurrent_init == "zeros":
                self.recurrent_kernel.zero_()
            else:
                self.recurrent_kernel.uniform_(-bound, bound)
            if self.bias_init == "standard":
                self.bias.uniform_(-bound, bound)
            else:
                self.bias.zero_()
                self.bias[1] = self.forget_bias_init()  # every head the same
        self.norm.reset_parameters()

    def init_state(self, batch_size: int, device=None, dtype=None) -> SLSTMLayerState:
        """Zeros (the same as ``state=None``). ``dtype`` is the activation dtype; the cell state is kept
        in fp32 for 16-bit activations (``xlram.ops.slstm`` rules)."""
        device = self.bias.device if device is None else device
        dtype = self.bias.dtype if dtype is None else dtype
        cell = slstm_zero_state(batch_size, self.dim, slstm_state_dtype(dtype), device)
        K = max(self.conv_kernel_size, 1)
        conv = torch.zeros(batch_size, K - 1, self.dim, device=device, dtype=dtype)
        return SLSTMLayerState(cell, conv)

    def _conv(self, x, conv_state, step: bool):
        if self.conv is None:
            return x, conv_state
        if step:
            y, conv_state = self.conv.step(x, conv_state)
            return F.silu(y), conv_state
        return self.conv(x, conv_state, silu=True)  # SiLU fused into the conv's kernels

    def _wx(self, x_c, x):
        """Input contributions, (..., 4, NH, DH) in gate order i, f, z, o."""
        wx = torch.stack([self.igate(x_c), self.fgate(x_c), self.zgate(x), self.ogate(x)], dim=-2)
        return wx.unflatten(-1, (self.num_heads, self.head_dim))

    def forward(
        self, x: torch.Tensor, state: SLSTMLayerState | None = None
    ) -> tuple[torch.Tensor, SLSTMLayerState]:
        B, S, _ = x.shape
        if state is None:
            state = self.init_state(B, device=x.device, dtype=x.dtype)
        x_c, conv_state = self._conv(x, state.conv, step=False)
        wx = self._wx(x_c, x)  # (B, S, 4, NH, DH)
        r, b = self.recurrent_kernel.to(wx.dtype), self.bias.to(wx.dtype)
        h, cell = slstm(wx, r, b, state.cell, forget_gate=self.forget_gate, form=self.form)  # (B, S, D)
        return self.norm(self.dropout(h)), SLSTMLayerState(cell, conv_state)

    def step(
        self, x: torch.Tensor, state: SLSTMLayerState | None = None
    ) -> tuple[torch.Tensor, SLSTMLayerState]:
        B, _ = x.shape
        if state is None:
            state = self.init_state(B, device=x.device, dtype=x.dtype)
        x_c, conv_state = self._conv(x, state.conv, step=True)
        wx = self._wx(x_c, x)  # (B, 4, NH, DH)
        r, b = self.recurrent_kernel.to(wx.dtype), self.bias.to(wx.dtype)
        h, cell = slstm_step(wx, r, b, state.cell, forget_gate=self.forget_gate)  # (B, D)
        return self.norm(self.dropout(h)), SLSTMLayerState(cell, conv_state)

    def step_(self, x: torch.Tensor, state: SLSTMLayerState) -> torch.Tensor:
        """One step that updates ``state`` (a full SLSTMLayerState) in place and returns y (B, D): the
        inference path, the same function as :meth:`step`; call under ``torch.no_grad()``."""
        y, new = self.step(x, state)
        for old_t, new_t in zip((*state.cell, state.conv), (*new.cell, new.conv), strict=True):
            old_t.copy_(new_t)
        return y

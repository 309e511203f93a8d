"""The mLSTM layer of xLSTM 7B ("large"): the cell runs at model width, with no up-projection, conv or skip.

    x (B, S, D) -> q, k = Linear(x) (B, S, qk_dim),  v = Linear(x) (B, S, v_dim)
    i, f = soft_cap(Linear(x), 15) per head             (B, S, NH)
    h = HeadwiseNorm(mlstm(q, k, v, i, f))              (B, S, v_dim)
    y = out_proj(sigmoid(Linear(x)) * h)                (B, S, D)

Gates come straight from x (not from q, k, v) so that tensor parallelism needs no all-reduce, and
they are soft-capped for training stability (xLSTM 7B paper).
"""

from __future__ import annotations

import torch
from torch import nn

from xlram.nn import HeadwiseNorm, Linear, small_init_, soft_cap, wang_init_
from xlram.ops.mlstm import MLSTMState, mlstm, mlstm_step, zero_state
from xlram.ops.mlstm.dispatch import choose_chunk
from xlram.ops.mlstm.recurrent import mlstm_step_


class MLSTMLargeLayer(nn.Module):
    """xLSTM-7B-style mLSTM layer (see the module docstring). Its state is the cell's MLSTMState.

    Args:
        dim: model width D.
        num_heads: NH; must divide ``qk_dim = int(D * qk_dim_factor)`` and ``v_dim = int(D * v_dim_factor)``.
        qk_dim_factor, v_dim_factor: q/k and v widths relative to D (0.5 and 1 in the 7B model).
        gate_soft_cap: cap of the input/forget gate pre-activations (None: no cap).
        bias: biases on q, k, v, the output gate, out_proj and the per-head norm (gates always have one).
        dropout: on the output.
        eps: the cell's denominator epsilon. norm_eps: epsilon of the per-head norm.
        num_blocks: depth of the residual stack (wang-init of out_proj).
        form, chunk_size: passed to :func:`xlram.ops.mlstm.mlstm`.

    Shapes: ``forward(x (B, S, D), state) -> (y (B, S, D), MLSTMState)``; ``step(x_t (B, D), state)``.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int = 8,
        qk_dim_factor: float = 0.5,
        v_dim_factor: float = 1.0,
        gate_soft_cap: float | None = 15.0,
        bias: bool = False,
        dropout: float = 0.0,
        eps: float = 1e-6,
        norm_eps: float = 1e-6,
        num_blocks: int = 1,
        form: str = "auto",
        chunk_size: int | None = None,
    ):
        super().__init__()
        qk_dim, v_dim = int(dim * qk_dim_factor), int(dim * v_dim_factor)
        for name, width in (("qk_dim", qk_dim), ("v_dim", v_dim)):
            if width < num_heads or width % num_heads:
                raise ValueError(f"MLSTMLargeLayer: num_heads={num_heads} must divide {name}={width}")
        self.dim, self.num_heads, self.num_blocks = dim, num_heads, num_blocks
        self.qk_dim, self.v_dim = qk_dim, v_dim
        self.qk_head_dim, self.v_head_dim = qk_dim // num_heads, v_dim // num_heads
        self.gate_soft_cap = gate_soft_cap
        self.eps, self.form, self.chunk_size = eps, form, chunk_size

        self.q = Linear(dim, qk_dim, bias=bias)
        self.k = Linear(dim, qk_dim, bias=bias)
        self.v = Linear(dim, v_dim, bias=bias)
        self.ogate = Linear(dim, v_dim, bias=bias)
        self.igate = Linear(dim, num_heads)
        self.fgate = Linear(dim, num_heads)
        self.outnorm = HeadwiseNorm(num_heads, self.v_head_dim, bias=bias, eps=norm_eps)
        self.out_proj = Linear(v_dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The 7B recipe: small-init q/k/v, gate weights 0, input-gate bias -10 (the input gate starts
        almost shut), forget-gate bias linspace(3, 6) over heads, wang-init out_proj."""
        for lin in (self.q, self.k, self.v):
            small_init_(lin.weight, self.dim)
        wang_init_(self.out_proj.weight, self.dim, self.num_blocks)
        with torch.no_grad():
            for lin in (self.ogate, self.igate, self.fgate):
                lin.weight.zero_()
            for lin in (self.q, self.k, self.v, self.ogate, self.out_proj):
                if lin.bias is not None:
                    lin.bias.zero_()
            self.igate.bias.fill_(-10.0)
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, self.num_heads))
        self.outnorm.reset_parameters()

    def init_state(self, batch_size: int, device=None, dtype=None) -> MLSTMState:
        """Zeros (the same as ``state=None``); fp32 for 16/32-bit activations, fp64 for fp64."""
        device = self.q.weight.device if device is None else device
        dtype = self.q.weight.dtype if dtype is None else dtype
        return zero_state(
            batch_size, self.num_heads, self.qk_head_dim, self.v_head_dim, dtype=dtype, device=device
        )

    def _project(self, x):
        """q, k (..., qk_dim), v, o (..., v_dim), capped gate pre-activations i, f (..., NH)."""
        i = soft_cap(self.igate(x), self.gate_soft_cap)
        f = soft_cap(self.fgate(x), self.gate_soft_cap)
        return self.q(x), self.k(x), self.v(x), self.ogate(x), i, f

    def _out(self, h, o):
        return self.dropout(self.out_proj(torch.sigmoid(o) * self.outnorm(h)))

    def forward(self, x: torch.Tensor, state: MLSTMState | None = None) -> tuple[torch.Tensor, MLSTMState]:
        B, S, _ = x.shape
        NH = self.num_heads
        q, k, v, o, i, f = self._project(x)
        heads = lambda t: t.view(B, S, NH, -1).transpose(1, 2)  # (B, NH, S, d)
        chunk_size = self.chunk_size or choose_chunk(S, self.qk_head_dim, self.v_head_dim, like=q)
        h, state = mlstm(
            heads(q), heads(k), heads(v), i.transpose(1, 2), f.transpose(1, 2), state,
            form=self.form, chunk_size=chunk_size, eps=self.eps,
        )  # (B, NH, S, DHV)
        return self._out(h.transpose(1, 2).reshape(B, S, self.v_dim), o), state

    def step(self, x: torch.Tensor, state: MLSTMState | None = None) -> tuple[torch.Tensor, MLSTMState]:
        B, _ = x.shape
        NH = self.num_heads
        q, k, v, o, i, f = self._project(x)
        heads = lambda t: t.view(B, NH, -1)
        h, state = mlstm_step(heads(q), heads(k), heads(v), i, f, state, eps=self.eps)  # (B, NH, DHV)
        return self._out(h.reshape(B, self.v_dim), o), state

    def step_(self, x: torch.Tensor, state: MLSTMState) -> torch.Tensor:
        """One step that updates ``state`` (a full MLSTMState) in place and returns y (B, D): the
        inference path, the same function as :meth:`step`; call under ``torch.no_grad()``."""
        B, _ = x.shape
        NH = self.num_heads
        q, k, v, o, i, f = self._project(x)
        heads = lambda t: t.view(B, NH, -1)
        h = mlstm_step_(heads(q), heads(k), heads(v), i, f, state, eps=self.eps)  # (B, NH, DHV)
        return self._out(h.reshape(B, self.v_dim), o)

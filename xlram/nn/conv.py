"""Causal depthwise 1-D convolution over time, with a carried state for chunked and step-wise use."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _CausalConv(torch.autograd.Function):
    """Depthwise causal convolution (+ optional SiLU) in (B, S, C) layout, as K shifted multiply-adds.

    xx (B, S+K-1, C) = [state, x], w (C, K), b (C,) or None -> y (B, S, C). ``F.conv1d`` needs the
    channels-first layout, i.e. a transposed copy of the input, of the output and of both gradients,
    and runs its depthwise backward slower than these K fused multiply-adds; SiLU's backward is
    fused here too, from the saved pre-activation.
    """

    @staticmethod
    def forward(ctx, xx, w, b, silu: bool):
        K = w.shape[1]
        S = xx.shape[1] - K + 1
        y = xx[:, K - 1 :] * w[:, K - 1]
        for j in range(K - 1):
            y.addcmul_(xx[:, j : j + S], w[:, j])
        if b is not None:
            y.add_(b)
        ctx.save_for_backward(xx, w, y if silu else None)
        ctx.silu, ctx.has_bias = silu, b is not None
        return F.silu(y) if silu else y

    @staticmethod
    def backward(ctx, dout):
        xx, w, y = ctx.saved_tensors
        K = w.shape[1]
        S = xx.shape[1] - K + 1
        dy = torch.ops.aten.silu_backward(dout, y) if ctx.silu else dout
        dxx = dw = db = None
        if ctx.needs_input_grad[0]:
            dxx = xx.new_zeros(xx.shape)
            for j in range(K):
                dxx[:, j : j + S].addcmul_(dy, w[:, j])
        if ctx.needs_input_grad[1]:
            dw = torch.stack([(dy * xx[:, j : j + S]).sum((0, 1)) for j in range(K)], dim=1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum((0, 1))
        return dxx, dw, db, None


class CausalConv1d(nn.Module):
    """Depthwise causal convolution: ``y[t, c] = sum_j weight[c, j] * x[t - K + 1 + j, c] + bias[c]``.

    The state holds the last ``K - 1`` inputs (zeros before the sequence starts), so a sequence cut into
    chunks, or fed one step at a time, gives the same output as one full pass.

    Args:
        channels: C.
        kernel_size: K >= 1 (``weight[:, -1]`` multiplies the current input).
        bias: learnable per-channel bias.

    Shapes: ``forward(x (B, S, C), state (B, K-1, C) | None) -> (y (B, S, C), state (B, K-1, C))``;
    ``step(x_t (B, C), state) -> (y_t (B, C), state)``.
    """

    def __init__(self, channels: int, kernel_size: int, *, bias: bool = True):
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"CausalConv1d: kernel_size must be >= 1, got {kernel_size}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, kernel_size))  # (C, K)
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv1d's default for a depthwise kernel: U(-1/sqrt(K), 1/sqrt(K)) for weight and bias.
        bound = 1.0 / math.sqrt(self.kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """Zeros of shape ``(B, K-1, C)``: no input seen yet."""
        device = self.weight.device if device is None else device
        dtype = self.weight.dtype if dtype is None else dtype
        return torch.zeros(batch_size, self.kernel_size - 1, self.channels, device=device, dtype=dtype)

    def forward(
        self, x: torch.Tensor, state: torch.Tensor | None = None, *, silu: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``silu=True`` returns SiLU of the convolution, fused into it (same value as ``F.silu`` after)."""
        B, S, C = x.shape
        if state is None:
            state = self.init_state(B, device=x.device, dtype=x.dtype)
        xx = torch.cat([state.to(x.dtype), x], dim=1)  # (B, K-1+S, C)
        w = self.weight.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        if torch.is_grad_enabled() and (xx.requires_grad or w.requires_grad):
            y = _CausalConv.apply(xx, w, b, silu)
        else:
            y = self._plain(xx, w, b, silu)
        new_state = xx[:, xx.shape[1] - (self.kernel_size - 1) :]  # (B, K-1, C)
        return y, new_state

    @staticmethod
    def _plain(xx, w, b, silu):
        """The forward of ``_CausalConv`` without autograd bookkeeping."""
        K = w.shape[1]
        S = xx.shape[1] - K + 1
        y = xx[:, K - 1 :] * w[:, K - 1]
        for j in range(K - 1):
            y.addcmul_(xx[:, j : j + S], w[:, j])
        if b is not None:
            y.add_(b)
        return F.silu(y, inplace=True) if silu else y

    def step(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        B, C = x.shape
        if state is None:
            state = self.init_state(B, device=x.device, dtype=x.dtype)
        xx = torch.cat([state.to(x.dtype), x.unsqueeze(1)], dim=1)  # (B, K, C)
        y = torch.einsum("bkc,ck->bc", xx, self.weight)  # (B, C)
        if self.bias is not None:
            y = y + self.bias
        return y, xx[:, 1:]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, bias={self.bias is not None}"

"""Normalisation layers: LayerNorm with optional bias, RMSNorm, and a per-head norm.

All three reduce in at least float32: half-precision inputs are upcast for the statistics and the
result is cast back, while float32 and float64 inputs keep their precision (so fp64 parity tests stay
exact).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _reduction_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype to compute statistics in: float32 for half types, else the input dtype."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension with a learnable weight (init 1) and an optional bias.

    Args:
        dim: size D of the last dimension.
        bias: add a learnable bias (init 0).
        eps: added to the variance.

    Shapes: ``(..., D) -> (..., D)``.
    """

    def __init__(self, dim: int, *, bias: bool = False, eps: float = 1e-5):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _reduction_dtype(x)
        bias = None if self.bias is None else self.bias.to(dtype)
        y = F.layer_norm(x.to(dtype), (self.dim,), self.weight.to(dtype), bias, self.eps)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, bias={self.bias is not None}, eps={self.eps}"


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension: ``x / sqrt(mean(x^2) + eps) * weight (+ bias)``.

    Shapes: ``(..., D) -> (..., D)``.
    """

    def __init__(self, dim: int, *, bias: bool = False, eps: float = 1e-6):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _reduction_dtype(x)
        xr = x.to(dtype)
        y = xr * torch.rsqrt(xr.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight.to(dtype)
        if self.bias is not None:
            y = y + self.bias.to(dtype)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, bias={self.bias is not None}, eps={self.eps}"


class HeadwiseNorm(nn.Module):
    """Per-head LayerNorm: each head's ``DH`` features are normalised on their own, then one weight
    (and optional bias) of size ``NH * DH`` is applied.

    This is the same function as ``GroupNorm`` with ``NH`` groups over the ``NH * DH`` channels of one
    time step (what the xLSTM paper calls the per-head group norm).

    Args:
        num_heads: NH.
        head_dim: DH.
        weight: learnable weight (init 1); without it the norm has no scale parameter.
        bias: learnable bias (init 0).
        eps: added to each head's variance.

    Shapes: ``(..., NH * DH) -> (..., NH * DH)``.
    """

    def __init__(
        self, num_heads: int, head_dim: int, *, weight: bool = True, bias: bool = False, eps: float = 1e-5
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.eps = eps
        dim = num_heads * head_dim
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        NH, DH = self.num_heads, self.head_dim
        if x.shape[-1] != NH * DH:
            raise ValueError(f"HeadwiseNorm expects (..., NH*DH={NH * DH}), got {tuple(x.shape)}")
        lead = x.shape[:-1]
        dtype = _reduction_dtype(x)
        xh = x.reshape(*lead, NH, DH).to(dtype)  # (..., NH, DH)
        y = F.layer_norm(xh, (DH,), eps=self.eps).reshape(*lead, NH * DH)  # (..., NH*DH)
        if self.weight is not None:
            y = y * self.weight.to(dtype)
        if self.bias is not None:
            y = y + self.bias.to(dtype)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, head_dim={self.head_dim}, weight={self.weight is not None}, "
            f"bias={self.bias is not None}, eps={self.eps}"
        )

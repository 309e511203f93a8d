"""Block-diagonal ("headwise") linear layer."""

from __future__ import annotations

import math

import torch
from torch import nn


class HeadwiseLinear(nn.Module):
    """A linear map that is block-diagonal over ``num_heads`` heads: the input is split into
    ``num_heads`` groups of ``in_features / num_heads`` features and each group gets its own
    ``(out_features / num_heads) x (in_features / num_heads)`` matrix.

    ``num_heads = 1`` is an ordinary ``nn.Linear``; ``num_heads = in_features / 4`` gives the 4x4 blocks of
    the mLSTM q/k/v projections.

    Args:
        in_features, out_features: both must be divisible by ``num_heads``.
        num_heads: number of diagonal blocks.
        bias: learnable bias of size ``out_features``.

    Parameters: ``weight (NH, out/NH, in/NH)`` (each block in ``nn.Linear``'s (out, in) layout),
    ``bias (out,)``.
    Shapes: ``(..., in_features) -> (..., out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, num_heads: int, *, bias: bool = False):
        super().__init__()
        if num_heads < 1 or in_features % num_heads or out_features % num_heads:
            raise ValueError(
                f"HeadwiseLinear: num_heads={num_heads} must divide in_features={in_features} "
                f"and out_features={out_features}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.num_heads = num_heads
        self.weight = nn.Parameter(
            torch.empty(num_heads, out_features // num_heads, in_features // num_heads)
        )
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Small-init over the block's fan-in; the layers that own this module re-initialise it.
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / (5.0 * self.weight.shape[-1])))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        xh = x.reshape(*lead, self.num_heads, self.in_features // self.num_heads)  # (..., NH, in/NH)
        y = torch.einsum("...hi,hoi->...ho", xh, self.weight).reshape(*lead, self.out_features)
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"num_heads={self.num_heads}, bias={self.bias is not None}"
        )

"""Gated feed-forward network (GeGLU / SwiGLU and friends)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .dense import Linear
from .init import small_init_, wang_init_

#: Activations for the gate branch, by the names the xLSTM configs use ("swish" is SiLU).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "swish": F.silu,
    "silu": F.silu,
    "relu": F.relu,
    "relu^2": lambda x: F.relu(x).square(),
    "sigmoid": torch.sigmoid,
    "selu": F.selu,
}


def round_up(x: float, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``x``."""
    return int(math.ceil(x / multiple) * multiple)


class GatedFFN(nn.Module):
    """``y = proj_down(act(gate) * up)`` with ``[gate, up] = proj_up(x)``.

    The hidden size is ``proj_factor * dim`` rounded up to a multiple of ``round_to`` (64 in the
    papers; the GPU-friendly sizes of the official configs).

    Args:
        dim: model width D.
        proj_factor: hidden size / D before rounding (4/3 ~ 1.3 for the sLSTM block, 8/3 for the 7B block).
        act: one of :data:`ACTIVATIONS` ("gelu" -> GeGLU, "swish" -> SwiGLU).
        bias: biases on both projections.
        dropout: on the output.
        round_to: rounding multiple for the hidden size.
        num_blocks: depth of the residual stack, for the wang-init of ``proj_down``.

    Parameters: ``proj_up.weight (2*Dff, D)`` (rows ``[:Dff]`` the gate, ``[Dff:]`` the up branch),
    ``proj_down.weight (D, Dff)``. Shapes: ``(..., D) -> (..., D)``.
    """

    def __init__(
        self,
        dim: int,
        *,
        proj_factor: float = 1.3,
        act: str = "gelu",
        bias: bool = False,
        dropout: float = 0.0,
        round_to: int = 64,
        num_blocks: int = 1,
    ):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"GatedFFN: act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        self.dim = dim
        self.hidden_dim = round_up(proj_factor * dim, round_to)
        self.act_name = act
        self.act = ACTIVATIONS[act]
        self.num_blocks = num_blocks
        self.proj_up = Linear(dim, 2 * self.hidden_dim, bias=bias)
        self.proj_down = Linear(self.hidden_dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        small_init_(self.proj_up.weight, self.dim)
        wang_init_(self.proj_down.weight, self.dim, self.num_blocks)
        for lin in (self.proj_up, self.proj_down):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.proj_up(x).split(self.hidden_dim, dim=-1)
        return self.dropout(self.proj_down(self.act(gate) * up))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden_dim={self.hidden_dim}, act={self.act_name!r}"

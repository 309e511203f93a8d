"""Block-diagonal ("headwise") linear layer."""

from __future__ import annotations

import math

import torch
from torch import nn

from xlram.ops import cpu_blas

# Tiny blocks (the mLSTM's 4x4) are packed G to a group, into one (G·out, G·in) block-diagonal
# matrix per group, up to this width: a batched matmul over a few dozen 16x16 matrices runs at
# memory speed, while one over hundreds of 4x4 blocks (einsum) runs at a few GFLOP/s and unrolled
# multiply-adds pass over the activations once per block column. The zeros cost G times the
# FLOPs of the blocks, which are a rounding error next to the memory traffic.
GROUP_WIDTH = 16


def group_size(num_blocks: int, block_out: int, block_in: int) -> int:
    """How many blocks to pack per group: the largest divisor G of ``num_blocks`` whose packed
    matrix is at most ``GROUP_WIDTH`` wide (1 for blocks that are wide already)."""
    best = 1
    for G in range(1, num_blocks + 1):
        if num_blocks % G == 0 and G * max(block_out, block_in) <= GROUP_WIDTH:
            best = G
    return best


def pack_blocks(w: torch.Tensor, G: int) -> torch.Tensor:
    """(NB, out, in) blocks -> (NB/G, G·out, G·in) block-diagonal group matrices."""
    NB, o, i = w.shape
    if G == 1:
        return w
    packed = w.new_zeros(NB // G, G, o, G, i)
    packed.diagonal(dim1=1, dim2=3).copy_(w.view(NB // G, G, o, i).permute(0, 2, 3, 1))
    return packed.view(NB // G, G * o, G * i)


def unpack_blocks(packed: torch.Tensor, G: int, o: int, i: int) -> torch.Tensor:
    """The diagonal blocks of (NB/G, G·out, G·in) group matrices, as (NB, out, in)."""
    if G == 1:
        return packed
    ng = packed.shape[0]
    diag = packed.view(ng, G, o, G, i).diagonal(dim1=1, dim2=3)  # (ng, o, i, G)
    return diag.permute(0, 3, 1, 2).reshape(ng * G, o, i)


def _grouped(x: torch.Tensor, wg: torch.Tensor) -> torch.Tensor:
    """x (N, ng·gin) through per-group matrices wg (ng, gout, gin) -> (N, ng·gout)."""
    N = x.shape[0]
    ng, gout, gin = wg.shape
    y = cpu_blas.bmm(x.reshape(N, ng, gin).transpose(0, 1), wg.transpose(1, 2))  # (ng, N, gout)
    return y.transpose(0, 1).reshape(N, ng * gout)


class _GroupedLinear(torch.autograd.Function):
    """x (N, in_features), packed group matrices wg (ng, gout, gin) -> y (N, out_features).

    dx = the same map with wgᵀ; dwg[g] = dy_gᵀ x_g, one batched matmul over the rows.
    """

    @staticmethod
    def forward(ctx, x, wg):
        ctx.save_for_backward(x, wg)
        return _grouped(x, wg)

    @staticmethod
    def backward(ctx, dy):
        x, wg = ctx.saved_tensors
        ng, gout, gin = wg.shape
        N = x.shape[0]
        dx = dwg = None
        if ctx.needs_input_grad[0]:
            dx = _grouped(dy, wg.transpose(1, 2))
        if ctx.needs_input_grad[1]:
            dy_g = dy.reshape(N, ng, gout).permute(1, 2, 0)  # (ng, gout, N)
            dwg = cpu_blas.bmm(dy_g, x.reshape(N, ng, gin).transpose(0, 1))
        return dx, dwg


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
        self.group = group_size(num_heads, out_features // num_heads, in_features // num_heads)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Small-init over the block's fan-in; the layers that own this module re-initialise it.
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / (5.0 * self.weight.shape[-1])))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def packed_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight as (NH/G, G·out/NH, G·in/NH) block-diagonal group matrices (differentiable)."""
        w = self.weight if dtype is None else self.weight.to(dtype)
        return pack_blocks(w, self.group)

    def fold(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A dense map ``g (R, out_features)`` applied after this layer, as one map on its input:
        returns ``(g W (R, in_features), g b (R,) or None)``, so ``g (W x + b) = (g W) x + g b``.
        Differentiable in ``g`` and in this layer's parameters."""
        R = g.shape[0]
        NH, o, i = self.weight.shape
        gw = torch.einsum("rho,hoi->rhi", g.view(R, NH, o), self.weight.to(g.dtype)).reshape(R, NH * i)
        gb = None if self.bias is None else g @ self.bias.to(g.dtype)
        return gw, gb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        wg = self.packed_weight(x.dtype)
        if torch.is_grad_enabled() and (x2.requires_grad or wg.requires_grad):
            y = _GroupedLinear.apply(x2, wg)
        else:
            y = _grouped(x2, wg)
        y = y.view(*lead, self.out_features)
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"num_heads={self.num_heads}, bias={self.bias is not None}"
        )

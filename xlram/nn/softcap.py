"""Soft-capping: squash values smoothly into ``(-cap, cap)`` with ``cap * tanh(x / cap)``."""

from __future__ import annotations

import torch
from torch import nn


def soft_cap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``cap * tanh(x / cap)``; identity when ``cap`` is None. Any shape."""
    if cap is None:
        return x
    return cap * torch.tanh(x / cap)


class SoftCap(nn.Module):
    """Module form of :func:`soft_cap`. ``cap=None`` makes it the identity."""

    def __init__(self, cap: float | None):
        super().__init__()
        if cap is not None and not cap > 0:
            raise ValueError(f"SoftCap: cap must be positive or None, got {cap!r}")
        self.cap = cap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return soft_cap(x, self.cap)

    def extra_repr(self) -> str:
        return f"cap={self.cap}"

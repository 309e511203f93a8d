"""Initialisers used by the xLSTM papers (both from GPT-NeoX's init functions).

- small-init (Nguyen & Salazar, "Transformers without Tears"): N(0, sqrt(2 / (5 * dim))), for
  projections that read the residual stream;
- wang-init: N(0, 2 / (num_blocks * sqrt(dim))), for projections that write back into it, so that the
  residual stream's variance does not grow with depth.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def small_init_(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Fill ``weight`` in place from N(0, sqrt(2 / (5 * dim)))."""
    return weight.normal_(0.0, math.sqrt(2.0 / (5.0 * dim)))


@torch.no_grad()
def wang_init_(weight: torch.Tensor, dim: int, num_blocks: int) -> torch.Tensor:
    """Fill ``weight`` in place from N(0, 2 / (num_blocks * sqrt(dim)))."""
    return weight.normal_(0.0, 2.0 / (num_blocks * math.sqrt(dim)))

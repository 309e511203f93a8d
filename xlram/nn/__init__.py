"""Small modules with one job each: norms, causal convolution, block-diagonal linear, gated
feed-forward, soft-cap, and the papers' initialisers."""

from .conv import CausalConv1d
from .dense import Linear
from .ffn import ACTIVATIONS, GatedFFN, round_up
from .init import small_init_, wang_init_
from .linear import HeadwiseLinear
from .norm import HeadwiseNorm, LayerNorm, RMSNorm
from .softcap import SoftCap, soft_cap

__all__ = [
    "ACTIVATIONS",
    "CausalConv1d",
    "GatedFFN",
    "HeadwiseLinear",
    "HeadwiseNorm",
    "Linear",
    "LayerNorm",
    "RMSNorm",
    "SoftCap",
    "round_up",
    "small_init_",
    "soft_cap",
    "wang_init_",
]

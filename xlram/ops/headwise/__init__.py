"""Block-diagonal ("headwise") linear maps: the numba form for small square blocks on the CPU
(``fused_cpu``); the torch form is ``xlram.nn.linear``'s grouped matmul."""

from xlram.ops.headwise.fused_cpu import applies, headwise_heads

__all__ = ["applies", "headwise_heads"]

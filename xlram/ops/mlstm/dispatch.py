"""How ``form="auto"`` picks an implementation.

Measured on a 2-core AMD EPYC CPU (torch 2.13, fp32, B=1, H=4, CPU time of one thread, forward and
forward+backward; dk = dv from 32 to 256):

- S = 1: recurrent and parallel cost the same (~0.2 ms); the recurrent step has no (S, S) matrix.
- S <= 128: one parallel block beats chunks of 64 (S=96, d=128: 3.1 vs 5.9 ms fwd+bwd), because a
  chunk plus a short tail pays two rounds of small ops; at S=128 they tie, at S=192 chunks win
  (7.7 vs 9.6 ms), and the parallel form's O(S²) memory grows from there.
- Chunk length 64 was fastest or within 10 % of the fastest at S=2048 for every head size tried,
  forward alone and with backward (d=128 fwd+bwd: L=16 134 ms, 32 77, 64 68, 128 81, 256 130).
- The recurrent form is never the fastest for S > 2 (Python loop: ~0.5 ms per step with backward).

The thresholds are CPU measurements; a GPU favours longer parallel blocks and chunks. (The chunk
length figures above predate the chunkwise form's own backward, which cut its fwd+bwd time by ~2-3x;
``choose_chunk`` holds the current measurements. Layers pass its choice as ``chunk_size``.)
"""

import torch

from xlram.ops.mlstm import chunk_loop_cpu

PARALLEL_MAX_S = 128
CHUNK_SIZE = 64


def choose_form(S: int) -> tuple[str, int | None]:
    """(form, chunk_size) for a sequence of S steps; chunk_size is None for forms without chunks."""
    if S == 1:
        return "recurrent", None
    if S <= PARALLEL_MAX_S:
        return "parallel", None
    return "chunkwise", CHUNK_SIZE


def choose_chunk(S: int, dk: int, dv: int, like: torch.Tensor | None = None) -> int:
    """The chunk length for a chunkwise pass over S steps with head sizes dk, dv; ``like``: the queries
    (their device, dtype and whether they need gradients), where known.

    The batched form (GPU, or CPU where products stay in torch) pays per-chunk overheads (the scans,
    the (L, L) decay matrices) that favour longer chunks: fp32 on one core, fwd+bwd, B=1, H=4 (CPU
    ms): d=128, S=1024: L=32 38.7, L=64 30.3, L=128 34.4; S=4096: 150, 108, 126. So 64 for heads up to
    192 wide, 128 above (where the d² term dominates and bigger matmuls pay).

    The compiled CPU loop (``chunk_loop_cpu``) keeps each chunk in cache and calls its products one
    chunk at a time. Measured there (same setting, second-best of 5; L = 32 / 64 / 128): d=64 fwd
    S=1024 1.16 / 1.32 / 1.71, S=4096 4.70 / 5.05 / 6.51, fwd+bwd 3.21 / 3.31 / 4.65 and 16.1 / 16.0 /
    20.7; d=128 fwd 2.78 / 3.06 / 3.66 and 11.5 / 13.1 / 15.8, fwd+bwd 9.55 / 9.89 / 11.7 and 39.2 /
    38.0 / 44.8; d=256 fwd 10.6 / 9.67 / 10.2 and 40.9 / 37.1 / 38.5, fwd+bwd 33.0 / 29.6 / 30.5 and
    130 / 112 / 116. So there: 32 without gradients up to d=128, else 64 up to d=256 (wider heads were
    not measured: 128, as in the batched form). One chunk when the sequence is not longer than that.
    """
    d = max(dk, dv)
    if like is not None and chunk_loop_cpu.applies(like):
        grad = torch.is_grad_enabled() and like.requires_grad
        L = CHUNK_SIZE // 2 if not grad and d <= 128 else (CHUNK_SIZE if d <= 256 else 2 * CHUNK_SIZE)
    else:
        L = CHUNK_SIZE if d <= 192 else 2 * CHUNK_SIZE
    return max(1, min(L, S))

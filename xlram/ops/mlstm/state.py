"""The mLSTM recurrent state and the dtype rules every form shares."""

from typing import NamedTuple

import torch


class MLSTMState(NamedTuple):
    """The mLSTM memory of every head, stabilised by ``exp(-m)``.

    C: (B, H, dk, dv) matrix memory; n: (B, H, dk) normaliser; m: (B, H) log-stabiliser.
    The unstabilised memory is ``exp(m) * C`` (and ``exp(m) * n``).
    """

    C: torch.Tensor
    n: torch.Tensor
    m: torch.Tensor


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype states and the gate arithmetic use for inputs of ``dtype``: fp64 stays fp64,
    everything narrower (fp32, bf16, fp16) accumulates in fp32 so long sequences do not drift."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def zero_state(
    B: int, H: int, dk: int, dv: int, *, dtype: torch.dtype = torch.float32, device=None
) -> MLSTMState:
    """The initial state ``C=0, n=0, m=0`` in ``state_dtype(dtype)``.

    C (B, H, dk, dv), n (B, H, dk), m (B, H); ``dtype`` is the dtype of the inputs it will meet."""
    dt = state_dtype(dtype)
    return MLSTMState(
        torch.zeros(B, H, dk, dv, dtype=dt, device=device),
        torch.zeros(B, H, dk, dtype=dt, device=device),
        torch.zeros(B, H, dtype=dt, device=device),
    )


def cast_state(state: MLSTMState | None, B: int, H: int, dk: int, dv: int, dtype, device) -> MLSTMState:
    """``state`` as an MLSTMState in ``dtype`` (zeros when None); casting keeps it differentiable."""
    if state is None:
        return zero_state(B, H, dk, dv, dtype=dtype, device=device)
    C, n, m = state
    return MLSTMState(C.to(dtype), n.to(dtype), m.to(dtype))

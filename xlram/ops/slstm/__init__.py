"""sLSTM (scalar memory with memory mixing), SPEC section 2.

One public entry, ``slstm(wx, r, b, state=None, *, forget_gate="sigmoid", form="auto")``, that
validates its inputs and dispatches to a form:

- ``"reference"``: a loop over time differentiated by autograd (``reference.py``), the ground truth;
- ``"recurrent"``: the same loop run inside one autograd Function with a hand-written backward
  through time (``recurrent.py``), the fast form and what ``"auto"`` picks.

``slstm_step`` runs one step, for generation.

The math is SPEC section 2. The first-step rule (m_t = ĩ where n_{t-1} == 0) holds per element and
is a ``torch.where``, never a host-side branch. The forget factor f' is capped at 1, as in the
official CUDA kernel: the cap can only bind on a first step, where f' multiplies an empty state,
and it keeps ``exp`` from overflowing there (inf * 0 = nan).
"""

from __future__ import annotations

import torch

from xlram.ops.slstm.recurrent import slstm_recurrent, slstm_step_unchecked
from xlram.ops.slstm.reference import FORGET_GATES, SLSTMState, slstm_reference, state_dtype

__all__ = ["FORMS", "FORGET_GATES", "SLSTMState", "slstm", "slstm_step"]

FORMS = ("auto", "reference", "recurrent")


def _check_float(name: str, x: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")


def _check_params(wx_name: str, wx: torch.Tensor, r: torch.Tensor, b: torch.Tensor, wx_rank: int) -> None:
    """Check wx (rank wx_rank, gate axis at -3), r and b, and that they agree on NH, DH, dtype, device."""
    _check_float(wx_name, wx)
    _check_float("r", r)
    _check_float("b", b)
    layout = "(B, S, 4, NH, DH)" if wx_rank == 5 else "(B, 4, NH, DH)"
    if wx.dim() != wx_rank:
        raise ValueError(f"{wx_name} must have shape {layout} (rank {wx_rank}), got shape {tuple(wx.shape)}")
    if wx.shape[-3] != 4:
        raise ValueError(
            f"{wx_name} must have 4 gates (i, f, z, o) on axis {wx_rank - 3} of {layout}, "
            f"got shape {tuple(wx.shape)}"
        )
    if wx.shape[0] == 0 or (wx_rank == 5 and wx.shape[1] == 0):
        raise ValueError(
            f"{wx_name} must have a batch size and sequence length >= 1, got shape {tuple(wx.shape)}"
        )
    NH, DH = wx.shape[-2], wx.shape[-1]
    if NH == 0 or DH == 0:
        raise ValueError(f"{wx_name} must have NH >= 1 and DH >= 1, got shape {tuple(wx.shape)}")
    if tuple(r.shape) != (NH, DH, 4, DH):
        raise ValueError(
            f"r must have shape (NH, DH, 4, DH) = {(NH, DH, 4, DH)} to match {wx_name} {layout} "
            f"{tuple(wx.shape)}, got shape {tuple(r.shape)}"
        )
    if tuple(b.shape) != (4, NH, DH):
        raise ValueError(
            f"b must have shape (4, NH, DH) = {(4, NH, DH)} to match {wx_name} {layout} "
            f"{tuple(wx.shape)}, got shape {tuple(b.shape)}"
        )
    for name, x in (("r", r), ("b", b)):
        if x.dtype != wx.dtype:
            raise TypeError(f"{name} must have the dtype of {wx_name} ({wx.dtype}), got {x.dtype}")
        if x.device != wx.device:
            raise ValueError(f"{name} must be on the device of {wx_name} ({wx.device}), got {x.device}")


def _check_state(state: object, batch: int, width: int, dtype: torch.dtype, device: torch.device) -> None:
    """A state is an SLSTMState (or a 4-tuple) of (B, NH * DH) tensors in ``state_dtype(wx.dtype)``."""
    if not isinstance(state, tuple) or len(state) != 4:
        raise TypeError(f"state must be an SLSTMState (h, c, n, m) or None, got {type(state).__name__}")
    for name, s in zip(SLSTMState._fields, state, strict=True):
        _check_float(f"state.{name}", s)
        if tuple(s.shape) != (batch, width):
            raise ValueError(
                f"state.{name} must have shape (B, NH * DH) = {(batch, width)}, got shape {tuple(s.shape)}"
            )
        if s.dtype != dtype:
            raise TypeError(
                f"state.{name} must have dtype {dtype} (the state dtype for these inputs), got {s.dtype}"
            )
        if s.device != device:
            raise ValueError(f"state.{name} must be on device {device}, got {s.device}")


def _check_forget_gate(forget_gate: object) -> None:
    if forget_gate not in FORGET_GATES:
        raise ValueError(f"forget_gate must be one of {FORGET_GATES}, got {forget_gate!r}")


def slstm(
    wx: torch.Tensor,
    r: torch.Tensor,
    b: torch.Tensor,
    state: SLSTMState | None = None,
    *,
    forget_gate: str = "sigmoid",
    form: str = "auto",
) -> tuple[torch.Tensor, SLSTMState]:
    """Run the sLSTM cell over a sequence.

    Args:
        wx: (B, S, 4, NH, DH) input contributions W x_t, gate order i, f, z, o; any S >= 1.
        r: (NH, DH, 4, DH) block-diagonal recurrent weights:
            preact[b, g, h, j] += sum_k h_prev[b, h, k] * r[h, k, g, j].
        b: (4, NH, DH) gate biases.
        state: SLSTMState(h, c, n, m), each (B, NH * DH), in float32 for 16-bit inputs and in wx's
            dtype otherwise; None starts from zeros (an empty state).
        forget_gate: "sigmoid" (log f = logsigmoid(f̃)) or "exp" (log f = f̃).
        form: "auto" (= "recurrent"), "reference" or "recurrent".

    Returns:
        h: (B, S, NH * DH) in wx's dtype, and the final SLSTMState.
    """
    _check_params("wx", wx, r, b, wx_rank=5)
    _check_forget_gate(forget_gate)
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    B, _, _, NH, DH = wx.shape
    if state is not None:
        _check_state(state, B, NH * DH, state_dtype(wx.dtype), wx.device)
        state = SLSTMState(*state)
    if form == "reference":
        return slstm_reference(wx, r, b, state, forget_gate=forget_gate)
    if form == "auto" and wx.is_cuda:
        from xlram import kernels  # imports triton only here, for CUDA tensors

        if kernels.usable(wx):
            return kernels.slstm(wx, r, b, state, forget_gate=forget_gate)
    return slstm_recurrent(wx, r, b, state, forget_gate=forget_gate)


def slstm_step(
    wx_t: torch.Tensor,
    r: torch.Tensor,
    b: torch.Tensor,
    state: SLSTMState | None = None,
    forget_gate: str = "sigmoid",
) -> tuple[torch.Tensor, SLSTMState]:
    """One sLSTM step, for generation; differentiable by autograd, no host synchronisation.

    Args:
        wx_t: (B, 4, NH, DH) input contributions of this step, gate order i, f, z, o.
        r: (NH, DH, 4, DH), b: (4, NH, DH) as in ``slstm``.
        state: SLSTMState, each (B, NH * DH), or None for an empty state.
        forget_gate: "sigmoid" or "exp".

    Returns:
        h_t: (B, NH * DH) in wx_t's dtype, and the new SLSTMState.
    """
    _check_params("wx_t", wx_t, r, b, wx_rank=4)
    _check_forget_gate(forget_gate)
    B, _, NH, DH = wx_t.shape
    if state is not None:
        _check_state(state, B, NH * DH, state_dtype(wx_t.dtype), wx_t.device)
        state = SLSTMState(*state)
    return slstm_step_unchecked(wx_t, r, b, state, forget_gate)

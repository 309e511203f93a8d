"""Checks at the public boundary of ``mlstm``: every error names the argument, what was expected
and what was given. Shape and dtype checks read metadata only; the finiteness check is the one
that synchronises with the device, which is why it runs only when asked for."""

import torch

FORMS = ("auto", "parallel", "chunkwise", "recurrent")


def _tensor(name, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point dtype, got {x.dtype}")


def _shape(name, x, expected, what):
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {what} = {tuple(expected)}, got {tuple(x.shape)}")


def check_inputs(q, k, v, i, f, *, seq_dim: bool = True):
    """Validate q, k, v, i, f; returns (B, H, S, dk, dv) (S is None when ``seq_dim`` is False).

    With ``seq_dim``: q, k (B, H, S, dk), v (B, H, S, dv), i, f (B, H, S).
    Without (one step): q, k (B, H, dk), v (B, H, dv), i, f (B, H).
    q, k and v must share one floating dtype; i and f may be any floating dtype (gates are
    computed in the state dtype anyway, and layers often keep them in fp32 under bf16 autocast).
    """
    for name, x in (("q", q), ("k", k), ("v", v), ("i", i), ("f", f)):
        _tensor(name, x)
    lead = "(B, H, S, " if seq_dim else "(B, H, "
    rank = 4 if seq_dim else 3
    for name, x, last in (("q", q, "dk)"), ("k", k, "dk)"), ("v", v, "dv)")):
        if x.dim() != rank:
            raise ValueError(f"{name}: expected a {rank}-D tensor {lead}{last}, got shape {tuple(x.shape)}")
    for name, x in (("i", i), ("f", f)):
        if x.dim() != rank - 1:
            raise ValueError(
                f"{name}: expected a {rank - 1}-D tensor {lead.rstrip(', ')}), got shape {tuple(x.shape)}"
            )
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise TypeError(f"{name}: expected the dtype of q ({q.dtype}), got {x.dtype}")
    for name, x in (("k", k), ("v", v), ("i", i), ("f", f)):
        if x.device != q.device:
            raise ValueError(f"{name}: expected the device of q ({q.device}), got {x.device}")

    lead_shape = tuple(q.shape[:-1])
    B, H = lead_shape[:2]
    S = lead_shape[2] if seq_dim else None
    dk, dv = q.shape[-1], v.shape[-1]
    what = "(B, H, S)" if seq_dim else "(B, H)"
    for name, x in (("k", k), ("v", v)):
        if tuple(x.shape[:-1]) != lead_shape:
            raise ValueError(
                f"{name}: expected leading dims {what} = {lead_shape} as in q, got {tuple(x.shape)}"
            )
    if k.shape[-1] != dk:
        raise ValueError(f"k: expected last dim dk = {dk} as in q, got {k.shape[-1]}")
    for name, x in (("i", i), ("f", f)):
        _shape(name, x, lead_shape, what + " as in q")
    if seq_dim and S < 1:
        raise ValueError(f"q: expected a sequence length S >= 1, got S = {S}")
    if dk < 1 or dv < 1:
        raise ValueError(f"q, v: expected head sizes dk, dv >= 1, got dk = {dk}, dv = {dv}")
    return B, H, S, dk, dv


def check_state(state, B, H, dk, dv, device):
    """Validate an MLSTMState-like triple (C (B, H, dk, dv), n (B, H, dk), m (B, H)) or None."""
    if state is None:
        return
    if not isinstance(state, tuple) or len(state) != 3:
        raise TypeError(
            f"state: expected an MLSTMState (C, n, m) or None, got {type(state).__name__}"
            + (f" of length {len(state)}" if isinstance(state, tuple) else "")
        )
    C, n, m = state
    for name, x, shape, what in (
        ("state.C", C, (B, H, dk, dv), "(B, H, dk, dv)"),
        ("state.n", n, (B, H, dk), "(B, H, dk)"),
        ("state.m", m, (B, H), "(B, H)"),
    ):
        _tensor(name, x)
        _shape(name, x, shape, what)
        if x.device != device:
            raise ValueError(f"{name}: expected the device of q ({device}), got {x.device}")


def check_options(form, chunk_size, eps):
    """Validate the keyword options of ``mlstm``."""
    if form not in FORMS:
        raise ValueError(f"form: expected one of {FORMS}, got {form!r}")
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
            raise TypeError(f"chunk_size: expected an int >= 1 or None, got {type(chunk_size).__name__}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size: expected an int >= 1 or None, got {chunk_size}")
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps >= 0:
        raise ValueError(f"eps: expected a number >= 0, got {eps!r}")


def check_finite(named):
    """Raise ValueError naming the first tensor in ``named`` ((name, tensor) pairs) holding NaN or inf.

    One host synchronisation for all of them together, then one more per tensor only on failure."""
    tensors = [(n, x) for n, x in named if x is not None]
    ok = torch.stack([torch.isfinite(x).all() for _, x in tensors]).all()
    if bool(ok):
        return
    for name, x in tensors:
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name}: expected finite values, got NaN or inf")

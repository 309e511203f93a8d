"""The mLSTM cell as a function: ``h, state = mlstm(q, k, v, i, f, state)``.

Four implementations of the same function, chosen with ``form``:

- ``recurrent``: one step at a time (``recurrent.py``; ``mlstm_step`` is the generation path);
- ``parallel``: the quadratic form with a causal log-decay matrix (``parallel.py``);
- ``chunkwise``: recurrence between chunks, parallel inside them (``chunkwise.py``);
- ``auto``: the fastest of those for the shape (see ``dispatch.py``).

``reference.py`` holds the plain loop every form is tested against.
"""

from .chunkwise import mlstm_chunkwise
from .dispatch import CHUNK_SIZE, choose_form
from .parallel import mlstm_parallel
from .recurrent import mlstm_recurrent
from .recurrent import mlstm_step as _mlstm_step
from .reference import mlstm_reference
from .state import MLSTMState, zero_state
from .validate import check_finite as _check_finite
from .validate import check_inputs, check_options, check_state

__all__ = ["MLSTMState", "mlstm", "mlstm_reference", "mlstm_step", "zero_state"]


def mlstm(q, k, v, i, f, state=None, *, form="auto", chunk_size=None, eps=1e-6, check_finite=False):
    """The mLSTM cell over a sequence.

    q, k: (B, H, S, dk); v: (B, H, S, dv); i, f: (B, H, S) input and forget gate pre-activations;
    any S >= 1. q is scaled by 1/sqrt(dk) here. ``state``: an MLSTMState (C (B, H, dk, dv),
    n (B, H, dk), m (B, H)) to start from, or None for zeros; its tensors may be any floating dtype
    and are cast to the state dtype.

    Returns h (B, H, S, dv) in v's dtype and the final MLSTMState, fp32 for fp32/bf16/fp16 inputs
    and fp64 for fp64 inputs. Gradients flow to q, k, v, i, f and the initial state.

    q, k, v must share a floating dtype; i and f may be any floating dtype (they are used in the
    state dtype). All arithmetic runs in the state dtype: bf16/fp16 inputs are computed in fp32.

    ``form``: "auto", "parallel", "chunkwise" or "recurrent". ``chunk_size`` applies to the chunkwise
    form, also when "auto" picks it (None: 64, see ``dispatch.py``). ``check_finite=True`` also
    rejects NaN/inf in the inputs and state; it costs a host synchronisation, which is why it is off
    by default.
    """
    B, H, S, dk, dv = check_inputs(q, k, v, i, f)
    check_state(state, B, H, dk, dv, q.device)
    check_options(form, chunk_size, eps)
    if state is not None and not isinstance(state, MLSTMState):
        state = MLSTMState(*state)
    if check_finite:
        named = [("q", q), ("k", k), ("v", v), ("i", i), ("f", f)]
        if state is not None:
            named += [("state.C", state.C), ("state.n", state.n), ("state.m", state.m)]
        _check_finite(named)

    if form == "auto" and q.is_cuda and _kernel_chunk_ok(chunk_size):
        from xlram import kernels  # imports triton only here, for CUDA tensors

        if kernels.usable(q):
            return kernels.mlstm(q, k, v, i, f, state, chunk_size=chunk_size, eps=eps)
    if form == "auto":
        form, auto_chunk = choose_form(S)
        chunk_size = chunk_size or auto_chunk
    if form == "recurrent":
        return mlstm_recurrent(q, k, v, i, f, state, eps=eps)
    if form == "parallel":
        return mlstm_parallel(q, k, v, i, f, state, eps=eps)
    return mlstm_chunkwise(q, k, v, i, f, state, chunk_size=chunk_size or CHUNK_SIZE, eps=eps)


def _kernel_chunk_ok(chunk_size):
    """The Triton kernels take chunks that are powers of two >= 16 (None: their own default)."""
    return chunk_size is None or (chunk_size >= 16 and chunk_size & (chunk_size - 1) == 0)


def mlstm_step(q, k, v, i, f, state=None, *, eps=1e-6):
    """One mLSTM step (generation): q, k (B, H, dk); v (B, H, dv); i, f (B, H); state MLSTMState or None.

    Returns h (B, H, dv) in v's dtype and the new MLSTMState. Metadata checks only: no host sync.
    """
    B, H, _, dk, dv = check_inputs(q, k, v, i, f, seq_dim=False)
    check_state(state, B, H, dk, dv, q.device)
    check_options("recurrent", None, eps)
    if q.is_cuda:
        from xlram import kernels  # the fused Triton step, when triton is installed

        if kernels.usable(q):
            return kernels.mlstm_step(q, k, v, i, f, state, eps=eps)
    return _mlstm_step(q, k, v, i, f, state, eps=eps)


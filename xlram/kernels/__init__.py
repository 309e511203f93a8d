"""Optional accelerators: Triton kernels for the mLSTM and the sLSTM, imported only when used.

Nothing here imports triton at import time; ``import xlram`` and every CPU path work without it.
The kernels are named in a registry and loaded on first use::

    from xlram import kernels
    if kernels.usable(q):                              # triton importable, CUDA tensor, fp32/bf16/fp16
        h, state = kernels.get_kernel("mlstm_chunkwise")(q, k, v, i, f, state)

or through the shorthands ``kernels.mlstm``, ``kernels.mlstm_step`` and ``kernels.slstm``, which take
the arguments of ``xlram.ops.mlstm.mlstm``, ``xlram.ops.mlstm.mlstm_step`` and ``xlram.ops.slstm.slstm``
(plus tile options). With ``TRITON_INTERPRET=1`` set before the first kernel is used they run on CPU
tensors through Triton's interpreter (slow; that is how the tests check them without a GPU).

Registered kernels (each checked against ``xlram.ops.*.reference`` in tests/kernels):

- ``mlstm_chunkwise``: chunkwise mLSTM forward and backward, two-level tiling (TFLA-style), the full
  gradient including the normaliser, any S, initial and final states;
- ``mlstm_step``: one fused mLSTM step for generation;
- ``slstm``: the sLSTM over a sequence, forward and backward, fused over time.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os

KERNELS: dict[str, tuple[str, str]] = {
    "mlstm_chunkwise": ("xlram.kernels.triton.mlstm_chunkwise", "mlstm_chunkwise_triton"),
    "mlstm_step": ("xlram.kernels.triton.mlstm_step", "mlstm_step_triton"),
    "slstm": ("xlram.kernels.triton.slstm", "slstm_triton"),
}

__all__ = [
    "KERNELS", "get_kernel", "interpreting", "mlstm", "mlstm_step", "slstm", "triton_available", "usable",
]


@functools.cache
def triton_available() -> bool:
    """True when triton can be imported (the ``gpu`` extra: ``pip install xlram[gpu]``)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        importlib.import_module("triton.language")
    except Exception:  # a broken install (e.g. a wheel for another platform) counts as absent
        return False
    return True


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1``: kernels run on CPU tensors through Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _dtype_ok(dtype) -> bool:
    import torch

    return dtype in (torch.float32, torch.bfloat16, torch.float16)


def usable(*tensors) -> bool:
    """Whether the Triton kernels can take these tensors: triton importable, every tensor on CUDA
    (or anywhere under the interpreter) and in fp32, bf16 or fp16. Reads metadata only."""
    if not tensors:
        return False
    on_device = all(t.device.type == "cuda" for t in tensors) or interpreting()
    # Metadata first: a CPU tensor never pays for the import of triton.
    return on_device and all(_dtype_ok(t.dtype) for t in tensors) and triton_available()


def get_kernel(name: str):
    """The kernel function registered as ``name`` (see KERNELS); imports triton on first use."""
    if name not in KERNELS:
        raise KeyError(f"name: expected one of {sorted(KERNELS)}, got {name!r}")
    if not triton_available():
        raise ImportError(f"kernel {name!r} needs triton: pip install 'xlram[gpu]' (triton==3.9.0)")
    module, attr = KERNELS[name]
    return getattr(importlib.import_module(module), attr)


def mlstm(q, k, v, i, f, state=None, *, chunk_size=None, eps=1e-6, tile=None, head_tile=None):
    """``xlram.ops.mlstm.mlstm`` with the Triton chunkwise kernels (see ``mlstm_chunkwise_triton``)."""
    return get_kernel("mlstm_chunkwise")(q, k, v, i, f, state, chunk_size=chunk_size, eps=eps, tile=tile,
                                         head_tile=head_tile)


def mlstm_step(q, k, v, i, f, state=None, *, eps=1e-6, out=None):
    """``xlram.ops.mlstm.mlstm_step`` with the fused Triton step kernel (see ``mlstm_step_triton``)."""
    return get_kernel("mlstm_step")(q, k, v, i, f, state, eps=eps, out=out)


def slstm(wx, r, b, state=None, *, forget_gate="sigmoid"):
    """``xlram.ops.slstm.slstm`` with the fused Triton kernels (see ``slstm_triton``)."""
    return get_kernel("slstm")(wx, r, b, state, forget_gate=forget_gate)

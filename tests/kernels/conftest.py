"""Kernel tests run the Triton kernels compiled on a GPU when there is one, and otherwise on CPU
tensors through Triton's interpreter. TRITON_INTERPRET must be set before the kernel modules are
imported (``triton.jit`` reads it when it wraps a function), hence here, at collection."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def kdevice():
    """The device kernel tests run on: CUDA (compiled kernels) or CPU under the interpreter."""
    pytest.importorskip("triton")
    from xlram.kernels import interpreting

    if interpreting():
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    pytest.skip("needs CUDA or TRITON_INTERPRET=1")


def rel_err(a, b):
    """max |a - b| / max |b| (the error relative to the scale of the reference), in fp64."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.fixture
def check():
    """check(name, got, want, tol): assert rel_err(got, want) <= tol with a message naming the tensor."""

    def _check(name, got, want, tol):
        assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        err = rel_err(got, want)
        assert err <= tol, f"{name}: max|Δ|/max|ref| = {err:.2e} > {tol:.0e}"

    return _check

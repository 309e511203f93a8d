"""xlram.ops.mlstm.scan_cpu: the compiled scan over chunks equals the torch loop, both directions."""

import pytest
import torch

from xlram.ops.mlstm import scan_cpu

pytest.importorskip("numba")


def _reference(terms, w, start, reverse):
    """The recurrence written out with Python indexing."""
    NC = terms.shape[2]
    wx = w.view(*w.shape, *([1] * (terms.dim() - 3)))
    states = [None] * NC
    x = start
    for c in (range(NC - 1, -1, -1) if reverse else range(NC)):
        states[c] = x
        x = wx[:, :, c] * x + terms[:, :, c]
    return torch.stack(states, 2), x


@pytest.mark.parametrize("inner", [(), (3,), (3, 5)])
@pytest.mark.parametrize("NC", [1, 2, 7])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_scan_equals_the_recurrence_and_the_torch_loop(inner, NC, reverse, dtype):
    g = torch.Generator().manual_seed(NC)
    terms = torch.randn(2, 3, NC, *inner, generator=g, dtype=dtype)
    w = torch.rand(2, 3, NC, generator=g, dtype=dtype)
    start = torch.randn(2, 3, *inner, generator=g, dtype=dtype)
    want_states, want_end = _reference(terms, w, start, reverse)
    assert scan_cpu._KERNEL.get() is not None
    states, end = scan_cpu.scan(terms, w, start, reverse)
    loop_states, loop_end = scan_cpu._scan_torch(terms, w, start, torch.empty_like(terms), reverse)
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-13, "atol": 1e-13}
    for got in ((states, end), (loop_states, loop_end)):
        torch.testing.assert_close(got[0], want_states, **tol)
        torch.testing.assert_close(got[1], want_end, **tol)


def test_strided_inputs_and_the_torch_fallback(monkeypatch):
    g = torch.Generator().manual_seed(0)
    terms = torch.randn(3, 2, 4, 6, generator=g).transpose(0, 1)  # not contiguous
    w = torch.rand(2, 3, 4, generator=g)
    start = torch.randn(3, 2, 6, generator=g).transpose(0, 1)
    want = _reference(terms, w, start, False)
    got = scan_cpu.scan(terms, w, start)
    monkeypatch.setenv("XLRAM_NUMBA", "0")
    fallback = scan_cpu.scan(terms, w, start)
    for a, b, c in zip(got, fallback, want, strict=True):
        torch.testing.assert_close(a, c)
        torch.testing.assert_close(b, c)

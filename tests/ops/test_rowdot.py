"""xlram.ops.rowdot against (x * y).sum over the last dims."""

import pytest
import torch

from xlram.ops.rowdot import rowdot


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("shape", "dims"), [((3, 5, 7), 1), ((2, 3, 4, 6), 2), ((9,), 1), ((4, 33), 2)])
def test_matches_torch(dtype, shape, dims):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)
    want = (x.double() * y.double()).sum(tuple(range(x.dim() - dims, x.dim())))
    got = rowdot(x, y, dims)
    assert got.dtype == dtype and got.shape == want.shape
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


def test_strided_inputs_and_the_torch_fallback(monkeypatch):
    x = torch.randn(6, 8, 5).transpose(0, 1)  # not contiguous
    y = torch.randn(8, 6, 5)
    want = (x * y).sum(-1)
    torch.testing.assert_close(rowdot(x, y), want)
    monkeypatch.setenv("XLRAM_NUMBA", "0")
    torch.testing.assert_close(rowdot(x, y), want)


def test_scratch_x_is_overwritten_only_by_the_torch_form(monkeypatch):
    x, y = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    want = (x * y).sum((-2, -1))
    x0 = x.clone()
    torch.testing.assert_close(rowdot(x, y, dims=2, x_is_scratch=True), want)
    assert torch.equal(x, x0)  # the compiled form reads x only
    monkeypatch.setenv("XLRAM_NUMBA", "0")
    torch.testing.assert_close(rowdot(x, y, dims=2, x_is_scratch=True), want)


def test_gradients_flow_through_the_torch_form():
    x = torch.randn(4, 3, requires_grad=True)
    y = torch.randn(4, 3)
    rowdot(x, y).sum().backward()
    torch.testing.assert_close(x.grad, y)


def test_bad_arguments():
    with pytest.raises(ValueError, match="one shape"):
        rowdot(torch.ones(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="dims"):
        rowdot(torch.ones(2, 3), torch.ones(2, 3), dims=3)

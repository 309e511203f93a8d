"""xlram.ops.mlstm.rows: each compiled row-wise pass equals its torch form."""

import pytest
import torch

from xlram.ops.mlstm import rows

pytest.importorskip("numba")

B, H, NC, L, DK, DV = 2, 3, 4, 5, 6, 7


def _tol(dtype):
    return {"rtol": 3e-6, "atol": 3e-6} if dtype == torch.float32 else {"rtol": 1e-13, "atol": 1e-13}


def _randn(*shape, dtype, g):
    return torch.randn(*shape, generator=g, dtype=dtype)


def _both(fn, make, dtype, monkeypatch):
    """fn on fresh inputs from make(), compiled, then as torch ops: both results and both inputs."""
    assert rows._compiled(torch.zeros(1, dtype=dtype)) is not None
    a_in, b_in = make(), make()
    got = fn(*a_in)
    with monkeypatch.context() as m:
        m.setenv("XLRAM_NUMBA", "0")
        want = fn(*b_in)
    return got, want, a_in, b_in


def _close(got, want, dtype):
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_keys(dtype, monkeypatch):
    g = torch.Generator().manual_seed(0)
    k, e = _randn(B, H, NC, L, DK, dtype=dtype, g=g), torch.rand(B, H, NC, L, generator=g, dtype=dtype)
    got, want, _, _ = _both(rows.keys, lambda: (k, e), dtype, monkeypatch)
    _close(got, want, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs(dtype, monkeypatch):
    g = torch.Generator().manual_seed(1)
    num, QC = _randn(B, H, NC, L, DV, dtype=dtype, g=g), _randn(B, H, NC, L, DV, dtype=dtype, g=g)
    q, nst = _randn(B, H, NC, L, DK, dtype=dtype, g=g), _randn(B, H, NC, DK, dtype=dtype, g=g)
    w0, psum = torch.rand(B, H, NC, L, generator=g, dtype=dtype), _randn(B, H, NC, L, dtype=dtype, g=g)
    mrow = _randn(B, H, NC, L, dtype=dtype, g=g) * 3  # exp(-mrow) above |qn| in some rows
    got, want, _, _ = _both(rows.outputs, lambda: (num.clone(), QC.clone(), q, nst, w0, psum, mrow, 1e-6),
                            dtype, monkeypatch)
    _close(got, want, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("expanded", [False, True])
def test_grad_outputs(dtype, expanded, monkeypatch):
    g = torch.Generator().manual_seed(2)
    h = _randn(B, H, NC, L, DV, dtype=dtype, g=g)
    den = torch.rand(B, H, NC, L, generator=g, dtype=dtype) + 0.5
    qn, mrow = _randn(B, H, NC, L, dtype=dtype, g=g), _randn(B, H, NC, L, dtype=dtype, g=g)
    # ties and signs: |qn| == exp(-mrow) (mrow 0, qn ±1) and qn == 0
    qn[0, 0, 0, :3] = torch.tensor([1.0, -1.0, 0.0], dtype=dtype)
    mrow[0, 0, 0, :3] = 0.0
    dh = _randn(B, H, NC, L, DV, dtype=dtype, g=g)
    if expanded:  # the gradient of h.sum()
        dh = torch.ones((), dtype=dtype).expand(B, H, NC, L, DV)
    got, want, _, _ = _both(rows.grad_outputs, lambda: (dh, h, den, qn, mrow), dtype, monkeypatch)
    _close(got, want, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grad_queries(dtype, monkeypatch):
    g = torch.Generator().manual_seed(3)
    X, dnum = _randn(B, H, NC, L, DK, dtype=dtype, g=g), _randn(B, H, NC, L, DV, dtype=dtype, g=g)
    dqn, w0 = _randn(B, H, NC, L, dtype=dtype, g=g), torch.rand(B, H, NC, L, generator=g, dtype=dtype)
    nst, q = _randn(B, H, NC, DK, dtype=dtype, g=g), _randn(B, H, NC, L, DK, dtype=dtype, g=g)
    got, want, a_in, b_in = _both(rows.grad_queries, lambda: (X.clone(), dqn, nst, q, w0, dnum.clone()),
                                  dtype, monkeypatch)
    _close((got, a_in[0], a_in[5]), (want, b_in[0], b_in[5]), dtype)  # dlw0 and the in-place X, dnum


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grad_keys(dtype, monkeypatch):
    g = torch.Generator().manual_seed(4)
    T1, dk = _randn(B, H, NC, L, DK, dtype=dtype, g=g), _randn(B, H, NC, L, DK, dtype=dtype, g=g)
    dnn, k = _randn(B, H, NC, DK, dtype=dtype, g=g), _randn(B, H, NC, L, DK, dtype=dtype, g=g)
    e = torch.rand(B, H, NC, L, generator=g, dtype=dtype)
    make = lambda: (T1.clone(), dnn, k, e, dk.clone())  # noqa: E731
    got, want, a_in, b_in = _both(rows.grad_keys, make, dtype, monkeypatch)
    _close((*got, a_in[0], a_in[4]), (*want, b_in[0], b_in[4]), dtype)  # da, ke and the in-place T1, dk

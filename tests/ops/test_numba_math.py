"""xlram.ops.numba_math against numpy's fp64 functions, elementwise over wide ranges."""

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from xlram.ops import numba_math as nm  # noqa: E402


def _over(fn):
    """fn applied elementwise inside a compiled loop (the way the kernels call it)."""

    @numba.njit
    def apply(x):
        out = np.empty(x.shape[0], dtype=np.float64)
        for i in range(x.shape[0]):
            out[i] = fn(x[i])
        return out

    return apply


def _ulps(got, want):
    """Error in units of the last place of ``want`` (fp64)."""
    return np.abs(got - want) / np.spacing(np.maximum(np.abs(want), np.finfo(np.float64).tiny))


def _points(lo, hi, n=20001):
    rng = np.random.default_rng(0)
    grid = np.linspace(lo, hi, n)
    return np.concatenate([grid, rng.uniform(lo, hi, n), [lo, hi, 0.0, -0.0, -1e-300, -1e-9]])


REFERENCE = {
    "exp_neg": (lambda x: np.exp(x), -700.0, 0.0),
    "expm1_neg": (lambda x: np.expm1(x), -700.0, 0.0),
    "sigmoid": (lambda x: 1 / (1 + np.exp(-x)), -700.0, 700.0),
    "silu": (lambda x: x / (1 + np.exp(-x)), -700.0, 700.0),
    "tanh": (np.tanh, -40.0, 40.0),
    "log_sigmoid": (lambda x: -np.logaddexp(0.0, -x), -700.0, 700.0),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_within_a_few_ulp_of_numpy(name):
    ref, lo, hi = REFERENCE[name]
    x = _points(lo, hi)
    x = x[(x >= lo) & (x <= hi)]
    got, want = _over(getattr(nm, name))(x), ref(x)
    assert np.all(np.isfinite(got))
    assert _ulps(got, want).max() <= 4, name


def test_log1p_unit_on_its_range():
    u = _points(0.0, 1.0)
    u = u[(u >= 0) & (u <= 1)]
    assert _ulps(_over(nm.log1p_unit)(u), np.log1p(u)).max() <= 4


def test_near_zero_keeps_relative_accuracy():
    x = -np.logspace(-300, -1, 2000)
    assert _ulps(_over(nm.expm1_neg)(x), np.expm1(x)).max() <= 4
    t = np.concatenate([x, -x])
    assert _ulps(_over(nm.tanh)(t), np.tanh(t)).max() <= 4


def test_limits():
    f = _over(nm.exp_neg)
    assert f(np.array([-709.0, -1e4, -np.inf])).tolist() == [0.0, 0.0, 0.0]  # below fp64's normal range: 0
    s = _over(nm.sigmoid)(np.array([-1e4, 1e4, np.inf, -np.inf]))
    assert s.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert _over(nm.tanh)(np.array([1e4, -1e4])).tolist() == [1.0, -1.0]


@pytest.mark.parametrize("name", sorted(REFERENCE) + ["log1p_unit"])
def test_nan_propagates(name):
    out = _over(getattr(nm, name))(np.array([np.nan, -np.nan]))
    assert np.isnan(out).all(), name


def test_fp32_arguments_compute_in_fp64():
    x32 = np.linspace(-30, 30, 1001).astype(np.float32)
    got = _over(nm.silu)(x32)
    want = x32.astype(np.float64) / (1 + np.exp(-x32.astype(np.float64)))
    assert _ulps(got, want).max() <= 4


def test_silu_like_is_fp32_silu_within_3_ulp_and_fp64_silu_for_fp64():
    @numba.njit
    def apply(x):
        out = np.empty_like(x)
        for i in range(x.shape[0]):
            out[i] = nm.silu_like(x[i])
        return out

    x32 = _points(-100.0, 100.0).astype(np.float32)
    want = x32.astype(np.float64) / (1 + np.exp(-x32.astype(np.float64)))
    got = apply(x32)
    assert got.dtype == np.float32
    big = np.abs(want) > 1e-30  # below, fp32 is subnormal and the last place means little
    assert (np.abs(got - want) / np.spacing(np.abs(want).astype(np.float32)))[big].max() <= 3
    assert np.abs(got[~big]).max() <= 1e-30
    assert np.isnan(apply(np.array([np.nan], np.float32)))[0]
    x64 = _points(-700.0, 700.0)
    np.testing.assert_array_equal(apply(x64), _over(nm.silu)(x64))

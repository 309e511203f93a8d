"""xlram.ops.blas_numba: OpenBLAS's gemm called from numba code, every transpose, both dtypes."""

import numpy as np
import pytest
import torch

from xlram.ops import cpu_blas

numba = pytest.importorskip("numba")
pytestmark = pytest.mark.skipif(not cpu_blas.available(), reason="no OpenBLAS loaded")


def _kernel():
    from xlram.ops.blas_numba import gemm

    @numba.njit
    def product(fn, a, b, c, trans_a, trans_b, alpha, beta):
        m, n = c.shape
        k = a.shape[0] if trans_a else a.shape[1]
        gemm(fn, trans_a, trans_b, m, n, k, alpha, a, a.shape[1], b, b.shape[1], beta, c, c.shape[1])

    return product


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_gemm_equals_numpy(dtype, trans_a, trans_b, beta):
    fn = cpu_blas.gemm_address(dtype)
    assert fn != 0
    dt = np.float32 if dtype == torch.float32 else np.float64
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 3) if trans_a else (3, 5)).astype(dt)
    b = rng.standard_normal((4, 5) if trans_b else (5, 4)).astype(dt)
    c0 = rng.standard_normal((3, 4)).astype(dt)
    c = c0.copy() if beta else np.full((3, 4), np.nan, dt)  # beta 0: C's contents are not read
    _kernel()(fn, a, b, c, trans_a, trans_b, dt(2.0), dt(beta))
    want = 2.0 * (a.T if trans_a else a) @ (b.T if trans_b else b) + beta * c0
    np.testing.assert_allclose(c, want, rtol=1e-5 if dt == np.float32 else 1e-12, atol=1e-5)


def test_no_address_for_other_dtypes():
    assert cpu_blas.gemm_address(torch.bfloat16) == 0

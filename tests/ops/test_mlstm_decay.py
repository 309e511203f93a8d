"""xlram.ops.mlstm.decay: the compiled decay passes equal the torch form, forward and backward."""

import pytest
import torch

from xlram.ops.mlstm import decay

pytest.importorskip("numba")


def _inputs(NC, L, dtype, ties, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, H = 2, 3
    if ties:  # every log decay 0 and every input gate equal: rows of D and the chunk ends tie everywhere
        logf = torch.zeros(B, H, NC, L, dtype=dtype)
        i = torch.full((B, H, NC, L), 0.5, dtype=dtype)
        m0 = torch.full((B, H), 0.5, dtype=dtype)
    else:
        logf = torch.nn.functional.logsigmoid(torch.randn(B, H, NC, L, generator=g, dtype=dtype) + 2)
        i = torch.randn(B, H, NC, L, generator=g, dtype=dtype) * 2
        m0 = torch.randn(B, H, generator=g, dtype=dtype)
    S = torch.randn(B, H, NC, L, L, generator=g, dtype=dtype)
    return logf, i, m0, S


def _tol(dtype):
    return {"rtol": 2e-6, "atol": 2e-6} if dtype == torch.float32 else {"rtol": 1e-13, "atol": 1e-13}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("NC", "L"), [(1, 1), (3, 5), (2, 16)])
@pytest.mark.parametrize("ties", [False, True])
def test_compiled_forward_equals_torch(dtype, NC, L, ties):
    logf, i, m0, S = _inputs(NC, L, dtype, ties)
    assert decay._compiled(logf) is not None
    ends_c = decay.chunk_ends(logf, i, m0)
    ends_t = decay._ends_torch(logf, i, m0)
    assert ends_c.D is None and ends_t.D is not None
    for name in ("b", "ms", "wold", "wo", "e"):
        torch.testing.assert_close(getattr(ends_c, name), getattr(ends_t, name), **_tol(dtype), msg=name)
    assert torch.equal(ends_c.ja, ends_t.ja)
    got = decay.chunk_weights(S.clone(), logf, i, ends_c, 0.3)
    want = decay.chunk_weights(S.clone(), logf, i, ends_t, 0.3)
    for name, a, b in zip(("P", "W", "psum", "mrow", "jD", "wstate", "w0"), got, want, strict=True):
        if name == "jD":
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, **_tol(dtype), msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("NC", "L"), [(1, 1), (3, 5), (2, 16)])
@pytest.mark.parametrize("ties", [False, True])
def test_compiled_backward_equals_torch(dtype, NC, L, ties):
    logf, i, m0, S = _inputs(NC, L, dtype, ties)
    P, W, _, _, jD, wstate, _ = decay.chunk_weights(S, logf, i, decay._ends_torch(logf, i, m0), 0.3)
    g = torch.Generator().manual_seed(1)
    dP = torch.randn(P.shape, generator=g, dtype=dtype)
    dqn, dmrow, dlw0 = (torch.randn(jD.shape, generator=g, dtype=dtype) for _ in range(3))
    got = decay.weights_backward(dP.clone(), dqn, W, P, jD, wstate, dmrow, dlw0)
    want = decay._backward_torch(dP.clone(), dqn, W, P, jD, wstate, dmrow.clone(), dlw0)
    for name, a, b in zip(("dS", "di", "db", "dm_loc"), got, want, strict=True):
        torch.testing.assert_close(a, b, **_tol(dtype), msg=name)


def test_torch_form_without_numba(monkeypatch):
    logf, i, m0, S = _inputs(3, 5, torch.float64, False)
    compiled = decay.chunk_weights(S.clone(), logf, i, decay.chunk_ends(logf, i, m0), 0.3)
    monkeypatch.setenv("XLRAM_NUMBA", "0")
    ends = decay.chunk_ends(logf, i, m0)
    assert ends.D is not None
    for a, b in zip(decay.chunk_weights(S.clone(), logf, i, ends, 0.3), compiled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)

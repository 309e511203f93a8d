"""xlram.ops.mlstm.chunk_loop_cpu: the compiled loop over chunks equals the batched chunkwise form,
forward and backward, with and without gradients."""

import pytest
import torch

from xlram.ops import cpu_blas
from xlram.ops.mlstm import chunk_loop_cpu, mlstm
from xlram.ops.mlstm.state import MLSTMState

pytest.importorskip("numba")


def _applies():
    return chunk_loop_cpu.applies(torch.zeros(1))


pytestmark = pytest.mark.skipif(
    cpu_blas.chosen() != "openblas", reason="the compiled loop runs where OpenBLAS was chosen")


def _inputs(B, H, S, dk, dv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, S, dk, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, H, S, dv, generator=g, dtype=dtype)
    i = torch.randn(B, H, S, generator=g, dtype=dtype)
    f = torch.randn(B, H, S, generator=g, dtype=dtype) + 2.0
    state = MLSTMState(torch.randn(B, H, dk, dv, generator=g, dtype=dtype),
                       torch.randn(B, H, dk, generator=g, dtype=dtype).abs(),
                       torch.randn(B, H, generator=g, dtype=dtype))
    return [q, k, v, i, f], state


def _run(xs, state, chunk, grad):
    xs = [x.clone().requires_grad_(grad) for x in xs]
    st = MLSTMState(*(t.clone().requires_grad_(grad) for t in state))
    with torch.set_grad_enabled(grad):
        h, end = mlstm(*xs, st, form="chunkwise", chunk_size=chunk)
    out = [h.detach(), *(t.detach() for t in end)]
    if grad:
        g = torch.Generator().manual_seed(9)
        weights = torch.randn(h.shape, generator=g, dtype=h.dtype)
        ((h * weights).sum() + end.C.sum() + end.n.sum() + end.m.sum()).backward()
        out += [x.grad for x in xs] + [t.grad for t in st]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("B", "H", "S", "dk", "dv", "chunk"),
                         [(1, 4, 256, 32, 32, 64), (2, 3, 100, 8, 12, 16), (1, 1, 16, 4, 4, 16)])
@pytest.mark.parametrize("grad", [True, False])
def test_compiled_loop_equals_batched_form(dtype, B, H, S, dk, dv, chunk, grad, monkeypatch):
    assert _applies()
    xs, state = _inputs(B, H, S, dk, dv, dtype)
    got = _run(xs, state, chunk, grad)
    monkeypatch.setattr(chunk_loop_cpu, "applies", lambda x: False)
    want = _run(xs, state, chunk, grad)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_long_sequence_without_gradients_runs_whole(monkeypatch):
    """Without gradients the batched form runs in segments; the loop runs whole, to the same result."""
    xs, state = _inputs(1, 2, 64 * 40, 8, 8, torch.float64)
    got = _run(xs, state, 64, False)
    monkeypatch.setattr(chunk_loop_cpu, "applies", lambda x: False)
    for a, b in zip(got, _run(xs, state, 64, False), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_where_it_runs(monkeypatch):
    assert not chunk_loop_cpu.applies(torch.zeros(1, dtype=torch.bfloat16))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # products stay in torch, the loop runs
    assert cpu_blas.route() == "torch" and _applies()
    monkeypatch.setitem(cpu_blas._load(), "route", "torch")  # where the race chose torch's BLAS
    assert not _applies()

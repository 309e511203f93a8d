"""xlram.nn.Linear / linear: the OpenBLAS route gives F.linear's outputs and gradients."""

import pytest
import torch
import torch.nn.functional as F

from xlram.nn import Linear
from xlram.nn.dense import _one_row_numba, _uses_blas, linear
from xlram.ops import cpu_blas


def _grads(fn, x, w, b, dy):
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    b = None if b is None else b.detach().requires_grad_()
    y = fn(x, w, b)
    y.backward(dy)
    return [y] + [t.grad for t in (x, w, b) if t is not None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5,), (3, 7, 5), (1, 1, 5)])
def test_matches_f_linear(dtype, bias, shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, dtype=dtype, generator=gen)
    w = torch.randn(4, 5, dtype=dtype, generator=gen)
    b = torch.randn(4, dtype=dtype, generator=gen) if bias else None
    dy = torch.randn(*shape[:-1], 4, dtype=dtype, generator=gen)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for got, want in zip(_grads(linear, x, w, b, dy), _grads(F.linear, x, w, b, dy), strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    with torch.no_grad():
        torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b), rtol=tol, atol=tol)


def test_strided_input_and_transposed_gradient():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 10, generator=gen)[:, ::2]  # no unit stride
    w, b = torch.randn(3, 5, generator=gen), torch.randn(3, generator=gen)
    dy = torch.randn(3, 6, generator=gen).t()  # a transposed upstream gradient
    for got, want in zip(_grads(linear, x, w, b, dy), _grads(F.linear, x, w, b, dy), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_module_is_nn_linear_with_the_same_state():
    torch.manual_seed(0)
    ours = Linear(5, 4)
    plain = torch.nn.Linear(5, 4)
    plain.load_state_dict(ours.state_dict())
    assert isinstance(ours, torch.nn.Linear) and set(ours.state_dict()) == {"weight", "bias"}
    x = torch.randn(2, 5)
    torch.testing.assert_close(ours(x), plain(x))


def test_where_it_applies():
    x, w = torch.randn(2, 5), torch.randn(4, 5)
    assert _uses_blas(x, w, None) == (cpu_blas.route() == "openblas")
    assert not _uses_blas(x[:1], w, None)  # one row: F.linear
    assert not _uses_blas(x.bfloat16(), w.bfloat16(), None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _uses_blas(x, w, None)
        assert linear(x, w).dtype == torch.bfloat16  # autocast still applies through F.linear


def test_one_row_without_grad_is_a_numba_gemv():
    """One row that needs no gradient goes to the numba GEMV (tests run torch on one thread), and it
    gives F.linear's result; a row that needs a gradient, a transposed weight or torch on two threads
    do not take it."""
    x, w, b = torch.randn(1, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64), torch.randn(4)
    assert _one_row_numba(x, w, None) is not None
    assert _one_row_numba(x.requires_grad_(), w, None) is None
    x = x.detach()
    assert _one_row_numba(x, w.t().contiguous().t(), None) is None  # not contiguous
    assert _one_row_numba(x, w, b) is None  # bias of another dtype
    with torch.no_grad():
        assert _one_row_numba(x, w.requires_grad_(), None) is not None
        want = F.linear(x, w, b.double())
        torch.testing.assert_close(linear(x, w, b.double()), want, rtol=1e-12, atol=1e-12)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert _one_row_numba(x, w.detach(), None) is None
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(cpu_blas.route() != "openblas", reason="products are torch's here")
def test_double_backward_is_refused():
    x = torch.randn(2, 5, requires_grad=True)
    w = torch.randn(4, 5, requires_grad=True)
    (g,) = torch.autograd.grad(linear(x, w).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


def test_one_row_under_torch_compile_is_traced_as_f_linear():
    """Under torch.compile a single row is F.linear, decided before anything dynamo would guard on
    (torch's thread count): with the guards skipped, as the compiled generation step runs, a later
    call must not recompile."""
    gen = torch.Generator().manual_seed(6)
    x, w = torch.randn(1, 16, generator=gen), torch.randn(8, 16, generator=gen)
    fn = torch.compile(lambda x, w: linear(x, w), fullgraph=True, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(fn(x, w), F.linear(x, w))
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            torch.testing.assert_close(fn(x * 2, w), F.linear(x * 2, w))

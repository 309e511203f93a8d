"""The numba block-diagonal maps (``xlram.ops.headwise``) against the block einsum, and the mLSTM
layer with them against the layer without them (torch grouped matmuls), values and gradients."""

import pytest
import torch

from xlram.layers import MLSTMLayer
from xlram.ops import headwise

f64 = torch.float64
pytest.importorskip("numba")


def _reference(x, w, seg):
    """x (B, S, C), w (M, NB, bs, bs) -> M outputs (B, C/seg, S, seg) by an einsum over the blocks."""
    B, S, C = x.shape
    M, NB, bs, _ = w.shape
    y = torch.einsum("mhpq,bshq->mbshp", w, x.view(B, S, NB, bs)).reshape(M, B, S, C // seg, seg)
    return tuple(y.permute(0, 1, 3, 2, 4).unbind(0))


@pytest.mark.parametrize("dtype", [f64, torch.float32])
@pytest.mark.parametrize(("M", "bs", "C", "seg"), [(2, 4, 64, 16), (1, 4, 64, 64), (2, 2, 24, 8),
                                                     (1, 8, 48, 24), (2, 16, 64, 32), (1, 1, 12, 3)])
def test_values_and_gradients_equal_the_block_einsum(dtype, M, bs, C, seg):
    g = torch.Generator().manual_seed(M * 100 + bs)
    x = torch.randn(3, 7, C, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(M, C // bs, bs, bs, generator=g, dtype=dtype, requires_grad=True)
    assert headwise.applies(x, w, seg)
    ys = headwise.headwise_heads(x, w, seg)
    refs = _reference(x, w, seg)
    tol = 1e-12 if dtype == f64 else 2e-5
    assert len(ys) == M
    for y, r in zip(ys, refs, strict=True):
        assert y.shape == (3, C // seg, 7, seg) and y.is_contiguous()
        assert (y - r).abs().max() <= tol
    dys = [torch.randn(y.shape, generator=g, dtype=dtype) for y in ys]
    got = torch.autograd.grad(ys, (x, w), dys)
    want = torch.autograd.grad(refs, (x, w), dys)
    for a, b in zip(got, want, strict=True):
        assert (a - b).abs().max() <= tol * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("dtype", [f64, torch.float32])
@pytest.mark.parametrize("G", [1, 8])
def test_the_dense_side_output(dtype, G):
    """``side``: x @ sideᵀ from the same pass, with the block outputs; values and every gradient."""
    g = torch.Generator().manual_seed(G)
    x = torch.randn(2, 9, 32, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(2, 8, 4, 4, generator=g, dtype=dtype, requires_grad=True)
    side = torch.randn(G, 32, generator=g, dtype=dtype, requires_grad=True)
    q, k, gates = headwise.headwise_heads(x, w, 16, side)
    refs = (*_reference(x, w, 16), x @ side.t())
    tol = 1e-12 if dtype == f64 else 2e-5
    assert gates.shape == (2, 9, G)
    for y, r in zip((q, k, gates), refs, strict=True):
        assert (y - r).abs().max() <= tol * max(1.0, r.abs().max().item())
    ds = [torch.randn(y.shape, generator=g, dtype=dtype) for y in (q, k, gates)]
    got = torch.autograd.grad((q, k, gates), (x, w, side), ds, retain_graph=True)
    want = torch.autograd.grad(refs, (x, w, side), ds, retain_graph=True)
    for a, b in zip(got, want, strict=True):
        assert (a - b).abs().max() <= tol * max(1.0, b.abs().max().item())
    only_side = torch.autograd.grad(gates, (x, side), ds[2])  # the block outputs unused
    want_side = torch.autograd.grad(refs[2], (x, side), ds[2])
    for a, b in zip(only_side, want_side, strict=True):
        assert (a - b).abs().max() <= tol * max(1.0, b.abs().max().item())


def test_an_unused_output_and_a_transposed_gradient():
    """Only k is used (q's gradient is None), and k's gradient arrives non-contiguous."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 32, generator=g, dtype=f64, requires_grad=True)
    w = torch.randn(2, 8, 4, 4, generator=g, dtype=f64, requires_grad=True)
    _, k = headwise.headwise_heads(x, w, 16)
    _, k_ref = _reference(x, w, 16)
    d = torch.randn(2, 16, 5, 2, generator=g, dtype=f64).transpose(1, 3)  # (2, 2, 5, 16), strided
    got = torch.autograd.grad(k, (x, w), d)
    want = torch.autograd.grad(k_ref, (x, w), d)
    for a, b in zip(got, want, strict=True):
        assert (a - b).abs().max() <= 1e-12


def test_gradcheck():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 8, generator=g, dtype=f64, requires_grad=True)
    w = torch.randn(2, 2, 4, 4, generator=g, dtype=f64, requires_grad=True)
    side = torch.randn(3, 8, generator=g, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: headwise.headwise_heads(a, b, 4), (x, w))
    assert torch.autograd.gradcheck(lambda a, b, c: headwise.headwise_heads(a, b, 4, c), (x, w, side))


def test_applies_only_where_the_kernel_is_right(monkeypatch):
    x = torch.randn(2, 3, 16)
    w = torch.randn(2, 4, 4, 4)
    assert headwise.applies(x, w, 8)
    assert not headwise.applies(x.double(), w, 8)  # mixed dtypes
    assert not headwise.applies(x.half(), w.half(), 8)
    assert not headwise.applies(x, torch.randn(3, 4, 4, 4), 8)  # more than two weight sets
    assert not headwise.applies(x, torch.randn(1, 2, 8, 4), 8)  # blocks not square
    assert not headwise.applies(x, w, 6)  # segment not a multiple of the block
    assert not headwise.applies(x[0], w, 8)  # not (B, S, C)
    assert not headwise.applies(torch.randn(2, 3, 64), torch.randn(1, 2, 32, 32), 32)  # wide blocks
    monkeypatch.setenv("XLRAM_NUMBA", "0")
    assert not headwise.applies(x, w, 8)


@pytest.mark.parametrize("bias", [False, True])
def test_mlstm_layer_with_and_without_the_numba_maps(bias, monkeypatch):
    """The layer's training forward takes q, k, v from the numba maps in the cell's layout; with numba
    switched off it runs the grouped matmuls and transposes. Same outputs, state and gradients."""
    torch.manual_seed(3)
    layer = MLSTMLayer(32, num_heads=2, bias=bias).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(3, 40, 32, dtype=f64, requires_grad=True)
    params = [x, *layer.parameters()]
    assert layer._heads_qkv(torch.randn(3, 40, 64, dtype=f64), torch.randn(3, 40, 64, dtype=f64)) is not None
    y_fast, s_fast = layer(x)
    fast = torch.autograd.grad(y_fast.square().sum(), params)
    monkeypatch.setenv("XLRAM_NUMBA", "0")
    assert layer._heads_qkv(torch.randn(3, 40, 64, dtype=f64), torch.randn(3, 40, 64, dtype=f64)) is None
    y_plain, s_plain = layer(x)
    plain = torch.autograd.grad(y_plain.square().sum(), params)
    assert (y_fast - y_plain).abs().max() <= 1e-12
    assert (s_fast.cell.C - s_plain.cell.C).abs().max() <= 1e-12
    for a, b in zip(fast, plain, strict=True):
        assert (a - b).abs().max() <= 1e-10

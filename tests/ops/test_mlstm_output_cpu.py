"""The mLSTM output path in numba (``xlram.ops.mlstm.output_cpu``) against its torch form, values and
every gradient, and the layer with it against the layer without it."""

import pytest
import torch
import torch.nn.functional as F

from xlram.layers import MLSTMLayer
from xlram.ops.mlstm import output_cpu

f64 = torch.float64
pytest.importorskip("numba")


def _torch_form(h, xc, g, w, b, skip, eps):
    B, NH, S, DH = h.shape
    n = F.layer_norm(h.transpose(1, 2), (DH,), eps=eps).reshape(B, S, NH * DH)
    if w is not None:
        n = n * w
    if b is not None:
        n = n + b
    return (n + skip * xc) * g


@pytest.mark.parametrize("dtype", [f64, torch.float32])
@pytest.mark.parametrize(("weight", "bias"), [(True, False), (True, True), (False, False), (False, True)])
def test_values_and_gradients_equal_the_torch_form(dtype, weight, bias):
    g = torch.Generator().manual_seed(int(weight) * 2 + int(bias))
    B, NH, S, DH = 2, 3, 5, 8
    D = NH * DH
    mk = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype, requires_grad=True)  # noqa: E731
    h, xc, gate, skip = mk(B, NH, S, DH), mk(B, S, D), mk(B, S, D), mk(D)
    w = mk(D) if weight else None
    b = mk(D) if bias else None
    assert output_cpu.applies(h, xc, gate, w, b, skip)
    y = output_cpu.fused_output(h, xc, gate, w, b, skip, 1e-5)
    ref = _torch_form(h, xc, gate, w, b, skip, 1e-5)
    tol = 1e-12 if dtype == f64 else 3e-5
    assert (y - ref).abs().max() <= tol
    inputs = [t for t in (h, xc, gate, w, b, skip) if t is not None]
    dy = torch.randn(y.shape, generator=g, dtype=dtype)
    got = torch.autograd.grad(y, inputs, dy)
    want = torch.autograd.grad(ref, inputs, dy)
    for a, r in zip(got, want, strict=True):
        assert (a - r).abs().max() <= tol * max(1.0, r.abs().max().item())


def test_gradcheck():
    g = torch.Generator().manual_seed(5)
    mk = lambda *shape: torch.randn(*shape, generator=g, dtype=f64, requires_grad=True)  # noqa: E731
    args = (mk(1, 2, 3, 4), mk(1, 3, 8), mk(1, 3, 8), mk(8), mk(8), mk(8))
    assert torch.autograd.gradcheck(lambda *a: output_cpu.fused_output(*a, 1e-5), args)


def test_applies_needs_one_cpu_float_dtype(monkeypatch):
    h, x = torch.randn(1, 2, 3, 4), torch.randn(1, 3, 8)
    assert output_cpu.applies(h, x, None)
    assert not output_cpu.applies(h, x.double())
    assert not output_cpu.applies(h.bfloat16(), x.bfloat16())
    monkeypatch.setenv("XLRAM_NUMBA", "0")
    assert not output_cpu.applies(h, x)


def test_layer_with_and_without_the_numba_output(monkeypatch):
    torch.manual_seed(4)
    layer = MLSTMLayer(32, num_heads=2).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(3, 40, 32, dtype=f64, requires_grad=True)
    params = [x, *layer.parameters()]
    y_fast, _ = layer(x)
    fast = torch.autograd.grad(y_fast.square().sum(), params)
    monkeypatch.setattr(output_cpu, "applies", lambda *a: False)
    y_plain, _ = layer(x)
    plain = torch.autograd.grad(y_plain.square().sum(), params)
    assert (y_fast - y_plain).abs().max() <= 1e-12
    for a, b in zip(fast, plain, strict=True):
        assert (a - b).abs().max() <= 1e-10

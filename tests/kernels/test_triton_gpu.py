"""Full-size checks of the compiled kernels on a GPU (the TFLA setting: bf16, 16 heads, dk 128,
dv 256). Run with ``pytest -m gpu``; skipped without CUDA."""

import pytest
import torch

from xlram.ops.mlstm import MLSTMState, mlstm, mlstm_step
from xlram.ops.slstm import SLSTMState, slstm

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
pytest.importorskip("triton")


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _mlstm_inputs(B, H, S, dk, dv, dtype, state, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    kw = dict(device="cuda", generator=g)
    q, k, v = (torch.randn(B, H, S, d, **kw).to(dtype) for d in (dk, dk, dv))
    i = torch.randn(B, H, S, **kw) * 2 - 4  # input-gate bias below 0, as in trained models
    f = torch.randn(B, H, S, **kw) + 4  # forget-gate bias 3..6
    xs = [q, k, v, i, f]
    if state:
        xs += [torch.randn(B, H, dk, dv, **kw) * 0.1, torch.randn(B, H, dk, **kw) * 0.1]
        xs += [torch.randn(B, H, **kw)]
    return xs


@pytest.mark.parametrize("S,state", [(2048, False), (2000, True)])
def test_mlstm_chunkwise_full_size_bf16(S, state):
    """Outputs, states and all gradients within bf16 tolerance of the fp64 chunkwise torch form."""
    from xlram import kernels

    xs = _mlstm_inputs(1, 16, S, 128, 256, torch.bfloat16, state)
    ref_in = [x.double().requires_grad_(True) for x in xs]
    h, st = mlstm(*ref_in[:5], MLSTMState(*ref_in[5:]) if state else None, form="chunkwise", chunk_size=128)
    ws = [torch.randn_like(x) for x in (h, *st)]
    loss = lambda outs: sum((a.double() * w).sum() for a, w in zip(outs, ws, strict=True))
    want_g = torch.autograd.grad(loss((h, *st)), ref_in)
    ker_in = [x.clone().requires_grad_(True) for x in xs]
    h_k, st_k = kernels.mlstm(*ker_in[:5], MLSTMState(*ker_in[5:]) if state else None)
    got_g = torch.autograd.grad(loss((h_k, *st_k)), ker_in)
    assert h_k.dtype == torch.bfloat16 and st_k.C.dtype == torch.float32
    for name, a, b in zip(["h", "C", "n", "m"], (h_k, *st_k), (h, *st), strict=True):
        assert _rel(a, b) < 2e-2, name
    names = ["q", "k", "v", "i", "f", "C0", "n0", "m0"][: len(got_g)]
    for name, a, b in zip(names, got_g, want_g, strict=True):
        assert _rel(a, b) < 5e-2, "d" + name


def test_mlstm_fp32_full_size_tight():
    """fp32 inputs use full-precision dots (no TF32): tight agreement at full size."""
    from xlram import kernels

    xs = _mlstm_inputs(1, 16, 1024, 128, 256, torch.float32, True)
    h, st = mlstm(*(x.double() for x in xs[:5]), MLSTMState(*(x.double() for x in xs[5:])), form="chunkwise")
    h_k, st_k = kernels.mlstm(*xs[:5], MLSTMState(*xs[5:]))
    assert _rel(h_k, h) < 1e-4
    assert _rel(st_k.C, st.C) < 1e-4


def test_mlstm_step_full_size_and_cuda_graph():
    from xlram import kernels

    B, H, dk, dv = 8, 16, 128, 256
    xs = _mlstm_inputs(B, H, 1, dk, dv, torch.bfloat16, True)
    q, k, v, i, f = (x[:, :, 0] for x in xs[:5])
    state = MLSTMState(*xs[5:])
    h, st = kernels.mlstm_step(q, k, v, i, f, state)
    h_ref, st_ref = mlstm_step(q.double(), k.double(), v.double(), i.double(), f.double(),
                               MLSTMState(*(x.double() for x in state)))
    assert _rel(h, h_ref) < 1e-2 and _rel(st.C, st_ref.C) < 1e-5
    # Captured in a CUDA graph with preallocated buffers, replay gives the eager result.
    out = [torch.empty_like(x) for x in (h, *st)]
    static_in = [x.clone() for x in (q, k, v, i, f, *state)]
    kernels.mlstm_step(*static_in[:5], MLSTMState(*static_in[5:]), out=out)  # compile before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kernels.mlstm_step(*static_in[:5], MLSTMState(*static_in[5:]), out=out)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out[0], h) and torch.equal(out[1], st.C)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_slstm_full_size(dtype, tol):
    from xlram import kernels

    B, S, NH, DH = 16, 256, 4, 192
    g = torch.Generator(device="cuda").manual_seed(0)
    kw = dict(device="cuda", generator=g)
    wx = torch.randn(B, S, 4, NH, DH, **kw).to(dtype)
    r = (torch.randn(NH, DH, 4, DH, **kw) / DH**0.5).to(dtype)
    b = torch.randn(4, NH, DH, **kw).to(dtype)
    st0 = [torch.randn(B, NH * DH, **kw) for _ in range(4)]
    st0[2] = st0[2].abs() + 0.5
    ref_in = [x.double().requires_grad_(True) for x in (wx, r, b, *st0)]
    h, st = slstm(*ref_in[:3], SLSTMState(*ref_in[3:]), form="reference")
    ws = [torch.randn_like(x) for x in (h, *st)]
    loss = lambda outs: sum((a.double() * w).sum() for a, w in zip(outs, ws, strict=True))
    want_g = torch.autograd.grad(loss((h, *st)), ref_in)
    ker_in = [x.clone().requires_grad_(True) for x in (wx, r, b, *st0)]
    h_k, st_k = kernels.slstm(*ker_in[:3], SLSTMState(*ker_in[3:]))
    got_g = torch.autograd.grad(loss((h_k, *st_k)), ker_in)
    for name, a, b_ in zip(["h", "h_T", "c_T", "n_T", "m_T"], (h_k, *st_k), (h, *st), strict=True):
        assert _rel(a, b_) < tol, name
    for name, a, b_ in zip(["wx", "r", "b", "h0", "c0", "n0", "m0"], got_g, want_g, strict=True):
        assert _rel(a, b_) < 2 * tol, "d" + name


def test_auto_form_routes_cuda_to_the_kernels(monkeypatch):
    """``form="auto"`` sends CUDA tensors to the Triton kernels; explicit forms keep the torch paths."""
    from xlram import kernels

    calls = []
    for name in ("mlstm", "mlstm_step", "slstm"):
        fn = getattr(kernels, name)
        spy = lambda *a, _fn=fn, _n=name, **kw: calls.append(_n) or _fn(*a, **kw)
        monkeypatch.setattr(kernels, name, spy)
    q, k, v, i, f = _mlstm_inputs(1, 2, 64, 32, 32, torch.bfloat16, False)
    mlstm(q, k, v, i, f)
    mlstm(q, k, v, i, f, form="chunkwise")
    mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0])
    wx = torch.randn(2, 8, 4, 2, 16, device="cuda")
    slstm(wx, torch.randn(2, 16, 4, 16, device="cuda") * 0.1, torch.zeros(4, 2, 16, device="cuda"))
    assert calls == ["mlstm", "mlstm_step", "slstm"]

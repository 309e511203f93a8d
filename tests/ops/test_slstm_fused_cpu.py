"""xlram.ops.slstm.fused_cpu: the numba loops over time against the torch loops and the autograd reference."""

import math

import pytest
import torch

from xlram.ops.slstm import SLSTMState, fused_cpu, slstm

F64 = torch.float64
# (B, S, NH, DH): batch, sequence and head count of one, and several heads
SHAPES = [(1, 1, 1, 4), (2, 9, 1, 5), (3, 11, 4, 3), (1, 17, 4, 8)]


@pytest.fixture(autouse=True)
def _numba_on(monkeypatch):
    """Every test starts with the numba path on (a developer's XLRAM_NUMBA=0 would test nothing)."""
    monkeypatch.delenv("XLRAM_NUMBA", raising=False)
    assert fused_cpu.available(), "numba is a dependency: the fast path must be the one under test"


def _params(B, S, NH, DH, *, dtype=F64, seed=0):
    """wx (B, S, 4, NH, DH), r (NH, DH, 4, DH), b (4, NH, DH); a few pre-activations at ±30."""
    g = torch.Generator().manual_seed(seed)
    wx = torch.randn(B, S, 4, NH, DH, generator=g, dtype=F64) * 3
    flat = wx.view(-1)
    idx = torch.randperm(flat.numel(), generator=g)[: max(4, flat.numel() // 20)]
    flat[idx] = 30.0 * torch.sign(torch.randn(idx.numel(), generator=g, dtype=F64))
    r = torch.randn(NH, DH, 4, DH, generator=g, dtype=F64) / math.sqrt(DH)
    b = torch.randn(4, NH, DH, generator=g, dtype=F64)
    return tuple(x.to(dtype) for x in (wx, r, b))


def _state(B, width, *, empty, dtype=F64, seed=1):
    """All zeros (``empty``: the first-step rule everywhere), or about a third of the elements empty."""
    if empty:
        return SLSTMState(*(torch.zeros(B, width, dtype=dtype) for _ in range(4)))
    g = torch.Generator().manual_seed(seed)
    h, c, m = (torch.randn(B, width, generator=g, dtype=F64) * 2 for _ in range(3))
    n = torch.rand(B, width, generator=g, dtype=F64) * 3 * (torch.rand(B, width, generator=g) > 0.33)
    return SLSTMState(*(x.to(dtype) for x in (h, c, n, m)))


def _run(form, wx, r, b, state, forget_gate, seed=2):
    """[h, final h, c, n, m] and the gradients of wx, r, b, h0, c0, n0, m0 of a loss weighting each output."""
    leaves = [x.detach().clone().requires_grad_() for x in (wx, r, b, *state)]
    h, final = slstm(*leaves[:3], SLSTMState(*leaves[3:]), forget_gate=forget_gate, form=form)
    g = torch.Generator().manual_seed(seed)
    loss = sum((x * torch.randn(x.shape, generator=g, dtype=F64).to(x)).sum() for x in (h, *final))
    return [h.detach(), *(x.detach() for x in final)], list(torch.autograd.grad(loss, leaves))


def _torch_path(monkeypatch, *args):
    """``_run`` of the recurrent form with numba disabled."""
    monkeypatch.setenv("XLRAM_NUMBA", "0")
    try:
        return _run("recurrent", *args)
    finally:
        monkeypatch.delenv("XLRAM_NUMBA")


NAMES = ["h", "state.h", "state.c", "state.n", "state.m"]
NAMES += ["d_wx", "d_r", "d_b", "d_h0", "d_c0", "d_n0", "d_m0"]


@pytest.mark.parametrize("empty", [True, False], ids=["zero_state", "state"])
@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_numba_matches_torch_path_and_reference_fp64(shape, forget_gate, empty, monkeypatch):
    B, S, NH, DH = shape
    wx, r, b = _params(B, S, NH, DH, seed=S)
    state = _state(B, NH * DH, empty=empty)
    args = (wx, r, b, state, forget_gate)
    out, grads = _run("recurrent", *args)
    out_torch, grads_torch = _torch_path(monkeypatch, *args)
    out_ref, grads_ref = _run("reference", *args)
    for name, x, y, z in zip(NAMES, out + grads, out_torch + grads_torch, out_ref + grads_ref, strict=True):
        assert torch.isfinite(x).all(), name
        for other, y_, tol in (("torch", y, 1e-10), ("reference", z, 1e-8)):
            msg = lambda m, name=name, other=other: f"{name} vs {other}: {m}"
            torch.testing.assert_close(x, y_, rtol=tol, atol=tol, msg=msg)


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_numba_fp32_close_to_fp64_reference(forget_gate):
    """fp32 in, fp32 out, the elementwise math in fp64: within fp32 rounding of the fp64 reference."""
    B, S, NH, DH = 2, 64, 2, 16
    wx, r, b = _params(B, S, NH, DH, seed=3)
    state = _state(B, NH * DH, empty=False, seed=4)
    out_ref, grads_ref = _run("reference", wx, r, b, state, forget_gate)
    state32 = SLSTMState(*(x.float() for x in state))
    out32, grads32 = _run("recurrent", *(x.float() for x in (wx, r, b)), state32, forget_gate)
    for name, x, y in zip(NAMES, out32 + grads32, out_ref + grads_ref, strict=True):
        assert x.dtype == torch.float32, name
        err = (x.double() - y).abs().max() / y.abs().max()
        assert err <= 1e-5, (name, err)


def test_inference_path_equals_training_path():
    """Without autograd the forward keeps a two-slot ring, not the records: the same values, bit for bit."""
    wx, r, b = _params(3, 10, 4, 3, seed=5)
    state = _state(3, 12, empty=False)
    with torch.no_grad():
        h_ng, st_ng = slstm(wx, r, b, state)
    h_g, st_g = slstm(wx.clone().requires_grad_(), r, b, state)
    assert h_g.grad_fn is not None and type(h_g.grad_fn).__name__ == "_FusedSLSTMFunctionBackward"
    for x, y in zip((h_ng, *st_ng), (h_g, *st_g), strict=True):
        assert torch.equal(x, y.detach())


def test_strided_inputs_and_upstream_gradients_are_left_alone():
    """A strided wx, expanded upstream gradients and B = NH = 1 (where transposes are no-ops): the
    kernels work on their own copies and never write into the caller's tensors."""
    wx, r, b = _params(1, 6, 1, 4, seed=6)
    wx_strided = torch.stack([wx, -wx], -1).flatten(-2)[..., ::2].requires_grad_()  # the values of wx
    assert not wx_strided.is_contiguous()
    h, st = slstm(wx_strided, r, b, _state(1, 4, empty=False))
    upstream = [torch.randn(x.shape, dtype=F64) for x in (h, *st)]
    kept = [u.clone() for u in upstream]
    (g_wx,) = torch.autograd.grad((h, *st), wx_strided, upstream, retain_graph=True)
    assert all(torch.equal(u, k) for u, k in zip(upstream, kept, strict=True))
    h_ref, st_ref = slstm(wx_strided, r, b, _state(1, 4, empty=False), form="reference")
    (g_ref,) = torch.autograd.grad((h_ref, *st_ref), wx_strided, upstream, retain_graph=True)
    torch.testing.assert_close(g_wx, g_ref, rtol=1e-8, atol=1e-8)
    (g_sum,) = torch.autograd.grad(h.sum() + st.c.sum(), wx_strided)  # expanded (stride 0) gradients
    (g_sum_ref,) = torch.autograd.grad(h_ref.sum() + st_ref.c.sum(), wx_strided)
    torch.testing.assert_close(g_sum, g_sum_ref, rtol=1e-8, atol=1e-8)


def test_xlram_numba_0_takes_the_torch_path(monkeypatch):
    """XLRAM_NUMBA=0 is read on every call: the torch loops run, with and without autograd."""
    wx, r, b = _params(2, 5, 2, 4, seed=7)

    def no_numba(*args, **kwargs):
        raise AssertionError("the numba forward ran")

    monkeypatch.setattr(fused_cpu, "_forward", no_numba)
    with pytest.raises(AssertionError, match="numba forward ran"):
        slstm(wx, r, b)  # on by default: the dispatch reaches the (patched) numba forward
    monkeypatch.setenv("XLRAM_NUMBA", "0")
    assert not fused_cpu.available() and not fused_cpu.applies(wx)
    with torch.no_grad():
        h_ng, _ = slstm(wx, r, b)
    h, _ = slstm(wx.clone().requires_grad_(), r, b)
    assert type(h.grad_fn).__name__ == "_SLSTMFunctionBackward"
    assert torch.equal(h_ng, h.detach())

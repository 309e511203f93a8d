"""The fused Triton sLSTM against the autograd reference: outputs, final state and the gradients
of wx, r, b and the initial state, for both forget gates."""

import pytest
import torch

from xlram.ops.slstm import SLSTMState, slstm

pytest.importorskip("triton")


def _inputs(B, S, NH, DH, device, state, seed=0, gate_scale=3.0):
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    xs = [rn(B, S, 4, NH, DH) * gate_scale, rn(NH, DH, 4, DH) / DH**0.5, rn(4, NH, DH)]
    if state:
        h0, c0, n0, m0 = (rn(B, NH * DH) for _ in range(4))
        xs += [h0, c0, n0.abs() + 0.5, m0]
    return [x.to(device) for x in xs]


def _run(xs, dtype, forget_gate):
    from xlram import kernels

    has_state = len(xs) == 7
    ref_in = [(x.to(dtype).double() if j < 3 else x).requires_grad_(True) for j, x in enumerate(xs)]
    h, st = slstm(*ref_in[:3], SLSTMState(*ref_in[3:]) if has_state else None, forget_gate=forget_gate,
                  form="reference")
    ws = [torch.randn_like(x) for x in (h, *st)]
    loss = lambda outs: sum((a.double() * w).sum() for a, w in zip(outs, ws, strict=True))
    want_g = torch.autograd.grad(loss((h, *st)), ref_in)
    ker_in = [(x.to(dtype) if j < 3 else x.float()).requires_grad_(True) for j, x in enumerate(xs)]
    h_k, st_k = kernels.slstm(*ker_in[:3], SLSTMState(*ker_in[3:]) if has_state else None,
                              forget_gate=forget_gate)
    got_g = torch.autograd.grad(loss((h_k, *st_k)), ker_in)
    return (h, *st), want_g, (h_k, *st_k), got_g


OUTS = ["h", "h_T", "c_T", "n_T", "m_T"]
GRADS = ["dwx", "dr", "db", "dh0", "dc0", "dn0", "dm0"]


@pytest.mark.parametrize(
    "B,S,NH,DH,forget_gate,state",
    [
        (2, 13, 2, 16, "sigmoid", False),
        (3, 13, 2, 16, "exp", True),  # B not a multiple of the 16-row batch tile
        (2, 6, 2, 80, "sigmoid", True),  # DH not a power of two, two column tiles of 64
    ],
)
def test_matches_reference_fp32(B, S, NH, DH, forget_gate, state, kdevice, check):
    want, want_g, got, got_g = _run(_inputs(B, S, NH, DH, kdevice, state), torch.float32, forget_gate)
    assert got[0].shape == (B, S, NH * DH) and all(x.dtype == torch.float32 for x in got)
    for name, a, b in zip(OUTS, got, want, strict=True):
        check(name, a, b, 1e-5)
    for name, a, b in zip(GRADS[: len(got_g)], got_g, want_g, strict=True):
        check(name, a, b, 1e-5)


def test_bf16_inputs(kdevice, check):
    want, want_g, got, got_g = _run(_inputs(2, 13, 2, 16, kdevice, True), torch.bfloat16, "sigmoid")
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    assert [g.dtype for g in got_g[:3]] == [torch.bfloat16] * 3
    for name, a, b in zip(OUTS, got, want, strict=True):
        check(name, a, b, 1e-2)
    for name, a, b in zip(GRADS[: len(got_g)], got_g, want_g, strict=True):
        check(name, a, b, 2e-2)


def test_inference_path_matches(kdevice, check):
    """Without autograd the kernel keeps a two-slot ring of states; same outputs and final state."""
    from xlram import kernels

    wx, r, b, *st = (x.float() for x in _inputs(2, 9, 2, 16, kdevice, True))
    with torch.no_grad():
        h, fin = kernels.slstm(wx, r, b, SLSTMState(*st))
        h_ref, fin_ref = slstm(wx, r, b, SLSTMState(*st), form="reference")
    check("h", h, h_ref, 1e-5)
    for name, a, b_ in zip(OUTS[1:], fin, fin_ref, strict=True):
        check(name, a, b_, 1e-5)

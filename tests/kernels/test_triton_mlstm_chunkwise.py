"""The Triton chunkwise mLSTM against the plain fp64 reference: outputs, final states and the
gradients of every input and of the initial state, through a raw loss on h and on the final state
(no norm after the cell, so the normaliser's gradient counts)."""

import pytest
import torch

from xlram.ops.mlstm import MLSTMState, mlstm_reference

pytest.importorskip("triton")

DK, DV = 16, 32
NAMES = ["q", "k", "v", "i", "f", "C0", "n0", "m0"]


def make_inputs(S, *, B=1, H=2, dk=DK, dv=DV, gate_scale=20.0, state=True, seed=0, device="cpu"):
    """fp64 inputs with gate pre-activations uniform in ±gate_scale (exp input gate up to e^20)."""
    g = torch.Generator().manual_seed(seed)

    def rn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def un(*shape):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * gate_scale

    xs = [rn(B, H, S, dk), rn(B, H, S, dk), rn(B, H, S, dv), un(B, H, S), un(B, H, S)]
    if state:
        xs += [rn(B, H, dk, dv), rn(B, H, dk), rn(B, H)]
    return [x.to(device) for x in xs]


def loss_weights(h, st, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.device) for x in (h, *st)]


def raw_loss(h, st, ws):
    """Σ w·h + Σ w·C_T + Σ w·n_T + Σ w·m_T: every output and every final-state component counts."""
    return sum((x.double() * w).sum() for x, w in zip((h, *st), ws, strict=True))


def run_both(inputs, dtype, eps=1e-6, **kw):
    """(outputs, grads) of the reference on the inputs rounded to ``dtype`` (in fp64), and of the kernel."""
    from xlram import kernels

    has_state = len(inputs) == 8
    rounded = [x.to(dtype).double() if j < 3 else x for j, x in enumerate(inputs)]
    ref_in = [x.clone().requires_grad_(True) for x in rounded]
    h, st = mlstm_reference(*ref_in[:5], MLSTMState(*ref_in[5:]) if has_state else None, eps=eps)
    ws = loss_weights(h, st)
    ref_grads = torch.autograd.grad(raw_loss(h, st, ws), ref_in)

    ker_in = [(x.to(dtype) if j < 3 else x.float()).requires_grad_(True) for j, x in enumerate(inputs)]
    h_k, st_k = kernels.mlstm(*ker_in[:5], MLSTMState(*ker_in[5:]) if has_state else None, eps=eps, **kw)
    ker_grads = torch.autograd.grad(raw_loss(h_k, st_k, ws), ker_in)
    return (h, *st), ref_grads, (h_k, *st_k), ker_grads


TILES = dict(chunk_size=32, tile=16, head_tile=16)  # two L tiles per chunk, two dv tiles


@pytest.mark.parametrize("S", [1, 13, 64, 100])
@pytest.mark.parametrize("state", [True, False], ids=["state", "nostate"])
def test_matches_reference_fp32(S, state, kdevice, check):
    inputs = make_inputs(S, state=state, device=kdevice)
    want, want_g, got, got_g = run_both(inputs, torch.float32, **TILES)
    assert got[0].dtype == torch.float32 and all(x.dtype == torch.float32 for x in got[1:])
    for name, a, b in zip(["h", "C", "n", "m"], got, want, strict=True):
        check(name, a, b, 1e-4)
    for name, a, b in zip(NAMES[: len(got_g)], got_g, want_g, strict=True):
        check("d" + name, a, b, 2e-4)


def test_gradient_through_eps_and_stabiliser(kdevice, check):
    """With a large eps, h depends on the stabiliser m (h = N / (max(|Q|, 1) + eps e^m)): the
    gradient through m's max (and through the final m) must reach the right gate inputs."""
    inputs = make_inputs(64, gate_scale=6.0, device=kdevice, seed=3)
    want, want_g, got, got_g = run_both(inputs, torch.float32, eps=0.3, **TILES)
    for name, a, b in zip(["h", "C", "n", "m"], got, want, strict=True):
        check(name, a, b, 1e-4)
    for name, a, b in zip(NAMES[: len(got_g)], got_g, want_g, strict=True):
        check("d" + name, a, b, 1e-4)


def test_long_chunk_many_tiles_and_tail(kdevice, check):
    """A chunk of 64 in tiles of 16 (4x4 tile pairs, causal skipping), S not a multiple of it,
    dk and dv not powers of two."""
    inputs = make_inputs(90, dk=24, dv=40, gate_scale=5.0, device=kdevice, seed=5)
    want, want_g, got, got_g = run_both(inputs, torch.float32, chunk_size=64, tile=16, head_tile=16)
    for name, a, b in zip(["h", "C", "n", "m"], got, want, strict=True):
        check(name, a, b, 1e-4)
    for name, a, b in zip(NAMES[: len(got_g)], got_g, want_g, strict=True):
        check("d" + name, a, b, 2e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_fp32_states(dtype, kdevice, check):
    """16-bit q, k, v: h and dq, dk, dv in that dtype, states in fp32, within 16-bit rounding of the
    reference computed in fp64 on the same (rounded) inputs."""
    inputs = make_inputs(64, gate_scale=5.0, device=kdevice, seed=7)
    want, want_g, got, got_g = run_both(inputs, dtype, **TILES)
    assert got[0].dtype == dtype and got[1].dtype == torch.float32
    assert [g.dtype for g in got_g[:3]] == [dtype] * 3
    tol = 3e-2 if dtype == torch.bfloat16 else 5e-3
    for name, a, b in zip(["h", "C", "n", "m"], got, want, strict=True):
        check(name, a, b, tol)
    for name, a, b in zip(NAMES[: len(got_g)], got_g, want_g, strict=True):
        check("d" + name, a, b, 2 * tol)


def test_state_passing_equals_one_pass(kdevice, check):
    """Two calls with the state carried equal one call over the whole sequence."""
    from xlram import kernels

    q, k, v, i, f = (x.float() for x in make_inputs(80, state=False, gate_scale=5.0, device=kdevice))
    h, st = kernels.mlstm(q, k, v, i, f, **TILES)
    cut = 37
    h1, st1 = kernels.mlstm(*(x[:, :, :cut] for x in (q, k, v, i, f)), **TILES)
    h2, st2 = kernels.mlstm(*(x[:, :, cut:] for x in (q, k, v, i, f)), st1, **TILES)
    check("h", torch.cat([h1, h2], 2), h, 1e-5)
    for name, a, b in zip("Cnm", st2, st, strict=True):
        check(name, a, b, 1e-5)


def test_default_tiles(kdevice, check):
    """Without tile options: chunk min(128, S rounded up to a power of two), tiles of 64."""
    from xlram import kernels

    q, k, v, i, f = (x.float() for x in make_inputs(70, state=False, gate_scale=5.0, device=kdevice))
    h, st = kernels.mlstm(q, k, v, i, f)
    h_ref, st_ref = mlstm_reference(*(x.double() for x in (q, k, v, i, f)))
    check("h", h, h_ref, 1e-4)
    check("C", st.C, st_ref.C, 1e-4)


def test_rejects_bad_options(kdevice):
    from xlram import kernels

    q, k, v, i, f = (x.float() for x in make_inputs(16, state=False, device=kdevice))
    with pytest.raises(ValueError, match="chunk_size"):
        kernels.mlstm(q, k, v, i, f, chunk_size=24)
    with pytest.raises(ValueError, match="tile"):
        kernels.mlstm(q, k, v, i, f, chunk_size=32, tile=8)
    with pytest.raises(TypeError, match="q: expected one of"):
        kernels.mlstm(q.double(), k.double(), v.double(), i, f)

"""xlram.ops.mlstm: every form against the plain reference loop, in fp64 (outputs, final states and
every gradient), fp32 (long sequences) and bf16; state passing; input validation."""

import pytest
import torch

from xlram.ops.mlstm import MLSTMState, mlstm, mlstm_reference, mlstm_step, recurrent, zero_state
from xlram.ops.mlstm.dispatch import choose_form

FORMS = ["recurrent", "parallel", "chunkwise", "auto"]
F64 = torch.float64


def make_inputs(B, H, S, dk, dv, *, gates, dtype=F64, with_state=False, seed=0):
    """q, k, v, i, f (gates uniform in ±gates) and an initial state or None, built in fp64 then cast."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, S, dk, generator=g, dtype=F64)
    k = torch.randn(B, H, S, dk, generator=g, dtype=F64)
    v = torch.randn(B, H, S, dv, generator=g, dtype=F64)
    i = (torch.rand(B, H, S, generator=g, dtype=F64) * 2 - 1) * gates
    f = (torch.rand(B, H, S, generator=g, dtype=F64) * 2 - 1) * gates
    state = None
    if with_state:
        state = MLSTMState(
            torch.randn(B, H, dk, dv, generator=g, dtype=F64),
            torch.randn(B, H, dk, generator=g, dtype=F64),
            torch.randn(B, H, generator=g, dtype=F64) * 3,
        )
    x = [t.to(dtype) for t in (q, k, v, i, f)]
    return x, state


def rel_max(a, b):
    """max |a - b| relative to max(1, max |b|): one number per tensor, in the scale of the reference."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()


def rel_norm(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def outputs_and_grads(fn, x, state, seed=1):
    """Run ``fn(q, k, v, i, f, state)`` and backpropagate a random upstream gradient on h and on every
    part of the final state; returns [h, C, n, m, dq, dk, dv, di, df] (+ [dC0, dn0, dm0] with a state)."""
    x = [t.detach().clone().requires_grad_() for t in x]
    if state is not None:
        state = MLSTMState(*(t.detach().clone().requires_grad_() for t in state))
    h, (C, n, m) = fn(*x, state)
    g = torch.Generator().manual_seed(seed)
    outs = [h, C, n, m]
    # Drawn in fp64 on CPU then moved, so runs in any dtype or device see the same upstream gradient.
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=F64).to(o)).sum() for o in outs)
    leaves = x + (list(state) if state is not None else [])
    grads = torch.autograd.grad(loss, leaves)
    return [o.detach() for o in outs] + list(grads)


NAMES = ["h", "C", "n", "m", "dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"]


# ---------------------------------------------------------------------------------------------------
# fp64: every form equals the reference, outputs, states and gradients


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("S", [1, 7, 37, 64])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("gates", [3.0, 30.0])
def test_fp64_matches_reference(form, S, with_state, gates):
    x, state = make_inputs(2, 2, S, 8, 6, gates=gates, with_state=with_state, seed=S)
    # chunk 16: S=37 leaves a tail of 5, S=7 is shorter than one chunk, S=64 is exactly 4 chunks.
    ours = outputs_and_grads(lambda *a: mlstm(*a, form=form, chunk_size=16), x, state)
    ref = outputs_and_grads(mlstm_reference, x, state)
    for name, a, b in zip(NAMES, ours, ref, strict=False):
        assert a.dtype == F64, name
        assert rel_max(a, b) <= 1e-8, f"{form} S={S} {name}: {rel_max(a, b):.3g}"


@pytest.mark.parametrize("chunk_size", [1, 5, 37, 100])
def test_fp64_chunkwise_any_chunk_size(chunk_size):
    x, state = make_inputs(1, 3, 37, 4, 5, gates=10.0, with_state=True, seed=chunk_size)
    ours = outputs_and_grads(lambda *a: mlstm(*a, form="chunkwise", chunk_size=chunk_size), x, state)
    ref = outputs_and_grads(mlstm_reference, x, state)
    for name, a, b in zip(NAMES, ours, ref, strict=True):
        assert rel_max(a, b) <= 1e-8, f"chunk {chunk_size} {name}: {rel_max(a, b):.3g}"


def test_fp64_recurrent_checkpointed_segments(monkeypatch):
    """On large problems the recurrent form keeps one state per 64 steps and recomputes in backward."""
    monkeypatch.setattr(recurrent, "_CHECKPOINT_ELEMENTS", 0)
    x, state = make_inputs(1, 2, 150, 4, 3, gates=5.0, with_state=True, seed=3)
    ours = outputs_and_grads(lambda *a: mlstm(*a, form="recurrent"), x, state)
    ref = outputs_and_grads(mlstm_reference, x, state)
    for name, a, b in zip(NAMES, ours, ref, strict=True):
        assert rel_max(a, b) <= 1e-8, name


def test_initial_state_matters():
    """Guard against a vacuous state test: the initial state changes h and gets a gradient."""
    x, state = make_inputs(1, 2, 9, 4, 4, gates=3.0, with_state=True)
    for form in ["parallel", "chunkwise"]:
        h0, _ = mlstm(*x, form=form)
        h1, _ = mlstm(*x, state, form=form)
        assert rel_max(h0, h1) > 1e-3
    grads = outputs_and_grads(lambda *a: mlstm(*a, form="parallel"), x, state)[-3:]
    assert all(g.abs().max() > 0 for g in grads)


def test_step_matches_reference():
    x, state = make_inputs(2, 2, 6, 4, 3, gates=8.0, with_state=True)
    h_ref, s_ref = mlstm_reference(*x, state)
    s = state
    for t in range(6):
        h, s = mlstm_step(*(a[:, :, t] for a in x), s)
        assert rel_max(h, h_ref[:, :, t]) <= 1e-12
    for a, b in zip(s, s_ref, strict=True):
        assert rel_max(a, b) <= 1e-12


# ---------------------------------------------------------------------------------------------------
# fp32 and long sequences


@pytest.fixture(scope="module")
def seq700():
    x, state = make_inputs(1, 2, 700, 32, 32, gates=5.0, with_state=True, seed=7)
    return x, state, outputs_and_grads(mlstm_reference, x, state)


@pytest.mark.parametrize("form", FORMS)
def test_fp32_relative_error_at_700(form, seq700):
    """fp32 outputs, final states and all gradients within 1e-4 (relative, in norm) of fp64."""
    x, state, ref = seq700
    x32 = [t.float() for t in x]
    ours = outputs_and_grads(lambda *a: mlstm(*a, form=form), x32, MLSTMState(*(t.float() for t in state)))
    for name, a, b in zip(NAMES, ours, ref, strict=True):
        assert a.dtype == torch.float32, name
        assert rel_norm(a, b) <= 1e-4, f"{form} {name}: {rel_norm(a, b):.3g}"


def test_fp32_long_sequence_stays_accurate():
    """S = 20,000 with gates in ±20: chunkwise stays finite and no worse than a few times a plain fp32
    recurrence (both measured against the fp64 reference)."""
    x, _ = make_inputs(1, 1, 20_000, 16, 16, gates=20.0, seed=11)
    x32 = [t.float() for t in x]
    with torch.no_grad():
        h_ref, s_ref = mlstm_reference(*x)
        h_rec, _ = mlstm_reference(*x32)
        for form in ["chunkwise", "auto"]:
            h, s = mlstm(*x32, form=form)
            assert torch.isfinite(h).all() and all(torch.isfinite(t).all() for t in s)
            err, err_rec = rel_norm(h, h_ref), rel_norm(h_rec, h_ref)
            assert err <= 3 * err_rec + 1e-6, f"{form}: {err:.3g} vs plain fp32 recurrence {err_rec:.3g}"
            assert rel_norm(s.C, s_ref.C) <= 1e-4


@pytest.mark.parametrize("form", FORMS)
def test_bf16_inputs(form):
    x, state = make_inputs(2, 2, 100, 16, 16, gates=5.0, with_state=True, seed=5)
    h_ref, s_ref = mlstm_reference(*x, state)
    xb = [t.to(torch.bfloat16).requires_grad_() for t in x]
    h, s = mlstm(*xb, MLSTMState(*(t.float() for t in state)), form=form)
    assert h.dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 for t in s)
    # Inputs rounded to bf16 (8 bits of mantissa) move h by ~1 %; the computation adds little to that.
    x_rounded = [t.to(torch.bfloat16).double() for t in x]
    h_rounded, _ = mlstm_reference(*x_rounded, state)
    assert rel_norm(h, h_ref) <= 2 * rel_norm(h_rounded, h_ref) + 1e-2
    for a, b in zip(s, s_ref, strict=True):
        assert rel_norm(a, b) <= 5e-2
    (h.float().sum() + s.C.sum()).backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in xb)


def test_fp16_gates_with_fp32_inputs():
    """i and f may have their own floating dtype; they are used in the state dtype."""
    x, _ = make_inputs(1, 2, 20, 8, 8, gates=3.0)
    q, k, v, i, f = (t.float() for t in x)
    h, s = mlstm(q, k, v, i.half(), f.half())
    h_ref, _ = mlstm_reference(q, k, v, i.half().float(), f.half().float())
    assert h.dtype == torch.float32 and s.C.dtype == torch.float32
    assert rel_norm(h, h_ref) <= 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("form", FORMS)
def test_on_device_matches_reference(form, device):
    if device.type == "cpu":
        pytest.skip("needs an accelerator")
    x, state = make_inputs(2, 2, 300, 32, 32, gates=5.0, with_state=True, seed=4)
    ref = outputs_and_grads(mlstm_reference, x, state)
    xd = [t.float().to(device) for t in x]
    sd = MLSTMState(*(t.float().to(device) for t in state))
    ours = outputs_and_grads(lambda *a: mlstm(*a, form=form), xd, sd)
    for name, a, b in zip(NAMES, ours, ref, strict=True):
        assert rel_norm(a.cpu(), b) <= 1e-4, f"{form} {name}: {rel_norm(a.cpu(), b):.3g}"


# ---------------------------------------------------------------------------------------------------
# State passing


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("split", [1, 13, 32])
def test_split_sequence_equals_one_run(form, split):
    x, state = make_inputs(2, 2, 45, 6, 5, gates=8.0, with_state=True, seed=split)
    h, s = mlstm(*x, state, form=form, chunk_size=16)
    h1, s1 = mlstm(*(t[:, :, :split] for t in x), state, form=form, chunk_size=16)
    h2, s2 = mlstm(*(t[:, :, split:] for t in x), s1, form=form, chunk_size=16)
    assert rel_max(torch.cat([h1, h2], dim=2), h) <= 1e-10
    for a, b in zip(s2, s, strict=True):
        assert rel_max(a, b) <= 1e-10


def test_prefill_then_steps_equals_one_run():
    """The generation path: chunkwise prefill, then mlstm_step token by token."""
    x, _ = make_inputs(1, 2, 40, 8, 8, gates=5.0, seed=2)
    h, s = mlstm(*x, form="chunkwise", chunk_size=8)
    hp, sp = mlstm(*(t[:, :, :30] for t in x), form="chunkwise", chunk_size=8)
    hs = [hp]
    for t in range(30, 40):
        ht, sp = mlstm_step(*(a[:, :, t] for a in x), sp)
        hs.append(ht[:, :, None])
    assert rel_max(torch.cat(hs, dim=2), h) <= 1e-10
    assert rel_max(sp.C, s.C) <= 1e-10


def test_zero_state_equals_no_state():
    x, _ = make_inputs(1, 2, 10, 4, 3, gates=5.0)
    h0, s0 = mlstm(*x)
    h1, s1 = mlstm(*x, zero_state(1, 2, 4, 3, dtype=F64))
    assert torch.equal(h0, h1) and all(torch.equal(a, b) for a, b in zip(s0, s1, strict=True))


def test_state_as_plain_tuple():
    x, state = make_inputs(1, 1, 5, 4, 3, gates=5.0, with_state=True)
    h0, _ = mlstm(*x, state)
    h1, s1 = mlstm(*x, tuple(state))
    assert torch.equal(h0, h1) and isinstance(s1, MLSTMState)


def test_auto_choice():
    assert choose_form(1) == ("recurrent", None)
    assert choose_form(100)[0] == "parallel"
    assert choose_form(100_000)[0] == "chunkwise"


# ---------------------------------------------------------------------------------------------------
# Bad input: every error names the argument


def _good(S=5, dtype=torch.float32):
    x, _ = make_inputs(2, 3, S, 4, 6, gates=3.0, dtype=dtype)
    return dict(zip("qkvif", x, strict=True))


def _call(overrides=None, **kwargs):
    a = _good()
    a.update(overrides or {})
    return mlstm(a["q"], a["k"], a["v"], a["i"], a["f"], **kwargs)


def _state(B=2, H=3, dk=4, dv=6):
    return zero_state(B, H, dk, dv)


BAD = [
    ({"q": torch.randn(3, 5, 4)}, {}, ValueError, r"q: expected a 4-D tensor \(B, H, S, dk\).*\(3, 5, 4\)"),
    ({"v": torch.randn(2, 3, 5, 6, 1)}, {}, ValueError, r"v: expected a 4-D"),
    ({"i": torch.randn(2, 3, 5, 1)}, {}, ValueError, r"i: expected a 3-D tensor \(B, H, S\)"),
    ({"k": torch.randn(2, 3, 6, 4)}, {}, ValueError, r"k: expected leading dims .*\(2, 3, 5\)"),
    ({"v": torch.randn(1, 3, 5, 6)}, {}, ValueError, r"v: expected leading dims"),
    ({"k": torch.randn(2, 3, 5, 7)}, {}, ValueError, r"k: expected last dim dk = 4 as in q, got 7"),
    ({"f": torch.randn(2, 4, 5)}, {}, ValueError,
     r"f: expected shape \(B, H, S\).*\(2, 3, 5\), got \(2, 4, 5\)"),
    ({"i": torch.randn(2, 3, 6)}, {}, ValueError, r"i: expected shape"),
    ({"q": torch.randn(2, 3, 0, 4), "k": torch.randn(2, 3, 0, 4), "v": torch.randn(2, 3, 0, 6),
      "i": torch.randn(2, 3, 0), "f": torch.randn(2, 3, 0)}, {}, ValueError, r"S >= 1, got S = 0"),
    ({"k": torch.randn(2, 3, 5, 4, dtype=F64)}, {}, TypeError,
     r"k: expected the dtype of q \(torch.float32\), got torch.float64"),
    ({"v": torch.randn(2, 3, 5, 6).bfloat16()}, {}, TypeError, r"v: expected the dtype of q"),
    ({"q": torch.ones(2, 3, 5, 4, dtype=torch.int64)}, {}, TypeError, r"q: expected a floating-point dtype"),
    ({"f": torch.ones(2, 3, 5, dtype=torch.bool)}, {}, TypeError, r"f: expected a floating-point dtype"),
    ({"i": [1.0]}, {}, TypeError, r"i: expected a torch.Tensor, got list"),
    ({}, {"form": "fast"}, ValueError, r"form: expected one of .*'chunkwise'.*got 'fast'"),
    ({}, {"chunk_size": 0}, ValueError, r"chunk_size: expected an int >= 1 or None, got 0"),
    ({}, {"chunk_size": 2.5}, TypeError, r"chunk_size: expected an int >= 1 or None, got float"),
    ({}, {"eps": -1.0}, ValueError, r"eps: expected a number >= 0, got -1.0"),
    ({}, {"state": _state(dk=5)}, ValueError, r"state.C: expected shape \(B, H, dk, dv\) = \(2, 3, 4, 6\)"),
    ({}, {"state": _state(B=1)}, ValueError, r"state.C: expected shape"),
    ({}, {"state": _state()._replace(n=torch.zeros(2, 3, 6))}, ValueError,
     r"state.n: expected shape \(B, H, dk\) = \(2, 3, 4\), got \(2, 3, 6\)"),
    ({}, {"state": _state()._replace(m=torch.zeros(2, 3, 1))}, ValueError,
     r"state.m: expected shape \(B, H\)"),
    ({}, {"state": _state()._replace(m=torch.zeros(2, 3, dtype=torch.int32))}, TypeError,
     r"state.m: expected a floating-point dtype"),
    ({}, {"state": (torch.zeros(2, 3, 4, 6),)}, TypeError, r"state: expected an MLSTMState .*length 1"),
    ({}, {"state": torch.zeros(2, 3, 4, 6)}, TypeError, r"state: expected an MLSTMState .*got Tensor"),
]


@pytest.mark.parametrize("overrides, kwargs, exc, match", BAD)
def test_bad_input_names_the_argument(overrides, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        _call(overrides, **kwargs)


def test_check_finite_is_opt_in():
    bad_i = _good()["i"].clone()
    bad_i[0, 1, 2] = float("nan")
    h, _ = _call({"i": bad_i})  # default: no host sync, the NaN simply propagates
    assert torch.isnan(h).any()
    with pytest.raises(ValueError, match=r"i: expected finite values, got NaN or inf"):
        _call({"i": bad_i}, check_finite=True)
    state = _state()._replace(m=torch.full((2, 3), float("inf")))
    with pytest.raises(ValueError, match=r"state.m: expected finite values"):
        _call(state=state, check_finite=True)
    _call(check_finite=True)  # finite inputs pass


def test_step_validates():
    a = _good()
    with pytest.raises(ValueError, match=r"q: expected a 3-D tensor \(B, H, dk\)"):
        mlstm_step(a["q"], a["k"][:, :, 0], a["v"][:, :, 0], a["i"][:, :, 0], a["f"][:, :, 0])
    with pytest.raises(ValueError, match=r"state.C: expected shape"):
        q, k, v, i, f = (t[:, :, 0] for t in a.values())
        mlstm_step(q, k, v, i, f, _state(dv=2))

"""The fused Triton mLSTM step against one step of the fp64 reference, and a run of steps against
the chunkwise kernel."""

import pytest
import torch

from xlram.ops.mlstm import MLSTMState, mlstm_reference

pytest.importorskip("triton")


def _inputs(B, H, dk, dv, device, seed=0, gate_scale=20.0):
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    un = lambda *s: (torch.rand(*s, generator=g, dtype=torch.float64) * 2 - 1) * gate_scale
    xs = [rn(B, H, dk), rn(B, H, dk), rn(B, H, dv), un(B, H), un(B, H)]
    xs += [rn(B, H, dk, dv), rn(B, H, dk), rn(B, H)]
    return [x.to(device) for x in xs]


@pytest.mark.parametrize("dk,dv", [(16, 32), (24, 80)])
def test_step_matches_reference(dk, dv, kdevice, check):
    from xlram import kernels

    xs = _inputs(2, 3, dk, dv, kdevice)
    ref_in = [x.clone().requires_grad_(True) for x in xs]
    q, k, v, i, f, C, n, m = ref_in
    h, st = mlstm_reference(q[:, :, None], k[:, :, None], v[:, :, None], i[..., None], f[..., None],
                            MLSTMState(C, n, m))
    h = h[:, :, 0]
    g = torch.Generator().manual_seed(7)  # the upstream weights too: the test must not depend on test order
    ws = [torch.randn(x.shape, generator=g, dtype=torch.float64).to(kdevice) for x in (h, *st)]
    loss = lambda outs: sum((a.double() * w).sum() for a, w in zip(outs, ws, strict=True))
    want_g = torch.autograd.grad(loss((h, *st)), ref_in)

    def fp32_grads(step):
        ins = [x.float().requires_grad_(True) for x in xs]
        h_, st_ = step(ins)
        return (h_, *st_), torch.autograd.grad(loss((h_, *st_)), ins)

    outs_k, got_g = fp32_grads(lambda a: kernels.mlstm_step(*a[:5], MLSTMState(*a[5:])))
    def plain_step(a):
        h_, st_ = mlstm_reference(a[0][:, :, None], a[1][:, :, None], a[2][:, :, None], a[3][..., None],
                                  a[4][..., None], MLSTMState(*a[5:]))
        return h_[:, :, 0], st_

    _, plain_g = fp32_grads(plain_step)
    for name, a, b in zip(["h", "C", "n", "m"], outs_k, (h, *st), strict=True):
        check(name, a, b, 1e-5)
    # fp32 against fp64 with gates up to ±20 loses ~1e-4 in any fp32 implementation: the kernel's
    # gradients must be no worse than twice those of the plain fp32 reference loop (plus 1e-6).
    names = ["q", "k", "v", "i", "f", "C0", "n0", "m0"]
    for name, a, p, b in zip(names, got_g, plain_g, want_g, strict=True):
        plain_err = ((p.double() - b).abs().max() / b.abs().max()).item()
        check("d" + name, a, b, 2 * plain_err + 1e-6)


def test_steps_equal_chunkwise_kernel(kdevice, check):
    """Generation: steps from a prefilled state continue the sequence the chunkwise kernel computes."""
    from xlram import kernels

    g = torch.Generator().manual_seed(1)
    B, H, S, dk, dv = 1, 2, 24, 16, 32
    q, k, v = (torch.randn(B, H, S, d, generator=g).to(kdevice) for d in (dk, dk, dv))
    i, f = (torch.randn(B, H, S, generator=g).to(kdevice) * 4 for _ in range(2))
    tiles = dict(chunk_size=16, tile=16, head_tile=16)
    h_all, st_all = kernels.mlstm(q, k, v, i, f, **tiles)
    h_pre, st = kernels.mlstm(q[:, :, :16], k[:, :, :16], v[:, :, :16], i[:, :, :16], f[:, :, :16], **tiles)
    hs = []
    for t in range(16, S):
        h_t, st = kernels.mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t], f[:, :, t], st)
        hs.append(h_t)
    check("h", torch.stack(hs, 2), h_all[:, :, 16:], 1e-5)
    for name, a, b in zip("Cnm", st, st_all, strict=True):
        check(name, a, b, 1e-5)


def test_step_into_preallocated_buffers(kdevice):
    """``out=`` writes into caller-owned buffers (what a CUDA graph captures), and refuses aliasing."""
    from xlram import kernels

    q, k, v, i, f, C, n, m = (x.float() for x in _inputs(1, 2, 16, 32, kdevice))
    h, st = kernels.mlstm_step(q, k, v, i, f, MLSTMState(C, n, m))
    out = [torch.empty_like(x) for x in (h, *st)]
    h2, st2 = kernels.mlstm_step(q, k, v, i, f, MLSTMState(C, n, m), out=out)
    assert h2.data_ptr() == out[0].data_ptr() and st2.C.data_ptr() == out[1].data_ptr()
    torch.testing.assert_close(h2, h, rtol=0, atol=0)
    with pytest.raises(ValueError, match="alias"):
        kernels.mlstm_step(q, k, v, i, f, MLSTMState(C, n, m), out=[out[0], C, n, m])


def test_step_bf16(kdevice, check):
    from xlram import kernels

    q, k, v, i, f, C, n, m = _inputs(2, 2, 16, 32, kdevice, gate_scale=5.0)
    qb, kb, vb = (x.to(torch.bfloat16) for x in (q, k, v))
    h, st = kernels.mlstm_step(qb, kb, vb, i.float(), f.float(), MLSTMState(C.float(), n.float(), m.float()))
    assert h.dtype == torch.bfloat16 and st.C.dtype == torch.float32
    qkv = (x.double()[:, :, None] for x in (qb, kb, vb))
    h_ref, st_ref = mlstm_reference(*qkv, i[..., None], f[..., None], MLSTMState(C, n, m))
    check("h", h, h_ref[:, :, 0], 1e-2)
    check("C", st.C, st_ref.C, 1e-5)

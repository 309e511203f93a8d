"""The fast paths of the ops against the plain ones: the chunkwise Function's hand-derived backward
(any upstream gradient layout, padding, fp32), the in-place recurrent step, the chunk-size choice."""

import pytest
import torch

from xlram.ops.mlstm import MLSTMState, chunk_loop_cpu, fused_cpu, mlstm, mlstm_reference, mlstm_step
from xlram.ops.mlstm.chunkwise_fn import ChunkwiseFunction
from xlram.ops.mlstm.dispatch import choose_chunk
from xlram.ops.mlstm.recurrent import _OPAQUE_BYTES, _torch_memory_update_, mlstm_step_

F64 = torch.float64


def _inputs(B, H, S, dk, dv, gates, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, S, dk, generator=g, dtype=F64) for _ in range(2))
    v = torch.randn(B, H, S, dv, generator=g, dtype=F64)
    i, f = ((torch.rand(B, H, S, generator=g, dtype=F64) * 2 - 1) * gates for _ in range(2))
    state = MLSTMState(torch.randn(B, H, dk, dv, generator=g, dtype=F64), torch.randn(B, H, dk, generator=g,
                       dtype=F64), torch.randn(B, H, generator=g, dtype=F64))
    return [t.to(dtype) for t in (q, k, v, i, f)], MLSTMState(*(t.to(dtype) for t in state))


def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()


def _grads(fn, x, state, upstream):
    """Gradients of sum(upstream(h) * h) + sum of the final state, for all inputs and the state."""
    x = [t.detach().clone().requires_grad_() for t in x]
    state = MLSTMState(*(t.detach().clone().requires_grad_() for t in state))
    h, (C, n, m) = fn(*x, state)
    loss = upstream(h) + C.sum() + n.sum() + m.sum()
    return torch.autograd.grad(loss, x + list(state))


UPSTREAMS = {
    # h.sum() hands backward an expanded (stride 0) gradient; a transposed read hands a transposed one
    "expanded": lambda h: h.sum(),
    "transposed": lambda h: (h.transpose(1, 2).contiguous()
                             * torch.arange(h.shape[2], dtype=h.dtype)[:, None, None]).sum(),
    "sliced": lambda h: h[:, :, ::2].pow(2).sum(),
}


@pytest.mark.parametrize("upstream", list(UPSTREAMS))
def test_chunkwise_backward_takes_any_upstream_layout(upstream):
    x, state = _inputs(2, 2, 40, 8, 6, gates=6.0)
    fn = lambda *a: mlstm(*a, form="chunkwise", chunk_size=16)
    ours = _grads(fn, x, state, UPSTREAMS[upstream])
    ref = _grads(mlstm_reference, x, state, UPSTREAMS[upstream])
    for a, b in zip(ours, ref, strict=True):
        assert _rel(a, b) <= 1e-9


def test_chunkwise_function_is_used_and_padding_is_exact():
    """S = 50 with chunks of 16 pads 14 steps that must not change the state; the Function (not autograd
    through the forward) produces the gradient."""
    x, state = _inputs(1, 3, 50, 4, 4, gates=12.0, seed=3)
    x = [t.requires_grad_() for t in x]
    h, s = mlstm(*x, state, form="chunkwise", chunk_size=16)
    assert type(h.grad_fn).__name__.startswith("SliceBackward") or "Chunkwise" in type(h.grad_fn).__name__
    h_ref, s_ref = mlstm_reference(*x, state)
    assert _rel(h, h_ref) <= 1e-10
    for a, b in zip(s, s_ref, strict=True):
        assert _rel(a, b) <= 1e-10


def test_chunkwise_fp32_gradients_close_to_fp64():
    x, state = _inputs(1, 2, 300, 32, 32, gates=8.0, seed=5)
    ref = _grads(lambda *a: mlstm(*a, form="chunkwise", chunk_size=64), x, state, UPSTREAMS["expanded"])
    x32 = [t.float() for t in x]
    s32 = MLSTMState(*(t.float() for t in state))
    ours = _grads(lambda *a: mlstm(*a, form="chunkwise", chunk_size=64), x32, s32, UPSTREAMS["expanded"])
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == torch.float32
        assert ((a.double() - b).norm() / b.norm()).item() <= 1e-4


def test_chunkwise_function_gradcheck():
    g = torch.Generator().manual_seed(9)
    B, H, S, d, L = 1, 2, 8, 3, 4
    args = [torch.randn(B, H, S, d, generator=g, dtype=F64) for _ in range(3)]
    args += [torch.nn.functional.logsigmoid(torch.randn(B, H, S, generator=g, dtype=F64) * 3),
             torch.randn(B, H, S, generator=g, dtype=F64) * 3]
    args += [torch.randn(B, H, d, d, generator=g, dtype=F64), torch.randn(B, H, d, generator=g, dtype=F64),
             torch.randn(B, H, generator=g, dtype=F64)]
    args = [a.requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lambda *a: ChunkwiseFunction.apply(*a, L, 1e-6, d**-0.5), args)


@pytest.mark.parametrize("B", [1, 5])
def test_inplace_step_equals_functional_step(B):
    x, state = _inputs(B, 3, 6, 8, 5, gates=10.0, seed=B)
    s_fun = state
    s_in = MLSTMState(*(t.clone() for t in state))
    ptrs = [t.data_ptr() for t in s_in]
    with torch.no_grad():
        for t in range(6):
            step_in = [a[:, :, t] for a in x]
            h_fun, s_fun = mlstm_step(*step_in, s_fun)
            h_in = mlstm_step_(*step_in, s_in)
            assert _rel(h_in, h_fun) <= 1e-13
    for a, b in zip(s_in, s_fun, strict=True):
        assert _rel(a, b) <= 1e-13
    assert [t.data_ptr() for t in s_in] == ptrs  # updated where it lies


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_numba_memory_update_equals_torch_kernels(dtype):
    """The one-pass numba update (the default CPU inference path) against the three torch kernels."""
    assert fused_cpu.available(), "numba is a dependency: the fast path must be the one under test"
    g = torch.Generator().manual_seed(3)
    B, H, dk, dv = 3, 2, 16, 24
    C = torch.randn(B, H, dk, dv, generator=g, dtype=dtype)
    n = torch.randn(B, H, dk, generator=g, dtype=dtype)
    fg = torch.rand(B, H, generator=g, dtype=dtype)
    kig, qs = (torch.randn(B, H, dk, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, H, 2 * dv, generator=g, dtype=dtype)[..., ::2]  # a strided view, as layers pass
    C_t, n_t = C.clone(), n.clone()
    ptr = C.data_ptr()
    num, qn = fused_cpu.memory_update_(C, n, fg, kig, v, qs)
    num_t, qn_t = _torch_memory_update_(C_t, n_t, fg, kig, v, qs)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    for a, b in ((C, C_t), (n, n_t), (num, num_t), (qn, qn_t)):
        assert _rel(a, b) <= tol
    assert C.data_ptr() == ptr


def test_inplace_step_without_numba_is_the_same(monkeypatch):
    x, state = _inputs(2, 2, 3, 8, 8, gates=6.0)
    s_fast = MLSTMState(*(t.clone() for t in state))
    s_plain = MLSTMState(*(t.clone() for t in state))
    with torch.no_grad():
        for t in range(3):
            a = [u[:, :, t] for u in x]
            h_fast = mlstm_step_(*a, s_fast)
            monkeypatch.setenv("XLRAM_NUMBA", "0")
            assert not fused_cpu.applies(s_plain.C)
            h_plain = mlstm_step_(*a, s_plain)
            monkeypatch.delenv("XLRAM_NUMBA")
            assert _rel(h_fast, h_plain) <= 1e-13
    assert all(_rel(a, b) <= 1e-13 for a, b in zip(s_fast, s_plain, strict=True))


def test_inplace_step_bf16_inputs_fp32_state():
    x, state = _inputs(2, 2, 3, 8, 8, gates=4.0)
    s32 = MLSTMState(*(t.float() for t in state))
    s_ref = MLSTMState(*(t.float().clone() for t in state))
    with torch.no_grad():
        for t in range(3):
            xb = [a[:, :, t].to(torch.bfloat16) for a in x]
            h = mlstm_step_(*xb, s32)
            h_ref, s_ref = mlstm_step(*xb, s_ref)
            assert h.dtype == torch.bfloat16
            assert _rel(h, h_ref) <= 1e-2
    assert all(_rel(a, b) <= 1e-6 for a, b in zip(s32, s_ref, strict=True))


@pytest.mark.slow
def test_inplace_step_compiled_large_and_small_memories():
    """Under torch.compile the large memory goes through the opaque in-place op, the small one stays
    in the graph; both match the eager step."""
    for B in (1, 1 + _OPAQUE_BYTES // (4 * 2 * 32 * 32)):
        x, state = _inputs(B, 2, 2, 32, 32, gates=3.0, dtype=torch.float32)
        s_eager = MLSTMState(*(t.clone() for t in state))
        s_comp = MLSTMState(*(t.clone() for t in state))
        step = torch.compile(mlstm_step_, dynamic=False)
        with torch.no_grad():
            for t in range(2):
                a = [u[:, :, t] for u in x]
                assert _rel(step(*a, s_comp), mlstm_step_(*a, s_eager)) <= 1e-5
        assert all(_rel(a, b) <= 1e-5 for a, b in zip(s_comp, s_eager, strict=True))


def test_choose_chunk(monkeypatch):
    assert choose_chunk(4096, 128, 128) == 64
    assert choose_chunk(4096, 256, 512) == 128
    assert choose_chunk(40, 128, 128) == 40
    q = torch.zeros(1, 1, 8, 128)
    monkeypatch.setattr(chunk_loop_cpu, "applies", lambda x: True)  # where the compiled loop runs
    assert choose_chunk(4096, 128, 128, like=q) == 32  # no gradients
    assert choose_chunk(4096, 128, 128, like=q.requires_grad_()) == 64
    assert choose_chunk(4096, 256, 256, like=q) == 64
    with torch.no_grad():
        assert choose_chunk(4096, 128, 128, like=q) == 32
    monkeypatch.setattr(chunk_loop_cpu, "applies", lambda x: False)
    assert choose_chunk(4096, 128, 128, like=q.detach()) == 64
    assert choose_chunk(37, 128, 128) == 37
    assert choose_chunk(1, 8, 8) == 1


def test_inference_runs_long_sequences_in_segments(monkeypatch):
    """Without gradients the chunkwise form runs SEGMENT_CHUNKS chunks at a time; the result is the
    same function (the state is passed on exactly)."""
    import xlram.ops.mlstm.chunkwise as chunkwise

    x, state = _inputs(2, 2, 100, 4, 5, gates=8.0, seed=7)
    monkeypatch.setattr(chunkwise, "SEGMENT_CHUNKS", 2)
    with torch.no_grad():
        h, s = mlstm(*x, state, form="chunkwise", chunk_size=8)  # 100 steps: 7 segments of 2 chunks
    h_ref, s_ref = mlstm_reference(*x, state)
    assert _rel(h, h_ref) <= 1e-10
    assert all(_rel(a, b) <= 1e-10 for a, b in zip(s, s_ref, strict=True))

"""The fast paths of the modules against plain formulations, in fp64: grouped block-diagonal linear,
the causal conv's own backward, folded gates and paired q/k projections, and the stack's in-place
inference step (its state contract, and the compiled variant)."""

import pytest
import torch
import torch.nn.functional as F

import xlram.layers.mlstm as mlstm_layer
from xlram.blocks import XLSTMStack, _leaves, xlstm_config
from xlram.layers import MLSTMLargeLayer, MLSTMLayer, SLSTMLayer
from xlram.nn import CausalConv1d, HeadwiseLinear
from xlram.nn.conv import _CausalConv
from xlram.nn.linear import _GroupedLinear, group_size

f64 = torch.float64


def _perturb(module, seed=0, scale=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("shape", [(512, 512, 128), (12, 24, 3), (64, 64, 16), (256, 256, 4)])
def test_headwise_linear_grouped_equals_block_diagonal(shape):
    fin, fout, heads = shape
    torch.manual_seed(0)
    lin = _perturb(HeadwiseLinear(fin, fout, heads, bias=True).double())
    x = torch.randn(3, 5, fin, dtype=f64, requires_grad=True)
    dense = torch.block_diag(*lin.weight)
    y, y_ref = lin(x), x @ dense.T + lin.bias
    g = torch.randn_like(y)
    params = [x, lin.weight, lin.bias]
    assert (y - y_ref).abs().max() <= 1e-12
    assert _max_diff(torch.autograd.grad(y, params, g), torch.autograd.grad(y_ref, params, g)) <= 1e-12
    with torch.no_grad():
        assert (lin(x) - y_ref).abs().max() <= 1e-12


def test_grouped_linear_gradcheck_and_group_size():
    assert group_size(128, 4, 4) == 4 and group_size(4, 64, 64) == 1 and group_size(3, 8, 4) == 1
    x = torch.randn(5, 32, dtype=f64, requires_grad=True)
    wg = torch.randn(2, 8, 16, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(_GroupedLinear.apply, (x, wg))


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_causal_conv_own_backward_equals_conv1d(silu, bias):
    torch.manual_seed(1)
    conv = _perturb(CausalConv1d(6, 4, bias=bias).double())
    x = torch.randn(2, 9, 6, dtype=f64, requires_grad=True)
    state = torch.randn(2, 3, 6, dtype=f64, requires_grad=True)
    y, new_state = conv(x, state, silu=silu)
    xx = torch.cat([state, x], 1)
    ref = F.conv1d(xx.transpose(1, 2), conv.weight.unsqueeze(1), conv.bias, groups=6).transpose(1, 2)
    ref = F.silu(ref) if silu else ref
    g, gs = torch.randn_like(y), torch.randn_like(new_state)
    params = [x, state, conv.weight] + ([conv.bias] if bias else [])
    ours = torch.autograd.grad((y * g).sum() + (new_state * gs).sum(), params)
    theirs = torch.autograd.grad((ref * g).sum() + (xx[:, -3:] * gs).sum(), params)
    assert (y - ref).abs().max() <= 1e-12
    assert _max_diff(ours, theirs) <= 1e-12
    with torch.no_grad():
        assert (conv(x, state, silu=silu)[0] - ref).abs().max() <= 1e-12


def test_causal_conv_gradcheck():
    args = (torch.randn(2, 7, 3, dtype=f64, requires_grad=True),
            torch.randn(3, 4, dtype=f64, requires_grad=True),
            torch.randn(3, dtype=f64, requires_grad=True))
    assert torch.autograd.gradcheck(lambda xx, w, b: _CausalConv.apply(xx, w, b, True), args)


@pytest.mark.parametrize("bias", [False, True])
def test_mlstm_layer_folded_gates_and_paired_qk_equal_plain(bias, monkeypatch):
    """Over many rows the layer folds the gates into the q/k/v maps and computes q and k in one
    grouped matmul; with the threshold out of reach it takes the plain path. Same values and gradients."""
    torch.manual_seed(2)
    layer = _perturb(MLSTMLayer(32, num_heads=2, bias=bias).double())
    x = torch.randn(3, 40, 32, dtype=f64, requires_grad=True)
    params = [x, *layer.parameters()]
    y_fast, _ = layer(x)
    fast = torch.autograd.grad(y_fast.square().sum(), params)
    monkeypatch.setattr(mlstm_layer, "_FOLD_ROWS", 10**9)
    y_plain, _ = layer(x)
    plain = torch.autograd.grad(y_plain.square().sum(), params)
    assert (y_fast - y_plain).abs().max() <= 1e-12
    assert _max_diff(fast, plain) <= 1e-10


LAYERS = {
    "mlstm": lambda: MLSTMLayer(32, num_heads=2),
    "slstm": lambda: SLSTMLayer(32, num_heads=2),
    "large": lambda: MLSTMLargeLayer(32, num_heads=2),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_inplace_step_equals_step(name):
    torch.manual_seed(3)
    layer = _perturb(LAYERS[name]().double()).eval()
    x = torch.randn(2, 5, 32, dtype=f64)
    state = layer.init_state(2)
    ptrs = [t.data_ptr() for t in _leaves(state)]
    s_ref = None
    with torch.no_grad():
        for t in range(5):
            y_ref, s_ref = layer.step(x[:, t], s_ref)
            y = layer.step_(x[:, t], state)
            assert (y - y_ref).abs().max() <= 1e-12
    assert _max_diff(_leaves(state), _leaves(s_ref)) <= 1e-12
    assert [t.data_ptr() for t in _leaves(state)] == ptrs


def _needs_grad(state):
    """A copy of a nested (named) tuple state whose tensors require gradients."""
    if isinstance(state, torch.Tensor):
        return state.clone().requires_grad_()
    return type(state)(*(_needs_grad(s) for s in state))


def _stack(seed=4):
    torch.manual_seed(seed)
    cfg = xlstm_config("xlstm[1:1]", 32, 2, mlstm_num_heads=2, slstm_num_heads=2)
    return _perturb(XLSTMStack(cfg).double()).eval()


def test_stack_step_in_place_under_no_grad_functional_with_grad():
    stack = _stack()
    x = torch.randn(2, 6, 32, dtype=f64)
    with torch.no_grad():
        y_full, _ = stack(x)
    # with gradients: a plain function, the passed state is left alone
    state = stack.init_state(2)
    y, s1 = stack.step(x[:, 0], state)
    assert s1 is not state and all(t.abs().max() == 0 for t in _leaves(state))
    # under no_grad: updated in place, the same object comes back
    with torch.no_grad():
        state = stack.init_state(2)
        ptrs = [t.data_ptr() for t in _leaves(state)]
        ys = []
        for t in range(6):
            y, new = stack.step(x[:, t], state)
            assert new is state
            ys.append(y)
    assert [t.data_ptr() for t in _leaves(state)] == ptrs
    assert (torch.stack(ys, 1) - y_full).abs().max() <= 1e-10


def test_stack_step_copies_a_state_it_may_not_overwrite():
    """A state from a forward pass (views into its buffers) or one that needs gradients is copied
    once; the caller's tensors keep their values."""
    stack = _stack()
    x = torch.randn(2, 7, 32, dtype=f64)
    with torch.no_grad():
        y_full, _ = stack(x)
        _, fwd_state = stack(x[:, :4])
        before = [t.clone() for t in _leaves(fwd_state)]
        ys = []
        s = fwd_state
        for t in range(4, 7):
            y, s = stack.step(x[:, t], s)
            ys.append(y)
    assert s is not fwd_state
    assert _max_diff(_leaves(fwd_state), before) == 0
    assert (torch.stack(ys, 1) - y_full[:, 4:]).abs().max() <= 1e-10
    grad_state = tuple(_needs_grad(b) for b in stack.init_state(2))
    with torch.no_grad():
        _, s2 = stack.step(x[:, 0], grad_state)
    assert s2 is not grad_state and all(t.abs().max() == 0 for t in _leaves(grad_state))


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3])  # 1: single-row projections (xlram.nn.linear's one-row path)
def test_compiled_stack_step_equals_eager(batch):
    stack = _stack().float()
    x = torch.randn(batch, 5, 32)
    with torch.no_grad():
        ref = [stack.step(x[:, t], s)[0] for s in [stack.init_state(batch)] for t in range(5)]
        stack.compile_step()
        state = stack.init_state(batch)
        out = [stack.step(x[:, t], state)[0] for t in range(5)]
        stack.compile_step(False)
    for a, b in zip(out, ref, strict=True):
        assert (a - b).abs().max() <= 1e-5


def test_stack_inference_forward_in_segments(monkeypatch):
    import xlram.blocks as blocks

    stack = _stack()
    x = torch.randn(2, 23, 32, dtype=f64)
    with torch.no_grad():
        y_ref, s_ref = stack(x)
        monkeypatch.setattr(blocks, "INFERENCE_SEGMENT", 5)
        y, s = stack(x)
    assert (y - y_ref).abs().max() <= 1e-10
    assert _max_diff(_leaves(s), _leaves(s_ref)) <= 1e-10


def test_stack_inplace_step_rejects_a_state_of_another_batch():
    stack = _stack()
    with torch.no_grad():
        state = stack.init_state(3)
        with pytest.raises(ValueError, match="batch size 3, x has 2 rows"):
            stack.step(torch.randn(2, 32, dtype=f64), state)


@pytest.mark.slow  # ~40-120 s of compiling on 2 cores
def test_compiled_stack_trains_like_eager():
    """torch.compile around a stack with an sLSTM block (whose loop over time is opaque to the
    compiler) and a chunkwise mLSTM: the same outputs and gradients as eager."""
    stack = _stack().float().train()
    x = torch.randn(2, 150, 32)  # > 128 steps: the chunkwise form with a tail
    y_ref, _ = stack(x)
    g_ref = torch.autograd.grad(y_ref.square().sum(), list(stack.parameters()))
    compiled = torch.compile(stack, dynamic=False)
    y, _ = compiled(x)
    g = torch.autograd.grad(y.square().sum(), list(stack.parameters()))
    assert (y - y_ref).abs().max() <= 1e-5
    assert _max_diff(g, g_ref) <= 1e-4 * max(t.abs().max().item() for t in g_ref)


def test_numba_training_paths_leave_parameter_storage_resizable():
    """FSDP frees unsharded parameters by resizing their storage to 0; a numpy view of a parameter
    (``.numpy()``) would forbid that for good. Forward and backward through every numba training
    path (q/k/v maps, output path, sLSTM loops) must not take one."""
    pytest.importorskip("numba")
    torch.manual_seed(0)
    stack = XLSTMStack(xlstm_config("xlstm[1:1]", 32, 2, mlstm_num_heads=2, slstm_num_heads=2)).train()
    y, _ = stack(torch.randn(2, 40, 32))
    y.square().sum().backward()
    for p in stack.parameters():
        storage = p.untyped_storage()
        storage.resize_(storage.nbytes())  # raises for a storage that is not resizable

"""xlram.layers: full forward == chunked forward with state == token-by-token step, in fp64."""

import pytest
import torch

from xlram.layers import MLSTMLargeLayer, MLSTMLayer, SLSTMLayer

f64 = torch.float64
D = 64

LAYERS = {
    "mlstm": lambda: MLSTMLayer(D, num_heads=4),
    "mlstm-bias-k2": lambda: MLSTMLayer(D, num_heads=2, conv_kernel_size=2, bias=True),
    "mlstm-noconv": lambda: MLSTMLayer(D, conv_kernel_size=0),
    "mlstm-chunkwise": lambda: MLSTMLayer(D, form="chunkwise", chunk_size=8),
    "mlstm-recurrent": lambda: MLSTMLayer(D, form="recurrent"),
    "slstm": lambda: SLSTMLayer(D, num_heads=4, block_idx=1, num_blocks=3),
    "slstm-exp-noconv": lambda: SLSTMLayer(D, num_heads=2, conv_kernel_size=0, forget_gate="exp"),
    "large": lambda: MLSTMLargeLayer(D, num_heads=4),
    "large-bias-nocap": lambda: MLSTMLargeLayer(D, num_heads=2, bias=True, gate_soft_cap=None),
}


def _make(name, seed=0):
    """A layer in fp64 with every parameter moved off its init (zero recurrent kernels, equal biases
    and unit norms would hide mapping and state bugs)."""
    torch.manual_seed(seed)
    layer = LAYERS[name]().double().eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return layer


def _steps(layer, x, state=None):
    ys = []
    for t in range(x.shape[1]):
        y, state = layer.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, 1), state


def _assert_states_close(a, b, atol):
    fa, fb = torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)
    assert len(fa) == len(fb)
    for ta, tb in zip(fa, fb, strict=True):
        torch.testing.assert_close(ta, tb, rtol=0, atol=atol)


@pytest.mark.parametrize("name", list(LAYERS))
def test_full_equals_chunked_equals_steps(name):
    layer = _make(name)
    x = torch.randn(2, 29, D, dtype=f64)
    with torch.no_grad():
        y, state = layer(x)
        assert y.shape == x.shape
        ys, s = [], None
        for a, b in [(0, 1), (1, 3), (3, 20), (20, 29)]:  # includes chunks shorter than the conv kernel
            yc, s = layer(x[:, a:b], s)
            ys.append(yc)
        torch.testing.assert_close(torch.cat(ys, 1), y, rtol=0, atol=1e-10)
        _assert_states_close(s, state, 1e-10)
        y_steps, s_steps = _steps(layer, x)
        torch.testing.assert_close(y_steps, y, rtol=0, atol=1e-10)
        _assert_states_close(s_steps, state, 1e-10)
        # Prefill then step.
        y_pre, s_pre = layer(x[:, :17])
        y_rest, _ = _steps(layer, x[:, 17:], s_pre)
        torch.testing.assert_close(torch.cat([y_pre, y_rest], 1), y, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["mlstm", "slstm", "large"])
def test_init_state_is_none_and_long_sequences_work(name):
    layer = _make(name)
    x = torch.randn(1, 300, D, dtype=f64)  # no context_length: any length runs
    with torch.no_grad():
        y0, s0 = layer(x)
        y1, s1 = layer(x, layer.init_state(1))
        assert torch.isfinite(y0).all()
        torch.testing.assert_close(y0, y1, rtol=0, atol=0)
        # A second segment continues from the state: same as running the concatenation.
        x2 = torch.randn(1, 40, D, dtype=f64)
        y2, _ = layer(x2, s0)
        y_all, _ = layer(torch.cat([x, x2], 1))
        torch.testing.assert_close(y2, y_all[:, 300:], rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["mlstm", "slstm", "large"])
def test_every_parameter_gets_a_gradient(name):
    layer = _make(name).float().train()
    y, state = layer(torch.randn(2, 9, D))
    y, _ = layer(torch.randn(2, 3, D), state)  # gradients flow through a carried state too
    y.square().mean().backward()
    for n, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n


def test_bf16_layers_keep_fp32_memory():
    torch.manual_seed(0)
    for layer in (MLSTMLayer(D), SLSTMLayer(D), MLSTMLargeLayer(D, num_heads=4)):
        layer = layer.to(torch.bfloat16)
        x = torch.randn(2, 5, D, dtype=torch.bfloat16)
        y, state = layer(x)
        assert y.dtype == torch.bfloat16
        cell = state.cell if hasattr(state, "cell") else state
        assert all(t.dtype == torch.float32 for t in cell)
        y_t, _ = layer.step(x[:, 0], layer.init_state(2, dtype=torch.bfloat16))
        assert y_t.dtype == torch.bfloat16


def test_paper_initialisation():
    m = MLSTMLayer(D, num_heads=4)
    torch.testing.assert_close(m.fgate.bias.data, torch.linspace(3, 6, 4))
    assert m.fgate.weight.abs().max() == 0 and m.igate.weight.abs().max() == 0
    assert m.igate.bias.abs().max() < 0.5 and torch.equal(m.learnable_skip.data, torch.ones(m.inner_dim))
    assert m.inner_dim == 128 and m.head_dim == 32

    large = MLSTMLargeLayer(D, num_heads=4)
    assert torch.equal(large.igate.bias.data, torch.full((4,), -10.0))
    torch.testing.assert_close(large.fgate.bias.data, torch.linspace(3, 6, 4))

    first, last = SLSTMLayer(D, block_idx=0, num_blocks=3), SLSTMLayer(D, block_idx=2, num_blocks=3)
    assert first.recurrent_kernel.abs().max() == 0
    for s in (first, last):
        fb = s.bias[1]  # (NH, DH): +5 (long memory) down to -7, the same in every head
        assert torch.allclose(fb[:, 0], torch.tensor(5.0)) and torch.allclose(fb[:, -1], torch.tensor(-7.0))
        assert torch.equal(fb[0], fb[-1]) and s.bias[[0, 2, 3]].abs().max() == 0
    # Deeper blocks keep more units at long memories (a larger exponent bends the power law down later).
    assert (last.bias[1, 0, 1:-1] > first.bias[1, 0, 1:-1]).all()


def test_layer_errors_name_the_argument():
    with pytest.raises(ValueError, match="num_heads=3 must divide the inner width 128"):
        MLSTMLayer(D, num_heads=3)
    with pytest.raises(ValueError, match="num_heads=3 must divide the width 64"):
        SLSTMLayer(D, num_heads=3)
    with pytest.raises(ValueError, match="num_heads=3 must divide qk_dim=32"):
        MLSTMLargeLayer(D, num_heads=3)
    with pytest.raises(ValueError, match="bias_init"):
        SLSTMLayer(D, bias_init="nope")

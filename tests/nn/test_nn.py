"""xlram.nn: each small module against a plain PyTorch formulation."""

import math

import pytest
import torch
import torch.nn.functional as F

from xlram.nn import (
    CausalConv1d,
    GatedFFN,
    HeadwiseLinear,
    HeadwiseNorm,
    LayerNorm,
    RMSNorm,
    SoftCap,
    round_up,
    small_init_,
    soft_cap,
    wang_init_,
)

f64 = torch.float64


def _perturb(module, scale=0.3):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


@pytest.mark.parametrize("bias", [False, True])
def test_layernorm_matches_torch(bias):
    torch.manual_seed(0)
    ln = _perturb(LayerNorm(16, bias=bias, eps=1e-5).double())
    ref = torch.nn.LayerNorm(16, eps=1e-5, bias=bias).double()
    with torch.no_grad():
        ref.weight.copy_(ln.weight)
        if bias:
            ref.bias.copy_(ln.bias)
    x = torch.randn(3, 5, 16, dtype=f64)
    torch.testing.assert_close(ln(x), ref(x), rtol=0, atol=1e-12)
    assert (ln.bias is None) == (not bias)


def test_norms_reduce_half_precision_in_fp32():
    torch.manual_seed(0)
    x = (torch.randn(4, 64) * 100 + 1000).to(torch.bfloat16)
    for norm in (LayerNorm(64), RMSNorm(64), HeadwiseNorm(4, 16)):
        y = norm(x)
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), norm(x.float()), rtol=1e-2, atol=2e-2)


def test_rmsnorm_formula():
    torch.manual_seed(0)
    rms = _perturb(RMSNorm(8, bias=True, eps=1e-6).double())
    x = torch.randn(2, 3, 8, dtype=f64)
    ref = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * rms.weight + rms.bias
    torch.testing.assert_close(rms(x), ref, rtol=0, atol=1e-12)


def test_headwise_norm_is_group_norm():
    torch.manual_seed(0)
    NH, DH = 4, 8
    norm = _perturb(HeadwiseNorm(NH, DH, bias=True, eps=1e-5).double())
    x = torch.randn(3, 7, NH * DH, dtype=f64)
    ref = F.group_norm(x.reshape(-1, NH * DH), NH, norm.weight, norm.bias, eps=1e-5).reshape(x.shape)
    torch.testing.assert_close(norm(x), ref, rtol=0, atol=1e-12)
    assert HeadwiseNorm(NH, DH, weight=False).weight is None
    with pytest.raises(ValueError, match="NH\\*DH=32"):
        norm(torch.randn(2, 31, dtype=f64))


@pytest.mark.parametrize("K", [1, 2, 4])
def test_causal_conv_full_chunked_step(K):
    torch.manual_seed(0)
    B, S, C = 2, 11, 6
    conv = CausalConv1d(C, K).double()
    x = torch.randn(B, S, C, dtype=f64)
    y, state = conv(x)
    # Reference: left-pad by K-1 and run a depthwise nn.functional.conv1d.
    ref = F.conv1d(F.pad(x.transpose(1, 2), (K - 1, 0)), conv.weight.unsqueeze(1), conv.bias, groups=C)
    torch.testing.assert_close(y, ref.transpose(1, 2), rtol=0, atol=1e-12)
    assert state.shape == (B, K - 1, C)
    # Chunks (one shorter than the kernel) with the state carried.
    ys, s = [], None
    for a, b in [(0, 1), (1, 6), (6, S)]:
        yc, s = conv(x[:, a:b], s)
        ys.append(yc)
    torch.testing.assert_close(torch.cat(ys, 1), y, rtol=0, atol=1e-12)
    torch.testing.assert_close(s, state, rtol=0, atol=0)
    # Step by step.
    ys, s = [], conv.init_state(B)
    for t in range(S):
        yt, s = conv.step(x[:, t], s)
        ys.append(yt)
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=0, atol=1e-12)


def test_causal_conv_rejects_kernel_0():
    with pytest.raises(ValueError, match="kernel_size"):
        CausalConv1d(4, 0)


def test_headwise_linear_is_block_diagonal_linear():
    torch.manual_seed(0)
    lin = HeadwiseLinear(12, 24, 3, bias=True).double()
    _perturb(lin)
    dense = torch.block_diag(*lin.weight)  # (24, 12)
    x = torch.randn(2, 5, 12, dtype=f64)
    torch.testing.assert_close(lin(x), x @ dense.T + lin.bias, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="num_heads=5"):
        HeadwiseLinear(12, 12, 5)


def test_gated_ffn_sizes_and_formula():
    assert GatedFFN(64, proj_factor=1.3).hidden_dim == 128  # 83.2 -> 128
    assert GatedFFN(128, proj_factor=1.3).hidden_dim == 192  # 166.4 -> 192
    assert round_up(4096 * 2.6667, 64) == 10944  # xLSTM 7B
    torch.manual_seed(0)
    ffn = GatedFFN(16, proj_factor=2.0, act="swish", bias=True).double()
    x = torch.randn(3, 16, dtype=f64)
    g, u = (x @ ffn.proj_up.weight.T + ffn.proj_up.bias).chunk(2, dim=-1)
    ref = (F.silu(g) * u) @ ffn.proj_down.weight.T + ffn.proj_down.bias
    torch.testing.assert_close(ffn(x), ref, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="act must be one of"):
        GatedFFN(16, act="tanh")


def test_soft_cap():
    x = torch.linspace(-100, 100, 101)
    y = soft_cap(x, 15.0)
    assert y.abs().max() < 15 and torch.equal(soft_cap(x, None), x)
    torch.testing.assert_close(soft_cap(torch.tensor([0.01]), 15.0), torch.tensor([0.01]), rtol=1e-6, atol=0)
    torch.testing.assert_close(SoftCap(30.0)(x), 30 * torch.tanh(x / 30))
    with pytest.raises(ValueError, match="cap"):
        SoftCap(0.0)


def test_initialisers_std():
    torch.manual_seed(0)
    w = torch.empty(512, 512)
    assert small_init_(w, 256).std().item() == pytest.approx(math.sqrt(2 / (5 * 256)), rel=0.02)
    assert wang_init_(w, 256, 4).std().item() == pytest.approx(2 / (4 * 16), rel=0.02)

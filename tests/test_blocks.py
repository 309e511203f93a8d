"""xlram.blocks: the config (validation, variants, serialisation) and the stack's state contract."""

import json

import pytest
import torch

from xlram.blocks import (
    LargeBlock,
    MLSTMBlock,
    SLSTMBlock,
    XLSTMConfig,
    XLSTMStack,
    slstm_positions,
    xlstm_config,
)

f64 = torch.float64
D = 64

STACKS = {
    "xlstm[1:0]": lambda: xlstm_config("xlstm[1:0]", D, 2),
    "xlstm[0:1]": lambda: xlstm_config("xlstm[0:1]", D, 2, slstm_num_heads=2),
    "xlstm[1:1]": lambda: xlstm_config("xlstm[1:1]", D, 3, bias=True, ffn_act="swish"),
    "large": lambda: xlstm_config("xlstm-large", D, 2, large_num_heads=4),
}


def _stack(name, seed=0):
    torch.manual_seed(seed)
    stack = XLSTMStack(STACKS[name]()).double().eval()
    with torch.no_grad():
        for p in stack.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return stack


def _leaves(state):
    return torch.utils._pytree.tree_leaves(state)


# ---------------------------------------------------------------------------------------------------
# Config


def test_variants_place_slstm_blocks_as_the_paper():
    assert xlstm_config("xlstm[1:0]", D, 4).slstm_at == []
    assert xlstm_config("xlstm[0:1]", D, 4).slstm_at == "all"
    assert xlstm_config("xLSTM[7:1]", D, 8).slstm_at == [4]  # one sLSTM per eight blocks
    assert xlstm_config("xlstm[7:1]", D, 24).slstm_at == [4, 12, 20]
    assert xlstm_config("xlstm[1:1]", D, 6).slstm_at == [1, 3, 5]
    assert xlstm_config("xlstm[7:1]", D, 8, slstm_at=[0]).slstm_at == [0]  # explicit placement wins
    assert slstm_positions(2, 7, 1) == [1]  # a requested sLSTM never rounds away
    cfg = xlstm_config("xlstm[7:1]", D, 8)
    assert cfg.block_types == ["mlstm"] * 4 + ["slstm"] + ["mlstm"] * 3
    assert xlstm_config("xlstm-large", D, 2, large_num_heads=4).block_types == ["large", "large"]


def test_config_round_trips_through_json():
    cfg = xlstm_config("xlstm[1:1]", 128, 4, dropout=0.1, mlstm_num_heads=8, large_gate_soft_cap=None)
    again = XLSTMConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown keys \\['num_layers'\\]"):
        XLSTMConfig.from_dict({**cfg.to_dict(), "num_layers": 3})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(embedding_dim=128, mlstm_num_heads=3),
            "XLSTMConfig.mlstm_num_heads=3 must divide the inner width 256",
        ),
        (
            dict(embedding_dim=64, slstm_at=[0], slstm_num_heads=3),
            "XLSTMConfig.slstm_num_heads=3 must divide embedding_dim 64",
        ),
        (dict(num_blocks=4, slstm_at=[1, 4]), r"slstm_at=\[1, 4\] has indices \[4\] outside 0..3"),
        (dict(num_blocks=2, slstm_at=[-1]), r"XLSTMConfig.slstm_at=\[-1\] has indices \[-1\] outside 0..1"),
        (dict(slstm_at="some"), "XLSTMConfig.slstm_at='some' must be a list of block indices or \"all\""),
        (dict(block="mamba"), r"XLSTMConfig.block='mamba' must be one of \['neurips', 'large'\]"),
        (dict(block="large", slstm_at=[0]), "XLSTMConfig.slstm_at=\\[0\\] must be empty for block=\"large\""),
        (dict(block="large", large_num_heads=3), "XLSTMConfig.large_num_heads=3 must divide"),
        (dict(num_blocks=0), "XLSTMConfig.num_blocks=0 must be an integer >= 1"),
        (dict(dropout=1.0), "XLSTMConfig.dropout=1.0 must be a number in \\[0, 1\\)"),
        (dict(slstm_at="all", ffn_act="tanh"), "XLSTMConfig.ffn_act='tanh' must be one of"),
        (dict(slstm_at="all", slstm_forget_gate="relu"), "XLSTMConfig.slstm_forget_gate='relu' must be"),
        (dict(mlstm_form="fast"), "XLSTMConfig.mlstm_form='fast' must be one of"),
    ],
)
def test_bad_configs_name_field_expectation_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        XLSTMConfig(**kwargs)


def test_unknown_variant():
    for bad in ("xlstm[7-1]", "xlstm[0:0]", "mamba", "xlstm[a:b]"):
        with pytest.raises(ValueError, match=f"variant={bad!r}".replace("[", r"\[").replace("]", r"\]")):
            xlstm_config(bad, D, 4)


def test_only_the_used_block_types_are_validated():
    # 3 heads cannot split an mLSTM inner width of 128, but this stack has no mLSTM block.
    XLSTMConfig(embedding_dim=48, slstm_at="all", slstm_num_heads=3, mlstm_num_heads=5)


# ---------------------------------------------------------------------------------------------------
# Stack


def test_block_kinds():
    stack = XLSTMStack(xlstm_config("xlstm[1:1]", D, 4))
    assert [type(b) for b in stack.blocks] == [MLSTMBlock, SLSTMBlock, MLSTMBlock, SLSTMBlock]
    assert isinstance(XLSTMStack(STACKS["large"]()).blocks[0], LargeBlock)
    # Block-dependent forget-gate init: the sLSTM layers know where they sit.
    assert [stack.blocks[i].layer.block_idx for i in (1, 3)] == [1, 3]


@pytest.mark.parametrize("name", list(STACKS))
def test_stack_full_equals_chunked_equals_steps(name):
    stack = _stack(name)
    B, S = 2, 23
    x = torch.randn(B, S, D, dtype=f64)
    with torch.no_grad():
        y, state = stack(x)
        assert y.shape == x.shape and len(state) == len(stack.blocks)
        ys, s = [], stack.init_state(B)
        for a, b in [(0, 2), (2, 15), (15, S)]:
            yc, s = stack(x[:, a:b], s)
            ys.append(yc)
        torch.testing.assert_close(torch.cat(ys, 1), y, rtol=0, atol=1e-10)
        ys, s2 = [], None
        for t in range(S):
            yt, s2 = stack.step(x[:, t], s2)
            ys.append(yt)
        torch.testing.assert_close(torch.stack(ys, 1), y, rtol=0, atol=1e-10)
        for a, b in zip(_leaves(s2), _leaves(state), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["xlstm[1:1]", "large"])
def test_stack_runs_longer_than_any_context(name):
    stack = _stack(name)
    with torch.no_grad():
        y, state = stack(torch.randn(1, 257, D, dtype=f64))
        y2, _ = stack.step(torch.randn(1, D, dtype=f64), state)
    assert torch.isfinite(y).all() and torch.isfinite(y2).all()


def test_init_state_is_zeros_and_equals_none():
    stack = _stack("xlstm[1:1]")
    state = stack.init_state(3)
    assert all(t.abs().max() == 0 for t in _leaves(state))
    x = torch.randn(3, 5, D, dtype=f64)
    with torch.no_grad():
        torch.testing.assert_close(stack(x, state)[0], stack(x)[0], rtol=0, atol=0)
        torch.testing.assert_close(stack.step(x[:, 0], state)[0], stack.step(x[:, 0])[0], rtol=0, atol=0)


def test_stack_rejects_bad_state_and_input():
    stack = XLSTMStack(xlstm_config("xlstm[1:1]", D, 2))
    with pytest.raises(ValueError, match="one entry per block \\(2\\), got tuple of length 1"):
        stack(torch.randn(1, 3, D), (None,))
    with pytest.raises(ValueError, match="x must be \\(B, S, 64\\)"):
        stack(torch.randn(1, 3, D + 1))
    with pytest.raises(ValueError, match="x must be \\(B, 64\\)"):
        stack.step(torch.randn(1, 3, D))


@pytest.mark.parametrize("name", list(STACKS))
def test_stack_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    stack = XLSTMStack(STACKS[name]())  # fresh init: zero gate weights must still receive gradients
    y, _ = stack(torch.randn(2, 7, D))
    y.square().mean().backward()
    for n, p in stack.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


def test_fresh_stack_is_well_scaled():
    # The papers' init keeps the residual stream close to its input: small-init in, wang-init out.
    torch.manual_seed(0)
    stack = XLSTMStack(xlstm_config("xlstm[7:1]", 128, 8, add_post_blocks_norm=False))
    x = torch.randn(2, 16, 128)
    with torch.no_grad():
        y, _ = stack(x)
    assert 0.8 < y.std().item() / x.std().item() < 1.5

"""xlram.interop: official xlstm models -> xlram models computing the same logits.

Official weights are moved off their init first (noise on every parameter, including norms, biases,
recurrent kernels and the learnable skip), so that a mapping error cannot hide behind a zero or a one.
"""

import random

import pytest
import torch
from torch import nn

xlstm = pytest.importorskip("xlstm")
pytest.importorskip("mlstm_kernels")

from xlstm import (  # noqa: E402
    FeedForwardConfig,
    mLSTMBlockConfig,
    mLSTMLayerConfig,
    sLSTMBlockConfig,
    sLSTMLayerConfig,
    xLSTMLMModel,
    xLSTMLMModelConfig,
)
from xlstm.xlstm_large.model import xLSTMLarge, xLSTMLargeConfig  # noqa: E402

from xlram.interop import from_official_xlstm, from_official_xlstm_large  # noqa: E402

VOCAB = 53
TOL = 1e-4  # max |Δlogits| / max |logits|


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _perturb(model, seed, scale=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _official(seed, *, slstm_at, num_blocks, S, dtype=torch.float64, **over):
    """A random small official xLSTMLMModel (vanilla sLSTM backend) with perturbed weights."""
    rng = random.Random(seed)
    D = over.pop("D", rng.choice([32, 64]))
    mlstm = mLSTMLayerConfig(
        num_heads=rng.choice([1, 2, 4]),
        conv1d_kernel_size=rng.choice([2, 4]),
        qkv_proj_blocksize=rng.choice([2, 4]),
        proj_factor=rng.choice([1.0, 2.0]),
    )
    slstm = sLSTMLayerConfig(
        backend="vanilla",
        num_heads=rng.choice([1, 2, 4]),
        conv1d_kernel_size=rng.choice([0, 2, 4]),
        bias_init=rng.choice(["powerlaw_blockdependent", "small_init", "standard"]),
        recurrent_weight_init=rng.choice(["zeros", "standard"]),
    )
    ff = FeedForwardConfig(proj_factor=rng.choice([1.3, 2.0]), act_fn=rng.choice(["gelu", "swish", "relu^2"]),
                           bias=rng.choice([False, True]))
    cfg = xLSTMLMModelConfig(
        mlstm_block=None if slstm_at == "all" else mLSTMBlockConfig(mlstm=mlstm),
        slstm_block=sLSTMBlockConfig(slstm=slstm, feedforward=ff),
        context_length=S,
        num_blocks=num_blocks,
        embedding_dim=D,
        slstm_at=slstm_at,
        vocab_size=VOCAB,
        bias=over.pop("bias", rng.choice([False, True])),
        tie_weights=over.pop("tie_weights", rng.choice([False, True])),
        add_post_blocks_norm=over.pop("add_post_blocks_norm", True),
    )
    assert not over
    torch.manual_seed(seed)
    model = xLSTMLMModel(cfg)
    model.reset_parameters()
    return _perturb(model, seed).to(dtype).eval()


def _official_steps(model, idx):
    state, out = None, []
    for t in range(idx.shape[1]):
        logits, state = model.step(idx[:, t : t + 1], state)
        out.append(logits[:, 0])
    return torch.stack(out, 1)


def _our_steps(model, idx):
    state, out = None, []
    for t in range(idx.shape[1]):
        logits, state = model.step(idx[:, t], state)
        out.append(logits)
    return torch.stack(out, 1)


CASES = {  # name: (seed, slstm_at, num_blocks, extra)
    "mlstm-only": (0, [], 2, {}),
    "mixed": (1, [1], 3, {}),
    "mixed-first-last": (2, [0, 2], 3, dict(bias=True, tie_weights=True)),
    "slstm-only": (3, "all", 2, dict(add_post_blocks_norm=False)),
    "mixed-random": (4, [0], 2, {}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_official_xlstm_logits_match(name):
    seed, slstm_at, num_blocks, extra = CASES[name]
    S = 20
    official = _official(seed, slstm_at=slstm_at, num_blocks=num_blocks, S=S, **extra)
    ours = from_official_xlstm(official)
    idx = torch.randint(0, VOCAB, (2, S), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = official(idx)
        got, _ = ours(idx)
        assert _rel(got, ref) < TOL
        ref_steps = _official_steps(official, idx)
        assert _rel(_our_steps(ours, idx), ref_steps) < TOL
        # Both of ours agree with each other to round-off (the official forward and step do not, ~1e-7).
        assert _rel(_our_steps(ours, idx), got) < 1e-12


def test_official_xlstm_long_sequence_and_fp32():
    # fp32 (the official default dtype) and S past 64, where xlram switches to the chunkwise form.
    S = 80
    official = _official(5, slstm_at=[1], num_blocks=2, S=S, dtype=torch.float32)
    ours = from_official_xlstm(official)
    assert next(ours.parameters()).dtype == torch.float32
    idx = torch.randint(0, VOCAB, (2, S), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = official(idx)
        got, state = ours(idx)
        assert _rel(got, ref) < TOL
        # xlram has no context_length: it keeps going where the official model stops.
        more, _ = ours(idx, state)
        assert torch.isfinite(more).all()


def test_parameter_mapping_details():
    official = _official(6, slstm_at=[1], num_blocks=2, S=8, D=64)
    ours = from_official_xlstm(official)
    o_blocks, x_blocks = official.xlstm_block_stack.blocks, ours.stack.blocks
    # LayerNorm offset: scale = 1 + w.
    torch.testing.assert_close(x_blocks[0].norm.weight, 1 + o_blocks[0].xlstm_norm.weight)
    # sLSTM: the official `fgate` module computes the input gate.
    torch.testing.assert_close(x_blocks[1].layer.igate.weight, o_blocks[1].xlstm.fgate.weight)
    torch.testing.assert_close(x_blocks[1].layer.fgate.weight, o_blocks[1].xlstm.igate.weight)
    # Recurrent kernel and bias against the official cell's own external views (NH, DH, 4, DH), (NH, 4, DH).
    cell = o_blocks[1].xlstm.slstm_cell
    torch.testing.assert_close(x_blocks[1].layer.recurrent_kernel.detach(), cell.recurrent_kernel.clone())
    torch.testing.assert_close(x_blocks[1].layer.bias.detach(), cell.bias.clone().permute(1, 0, 2))
    assert not ours.training


def test_unsupported_official_configs_are_rejected():
    official = _official(7, slstm_at=[1], num_blocks=2, S=8)
    official.config.slstm_block.slstm.backend = "cuda"
    with pytest.raises(ValueError, match="slstm_block.slstm.backend='cuda' is not supported"):
        from_official_xlstm(official)
    official.config.slstm_block.slstm.backend = "vanilla"
    official.config.slstm_block.feedforward.act_fn = "tanh"
    with pytest.raises(ValueError, match="feedforward.act_fn='tanh' is not supported"):
        from_official_xlstm(official)
    official.config.slstm_block.feedforward.act_fn = "gelu"
    official.config.slstm_block.slstm.function = "lstm"
    with pytest.raises(ValueError, match="slstm.function='lstm'"):
        from_official_xlstm(official)
    with pytest.raises(TypeError, match="expects an xlstm.xLSTMLMModel"):
        from_official_xlstm(nn.Linear(2, 2))


# ---------------------------------------------------------------------------------------------------
# xLSTM Large (7B architecture), native kernels on CPU


def _official_large(seed, *, weight_mode="single", use_bias=False, dtype=torch.float64, **over):
    cfg = xLSTMLargeConfig(
        embedding_dim=64,
        num_heads=4,
        num_blocks=2,
        vocab_size=VOCAB,
        use_bias=use_bias,
        weight_mode=weight_mode,
        chunkwise_kernel="chunkwise--native_autograd",
        sequence_kernel="native_sequence__native",
        step_kernel="native",
        mode="inference",
        return_last_states=True,
        chunk_size=16,
        autocast_kernel_dtype="float32",
        # fp32 norm reductions would cap an fp64 comparison at fp32 precision.
        norm_reduction_force_float32=dtype != torch.float64,
        **over,
    )
    torch.manual_seed(seed)
    return _perturb(xLSTMLarge(cfg), seed).to(dtype).eval()


LARGE_CASES = {
    "single": dict(),
    "single-bias": dict(use_bias=True),
    "fused": dict(weight_mode="fused"),
    "fused-bias-factors": dict(weight_mode="fused", use_bias=True, qk_dim_factor=0.25, v_dim_factor=0.5,
                               gate_soft_cap=5.0, output_logit_soft_cap=10.0),
}


@pytest.mark.parametrize("name", list(LARGE_CASES))
def test_official_xlstm_large_logits_match(name):
    official = _official_large(10, **LARGE_CASES[name])
    ours = from_official_xlstm_large(official)
    assert ours.config.xlstm.block == "large"
    S = 37
    idx = torch.randint(0, VOCAB, (2, S), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, _ = official(idx)
        got, _ = ours(idx)
        assert _rel(got, ref) < TOL
        state, ref_steps = None, []
        for t in range(S):
            logits, state = official(idx[:, t : t + 1], state)
            ref_steps.append(logits[:, 0])
        assert _rel(_our_steps(ours, idx), torch.stack(ref_steps, 1)) < TOL


def test_official_xlstm_large_fp32():
    official = _official_large(11, dtype=torch.float32)
    ours = from_official_xlstm_large(official)
    idx = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert _rel(ours(idx)[0], official(idx)[0]) < TOL


def test_unsupported_large_configs_are_rejected():
    official = _official_large(12)
    official.config.chunkwise_kernel = "chunkwise--triton_xl_chunk_siging"
    with pytest.raises(ValueError, match="chunkwise_kernel='chunkwise--triton_xl_chunk_siging'"):
        from_official_xlstm_large(official)
    with pytest.raises(TypeError, match="expects an xLSTMLarge"):
        from_official_xlstm_large(nn.Linear(2, 2))

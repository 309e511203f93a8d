"""The numba step of the stack (xlram.fused_step) against the torch step, step by step."""

import pytest
import torch

from xlram import fused_step
from xlram.blocks import XLSTMStack, _leaves, xlstm_config
from xlram.ops import cpu_blas

D = 32

CONFIGS = {
    "xlstm[1:0]": dict(variant="xlstm[1:0]", num_blocks=2),
    "xlstm[0:1]": dict(variant="xlstm[0:1]", num_blocks=2, slstm_num_heads=2),
    "xlstm[7:1]": dict(variant="xlstm[7:1]", num_blocks=8),
    "biases, swish FFN": dict(variant="xlstm[1:1]", num_blocks=2, bias=True, ffn_act="swish"),
    "no convs, exp forget gate": dict(variant="xlstm[1:1]", num_blocks=2, mlstm_conv_kernel_size=0,
                                      slstm_conv_kernel_size=0, slstm_forget_gate="exp"),
    "relu FFN, no norm weight, no final norm": dict(variant="xlstm[1:1]", num_blocks=2, ffn_act="relu",
                                                    slstm_norm_weight=False, add_post_blocks_norm=False),
    "conv 2, blocksize 8, 1 head": dict(variant="xlstm[1:1]", num_blocks=2, mlstm_conv_kernel_size=2,
                                        mlstm_qkv_proj_blocksize=8, mlstm_num_heads=1, slstm_num_heads=1),
}


def _stack(spec: dict, dtype=torch.float32, seed: int = 0) -> XLSTMStack:
    spec = dict(spec)
    torch.manual_seed(seed)
    stack = XLSTMStack(xlstm_config(spec.pop("variant"), D, spec.pop("num_blocks"), **spec)).to(dtype).eval()
    with torch.no_grad():  # away from the init's zeros (gate weights, recurrent kernel) so every term counts
        for p in stack.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return stack


def _run(stack, xs, fused: bool, state=None):
    """Steps over xs (S, B, D) under no_grad; returns the outputs (S, B, D) and the final state."""
    stack.fused_step = fused
    ys = []
    with torch.no_grad():
        for x in xs:
            y, state = stack.step(x, state)
            ys.append(y)
    return torch.stack(ys), state


def _assert_same(a, b, tol):
    ya, sa = a
    yb, sb = b
    torch.testing.assert_close(ya, yb, rtol=tol, atol=tol)
    for ta, tb in zip(_leaves(sa), _leaves(sb), strict=True):
        torch.testing.assert_close(ta, tb, rtol=tol, atol=tol)


def _products(monkeypatch, where: str) -> None:
    """Where the projections run: "kernels" (OpenBLAS called by the numba kernels), "numba gemv / torch"
    (without OpenBLAS: GEMVs in the kernels below GEMM_ROWS rows, torch matmuls from there)."""
    if where == "kernels" and not cpu_blas.available():
        pytest.skip("OpenBLAS is not loaded")
    if where == "kernels":  # the kernels get a real ?gemm to call, not the fallback's 0
        assert cpu_blas.gemm_address(torch.float32) != 0 and cpu_blas.gemm_address(torch.float64) != 0
    monkeypatch.setattr(cpu_blas, "chosen", lambda: "openblas" if where == "kernels" else "torch")


@pytest.mark.parametrize("name", list(CONFIGS))
# 1 and 3: scalar block-diagonal maps; 5: channel-major ones; GEMM_ROWS + 1: without OpenBLAS, torch
# matmuls for the projections; 16: the sLSTM's recurrent products through BLAS too; 300: the kernels'
# products over blocks of fewer weight rows where (rows x block x in) passes cpu_blas's small limit
@pytest.mark.parametrize("batch", [1, 3, 5, fused_step.GEMM_ROWS + 1, 16, 300])
@pytest.mark.parametrize("products", ["kernels", "numba gemv / torch"])
def test_fused_step_equals_torch_step(name, batch, products, monkeypatch):
    _products(monkeypatch, products)
    stack = _stack(CONFIGS[name])
    xs = torch.randn(12, batch, D)
    assert fused_step.unsupported(stack, xs[0]) is None
    _assert_same(_run(stack, xs, True), _run(stack, xs, False), 2e-5)


@pytest.mark.parametrize("products", ["kernels", "numba gemv / torch"])
def test_fused_step_fp64_is_exact_to_round_off(products, monkeypatch):
    _products(monkeypatch, products)
    stack = _stack(CONFIGS["xlstm[7:1]"], torch.float64)
    xs = torch.randn(10, 2, D, dtype=torch.float64)
    _assert_same(_run(stack, xs, True), _run(stack, xs, False), 1e-11)


def test_fused_step_is_the_path_taken(monkeypatch):
    stack = _stack(CONFIGS["biases, swish FFN"])
    calls = []
    real = fused_step.FusedStep.run
    monkeypatch.setattr(fused_step.FusedStep, "run", lambda self, x, s: calls.append(1) or real(self, x, s))
    _run(stack, torch.randn(3, 1, D), True)
    assert len(calls) == 3 and stack._fused._calls  # the kernels ran (views made)


def test_fused_step_continues_a_prefill():
    stack = _stack(CONFIGS["xlstm[7:1]"])
    seq = torch.randn(2, 20, D)
    with torch.no_grad():
        full, _ = stack(seq)
        _, state = stack(seq[:, :12])
    ys, _ = _run(stack, seq[:, 12:].transpose(0, 1), True, state)
    torch.testing.assert_close(ys.transpose(0, 1), full[:, 12:], rtol=1e-4, atol=1e-4)


def test_parameter_updates_are_seen():
    stack = _stack(CONFIGS["biases, swish FFN"])
    xs = torch.randn(4, 2, D)
    _run(stack, xs, True)  # views made
    with torch.no_grad():  # in place, a .data swap (new memory) and a replaced Parameter
        stack.blocks[0].layer.proj_up.weight.mul_(1.5)
        w = stack.blocks[1].ffn.proj_up.weight
        w.data = w.data * 0.5 + 0.01
        layer = stack.blocks[0].layer
        layer.learnable_skip = torch.nn.Parameter(torch.randn(layer.inner_dim))
    _assert_same(_run(stack, xs, True), _run(stack, xs, False), 2e-5)


@pytest.mark.parametrize("why", ["large block", "dropout in training", "switched off", "env",
                                 "state dtype", "bf16"])
def test_falls_back_to_the_torch_step(why, monkeypatch):
    spec, batch, dtype = CONFIGS["biases, swish FFN"], 2, torch.float32
    if why == "large block":
        spec = dict(variant="xlstm-large", num_blocks=2, large_num_heads=4)
    elif why == "dropout in training":
        spec = dict(spec, dropout=0.5)
    elif why == "bf16":
        dtype = torch.bfloat16
    stack = _stack(spec, dtype)
    if why == "dropout in training":
        stack.train()
    if why == "env":
        monkeypatch.setenv("XLRAM_NUMBA", "0")
    x = torch.randn(batch, D, dtype=dtype)
    state = stack.init_state(batch, dtype=torch.float64) if why == "state dtype" else None
    if why == "switched off":
        stack.fused_step = False
    if why != "state dtype":
        assert fused_step.unsupported(stack, x) is not None
    ran = []
    monkeypatch.setattr("xlram.kernels.numba_step.mlstm_block_step", lambda *a: ran.append(1))
    with torch.no_grad():
        if why == "state dtype":  # the torch step's own error, not a silent cast
            with pytest.raises(TypeError, match="dtype"):
                stack.step(x, state)
        else:
            stack.step(x, state)
    assert not ran


def test_switch_and_env_take_effect_after_fused_steps(monkeypatch):
    """What can change between calls is checked on every call, not only on the first."""
    stack = _stack(CONFIGS["biases, swish FFN"])
    _run(stack, torch.randn(2, 1, D), True)  # the fused path ran and its decision is cached
    ran = []
    monkeypatch.setattr("xlram.kernels.numba_step.mlstm_block_step", lambda *a: ran.append(1))
    _run(stack, torch.randn(2, 1, D), False)
    monkeypatch.setenv("XLRAM_NUMBA", "0")
    _run(stack, torch.randn(2, 1, D), True)
    assert not ran


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 16, 300])
def test_project_rows_equals_linear(dtype, bias, rows, monkeypatch):
    _products(monkeypatch, "kernels")
    torch.manual_seed(0)
    x, w = torch.randn(rows, 96, dtype=dtype), torch.randn(200, 96, dtype=dtype)  # 200: a partial block
    b = torch.randn(200, dtype=dtype) if bias else None
    with torch.no_grad():
        got = fused_step.project_rows(x, w, b)
    assert got is not None
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, torch.nn.functional.linear(x, w, b), rtol=tol, atol=tol)


def test_project_rows_declines_what_it_does_not_cover(monkeypatch):
    _products(monkeypatch, "kernels")
    x, w = torch.randn(4, 8), torch.randn(6, 8)
    assert fused_step.project_rows(x, w, None) is None  # a gradient could be recorded
    with torch.no_grad():
        assert fused_step.project_rows(x.t().contiguous().t(), w, None) is None  # not contiguous
        assert fused_step.project_rows(x.double(), w, None) is None  # dtypes differ
        assert fused_step.project_rows(x[0], w, None) is None  # not (B, In)
        assert fused_step.project_rows(x, w, None) is not None
        _products(monkeypatch, "numba gemv / torch")
        assert fused_step.project_rows(x, w, None) is None  # OpenBLAS not chosen

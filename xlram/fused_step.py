"""The inference step of an :class:`~xlram.blocks.XLSTMStack` on CPU as one numba call per block.

:meth:`XLSTMStack.step <xlram.blocks.XLSTMStack.step>` under ``torch.no_grad()`` takes this path by
itself where it applies (:func:`unsupported` says why not): CPU; weights, activations and state all
fp32 or all fp64; NeurIPS mLSTM/sLSTM blocks (not the xLSTM-7B block); dropout off or the model in
eval mode; numba importable; ``XLRAM_NUMBA`` not ``0``; and ``stack.fused_step`` not switched off.
Everywhere else the torch step runs. Both compute the same function: tests/test_fused_step.py
compares outputs and states step by step.

The first fused step of a process compiles the kernels (18 s on the 2-core CPU) or, usually,
loads them from numba's on-disk cache (under a second). Each block's two projections run in the
OpenBLAS that ``xlram.ops.cpu_blas`` loaded, called from inside the kernels (``blas_numba``), where
``cpu_blas`` chose it; otherwise as GEMVs in scipy's BLAS inside the kernels below ``GEMM_ROWS`` rows
and as torch matmuls between numba calls from there.

The kernels (``xlram.kernels.numba_step``) read the parameters through numpy views of their memory,
made once, and the state through views made once per state object (36 µs for the 3.5M-parameter LM,
so alternating two states costs that per step). In-place updates (an optimiser step,
``load_state_dict``) are seen at once. A parameter whose memory moved (``.to()``, a ``.data``
assignment, a new Parameter) is noticed by its data pointer, and the views are made again.
"""

from __future__ import annotations

import importlib.util
from typing import NamedTuple

import numpy as np
import torch

from xlram.nn.dense import linear
from xlram.ops import cpu_blas, numba_kernels

_DTYPES = (torch.float32, torch.float64)
# Without OpenBLAS in the kernels: from this batch on, the projections run as torch matmuls between
# numba calls for the rest of each block; below it, per-row GEMVs inside the numba call. Whole step of
# the 3.5M-parameter LM, one thread, medians of 5 rounds of 20 steps, matmuls against GEMVs, measured
# before ``cpu_blas.linear_t`` took the weights in blocks: B=4 2.01 against 1.62 ms, B=6 2.51 against
# 2.16, B=7 3.22 against 2.62, B=8 2.46 against 2.80, B=10 3.07 against 3.30; with the blocks, B=1
# 0.72 against 0.45 and B=4 1.66 against 1.58.
# With OpenBLAS called from the kernels (its small-matrix products over blocks of the weight's rows),
# against those GEMVs, one process, best / median of 6 alternating rounds of 100 steps (2026-11-23):
# B=1 0.341 / 0.356 against 0.388 / 0.401 ms, B=2 0.51 / 0.55 against 0.66 / 0.72, B=4 0.91 / 1.04
# against 1.34 / 1.51; against the torch matmuls between kernels, B=16 3.09 / 3.25 against 3.26 / 3.47.
# The fused step beats the torch step at every batch measured (B=32 5.6 against 9.4 ms, B=256 40
# against 70; torch's MKL chosen instead, B=32 7.2 against 10.0, B=128 22.5 against 37.5), so it has
# no batch limit.
GEMM_ROWS = 8

_DATA_PTR = torch.Tensor.data_ptr
# Parameters registered on any module so far: walking a stack's parameters costs ~0.1 ms, so a
# FusedStep keeps its list and walks again only after a registration (a replaced parameter).
_REGISTERED = [0]


def _count_registration(module, name, param):
    _REGISTERED[0] += 1


torch.nn.modules.module.register_module_parameter_registration_hook(_count_registration)


def _numba_usable() -> bool:
    return numba_kernels.enabled() and importlib.util.find_spec("numba") is not None


def unsupported(stack, x: torch.Tensor) -> str | None:
    """Why the fused step cannot run ``stack`` on ``x`` (B, D), or None when it can."""
    from xlram.kernels.numba_step import FFN_ACTS

    cfg = stack.config
    if not stack.fused_step:
        return "switched off (XLSTMStack.fused_step = False)"
    if x.device.type != "cpu" or x.dtype not in _DTYPES:
        return f"needs fp32/fp64 CPU inputs, got {x.dtype} on {x.device}"
    if cfg.block != "neurips":
        return f"block {cfg.block!r} is not covered"
    if stack.training and cfg.dropout > 0:
        return "dropout is active (training mode)"
    if cfg.ffn_act not in FFN_ACTS and any(cfg.block_types[i] == "slstm" for i in range(cfg.num_blocks)):
        return f"FFN activation {cfg.ffn_act!r} is not covered"
    if any(p.dtype != x.dtype or p.device != x.device for p in stack.parameters()):
        return "parameters differ from the input in dtype or device"
    if not _numba_usable():
        return "numba is not available or XLRAM_NUMBA=0"
    return None


def project_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """``x @ weightᵀ + bias`` for x (B, In) through OpenBLAS called from a numba kernel, as the block
    kernels do, or None where that does not apply (numba or OpenBLAS unavailable, a gradient to record,
    not matching fp32/fp64 contiguous CPU tensors). For the LM head after a fused step, where torch's
    dispatch and ctypes call run cold: the head of the 3.5M-parameter LM timed in place, one thread,
    46 against 105 µs at batch 16, 9.3 against 24 at batch 1; the whole step, medians of alternating
    rounds, 3.13 against 3.19 ms at batch 16, 0.98 against 1.03 at batch 4, no change at batch 1."""
    if torch.is_grad_enabled() or cpu_blas.chosen() != "openblas" or not _numba_usable():
        return None
    if x.dim() != 2 or x.dtype not in _DTYPES or not _plain(x, x) or not _plain(weight, x) or (
            bias is not None and not _plain(bias, x)):
        return None
    from xlram.kernels.numba_step import project

    b = _NO_BIAS[x.dtype] if bias is None else bias.detach().numpy()
    return torch.from_numpy(project(x.numpy(), weight.detach().numpy(), b, cpu_blas.gemm_address(x.dtype)))


_NO_BIAS = {torch.float32: np.zeros(0, np.float32), torch.float64: np.zeros(0, np.float64)}


def _plain(t: torch.Tensor, like: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype == like.dtype and t.is_contiguous()


def _np(t: torch.Tensor | None, dtype, shape=(0,)) -> np.ndarray:
    """A numpy view of ``t`` (detached, sharing memory), or an empty array standing for None."""
    if t is None:
        return np.zeros(shape, dtype=dtype)
    t = t.detach()
    if not t.is_contiguous():
        raise ValueError("fused step: a parameter is not contiguous")
    return t.numpy()


class _Params(NamedTuple):
    """One block's parameters for the kernels of ``xlram.kernels.numba_step``, by part, made once.

    The stateful kernel (``mlstm_mid`` after ``up``; ``slstm_pre`` after x) takes
    ``(*pre_conv, conv_state, *pre_cell, *cell_state, *post_cell)``. ``norm``: the mLSTM block norm's
    (w, b, eps), before proj_up (empty for sLSTM, whose norm is in ``pre_conv``). ``up``, ``down``: the
    two projections' (weight, bias) as numpy views; ``up_t``, ``down_t`` as torch tensors (bias None
    where absent). ``act``: the sLSTM FFN's activation code.
    """

    kind: str
    norm: tuple
    pre_conv: tuple
    pre_cell: tuple
    post_cell: tuple
    up: tuple
    down: tuple
    up_t: tuple
    down_t: tuple
    act: int


def _linear_parts(lin, dt) -> tuple[tuple, tuple]:
    """A Linear's (weight, bias) as numpy views (an empty bias for None) and as torch tensors."""
    bias = None if lin.bias is None else lin.bias.detach()
    return (_np(lin.weight, dt), _np(lin.bias, dt)), (lin.weight.detach(), bias)


def _conv_parts(conv, channels: int, dt) -> tuple:
    """A causal conv's (weight (C, K), bias) as numpy views; (C, 0) and empty where there is none."""
    if conv is None:
        return np.zeros((channels, 0), dtype=dt), _np(None, dt)
    return _np(conv.weight, dt), _np(conv.bias, dt)


def _mlstm_params(block, dt) -> _Params:
    layer = block.layer
    (up, up_t), (down, down_t) = _linear_parts(layer.proj_up, dt), _linear_parts(layer.proj_down, dt)
    return _Params(
        "mlstm",
        norm=(_np(block.norm.weight, dt), _np(block.norm.bias, dt), block.norm.eps),
        pre_conv=_conv_parts(layer.conv, layer.inner_dim, dt),
        pre_cell=tuple(_np(t, dt) for lin in (layer.q_proj, layer.k_proj, layer.v_proj, layer.igate,
                                              layer.fgate) for t in (lin.weight, lin.bias)),
        post_cell=(_np(layer.outnorm.weight, dt), _np(layer.outnorm.bias, dt), layer.outnorm.eps,
                   _np(layer.learnable_skip, dt), layer.eps),
        up=up, down=down, up_t=up_t, down_t=down_t, act=0,
    )


def _slstm_params(block, dt) -> _Params:
    from xlram.kernels.numba_step import FFN_ACTS

    layer, ffn = block.layer, block.ffn
    NH, DH = layer.num_heads, layer.head_dim
    (up, up_t), (down, down_t) = _linear_parts(ffn.proj_up, dt), _linear_parts(ffn.proj_down, dt)
    return _Params(
        "slstm",
        norm=(),
        pre_conv=(_np(block.norm.weight, dt), _np(block.norm.bias, dt), block.norm.eps,
                  *_conv_parts(layer.conv, layer.dim, dt)),
        pre_cell=(_np(layer.igate.weight, dt), _np(layer.fgate.weight, dt), _np(layer.zgate.weight, dt),
                  _np(layer.ogate.weight, dt), layer.recurrent_kernel.detach().view(NH, DH, 4 * DH).numpy(),
                  _np(layer.bias, dt)),
        post_cell=(layer.forget_gate == "exp", _np(layer.norm.weight, dt), _np(layer.norm.bias, dt),
                   layer.norm.eps, _np(block.ffn_norm.weight, dt), _np(block.ffn_norm.bias, dt),
                   block.ffn_norm.eps),
        up=up, down=down, up_t=up_t, down_t=down_t, act=FFN_ACTS[ffn.act_name],
    )


def _stateful(p: _Params, state: tuple) -> tuple:
    """The stateful kernel's arguments: ``state`` (conv, *cell) numpy views put between the parts."""
    return (*p.pre_conv, state[0], *p.pre_cell, *state[1:], *p.post_cell)


class FusedStep:
    """``stack``'s no-grad step as numba kernels: ``run(x (B, D), state)`` -> y (B, D), or None where
    the fused path does not apply (the caller then runs the torch step).

    ``state`` is the stack's own (contiguous tensors updated in place, see ``XLSTMStack.step``).
    """

    def __init__(self, stack):
        self.stack = stack
        self._ptrs: tuple = ()
        self._registered, self._params = -1, []
        self._dt = None  # numpy dtype of the parameter views; None until they are made
        self._block_params: list[_Params] = []
        self._post = None
        self._decisions: dict = {}
        self._state_key, self._stateful, self._calls = None, [], []

    def _refresh(self) -> None:
        """Forget the numpy views when any parameter's memory moved or a parameter was registered
        anywhere since they were made (``module.weight = nn.Parameter(...)``)."""
        if self._registered != _REGISTERED[0]:
            self._registered, self._params = _REGISTERED[0], list(self.stack.parameters())
        ptrs = tuple(map(_DATA_PTR, self._params))
        if ptrs == self._ptrs:
            return
        self._ptrs, self._dt, self._block_params, self._decisions, self._state_key = ptrs, None, [], {}, None

    def _applies(self, x: torch.Tensor) -> bool:
        # What may change from call to call is checked on every call; the rest once per key.
        if not self.stack.fused_step or not numba_kernels.enabled():
            return False
        key = (x.dtype, x.device, self.stack.training)
        if key not in self._decisions:
            ok = unsupported(self.stack, x) is None
            if ok and self._dt is None:
                from xlram.blocks import MLSTMBlock

                self._dt = dt = x.detach().numpy().dtype
                self._block_params = [(_mlstm_params if isinstance(b, MLSTMBlock) else _slstm_params)(b, dt)
                                   for b in self.stack.blocks]
                post = self.stack.post_blocks_norm
                self._post = None if isinstance(post, torch.nn.Identity) else (
                    _np(post.weight, dt), _np(post.bias, dt), post.eps)
            self._decisions[key] = ok
        return self._decisions[key]

    def _prepare(self, state: tuple, dtype: torch.dtype) -> bool:
        """Numpy views of ``state`` and each block's stateful arguments, cached for the state object
        last seen; False when a state tensor is not of ``dtype`` (the torch step then runs)."""
        from xlram.kernels import numba_step as k

        if state is self._state_key:
            return True
        views = []
        for s in state:
            tensors = (s.conv, *s.cell)
            if any(t.dtype != dtype or not t.is_contiguous() for t in tensors):
                return False
            views.append(tuple(t.numpy() for t in tensors))
        self._stateful = [_stateful(p, v) for p, v in zip(self._block_params, views, strict=True)]
        # one kernel per block (all but the torch-matmul path), its arguments made once here
        self._calls = [(k.mlstm_block_step, (*p.norm, *p.up, *a, *p.down)) if p.kind == "mlstm"
                       else (k.slstm_block_step, (*a, p.act, *p.up, *p.down))
                       for p, a in zip(self._block_params, self._stateful, strict=True)]
        self._state_key = state
        return True

    def run(self, x: torch.Tensor, state: tuple) -> torch.Tensor | None:
        from xlram.kernels import numba_step as k

        self._refresh()
        if not self._applies(x) or not self._prepare(state, x.dtype):
            return None
        y_t = x.detach().contiguous().clone()
        y = y_t.numpy()  # (B, D), updated block by block
        # the projections: OpenBLAS called by the kernels (fn its ?gemm) where cpu_blas chose it, else
        # (fn 0) GEMVs in the kernels below GEMM_ROWS rows and torch matmuls between kernel calls from there
        fn = cpu_blas.gemm_address(x.dtype) if cpu_blas.chosen() == "openblas" else 0
        if x.shape[0] >= GEMM_ROWS and not fn:
            self._run_with_blas_matmuls(y, y_t)
        else:
            for kernel, args in self._calls:
                kernel(y, fn, *args)
        if self._post is not None:
            k.layer_norm_(y, *self._post)
        return y_t

    def _run_with_blas_matmuls(self, y, y_t) -> None:
        """The blocks with their two projections as torch matmuls (``GEMM_ROWS``); y, y_t share memory."""
        from xlram.kernels import numba_step as k

        def project(inp, w, b):  # (B, in) numpy -> (B, out) numpy (dense.linear: torch's BLAS on this path)
            return linear(torch.from_numpy(inp), w, b).numpy()

        def add_projection(inp, w, b):  # y += inp @ wᵀ + b in place
            cpu_blas.linear_t(torch.from_numpy(inp), w, out=y_t, beta=1.0)
            if b is not None:
                y_t.add_(b)

        for p, a in zip(self._block_params, self._stateful, strict=True):
            if p.kind == "mlstm":
                up = project(k.layer_norm(y, *p.norm), *p.up_t)
                add_projection(k.mlstm_mid(up, *a), *p.down_t)
            else:
                add_projection(k.gated_act(project(k.slstm_pre(y, *a), *p.up_t), p.act), *p.down_t)

"""Load models of the official ``xlstm`` package (2.0.x) into xlram.

- :func:`from_official_xlstm`: an ``xlstm.xLSTMLMModel`` (NeurIPS mLSTM/sLSTM blocks) -> :class:`XLSTMLM`;
- :func:`from_official_xlstm_large`: an ``xlstm.xlstm_large.model.xLSTMLarge`` (xLSTM 7B) -> :class:`XLSTMLM`
  with ``block="large"``.

Both translate the config field by field, reject what xlram does not compute the same way (with an
error naming the field), and map every parameter by an explicit rule: each xlram parameter gets exactly
one rule and every official parameter must be read by some rule, so nothing is left at its init by
accident. The conversions the official layouts need:

- official ``LayerNorm`` (also its group norms) stores its weight as an offset: the scale is ``1 + w``;
- the official sLSTM layer feeds ``fgate(x)`` into the *input* gate and ``igate(x)`` into the forget
  gate (a naming quirk kept there for checkpoint compatibility): xlram names them by what they do;
- the vanilla sLSTM cell keeps its recurrent kernel as ``(NH, 4*DH, DH)`` [head, (gate, out), in] and its
  bias as ``(4*NH*DH,)`` [gate, head, unit]; xlram uses ``(NH, DH, 4, DH)`` [head, in, gate, out] and
  ``(4, NH, DH)``;
- the causal conv weight ``(C, 1, K)`` becomes ``(C, K)``;
- the 7B feed-forward's ``proj_up_gate`` and ``proj_up`` (or the fused ``proj_up_gate_z``) become one
  ``proj_up`` with the gate rows first; its fused ``qkv_opreact`` / ``ifgate_preact`` are split.

The official NeurIPS mLSTM forward is its quadratic parallel form, which drops the ``m_0 = 0`` term of
the initial state; xlram's forms all keep it, so logits agree to ~1e-7 relative in fp64, not to
round-off (SPEC section 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from xlram.blocks import XLSTMConfig
from xlram.models.lm import XLSTMLM, XLSTMLMConfig
from xlram.nn import ACTIVATIONS

__all__ = ["from_official_xlstm", "from_official_xlstm_large"]

Rule = tuple[str, Sequence[str], Callable[..., torch.Tensor]]


def _unsupported(field: str, value, expected: str) -> None:
    raise ValueError(f"official config {field}={value!r} is not supported: expected {expected}")


# ---------------------------------------------------------------------------------------------------
# Loading by rules


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _offset(t: torch.Tensor) -> torch.Tensor:
    """Official LayerNorm scale: ``1 + w``."""
    return 1.0 + t


def _apply_rules(official: nn.Module, ours: nn.Module, rules: list[Rule]) -> None:
    """Copy ``fn(*official_tensors)`` into each xlram parameter, checking coverage on both sides."""
    src = dict(official.named_parameters())
    dst = dict(ours.named_parameters())
    assigned: set[str] = set()
    read: set[str] = set()
    with torch.no_grad():
        for name, src_names, fn in rules:
            if name in assigned:
                raise RuntimeError(f"interop: two rules for xlram parameter {name}")
            missing = [s for s in src_names if s not in src]
            if missing:
                raise RuntimeError(f"interop: official parameters {missing} (for {name}) not found")
            value = fn(*(src[s].detach() for s in src_names))
            target = dst[name]
            if tuple(value.shape) != tuple(target.shape):
                raise RuntimeError(
                    f"interop: {name} has shape {tuple(target.shape)} but {list(src_names)} give "
                    f"{tuple(value.shape)}"
                )
            target.copy_(value.to(device=target.device, dtype=target.dtype))
            assigned.add(name)
            read.update(src_names)
    left_ours = sorted(set(dst) - assigned)
    left_official = sorted(set(src) - read)
    if left_ours or left_official:
        raise RuntimeError(
            f"interop: parameters without a rule: xlram {left_ours}, official {left_official}"
        )


def _linear(ours: str, official: str, module: nn.Module) -> list[Rule]:
    """Rules for an ``nn.Linear`` (or headwise linear) with the same layout on both sides."""
    rules: list[Rule] = [(f"{ours}.weight", [f"{official}.weight"], _same)]
    if getattr(module, "bias", None) is not None:
        rules.append((f"{ours}.bias", [f"{official}.bias"], _same))
    return rules


def _layernorm(ours: str, official: str, module: nn.Module) -> list[Rule]:
    """Rules for an official ``xlstm.components.ln.LayerNorm`` (or its multi-head form)."""
    rules: list[Rule] = []
    if module.weight is not None:
        rules.append((f"{ours}.weight", [f"{official}.weight"], _offset if module.residual_weight else _same))
    if module.bias is not None:
        rules.append((f"{ours}.bias", [f"{official}.bias"], _same))
    return rules


def _finish(official: nn.Module, ours: XLSTMLM, rules: list[Rule]) -> XLSTMLM:
    ref = next(official.parameters())
    ours.to(device=ref.device, dtype=ref.dtype)
    _apply_rules(official, ours, rules)
    ours.train(official.training)
    return ours


# ---------------------------------------------------------------------------------------------------
# NeurIPS xLSTM (xLSTMLMModel)


def _check_up_proj(field: str, cfg) -> None:
    """The official up-projection rounding must be 'round up' (the only rule xlram implements)."""
    if not getattr(cfg, "round_proj_up_dim_up", True):
        _unsupported(f"{field}.round_proj_up_dim_up", cfg.round_proj_up_dim_up, "True (round up)")


def _neurips_config(cfg) -> XLSTMConfig:
    """Translate an ``xLSTMLMModelConfig`` into an :class:`XLSTMConfig`."""
    kw: dict = dict(
        embedding_dim=cfg.embedding_dim,
        num_blocks=cfg.num_blocks,
        slstm_at=[i for i, t in enumerate(cfg.block_map) if t == 1],
        block="neurips",
        dropout=float(cfg.dropout),
        bias=bool(cfg.bias),
        add_post_blocks_norm=bool(cfg.add_post_blocks_norm),
        norm_eps=1e-5,  # fixed in the official LayerNorm and its group norms
    )
    if cfg.mlstm_block is not None:
        m = cfg.mlstm_block.mlstm
        _check_up_proj("mlstm_block.mlstm", m)
        if m.conv1d_kernel_size < 1:
            _unsupported("mlstm_block.mlstm.conv1d_kernel_size", m.conv1d_kernel_size, ">= 1")
        kw.update(
            mlstm_num_heads=m.num_heads,
            mlstm_proj_factor=m.proj_factor,
            mlstm_round_to=m.round_proj_up_to_multiple_of,
            mlstm_conv_kernel_size=m.conv1d_kernel_size,
            mlstm_qkv_proj_blocksize=m.qkv_proj_blocksize,
            mlstm_eps=1e-6,  # fixed in the official cell's backends
        )
    if cfg.slstm_block is not None and 1 in cfg.block_map:
        s = cfg.slstm_block.slstm
        checks = [
            ("backend", s.backend, ("vanilla",),
             '"vanilla" (the CUDA backend keeps its parameters in another internal layout; '
             'build the official model with backend="vanilla" to convert it)'),
            ("function", s.function, ("slstm",), '"slstm" (the "lstm" cell is not an sLSTM)'),
            ("num_gates", s.num_gates, (4,), "4"),
            ("input_shape", s.input_shape, ("BSGNH",), '"BSGNH" (what sLSTMLayer feeds the cell)'),
            ("output_shape", s.output_shape, ("BNSH",), '"BNSH" (what sLSTMLayer expects from the cell)'),
        ]
        for name, value, allowed, expected in checks:
            if value not in allowed:
                _unsupported(f"slstm_block.slstm.{name}", value, expected)
        kw.update(
            slstm_num_heads=s.num_heads,
            slstm_conv_kernel_size=s.conv1d_kernel_size,
            slstm_forget_gate="sigmoid",
            slstm_bias_init=s.bias_init,
            slstm_recurrent_init=s.recurrent_weight_init,
            slstm_norm_weight=bool(s.group_norm_weight),
        )
        ff = cfg.slstm_block.feedforward
        if ff is None:
            _unsupported("slstm_block.feedforward", None, "a FeedForwardConfig (xlram sLSTM blocks have one)")
        if ff.ff_type != "ffn_gated":
            _unsupported("slstm_block.feedforward.ff_type", ff.ff_type, '"ffn_gated"')
        if ff.act_fn not in ACTIVATIONS:
            _unsupported("slstm_block.feedforward.act_fn", ff.act_fn, f"one of {sorted(ACTIVATIONS)}")
        _check_up_proj("slstm_block.feedforward", ff)
        kw.update(
            ffn_proj_factor=ff.proj_factor,
            ffn_act=ff.act_fn,
            ffn_bias=bool(ff.bias),
            ffn_round_to=ff.round_proj_up_to_multiple_of,
        )
    return XLSTMConfig(**kw)


def _vanilla_recurrent_kernel(r: torch.Tensor, NH: int, DH: int) -> torch.Tensor:
    """Vanilla-backend kernel ``(NH, 4*DH, DH)`` [head, (gate, out), in] -> xlram's ``(NH, DH, 4, DH)``
    [head, in, gate, out]."""
    return r.reshape(NH, 4, DH, DH).permute(0, 3, 1, 2)


def _vanilla_bias(b: torch.Tensor, NH: int, DH: int) -> torch.Tensor:
    """Vanilla-backend bias ``(4*NH*DH,)`` [gate, head, unit] -> ``(4, NH, DH)``."""
    return b.reshape(4, NH, DH)


def _mlstm_block_rules(o: str, x: str, block: nn.Module) -> list[Rule]:
    """Official ``xLSTMBlock`` with an mLSTM layer at prefix ``o`` -> xlram :class:`MLSTMBlock` at ``x``."""
    layer = block.xlstm
    rules = _layernorm(f"{x}.norm", f"{o}.xlstm_norm", block.xlstm_norm)
    for name in ("proj_up", "q_proj", "k_proj", "v_proj", "proj_down"):
        rules += _linear(f"{x}.layer.{name}", f"{o}.xlstm.{name}", getattr(layer, name))
    rules.append((f"{x}.layer.conv.weight", [f"{o}.xlstm.conv1d.conv.weight"], lambda w: w.squeeze(1)))
    if layer.conv1d.conv.bias is not None:
        rules.append((f"{x}.layer.conv.bias", [f"{o}.xlstm.conv1d.conv.bias"], _same))
    for gate in ("igate", "fgate"):
        rules += _linear(f"{x}.layer.{gate}", f"{o}.xlstm.mlstm_cell.{gate}", getattr(layer.mlstm_cell, gate))
    rules += _layernorm(f"{x}.layer.outnorm", f"{o}.xlstm.mlstm_cell.outnorm", layer.mlstm_cell.outnorm)
    rules.append((f"{x}.layer.learnable_skip", [f"{o}.xlstm.learnable_skip"], _same))
    return rules


def _slstm_block_rules(o: str, x: str, block: nn.Module) -> list[Rule]:
    """Official ``sLSTMBlock`` at prefix ``o`` -> xlram :class:`SLSTMBlock` at ``x``."""
    layer = block.xlstm
    NH, DH = layer.slstm_cell.config.num_heads, layer.slstm_cell.config.head_dim
    rules = _layernorm(f"{x}.norm", f"{o}.xlstm_norm", block.xlstm_norm)
    if layer.config.conv1d_kernel_size > 0:
        rules.append((f"{x}.layer.conv.weight", [f"{o}.xlstm.conv1d.conv.weight"], lambda w: w.squeeze(1)))
        rules.append((f"{x}.layer.conv.bias", [f"{o}.xlstm.conv1d.conv.bias"], _same))
    # The official layer computes i from `fgate` and f from `igate`.
    swapped = {"igate": "fgate", "fgate": "igate", "zgate": "zgate", "ogate": "ogate"}
    for ours, theirs in swapped.items():
        rules += _linear(f"{x}.layer.{ours}", f"{o}.xlstm.{theirs}", getattr(layer, theirs))
    rules.append((
        f"{x}.layer.recurrent_kernel",
        [f"{o}.xlstm.slstm_cell._recurrent_kernel_"],
        lambda r: _vanilla_recurrent_kernel(r, NH, DH),
    ))
    rules.append((f"{x}.layer.bias", [f"{o}.xlstm.slstm_cell._bias_"], lambda b: _vanilla_bias(b, NH, DH)))
    rules += _layernorm(f"{x}.layer.norm", f"{o}.xlstm.group_norm", layer.group_norm)
    rules += _layernorm(f"{x}.ffn_norm", f"{o}.ffn_norm", block.ffn_norm)
    rules += _linear(f"{x}.ffn.proj_up", f"{o}.ffn.proj_up", block.ffn.proj_up)
    rules += _linear(f"{x}.ffn.proj_down", f"{o}.ffn.proj_down", block.ffn.proj_down)
    return rules


def from_official_xlstm(model: nn.Module) -> XLSTMLM:
    """An :class:`XLSTMLM` computing the same logits as an official ``xlstm.xLSTMLMModel``.

    Full forward and step by step agree with the official ``model(idx)`` / ``model.step(idx, state)``
    (the official forward is limited to ``context_length`` tokens; the xlram model is not). sLSTM blocks
    must use the official ``backend="vanilla"`` (the CUDA backend stores its parameters in another
    layout). The new model is on the official model's device, in its dtype and train/eval mode.

    Dropout: xlram uses one rate, the stack's ``dropout``; the official sLSTM feed-forward has its own
    (``feedforward.dropout``) and an optional embedding dropout, which xlram does not reproduce. Both
    only matter in training mode.
    """
    try:
        from xlstm import xLSTMLMModel
    except ImportError as e:  # pragma: no cover - the official package is a test dependency
        raise ImportError("from_official_xlstm needs the official package: pip install xlstm") from e
    if not isinstance(model, xLSTMLMModel):
        raise TypeError(f"from_official_xlstm expects an xlstm.xLSTMLMModel, got {type(model).__name__}")
    cfg = model.config
    xcfg = _neurips_config(cfg)
    ours = XLSTMLM(XLSTMLMConfig(vocab_size=cfg.vocab_size, xlstm=xcfg, tie_weights=bool(cfg.tie_weights)))

    rules: list[Rule] = [("embedding.weight", ["token_embedding.weight"], _same)]
    if not cfg.tie_weights:
        rules.append(("lm_head.weight", ["lm_head.weight"], _same))
    stack = model.xlstm_block_stack
    for i, kind in enumerate(cfg.block_map):
        o, x = f"xlstm_block_stack.blocks.{i}", f"stack.blocks.{i}"
        block = stack.blocks[i]
        rules += _slstm_block_rules(o, x, block) if kind == 1 else _mlstm_block_rules(o, x, block)
    if cfg.add_post_blocks_norm:
        norm = stack.post_blocks_norm
        rules += _layernorm("stack.post_blocks_norm", "xlstm_block_stack.post_blocks_norm", norm)
    return _finish(model, ours, rules)


# ---------------------------------------------------------------------------------------------------
# xLSTM 7B (xLSTMLarge)


def _large_config(cfg) -> tuple[XLSTMConfig, float | None]:
    """Translate an ``xLSTMLargeConfig`` -> (:class:`XLSTMConfig`, logit soft cap)."""
    if "siging" in cfg.chunkwise_kernel:
        _unsupported(
            "chunkwise_kernel", cfg.chunkwise_kernel,
            "a kernel with the exponential input gate (the *_siging kernels use a sigmoid input gate)",
        )
    if cfg.weight_mode not in ("single", "fused"):
        _unsupported("weight_mode", cfg.weight_mode, '"single" or "fused"')
    xcfg = XLSTMConfig(
        embedding_dim=cfg.embedding_dim,
        num_blocks=cfg.num_blocks,
        block="large",
        bias=bool(cfg.use_bias),
        add_post_blocks_norm=bool(cfg.add_out_norm),
        mlstm_eps=cfg.eps,
        large_num_heads=cfg.num_heads,
        large_qk_dim_factor=cfg.qk_dim_factor,
        large_v_dim_factor=cfg.v_dim_factor,
        large_gate_soft_cap=cfg.gate_soft_cap,
        large_ffn_proj_factor=cfg.ffn_proj_factor,
        large_ffn_round_to=cfg.ffn_round_up_to_multiple_of,
        large_norm_eps=cfg.norm_eps,
    )
    return xcfg, cfg.output_logit_soft_cap


def _plain_norm(ours: str, official: str, module: nn.Module) -> list[Rule]:
    """Rules for an xlstm_large norm (plain weight, optional bias)."""
    rules: list[Rule] = []
    if module.weight is not None:
        rules.append((f"{ours}.weight", [f"{official}.weight"], _same))
    if module.bias is not None:
        rules.append((f"{ours}.bias", [f"{official}.bias"], _same))
    return rules


def _split(index: int, sizes: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Take part ``index`` of a tensor fused along dim 0 from parts of ``sizes``."""
    return lambda t: torch.split(t, sizes, dim=0)[index]


def _large_block_rules(o: str, x: str, block: nn.Module) -> list[Rule]:
    """Official ``xlstm_large.model.mLSTMBlock`` at ``o`` -> xlram :class:`LargeBlock` at ``x``."""
    layer, ffn = block.mlstm_layer, block.ffn
    bias = layer.config.use_bias
    rules = _plain_norm(f"{x}.norm", f"{o}.norm_mlstm", block.norm_mlstm)
    if layer.config.weight_mode == "single":
        names = {"q": "q", "k": "k", "v": "v", "ogate": "ogate_preact", "igate": "igate_preact",
                 "fgate": "fgate_preact"}
        for ours, theirs in names.items():
            rules += _linear(f"{x}.layer.{ours}", f"{o}.mlstm_layer.{theirs}", getattr(layer, theirs))
    else:
        sizes = [layer.qk_dim, layer.qk_dim, layer.v_dim, layer.v_dim]
        NH = layer.config.num_heads
        for j, ours in enumerate(("q", "k", "v", "ogate")):
            for p in ("weight", "bias") if bias else ("weight",):
                src = f"{o}.mlstm_layer.qkv_opreact.{p}"
                rules.append((f"{x}.layer.{ours}.{p}", [src], _split(j, sizes)))
        for j, ours in enumerate(("igate", "fgate")):
            for p in ("weight", "bias"):
                src = f"{o}.mlstm_layer.ifgate_preact.{p}"
                rules.append((f"{x}.layer.{ours}.{p}", [src], _split(j, [NH, NH])))
    rules += _plain_norm(f"{x}.layer.outnorm", f"{o}.mlstm_layer.multihead_norm", layer.multihead_norm)
    rules += _linear(f"{x}.layer.out_proj", f"{o}.mlstm_layer.out_proj", layer.out_proj)
    rules += _plain_norm(f"{x}.ffn_norm", f"{o}.norm_ffn", block.norm_ffn)
    if ffn.config.weight_mode == "single":
        cat = lambda a, b: torch.cat([a, b], dim=0)  # gate rows first, as xlram's GatedFFN splits
        for p in ("weight", "bias") if bias else ("weight",):
            rules.append((f"{x}.ffn.proj_up.{p}", [f"{o}.ffn.proj_up_gate.{p}", f"{o}.ffn.proj_up.{p}"], cat))
    else:
        rules += _linear(f"{x}.ffn.proj_up", f"{o}.ffn.proj_up_gate_z", ffn.proj_up_gate_z)
    rules += _linear(f"{x}.ffn.proj_down", f"{o}.ffn.proj_down", ffn.proj_down)
    return rules


def from_official_xlstm_large(model: nn.Module) -> XLSTMLM:
    """An :class:`XLSTMLM` (``block="large"``) computing the same logits as an official
    ``xlstm.xlstm_large.model.xLSTMLarge`` (the xLSTM 7B architecture), whatever its kernel names.

    The official norms reduce in fp32 when ``norm_reduction_force_float32`` is set, and its kernels keep
    states in ``inference_state_dtype``; xlram reduces in at least fp32 and keeps states in fp32 (fp64
    for fp64 models). The new model is on the official model's device, in its dtype and train/eval mode.
    """
    try:
        from xlstm.xlstm_large.model import xLSTMLarge
    except ImportError as e:  # pragma: no cover
        raise ImportError("from_official_xlstm_large needs: pip install xlstm mlstm-kernels") from e
    if not isinstance(model, xLSTMLarge):
        raise TypeError(f"from_official_xlstm_large expects an xLSTMLarge, got {type(model).__name__}")
    cfg = model.config
    xcfg, cap = _large_config(cfg)
    ours = XLSTMLM(XLSTMLMConfig(vocab_size=cfg.vocab_size, xlstm=xcfg, logit_soft_cap=cap))
    rules: list[Rule] = [
        ("embedding.weight", ["embedding.weight"], _same),
        ("lm_head.weight", ["lm_head.weight"], _same),
    ]
    for i, block in enumerate(model.backbone.blocks):
        rules += _large_block_rules(f"backbone.blocks.{i}", f"stack.blocks.{i}", block)
    if cfg.add_out_norm:
        rules += _plain_norm("stack.post_blocks_norm", "backbone.out_norm", model.backbone.out_norm)
    return _finish(model, ours, rules)

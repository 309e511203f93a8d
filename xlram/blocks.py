"""xLSTM residual blocks and the xLSTM[a:b] stack.

- :class:`MLSTMBlock`: ``x + MLSTMLayer(LayerNorm(x))`` (the NeurIPS "pre up-projection" block);
- :class:`SLSTMBlock`: ``x + SLSTMLayer(LayerNorm(x))``, then ``x + GatedFFN(LayerNorm(x))``;
- :class:`LargeBlock`: ``x + MLSTMLargeLayer(RMSNorm(x))``, then ``x + SwiGLU(RMSNorm(x))`` (xLSTM 7B);
- :class:`XLSTMConfig` and :class:`XLSTMStack`: ``num_blocks`` blocks and a final norm.

Every block and the stack share the state convention of the layers:
``forward(x (B, S, D), state=None) -> (y, state)``, ``step(x_t (B, D), state) -> (y_t, state)``,
``init_state(batch_size)`` -> zeros, the same as ``state=None``. The stack's state is a tuple with one
entry per block.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from xlram.layers import MLSTMLargeLayer, MLSTMLayer, SLSTMLayer
from xlram.layers.slstm import BIAS_INITS, RECURRENT_INITS
from xlram.nn import ACTIVATIONS, GatedFFN, LayerNorm, RMSNorm, round_up, wang_init_
from xlram.ops.slstm import FORGET_GATES

BLOCK_TYPES = ("neurips", "large")
# Without gradients, XLSTMStack.forward runs sequences longer than this in segments of this length.
INFERENCE_SEGMENT = 2048
MLSTM_FORMS = ("auto", "parallel", "chunkwise", "recurrent")
SLSTM_FORMS = ("auto", "reference", "recurrent")


# ---------------------------------------------------------------------------------------------------
# Config


@dataclass
class XLSTMConfig:
    """Hyper-parameters of an :class:`XLSTMStack`; defaults are the papers' (SPEC section 3).

    Which blocks: ``block="neurips"`` gives mLSTM blocks everywhere except at ``slstm_at`` (a list of
    block indices, or "all"), where sLSTM blocks go; ``block="large"`` gives xLSTM-7B blocks (no sLSTM).
    Use :func:`xlstm_config` to build the named xLSTM[a:b] variants.

    ``bias`` switches the biases of the mLSTM projections (NeurIPS block) or of every linear layer and
    norm (large block), as the official ``bias`` / ``use_bias`` do; sLSTM gate projections never have one.
    """

    embedding_dim: int = 128
    num_blocks: int = 1
    slstm_at: list[int] | str = field(default_factory=list)
    block: str = "neurips"
    dropout: float = 0.0
    bias: bool = False
    add_post_blocks_norm: bool = True
    norm_eps: float = 1e-5  # LayerNorms and per-head norms of the NeurIPS blocks

    # mLSTM layer (NeurIPS block)
    mlstm_num_heads: int = 4
    mlstm_proj_factor: float = 2.0
    mlstm_round_to: int = 64
    mlstm_conv_kernel_size: int = 4
    mlstm_qkv_proj_blocksize: int = 4
    mlstm_eps: float = 1e-6
    mlstm_form: str = "auto"
    mlstm_chunk_size: int | None = None

    # sLSTM layer
    slstm_num_heads: int = 4
    slstm_conv_kernel_size: int = 4
    slstm_forget_gate: str = "sigmoid"
    slstm_bias_init: str = "powerlaw_blockdependent"
    slstm_recurrent_init: str = "zeros"
    slstm_norm_weight: bool = True
    slstm_form: str = "auto"

    # gated feed-forward of the sLSTM block (GeGLU, 4/3 ~ 1.3 in the official configs)
    ffn_proj_factor: float = 1.3
    ffn_act: str = "gelu"
    ffn_bias: bool = False
    ffn_round_to: int = 64

    # large (xLSTM 7B) block
    large_num_heads: int = 8
    large_qk_dim_factor: float = 0.5
    large_v_dim_factor: float = 1.0
    large_gate_soft_cap: float | None = 15.0
    large_ffn_proj_factor: float = 2.6667
    large_ffn_round_to: int = 64
    large_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if isinstance(self.slstm_at, tuple):
            self.slstm_at = list(self.slstm_at)
        _validate(self)

    # derived -------------------------------------------------------------------------------------
    @property
    def slstm_indices(self) -> list[int]:
        """Sorted indices of the sLSTM blocks."""
        if self.slstm_at == "all":
            return list(range(self.num_blocks))
        return sorted(self.slstm_at)

    @property
    def block_types(self) -> list[str]:
        """Per block: "mlstm", "slstm" or "large"."""
        if self.block == "large":
            return ["large"] * self.num_blocks
        s = set(self.slstm_indices)
        return ["slstm" if i in s else "mlstm" for i in range(self.num_blocks)]

    @property
    def mlstm_inner_dim(self) -> int:
        """Inner width Di of the NeurIPS mLSTM layer: proj_factor * D rounded up to ``mlstm_round_to``."""
        return round_up(self.mlstm_proj_factor * self.embedding_dim, self.mlstm_round_to)

    # serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict; ``XLSTMConfig.from_dict(cfg.to_dict()) == cfg``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> XLSTMConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (they usually mean a typo or a
        checkpoint from another version)."""
        if not isinstance(d, dict):
            raise TypeError(f"XLSTMConfig.from_dict expects a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"XLSTMConfig.from_dict: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)


def _fail(name: str, value: Any, expected: str) -> None:
    raise ValueError(f"XLSTMConfig.{name}={value!r} {expected}")


def _check_int(cfg: XLSTMConfig, name: str, minimum: int) -> None:
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        _fail(name, v, f"must be an integer >= {minimum}")


def _check_positive(cfg: XLSTMConfig, name: str) -> None:
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
        _fail(name, v, "must be a positive number")


def _check_choice(cfg: XLSTMConfig, name: str, choices) -> None:
    v = getattr(cfg, name)
    if v not in choices:
        _fail(name, v, f"must be one of {list(choices)}")


def _validate(cfg: XLSTMConfig) -> None:
    """Check every field that the chosen blocks use; errors name the field, the expectation and the value."""
    _check_int(cfg, "embedding_dim", 1)
    _check_int(cfg, "num_blocks", 1)
    _check_choice(cfg, "block", BLOCK_TYPES)
    if isinstance(cfg.dropout, bool) or not isinstance(cfg.dropout, int | float) or not 0 <= cfg.dropout < 1:
        _fail("dropout", cfg.dropout, "must be a number in [0, 1)")
    _check_positive(cfg, "norm_eps")

    if cfg.slstm_at != "all":
        if not isinstance(cfg.slstm_at, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in cfg.slstm_at
        ):
            _fail("slstm_at", cfg.slstm_at, 'must be a list of block indices or "all"')
        bad = [i for i in cfg.slstm_at if not 0 <= i < cfg.num_blocks]
        if bad:
            expected = f"has indices {bad} outside 0..{cfg.num_blocks - 1} (num_blocks={cfg.num_blocks})"
            _fail("slstm_at", cfg.slstm_at, expected)
        if len(set(cfg.slstm_at)) != len(cfg.slstm_at):
            _fail("slstm_at", cfg.slstm_at, "must not repeat an index")
    if cfg.block == "large" and cfg.slstm_indices:
        expected = 'must be empty for block="large" (the xLSTM 7B stack has no sLSTM blocks)'
        _fail("slstm_at", cfg.slstm_at, expected)

    types = set(cfg.block_types)
    D = cfg.embedding_dim
    if "mlstm" in types:
        for name in ("mlstm_num_heads", "mlstm_round_to", "mlstm_qkv_proj_blocksize"):
            _check_int(cfg, name, 1)
        _check_int(cfg, "mlstm_conv_kernel_size", 0)
        _check_positive(cfg, "mlstm_proj_factor")
        _check_positive(cfg, "mlstm_eps")
        _check_choice(cfg, "mlstm_form", MLSTM_FORMS)
        if cfg.mlstm_chunk_size is not None:
            _check_int(cfg, "mlstm_chunk_size", 1)
        inner = cfg.mlstm_inner_dim
        if inner % cfg.mlstm_num_heads:
            _fail("mlstm_num_heads", cfg.mlstm_num_heads, f"must divide the inner width {inner}")
        if inner % cfg.mlstm_qkv_proj_blocksize:
            v = cfg.mlstm_qkv_proj_blocksize
            _fail("mlstm_qkv_proj_blocksize", v, f"must divide the inner width {inner}")
    if "slstm" in types:
        _check_int(cfg, "slstm_num_heads", 1)
        _check_int(cfg, "slstm_conv_kernel_size", 0)
        if D % cfg.slstm_num_heads:
            _fail("slstm_num_heads", cfg.slstm_num_heads, f"must divide embedding_dim {D}")
        _check_choice(cfg, "slstm_forget_gate", FORGET_GATES)
        _check_choice(cfg, "slstm_bias_init", BIAS_INITS)
        _check_choice(cfg, "slstm_recurrent_init", RECURRENT_INITS)
        _check_choice(cfg, "slstm_form", SLSTM_FORMS)
        _check_positive(cfg, "ffn_proj_factor")
        _check_int(cfg, "ffn_round_to", 1)
        _check_choice(cfg, "ffn_act", sorted(ACTIVATIONS))
    if "large" in types:
        _check_int(cfg, "large_num_heads", 1)
        for name in ("large_qk_dim_factor", "large_v_dim_factor", "large_ffn_proj_factor", "large_norm_eps"):
            _check_positive(cfg, name)
        _check_int(cfg, "large_ffn_round_to", 1)
        if cfg.large_gate_soft_cap is not None:
            _check_positive(cfg, "large_gate_soft_cap")
        for what, factor in (("qk", cfg.large_qk_dim_factor), ("v", cfg.large_v_dim_factor)):
            width = int(D * factor)
            if width < cfg.large_num_heads or width % cfg.large_num_heads:
                _fail("large_num_heads", cfg.large_num_heads, f"must divide the {what} width {width}")


# ---------------------------------------------------------------------------------------------------
# Named variants

_VARIANT = re.compile(r"^xlstm\[(\d+):(\d+)\]$")


def slstm_positions(num_blocks: int, m: int, s: int) -> list[int] | str:
    """Where the sLSTM blocks of an xLSTM[m:s] stack of ``num_blocks`` blocks go.

    ``round(num_blocks * s / (m + s))`` sLSTM blocks (at least one when s > 0), spread evenly: the j-th
    sits in the middle of the j-th of equal segments, ``floor((j + 1/2) * num_blocks / count)``. So
    xLSTM[7:1] with 8 blocks has its sLSTM at 4, with 24 blocks at 4, 12, 20; xLSTM[1:1] alternates
    (1, 3, 5, ...); xLSTM[0:1] is all sLSTM ("all") and xLSTM[1:0] has none.
    """
    if s == 0:
        return []
    if m == 0:
        return "all"
    count = min(num_blocks, max(1, int(num_blocks * s / (m + s) + 0.5)))
    return [int((j + 0.5) * num_blocks / count) for j in range(count)]


def xlstm_config(variant: str, embedding_dim: int, num_blocks: int, **kw: Any) -> XLSTMConfig:
    """The config of a named variant: "xlstm[1:0]" (mLSTM only), "xlstm[0:1]" (sLSTM only), "xlstm[7:1]",
    "xlstm[1:1]", any "xlstm[m:s]" (m mLSTM blocks per s sLSTM blocks, see :func:`slstm_positions`), or
    "xlstm-large" (xLSTM 7B blocks). Other fields come from ``kw``, which may also override ``slstm_at``.
    """
    if not isinstance(variant, str):
        raise ValueError(f"xlstm_config: variant must be a string such as 'xlstm[7:1]', got {variant!r}")
    name = variant.strip().lower()
    if name in ("xlstm-large", "xlstm_large", "large"):
        return XLSTMConfig(embedding_dim=embedding_dim, num_blocks=num_blocks, block="large", **kw)
    match = _VARIANT.match(name)
    if match is None or (int(match.group(1)) == 0 and int(match.group(2)) == 0):
        raise ValueError(
            f"xlstm_config: variant={variant!r} is unknown; expected 'xlstm[m:s]' with m, s >= 0 not both 0 "
            "(e.g. 'xlstm[1:0]', 'xlstm[0:1]', 'xlstm[7:1]', 'xlstm[1:1]') or 'xlstm-large'"
        )
    if not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"xlstm_config: num_blocks must be an integer >= 1, got {num_blocks!r}")
    kw.setdefault("slstm_at", slstm_positions(num_blocks, int(match.group(1)), int(match.group(2))))
    return XLSTMConfig(embedding_dim=embedding_dim, num_blocks=num_blocks, block="neurips", **kw)


# ---------------------------------------------------------------------------------------------------
# Blocks


class MLSTMBlock(nn.Module):
    """``x + MLSTMLayer(LayerNorm(x))``. State: the layer's :class:`~xlram.layers.MLSTMLayerState`."""

    def __init__(self, cfg: XLSTMConfig, block_idx: int = 0):
        super().__init__()
        self.norm = LayerNorm(cfg.embedding_dim, eps=cfg.norm_eps)
        self.layer = MLSTMLayer(
            cfg.embedding_dim,
            num_heads=cfg.mlstm_num_heads,
            proj_factor=cfg.mlstm_proj_factor,
            round_to=cfg.mlstm_round_to,
            conv_kernel_size=cfg.mlstm_conv_kernel_size,
            qkv_proj_blocksize=cfg.mlstm_qkv_proj_blocksize,
            bias=cfg.bias,
            dropout=cfg.dropout,
            num_blocks=cfg.num_blocks,
            eps=cfg.mlstm_eps,
            norm_eps=cfg.norm_eps,
            form=cfg.mlstm_form,
            chunk_size=cfg.mlstm_chunk_size,
        )

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.layer.reset_parameters()

    def init_state(self, batch_size: int, device=None, dtype=None):
        return self.layer.init_state(batch_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, state=None):
        y, state = self.layer(self.norm(x), state)
        return x + y, state

    def step(self, x: torch.Tensor, state=None):
        y, state = self.layer.step(self.norm(x), state)
        return x + y, state

    def step_(self, x: torch.Tensor, state) -> torch.Tensor:
        """:meth:`step` with the state updated in place (inference; see ``XLSTMStack.step``)."""
        return x + self.layer.step_(self.norm(x), state)


class _LayerThenFFN(nn.Module):
    """The residual pattern of the sLSTM and large blocks: ``x + layer(norm(x))`` then
    ``x + ffn(ffn_norm(x))``. Subclasses build ``norm``, ``layer``, ``ffn_norm`` and ``ffn``."""

    def init_state(self, batch_size: int, device=None, dtype=None):
        return self.layer.init_state(batch_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, state=None):
        y, state = self.layer(self.norm(x), state)
        x = x + y
        return x + self.ffn(self.ffn_norm(x)), state

    def step(self, x: torch.Tensor, state=None):
        y, state = self.layer.step(self.norm(x), state)
        x = x + y
        return x + self.ffn(self.ffn_norm(x)), state

    def step_(self, x: torch.Tensor, state) -> torch.Tensor:
        """:meth:`step` with the state updated in place (inference; see ``XLSTMStack.step``)."""
        x = x + self.layer.step_(self.norm(x), state)
        return x + self.ffn(self.ffn_norm(x))


class SLSTMBlock(_LayerThenFFN):
    """``x + SLSTMLayer(LayerNorm(x))`` then ``x + GatedFFN(LayerNorm(x))``.
    State: the layer's :class:`~xlram.layers.SLSTMLayerState` (the FFN is stateless)."""

    def __init__(self, cfg: XLSTMConfig, block_idx: int = 0):
        super().__init__()
        D = cfg.embedding_dim
        self.norm = LayerNorm(D, eps=cfg.norm_eps)
        self.layer = SLSTMLayer(
            D,
            num_heads=cfg.slstm_num_heads,
            conv_kernel_size=cfg.slstm_conv_kernel_size,
            forget_gate=cfg.slstm_forget_gate,
            bias_init=cfg.slstm_bias_init,
            recurrent_init=cfg.slstm_recurrent_init,
            norm_weight=cfg.slstm_norm_weight,
            dropout=cfg.dropout,
            norm_eps=cfg.norm_eps,
            block_idx=block_idx,
            num_blocks=cfg.num_blocks,
            form=cfg.slstm_form,
        )
        self.ffn_norm = LayerNorm(D, eps=cfg.norm_eps)
        self.ffn = GatedFFN(
            D,
            proj_factor=cfg.ffn_proj_factor,
            act=cfg.ffn_act,
            bias=cfg.ffn_bias,
            dropout=cfg.dropout,
            round_to=cfg.ffn_round_to,
            num_blocks=cfg.num_blocks,
        )

    def reset_parameters(self) -> None:
        for m in (self.norm, self.layer, self.ffn_norm, self.ffn):
            m.reset_parameters()


class LargeBlock(_LayerThenFFN):
    """xLSTM 7B block: ``x + MLSTMLargeLayer(RMSNorm(x))`` then ``x + SwiGLU(RMSNorm(x))``.
    State: the cell's :class:`~xlram.ops.mlstm.MLSTMState`."""

    def __init__(self, cfg: XLSTMConfig, block_idx: int = 0):
        super().__init__()
        D = cfg.embedding_dim
        self.num_blocks = cfg.num_blocks
        self.norm = RMSNorm(D, bias=cfg.bias, eps=cfg.large_norm_eps)
        self.layer = MLSTMLargeLayer(
            D,
            num_heads=cfg.large_num_heads,
            qk_dim_factor=cfg.large_qk_dim_factor,
            v_dim_factor=cfg.large_v_dim_factor,
            gate_soft_cap=cfg.large_gate_soft_cap,
            bias=cfg.bias,
            dropout=cfg.dropout,
            eps=cfg.mlstm_eps,
            norm_eps=cfg.large_norm_eps,
            num_blocks=cfg.num_blocks,
            form=cfg.mlstm_form,
            chunk_size=cfg.mlstm_chunk_size,
        )
        self.ffn_norm = RMSNorm(D, bias=cfg.bias, eps=cfg.large_norm_eps)
        self.ffn = GatedFFN(
            D,
            proj_factor=cfg.large_ffn_proj_factor,
            act="swish",
            bias=cfg.bias,
            dropout=cfg.dropout,
            round_to=cfg.large_ffn_round_to,
            num_blocks=cfg.num_blocks,
        )
        self._init_ffn_down()

    def _init_ffn_down(self) -> None:
        # The 7B recipe scales the FFN's down-projection by its own fan-in (the hidden width).
        wang_init_(self.ffn.proj_down.weight, self.ffn.hidden_dim, self.num_blocks)

    def reset_parameters(self) -> None:
        for m in (self.norm, self.layer, self.ffn_norm, self.ffn):
            m.reset_parameters()
        self._init_ffn_down()


_BLOCKS = {"mlstm": MLSTMBlock, "slstm": SLSTMBlock, "large": LargeBlock}


# ---------------------------------------------------------------------------------------------------
# Stack


class XLSTMStack(nn.Module):
    """``config.num_blocks`` residual blocks and a final norm (LayerNorm, or RMSNorm for large blocks).

    Under ``torch.no_grad()`` on CPU, :meth:`step` runs every block as one numba call where that applies
    (``xlram.fused_step``; ``fused_step = False`` on an instance switches it off).

    Shapes: ``forward(x (B, S, D), state=None) -> (y (B, S, D), state)``;
    ``step(x_t (B, D), state) -> (y_t (B, D), state)``. ``state`` is a tuple with one entry per block
    (None: zeros, the same as :meth:`init_state`). There is no maximum sequence length.
    """

    fused_step = True  # use xlram.fused_step for the no-grad CPU step where it applies

    def __init__(self, config: XLSTMConfig):
        super().__init__()
        if not isinstance(config, XLSTMConfig):
            raise TypeError(f"XLSTMStack expects an XLSTMConfig, got {type(config).__name__}")
        self.config = config
        self.blocks = nn.ModuleList(_BLOCKS[t](config, i) for i, t in enumerate(config.block_types))
        D = config.embedding_dim
        self._compiled_step, self._compiled_keys, self._compiled_params = None, set(), []
        self._last_state = None  # the state the in-place step returned last (known to be updatable)
        self._fused = None  # the numba step (xlram.fused_step), made on the first no-grad step
        if not config.add_post_blocks_norm:
            self.post_blocks_norm = nn.Identity()
        elif config.block == "large":
            self.post_blocks_norm = RMSNorm(D, bias=config.bias, eps=config.large_norm_eps)
        else:
            self.post_blocks_norm = LayerNorm(D, eps=config.norm_eps)

    def reset_parameters(self) -> None:
        for block in self.blocks:
            block.reset_parameters()
        if hasattr(self.post_blocks_norm, "reset_parameters"):
            self.post_blocks_norm.reset_parameters()

    def init_state(self, batch_size: int, device=None, dtype=None) -> tuple:
        """Zero state, one entry per block. ``dtype`` is the activation dtype (default: the parameters');
        recurrent memories are kept in fp32 for 16-bit activations."""
        return tuple(b.init_state(batch_size, device=device, dtype=dtype) for b in self.blocks)

    def _states(self, state):
        if state is None:
            return (None,) * len(self.blocks)
        if not isinstance(state, tuple | list) or len(state) != len(self.blocks):
            got = type(state).__name__
            if isinstance(state, tuple | list):
                got += f" of length {len(state)}"
            raise ValueError(
                f"XLSTMStack: state must be a tuple with one entry per block ({len(self.blocks)}), got {got}"
            )
        return state

    def forward(self, x: torch.Tensor, state: tuple | None = None) -> tuple[torch.Tensor, tuple]:
        if x.dim() != 3 or x.shape[-1] != self.config.embedding_dim:
            D = self.config.embedding_dim
            raise ValueError(f"XLSTMStack.forward: x must be (B, S, {D}), got {tuple(x.shape)}")
        states = self._states(state)
        S = x.shape[1]
        if torch.is_grad_enabled() or S <= INFERENCE_SEGMENT:
            return self._forward(x, states)
        # Inference over a long sequence: segment by segment, the state passed on (exact, as any
        # chunked forward): activations then stay a few MiB, where whole-sequence ones (64 MiB per
        # tensor at S = 16,384, D = 256) would be mapped fresh from the OS and paged in by every op.
        ys = []
        for a in range(0, S, INFERENCE_SEGMENT):
            y, states = self._forward(x[:, a : a + INFERENCE_SEGMENT], states)
            ys.append(y)
        return torch.cat(ys, dim=1), states

    def _forward(self, x: torch.Tensor, states) -> tuple[torch.Tensor, tuple]:
        new = []
        for block, s in zip(self.blocks, states, strict=True):
            x, s = block(x, s)
            new.append(s)
        return self.post_blocks_norm(x), tuple(new)

    def step(self, x: torch.Tensor, state: tuple | None = None) -> tuple[torch.Tensor, tuple]:
        """One step: ``x (B, D)`` -> ``(y (B, D), state)``.

        With gradients enabled this is a plain function of its inputs (differentiable, the passed
        state is left as it is). Under ``torch.no_grad()`` it is the inference path: the state's
        tensors are updated in place and the same state is returned, so a decode loop allocates no
        state memory. A state whose tensors are not plain contiguous tensors of their own (views into
        a forward pass's buffers) or that need gradients is copied once first, and the copy is
        updated and returned; never step twice from one state object under ``no_grad`` expecting the
        same result. On CPU the in-place path is one numba call per block where that applies
        (``xlram.fused_step``; ``fused_step = False`` turns it off); :meth:`compile_step` replaces it
        by a ``torch.compile``d torch step.
        """
        if x.dim() != 2 or x.shape[-1] != self.config.embedding_dim:
            D = self.config.embedding_dim
            raise ValueError(f"XLSTMStack.step: x must be (B, {D}), got {tuple(x.shape)}")
        states = self._states(state)
        if torch.is_grad_enabled():
            new = []
            for block, s in zip(self.blocks, states, strict=True):
                x, s = block.step(x, s)
                new.append(s)
            return self.post_blocks_norm(x), tuple(new)
        if state is None or state is not self._last_state:
            state = self._own_state(states, x)
            self._last_state = state
        batch = _leaves(state[0])[0].shape[0]
        if batch != x.shape[0]:  # in-place updates would broadcast one batch into the other silently
            raise ValueError(f"XLSTMStack.step: state is for batch size {batch}, x has {x.shape[0]} rows")
        if self._compiled_step is not None:
            return self._run_compiled(x, state), state
        if self._fused is None:
            from xlram.fused_step import FusedStep

            self._fused = FusedStep(self)
        y = self._fused.run(x, state)  # None where the numba step does not apply
        return (self._step_(x, state) if y is None else y), state

    def _run_compiled(self, x: torch.Tensor, state: tuple) -> torch.Tensor:
        """The compiled step. Dynamo checks ~150 guards (one per parameter and state tensor) on every
        call, a sizeable part of a small model's step; once a graph has run for inputs with this
        signature (shape, strides, dtype and device of x and of the parameters), later calls with the
        same signature skip all guards but the ones that tell cached graphs apart. The state is the
        stack's own (``_own_state``), so its layout follows from x. Parameters may be updated in place
        (``load_state_dict``, optimiser steps); after replacing parameter objects call
        :meth:`compile_step` again."""
        p0 = self._compiled_params[0] if self._compiled_params else x
        key = (x.shape, x.stride(), x.dtype, x.device, p0.dtype, p0.device)
        if key in self._compiled_keys:
            with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                return self._compiled_step(x, state)
        y = self._compiled_step(x, state)
        self._compiled_keys.add(key)
        return y

    def _step_(self, x: torch.Tensor, state: tuple) -> torch.Tensor:
        """The in-place step over all blocks (state already in place-updatable form)."""
        for block, s in zip(self.blocks, state, strict=True):
            x = block.step_(x, s)
        return self.post_blocks_norm(x)

    def _own_state(self, states, x: torch.Tensor) -> tuple:
        """``states`` with every block state that cannot be updated in place replaced by a copy that can:
        None -> zeros; tensors that are views, not contiguous or need gradients -> contiguous copies."""
        own = []
        for block, s in zip(self.blocks, states, strict=True):
            if s is None:
                s = block.init_state(x.shape[0], device=x.device, dtype=x.dtype)
            else:
                leaves = _leaves(s)
                if not all(t.is_contiguous() and t._base is None and not t.requires_grad for t in leaves):
                    s = _map_leaves(s, lambda t: t.detach().clone(memory_format=torch.contiguous_format))
            own.append(s)
        if isinstance(states, tuple) and all(a is b for a, b in zip(own, states, strict=True)):
            return states  # already the stack's own: the caller gets back the very object it passed
        return tuple(own)

    def compile_step(self, enable: bool = True, **compile_kwargs) -> XLSTMStack:
        """Run the in-place inference step (``step`` under ``no_grad``) through ``torch.compile``.

        Inductor fuses each block's elementwise work into a few C++ loops around the matmuls, which
        pays where per-kernel overhead dominates (small batches). The first call for each batch size
        compiles (tens of seconds on a small CPU); ``enable=False`` goes back to the eager path.
        ``compile_kwargs`` go to ``torch.compile`` (default ``dynamic=False``). Returns ``self``.
        """
        if not enable:
            self._compiled_step, self._compiled_keys = None, set()
            return self
        compile_kwargs.setdefault("dynamic", False)
        self._compiled_step = torch.compile(self._step_, **compile_kwargs)
        self._compiled_keys = set()
        self._compiled_params = list(self.parameters())
        return self


def _leaves(state) -> list[torch.Tensor]:
    """The tensors of a (nested tuple) block state."""
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for s in state for t in _leaves(s)]


def _map_leaves(state, fn):
    """The same nested (named) tuple with ``fn`` applied to every tensor."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    parts = [_map_leaves(s, fn) for s in state]
    return type(state)(*parts) if hasattr(state, "_fields") else type(state)(parts)


__all__ = [
    "LargeBlock",
    "MLSTMBlock",
    "SLSTMBlock",
    "XLSTMConfig",
    "XLSTMStack",
    "slstm_positions",
    "xlstm_config",
]


"""xLSTM language model: token embedding -> xLSTM stack -> linear head, with recurrent generation.

The model carries its recurrent state explicitly, one convention everywhere:

    logits, state = model(ids)                  # ids (B, S) -> logits (B, S, V)
    logits, state = model(more_ids, state)      # continue where the last call stopped
    logits_t, state = model.step(ids_t, state)  # ids_t (B,) -> logits_t (B, V), O(1) per token

so a full forward, a chunked prefill plus steps, and token-by-token steps compute the same logits.
``generate`` prefills the prompts with one parallel forward and then steps; see its docstring for how
prompts of different lengths share a batch without changing any row's tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import nn
from torch.nn.modules import module as _module_hooks

from xlram.blocks import XLSTMConfig, XLSTMStack, xlstm_config
from xlram.checkpoint import PretrainedMixin
from xlram.fused_step import project_rows
from xlram.generation import GenerationMixin, check_token_ids
from xlram.models.registry import register_model
from xlram.nn import Linear, small_init_, soft_cap


def _hooked(module: nn.Module) -> bool:
    """Whether calling ``module`` would run hooks (its own or global ones) around its forward."""
    return bool(module._forward_hooks or module._forward_pre_hooks or _module_hooks._global_forward_hooks
                or _module_hooks._global_forward_pre_hooks)


__all__ = ["XLSTMLM", "XLSTMLMConfig"]


@dataclass
class XLSTMLMConfig:
    """Configuration of :class:`XLSTMLM`.

    Args:
        vocab_size: number of token ids; inputs must lie in ``[0, vocab_size)``.
        xlstm: the block stack (width, depth, where the sLSTM blocks go, block type).
        tie_weights: share the embedding matrix with the output head.
        logit_soft_cap: if set, logits are squashed to ``cap * tanh(logits / cap)`` (30 in xLSTM-7B).
    """

    vocab_size: int
    xlstm: XLSTMConfig
    tie_weights: bool = False
    logit_soft_cap: float | None = None

    def __post_init__(self):
        if isinstance(self.vocab_size, bool) or not isinstance(self.vocab_size, int) or self.vocab_size < 1:
            raise ValueError(f"XLSTMLMConfig.vocab_size must be a positive int, got {self.vocab_size!r}")
        if isinstance(self.xlstm, dict):
            self.xlstm = XLSTMConfig.from_dict(self.xlstm)
        if not isinstance(self.xlstm, XLSTMConfig):
            raise ValueError(f"XLSTMLMConfig.xlstm must be an XLSTMConfig (or its dict), "
                             f"got {type(self.xlstm).__name__}")
        if not isinstance(self.tie_weights, bool):
            raise ValueError(f"XLSTMLMConfig.tie_weights must be a bool, got {self.tie_weights!r}")
        cap = self.logit_soft_cap
        if cap is not None:
            number = isinstance(cap, int | float) and not isinstance(cap, bool)
            if not (number and math.isfinite(cap) and cap > 0):
                raise ValueError(f"XLSTMLMConfig.logit_soft_cap must be a positive number or None, "
                                 f"got {cap!r}")
            self.logit_soft_cap = float(cap)

    def to_dict(self) -> dict:
        """A JSON-able dict; ``from_dict(to_dict())`` gives an equal config."""
        return {"vocab_size": self.vocab_size, "xlstm": self.xlstm.to_dict(),
                "tie_weights": self.tie_weights, "logit_soft_cap": self.logit_soft_cap}

    @classmethod
    def from_dict(cls, d: dict) -> XLSTMLMConfig:
        """Build from :meth:`to_dict`'s output; unknown or missing keys raise ``ValueError`` naming them."""
        if not isinstance(d, dict):
            raise ValueError(f"XLSTMLMConfig.from_dict expects a dict, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"XLSTMLMConfig: unknown keys {unknown}; known keys are {sorted(names)}")
        missing = sorted(k for k in ("vocab_size", "xlstm") if k not in d)
        if missing:
            raise ValueError(f"XLSTMLMConfig: missing required keys {missing}")
        xlstm = d["xlstm"]
        if not isinstance(xlstm, dict):
            raise ValueError(f"XLSTMLMConfig: 'xlstm' must be a dict, got {type(xlstm).__name__}")
        return cls(**{**d, "xlstm": XLSTMConfig.from_dict(xlstm)})


class XLSTMLM(GenerationMixin, PretrainedMixin, nn.Module):
    """xLSTM language model: ``nn.Embedding`` -> :class:`XLSTMStack` -> ``nn.Linear`` (no bias).

    The attribute names ``embedding``, ``stack`` and ``lm_head`` are part of the interface
    (``xlram.interop`` loads official weights into them).
    """

    model_type = "xlstm_lm"
    config_class = XLSTMLMConfig

    def __init__(self, config: XLSTMLMConfig):
        super().__init__()
        if not isinstance(config, XLSTMLMConfig):
            raise TypeError(f"XLSTMLM expects an XLSTMLMConfig, got {type(config).__name__}")
        self.config = config
        dim = config.xlstm.embedding_dim
        self.embedding = nn.Embedding(config.vocab_size, dim)
        self.stack = XLSTMStack(config.xlstm)
        self.lm_head = Linear(dim, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.embedding.weight
        # Small-init for both ends, as the official LM's reset_parameters (nn.Embedding's default N(0, 1)
        # would make the first residual stream orders of magnitude larger than the blocks' outputs).
        small_init_(self.embedding.weight, dim)
        if not config.tie_weights:
            small_init_(self.lm_head.weight, dim)

    # ---------------------------------------------------------------------------------------------
    # Forward and step

    def forward(self, ids: torch.Tensor, state=None):
        """Logits for every position. ``ids`` (B, S) integer -> ``(logits (B, S, V), state)``.

        ``state`` is the state a previous call returned (None: start from zeros); the returned state
        continues after the last token.
        """
        ids = check_token_ids(ids, "ids", 2, self.config.vocab_size)
        self._check_device(ids, "ids")
        return self._forward(ids, state)

    def step(self, ids_t: torch.Tensor, state=None):
        """One token per row. ``ids_t`` (B,) integer -> ``(logits_t (B, V), state)``."""
        ids_t = check_token_ids(ids_t, "ids_t", 1, self.config.vocab_size)
        self._check_device(ids_t, "ids_t")
        return self._step(ids_t, state)

    def _check_device(self, ids: torch.Tensor, name: str) -> None:
        device = self.embedding.weight.device
        if ids.device != device:
            raise ValueError(f"{name} is on {ids.device} but the model is on {device}; move one of them")

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None):
        """The zero state for ``batch_size`` rows (``state=None`` means the same), on the model's device."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        ref = self.embedding.weight
        return self.stack.init_state(batch_size, device=device or ref.device, dtype=dtype or ref.dtype)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return soft_cap(self.lm_head(h), self.config.logit_soft_cap)

    def _forward(self, ids: torch.Tensor, state):
        h, state = self.stack(self.embedding(ids), state)  # (B, S, D)
        return self._head(h), state  # (B, S, V)

    def _step(self, ids_t: torch.Tensor, state):
        emb, head = self.embedding, self.lm_head
        if torch.is_grad_enabled() or _hooked(emb) or _hooked(head):
            h, state = self.stack.step(emb(ids_t), state)  # (B, D)
            return self._head(h), state  # (B, V)
        # Inference without hooks: the modules' own work without nn.Module's call (about 6 µs of a
        # 0.35 ms step at batch 1), and on CPU the table lookup in numpy (after a numba step, torch's
        # code is out of cache: each op it runs costs several µs more than when measured alone).
        w = emb.weight
        if (ids_t.device.type == "cpu" and emb.max_norm is None and type(w) is nn.Parameter
                and w.dtype in (torch.float32, torch.float64)):
            x = torch.from_numpy(w.detach().numpy()[ids_t.numpy()])  # (B, D)
        else:
            x = emb.forward(ids_t)
        h, state = self.stack.step(x, state)
        logits = project_rows(h, head.weight, head.bias) if h.device.type == "cpu" else None
        if logits is None:
            logits = head.forward(h)
        return soft_cap(logits, self.config.logit_soft_cap), state

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (tied weights counted once); optionally without the embedding matrix."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embedding.weight.numel() if non_embedding else n

    def _prefill(self, ids: torch.Tensor, total_len: int):
        """Generation's prefill: (B, S) prompt prefix -> (last-position logits (B, V), state)."""
        h, state = self.stack(self.embedding(ids), None)  # (B, S, D)
        return self._head(h[:, -1]), state  # the head runs on the last position only


# -------------------------------------------------------------------------------------------------
# Registered variants


def _lm(variant: str, *, vocab_size: int, embedding_dim: int, num_blocks: int, tie_weights: bool = False,
        logit_soft_cap: float | None = None, **xlstm_kwargs) -> XLSTMLM:
    """An :class:`XLSTMLM` over ``xlstm_config(variant, ...)``; extra keywords go to the block config."""
    xlstm = xlstm_config(variant, embedding_dim, num_blocks, **xlstm_kwargs)
    return XLSTMLM(XLSTMLMConfig(vocab_size=vocab_size, xlstm=xlstm, tie_weights=tie_weights,
                                 logit_soft_cap=logit_soft_cap))


def _register_tiny(name: str, variant: str, num_blocks: int, **defaults) -> None:
    def factory(**overrides) -> XLSTMLM:
        kwargs = {"vocab_size": 64, "embedding_dim": 32, "num_blocks": num_blocks, **defaults, **overrides}
        return _lm(variant, **kwargs)

    factory.__doc__ = f"Tiny {variant} language model for tests ({num_blocks} blocks, width 32, 64 tokens)."
    factory.__name__ = name
    register_model(name, task="lm")(factory)


_register_tiny("lm-xlstm[1:0]-tiny", "xlstm[1:0]", 2)
_register_tiny("lm-xlstm[0:1]-tiny", "xlstm[0:1]", 2)
_register_tiny("lm-xlstm[1:1]-tiny", "xlstm[1:1]", 2)
_register_tiny("lm-xlstm[7:1]-tiny", "xlstm[7:1]", 8)
_register_tiny("lm-large-tiny", "xlstm-large", 2, logit_soft_cap=30.0)


@register_model("lm-xlstm[7:1]-demo", task="lm")
def xlstm71_demo(**overrides) -> XLSTMLM:
    """Byte-level xLSTM[7:1] of about 1.5M parameters, sized to learn visibly in minutes on a laptop CPU."""
    kwargs = {"vocab_size": 256, "embedding_dim": 128, "num_blocks": 8, "tie_weights": True, **overrides}
    return _lm("xlstm[7:1]", **kwargs)

"""Classic multi-layer LSTM language model, built to the same interface as ``XLSTMLM``.

``nn.Embedding`` -> dropout -> ``nn.LSTM`` (dropout between layers) -> dropout -> ``nn.Linear`` (no
bias): the word-level LSTM LM of Zaremba et al. (2014) and Merity et al. (2017) without the
regularisation tricks. The state is the LSTM's ``(h, c)``, each (num_layers, B, hidden_dim):

    logits, state = model(ids)                  # ids (B, S) -> logits (B, S, V)
    logits, state = model(more_ids, state)      # continue where the last call stopped
    logits_t, state = model.step(ids_t, state)  # ids_t (B,) -> logits_t (B, V)

The state is never updated in place (``nn.LSTM`` returns new tensors), so one state can be continued
in several ways.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from xlram.baselines._config import check_positive_int, known_keys
from xlram.checkpoint import PretrainedMixin
from xlram.generation import GenerationMixin, check_token_ids
from xlram.models.registry import register_model
from xlram.nn import Linear, small_init_

__all__ = ["LSTMLM", "LSTMLMConfig"]


@dataclass
class LSTMLMConfig:
    """Configuration of :class:`LSTMLM`.

    Args:
        vocab_size: number of token ids; inputs must lie in ``[0, vocab_size)``.
        dim: embedding size (the LSTM's input size).
        hidden_dim: LSTM hidden size; None means ``dim``.
        num_layers: stacked LSTM layers.
        dropout: on the embeddings, between LSTM layers and before the head (training only).
        tie_weights: share the embedding matrix with the output head (needs ``hidden_dim == dim``).
        forget_bias: initial bias of the forget gates (1.0, Jozefowicz et al. 2015: remember by default).
    """

    vocab_size: int
    dim: int = 256
    hidden_dim: int | None = None
    num_layers: int = 2
    dropout: float = 0.0
    tie_weights: bool = False
    forget_bias: float = 1.0

    def __post_init__(self):
        for name in ("vocab_size", "dim", "num_layers"):
            check_positive_int(self, name)
        if self.hidden_dim is None:
            self.hidden_dim = self.dim
        check_positive_int(self, "hidden_dim")
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, int | float) or not 0 <= d < 1:
            raise ValueError(f"LSTMLMConfig.dropout must be in [0, 1), got {d!r}")
        self.dropout = float(d)
        if not isinstance(self.tie_weights, bool):
            raise ValueError(f"LSTMLMConfig.tie_weights must be a bool, got {self.tie_weights!r}")
        if self.tie_weights and self.hidden_dim != self.dim:
            raise ValueError(f"LSTMLMConfig: tie_weights needs hidden_dim == dim, got hidden_dim="
                             f"{self.hidden_dim} and dim={self.dim}")
        fb = self.forget_bias
        if isinstance(fb, bool) or not isinstance(fb, int | float):
            raise ValueError(f"LSTMLMConfig.forget_bias must be a number, got {fb!r}")
        self.forget_bias = float(fb)

    def to_dict(self) -> dict:
        """A JSON-able dict; ``from_dict(to_dict())`` gives an equal config."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LSTMLMConfig:
        """Build from :meth:`to_dict`'s output; unknown or missing keys raise ``ValueError`` naming them."""
        return cls(**known_keys(cls, d, required=("vocab_size",)))


class LSTMLM(GenerationMixin, PretrainedMixin, nn.Module):
    """LSTM language model: ``nn.Embedding`` -> ``nn.LSTM`` -> ``nn.Linear``; state ``(h, c)``."""

    model_type = "lstm_lm"
    config_class = LSTMLMConfig

    def __init__(self, config: LSTMLMConfig):
        super().__init__()
        if not isinstance(config, LSTMLMConfig):
            raise TypeError(f"LSTMLM expects an LSTMLMConfig, got {type(config).__name__}")
        self.config = config
        D, Hd = config.dim, config.hidden_dim
        self.embedding = nn.Embedding(config.vocab_size, D)
        self.lstm = nn.LSTM(D, Hd, num_layers=config.num_layers, batch_first=True,
                            dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(config.dropout)
        self.lm_head = Linear(Hd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.embedding.weight
        # Unit-scale embeddings (nn.Embedding's own N(0, 1)), not the small init of the normed models: an
        # LSTM has no norm on its input, so embeddings of std ~0.04 barely move its gates, and on bytes it
        # sat at the unigram entropy (~4.9 bits) for its first hundred steps, where std 1 reached ~3.
        nn.init.normal_(self.embedding.weight, 0.0, 1.0)
        if not config.tie_weights:
            small_init_(self.lm_head.weight, Hd)
        with torch.no_grad():
            # Gate order in nn.LSTM's biases is (input, forget, cell, output); b_ih + b_hh is the bias.
            for layer in range(config.num_layers):
                getattr(self.lstm, f"bias_ih_l{layer}")[Hd: 2 * Hd].fill_(config.forget_bias)
                getattr(self.lstm, f"bias_hh_l{layer}")[Hd: 2 * Hd].zero_()

    def forward(self, ids: torch.Tensor, state=None):
        """Logits for every position. ``ids`` (B, S) integer -> ``(logits (B, S, V), (h, c))``.

        ``state`` is the ``(h, c)`` a previous call returned (None: zeros).
        """
        ids = check_token_ids(ids, "ids", 2, self.config.vocab_size)
        self._check_device(ids, "ids")
        return self._forward(ids, self._check_state(state, ids.shape[0]))

    def step(self, ids_t: torch.Tensor, state=None):
        """One token per row. ``ids_t`` (B,) integer -> ``(logits_t (B, V), (h, c))``."""
        ids_t = check_token_ids(ids_t, "ids_t", 1, self.config.vocab_size)
        self._check_device(ids_t, "ids_t")
        return self._step(ids_t, self._check_state(state, ids_t.shape[0]))

    def _check_device(self, ids: torch.Tensor, name: str) -> None:
        device = self.embedding.weight.device
        if ids.device != device:
            raise ValueError(f"{name} is on {ids.device} but the model is on {device}; move one of them")

    def _check_state(self, state, batch_size: int):
        if state is None:
            return None
        expected = (self.config.num_layers, batch_size, self.config.hidden_dim)
        ok = isinstance(state, tuple | list) and len(state) == 2 and all(
            isinstance(t, torch.Tensor) and tuple(t.shape) == expected for t in state)
        if not ok:
            got = (tuple(tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in state)
                   if isinstance(state, tuple | list) else type(state).__name__)
            raise ValueError(f"LSTMLM: state must be a tuple (h, c) of tensors shaped (num_layers, B, "
                             f"hidden_dim) = {expected}, got {got}")
        return tuple(state)

    def init_state(self, batch_size: int, max_len: int | None = None, device=None, dtype=None):
        """The zero state ``(h, c)`` for ``batch_size`` rows (``state=None`` means the same).

        ``max_len`` is accepted for the interface shared with the Transformer and ignored: an LSTM's
        state does not grow.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        ref = self.embedding.weight
        shape = (self.config.num_layers, batch_size, self.config.hidden_dim)
        h = torch.zeros(shape, device=device or ref.device, dtype=dtype or ref.dtype)
        return h, torch.zeros_like(h)

    def _forward(self, ids: torch.Tensor, state):
        x = self.dropout(self.embedding(ids))  # (B, S, D)
        h, state = self.lstm(x, state)  # (B, S, Hd), ((L, B, Hd), (L, B, Hd))
        return self.lm_head(self.dropout(h)), state  # (B, S, V)

    def _step(self, ids_t: torch.Tensor, state):
        logits, state = self._forward(ids_t.unsqueeze(1), state)
        return logits[:, 0], state  # (B, V)

    def _prefill(self, ids: torch.Tensor, total_len: int):
        """For :meth:`generate`: the state after ``ids`` and the logits of the last position."""
        h, state = self.lstm(self.dropout(self.embedding(ids)))  # (B, S, Hd)
        return self.lm_head(self.dropout(h[:, -1])), state  # (B, V)

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (tied weights counted once); optionally without the token embedding."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embedding.weight.numel() if non_embedding else n


# -------------------------------------------------------------------------------------------------
# Registered variants


@register_model("lm-lstm-tiny", task="lm")
def lstm_tiny(**overrides) -> LSTMLM:
    """Tiny two-layer LSTM language model for tests (width 32, 64 tokens)."""
    return LSTMLM(LSTMLMConfig(**{"vocab_size": 64, "dim": 32, "num_layers": 2, **overrides}))


@register_model("lm-lstm-demo", task="lm")
def lstm_demo(**overrides) -> LSTMLM:
    """Byte-level two-layer LSTM with the parameter count of ``lm-xlstm[7:1]-demo`` (within 5%)."""
    kwargs = {"vocab_size": 256, "dim": 232, "num_layers": 2, "tie_weights": True, **overrides}
    return LSTMLM(LSTMLMConfig(**kwargs))

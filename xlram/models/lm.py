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
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import nn

from xlram.blocks import XLSTMConfig, XLSTMStack, xlstm_config
from xlram.checkpoint import PretrainedMixin
from xlram.models.registry import register_model
from xlram.nn import small_init_, soft_cap

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


def _check_ids(ids, name: str, ndim: int, vocab_size: int) -> torch.Tensor:
    """Validate a token-id tensor at the public boundary and return it as int64."""
    shape_name = "(B, S)" if ndim == 2 else "(B,)"
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids with shape {shape_name}, "
                        f"got {type(ids).__name__}")
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise TypeError(f"{name} must have an integer dtype (token ids), got {ids.dtype}")
    if ids.dim() != ndim:
        raise ValueError(f"{name} must have shape {shape_name}, got {tuple(ids.shape)}")
    if ids.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(ids.shape)}); give at least one token per row")
    # One host sync; generate() uses the unchecked internal path so that decoding does not pay it per step.
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{name} must lie in [0, {vocab_size}) (vocab_size), found values in [{lo}, {hi}]")
    return ids.long()


class XLSTMLM(PretrainedMixin, nn.Module):
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
        self.lm_head = nn.Linear(dim, config.vocab_size, bias=False)
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
        ids = _check_ids(ids, "ids", 2, self.config.vocab_size)
        self._check_device(ids, "ids")
        return self._forward(ids, state)

    def step(self, ids_t: torch.Tensor, state=None):
        """One token per row. ``ids_t`` (B,) integer -> ``(logits_t (B, V), state)``."""
        ids_t = _check_ids(ids_t, "ids_t", 1, self.config.vocab_size)
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
        h, state = self.stack.step(self.embedding(ids_t), state)  # (B, D)
        return self._head(h), state  # (B, V)

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (tied weights counted once); optionally without the embedding matrix."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embedding.weight.numel() if non_embedding else n

    # ---------------------------------------------------------------------------------------------
    # Generation

    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, stop_tokens=None, generator=None,
                 pad_id: int | None = None) -> torch.Tensor:
        """Continue each prompt by up to ``max_new_tokens`` sampled tokens; returns the new tokens only.

        Args:
            prompt_ids: a (B, S) integer tensor, or a list of B 1-D sequences (tensors or lists of ints)
                of possibly different lengths, each at least one token long.
            max_new_tokens: how many tokens to add per row (fewer when a row stops).
            temperature: 0 for greedy decoding (argmax); otherwise logits are divided by it.
            top_k: sample only among the k most likely tokens.
            top_p: sample only from the smallest set of most likely tokens whose probability reaches p
                (nucleus sampling); the most likely token is always kept.
            stop_tokens: a token id or a collection of ids; a row ends after producing one of them.
            generator: None, one ``torch.Generator`` for the whole batch, or a list of B generators,
                one per row. With one generator per row, each row's tokens depend only on its prompt
                and its own generator: a batch gives the same tokens as each prompt alone.
            pad_id: fills a row's positions after its stop token (default: the first stop token).

        Returns:
            ``(B, N)`` int64 tensor of new tokens, ``N <= max_new_tokens`` (shorter only when every row
            stopped early).

        How prompts of different lengths share a batch: one parallel forward consumes the prefix that
        all rows have (their shortest length), then the model steps one token at a time. At each step a
        row whose prompt goes on is fed its next prompt token, while the rows whose prompts are used up
        feed back their sampled token. A row therefore sees exactly the tokens it would see alone, and
        its generator is drawn from only when it samples. The only host syncs are one range check of
        the prompts, the check whether every row has stopped (only when ``stop_tokens`` is given) and
        the final length.
        """
        prompts, lengths = self._prepare_prompts(prompt_ids)
        batch, max_len = prompts.shape
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
        if not isinstance(temperature, int | float) or not temperature >= 0 or math.isinf(temperature):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        if top_p is not None and (not isinstance(top_p, int | float) or not 0 < top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")
        stops = self._prepare_stop_tokens(stop_tokens)
        if pad_id is None:
            pad_id = stops[0] if stops else 0
        elif isinstance(pad_id, bool) or not isinstance(pad_id, int):
            raise ValueError(f"pad_id must be an int or None, got {pad_id!r}")
        generators = self._prepare_generators(generator, batch)
        device = prompts.device
        if max_new_tokens == 0:
            return torch.empty(batch, 0, dtype=torch.long, device=device)

        common = min(lengths)
        h, state = self.stack(self.embedding(prompts[:, :common]), None)  # (B, common, D)
        logits = self._head(h[:, -1])  # (B, V); the head runs on the last position only
        lengths_t = torch.tensor(lengths, device=device)
        stop_t = torch.tensor(stops, dtype=torch.long, device=device)
        out = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
        stopped = torch.zeros(batch, dtype=torch.bool, device=device)
        written = torch.zeros(batch, dtype=torch.long, device=device)  # tokens kept per row
        last = max(n + max_new_tokens - 1 for n in lengths)  # the last position any row samples

        for pos in range(common, last + 1):
            # Which rows sample at this position is known on the host from the prompt lengths.
            sampling = [i for i, n in enumerate(lengths) if n <= pos < n + max_new_tokens]
            sampled = self._sample(logits, sampling, temperature, top_k, top_p, generators)  # (B,)
            tokens = torch.where(pos < lengths_t, prompts[:, pos], sampled) if pos < max_len else sampled
            if sampling:
                col = pos - lengths_t
                keep = (col >= 0) & (col < max_new_tokens) & ~stopped  # (B,)
                col = col.clamp(0, max_new_tokens - 1).unsqueeze(1)
                out.scatter_(1, col, torch.where(keep, tokens, out.gather(1, col).squeeze(1)).unsqueeze(1))
                written += keep
                if stops:
                    stopped |= keep & torch.isin(tokens, stop_t)
                    active = [i for i, n in enumerate(lengths) if pos < n + max_new_tokens - 1]
                    if not active or bool(stopped[active].all()):
                        break
            if pos == last:
                break
            logits, state = self._step(tokens, state)
        return out[:, : int(written.max())]

    def _prepare_prompts(self, prompt_ids) -> tuple[torch.Tensor, list[int]]:
        """-> right-padded prompts (B, max_len) int64 on the model's device, and their lengths."""
        device = self.embedding.weight.device
        if isinstance(prompt_ids, torch.Tensor):
            ids = _check_ids(prompt_ids, "prompt_ids", 2, self.config.vocab_size).to(device)
            return ids, [ids.shape[1]] * ids.shape[0]
        if not isinstance(prompt_ids, Sequence) or isinstance(prompt_ids, str | bytes) or not prompt_ids:
            raise TypeError("prompt_ids must be a (B, S) tensor or a non-empty list of 1-D token sequences, "
                            f"got {type(prompt_ids).__name__}")
        rows = []
        for i, p in enumerate(prompt_ids):
            if isinstance(p, torch.Tensor):
                if p.dim() != 1:
                    raise ValueError(f"prompt_ids[{i}] must be 1-D, got shape {tuple(p.shape)}")
                row = p
            else:
                try:
                    row = torch.as_tensor(list(p), dtype=torch.long)
                except (TypeError, ValueError, OverflowError) as e:
                    raise TypeError(f"prompt_ids[{i}] must be a sequence of ints: {e}") from None
            if row.numel() == 0:
                raise ValueError(f"prompt_ids[{i}] is empty; each prompt needs at least one token "
                                 f"(e.g. a BOS token)")
            rows.append(_check_ids(row.unsqueeze(0), f"prompt_ids[{i}]", 2, self.config.vocab_size)[0])
        lengths = [r.numel() for r in rows]
        padded = torch.zeros(len(rows), max(lengths), dtype=torch.long)
        for i, r in enumerate(rows):
            padded[i, : r.numel()] = r.cpu()
        return padded.to(device), lengths

    def _prepare_stop_tokens(self, stop_tokens) -> list[int]:
        if stop_tokens is None:
            return []
        if isinstance(stop_tokens, torch.Tensor):
            stop_tokens = stop_tokens.flatten().tolist()
        elif isinstance(stop_tokens, int) and not isinstance(stop_tokens, bool):
            stop_tokens = [stop_tokens]
        stops = list(stop_tokens)
        for t in stops:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.config.vocab_size:
                raise ValueError(f"stop_tokens must be ids in [0, {self.config.vocab_size}), got {t!r}")
        return stops

    @staticmethod
    def _prepare_generators(generator, batch: int):
        if generator is None or isinstance(generator, torch.Generator):
            return generator
        if isinstance(generator, Sequence) and all(isinstance(g, torch.Generator) for g in generator):
            if len(generator) != batch:
                raise ValueError(f"generator: a list needs one torch.Generator per row ({batch}), "
                                 f"got {len(generator)}")
            return list(generator)
        raise TypeError(f"generator must be None, a torch.Generator or a list of them, "
                        f"got {type(generator).__name__}")

    @staticmethod
    def _sample(logits: torch.Tensor, rows: list[int], temperature: float, top_k: int | None,
                top_p: float | None, generators) -> torch.Tensor:
        """One token per row from ``logits`` (B, V) -> (B,) int64. Only ``rows`` draw random numbers."""
        if temperature == 0 or not rows:
            return logits.argmax(dim=-1)
        batch, vocab = logits.shape
        logits = logits.float() / temperature
        if top_k is not None and top_k < vocab:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None and top_p < 1:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            # Drop a token when the tokens ranked above it already reach top_p: the top one always stays.
            drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        # Inverse-CDF sampling needs one uniform number per row, so a row's draws do not depend on the
        # batch it is in when it has its own generator.
        if isinstance(generators, list):
            u = torch.zeros(batch, device=logits.device)
            for i in rows:
                g = generators[i]
                u[i] = torch.rand(1, generator=g, device=g.device).to(logits.device)[0]
        else:
            dev = generators.device if generators is not None else logits.device
            u = torch.rand(batch, generator=generators, device=dev).to(logits.device)
        cdf = probs.cumsum(dim=-1)  # (B, V)
        target = (u * cdf[:, -1]).unsqueeze(1)
        return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=vocab - 1)


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

"""Llama-style decoder-only Transformer with a KV cache, built to the same interface as ``XLSTMLM``.

Pre-norm residual blocks (RMSNorm -> causal self-attention -> residual, RMSNorm -> SwiGLU -> residual),
no biases, rotary positions (RoPE) or, as an option, a learned absolute position table (GPT-2 style,
the LRAM Transformer baseline), a final RMSNorm and a linear head tied to the embedding or not.

The state is a :class:`KVCache`, so the model reads like the recurrent ones:

    logits, cache = model(ids)                  # ids (B, S) -> logits (B, S, V), keys/values of S tokens
    logits, cache = model(more_ids, cache)      # a chunked prefill continues where the last call stopped
    logits_t, cache = model.step(ids_t, cache)  # ids_t (B,) -> logits_t (B, V), attends to the cache

and a full forward, a chunked prefill plus steps, and token-by-token steps compute the same logits.

The cache is preallocated and grows by doubling: :meth:`TransformerLM.init_state` takes an optional
``max_len`` that sizes it up front (``generate`` does this, so decoding never reallocates), and a call
that needs more room than the cache has moves it into a buffer of twice the capacity (or exactly
what is needed, if more). Doubling rather than a fixed capacity keeps ``model(ids, state)`` usable
without knowing the final length in advance, at an amortised cost of one copy per token.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from xlram.baselines._config import check_positive_int, known_keys
from xlram.checkpoint import PretrainedMixin
from xlram.generation import GenerationMixin, check_token_ids
from xlram.models.registry import register_model
from xlram.nn import GatedFFN, Linear, RMSNorm, small_init_, wang_init_

__all__ = ["KVCache", "TransformerConfig", "TransformerLM", "TransformerLMConfig", "TransformerStack",
           "apply_rope", "rope_angles"]


# --------------------------------------------------------------------------------------------------
# Rotary position embedding


def rope_angles(positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype):
    """cos and sin of the rotary angles ``position * base^(-2i / head_dim)``.

    ``positions`` (S,) integer -> ``(cos, sin)``, each (S, head_dim / 2), computed in float64 for float64
    activations and float32 otherwise (half precision would lose the angles of late positions).
    """
    work = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=work) / head_dim)
    angles = positions.to(work)[:, None] * inv_freq[None, :]  # (S, hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, H, S, hd) by the angles of :func:`rope_angles` (each (S, hd/2)).

    The pairs rotated together are ``(x[i], x[i + hd/2])`` (the "rotate half" layout of the Hugging Face
    Llama, not Meta's interleaved pairs), so that a query at position m and a key at position n score
    ``q . k`` as a function of ``m - n`` only.
    """
    x1, x2 = x.to(cos.dtype).chunk(2, dim=-1)  # (B, H, S, hd/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


# --------------------------------------------------------------------------------------------------
# KV cache


class KVCache(NamedTuple):
    """Keys and values of every layer for the tokens seen so far: the Transformer's state.

    ``keys[l]`` and ``values[l]`` are (B, H_kv, C, hd) with capacity ``C >= length``; only the first
    ``length`` slots are meaningful (keys are stored after the rotary embedding). ``length`` is a Python
    int, so positions and slices never need a host sync.

    Under ``torch.no_grad()`` new keys and values are written into the buffers in place, so the
    returned cache shares memory with the one passed in. The cache passed in stays valid (its
    ``length`` is its own), but two continuations from one cache overwrite each other's slots:
    :meth:`clone` one first. With gradients enabled the update is out of place (a plain function of
    its inputs, so gradients flow through chunked calls) and never aliases.
    """

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    length: int

    @property
    def capacity(self) -> int:
        """How many tokens fit before the buffers must grow."""
        return self.keys[0].shape[2] if self.keys else 0

    def clone(self) -> KVCache:
        """A copy with buffers of its own."""
        keys, values = tuple(k.clone() for k in self.keys), tuple(v.clone() for v in self.values)
        return KVCache(keys, values, self.length)

    def trimmed(self) -> KVCache:
        """The same cache with its buffers cut to ``length`` (views): for comparing or saving states."""
        L = self.length
        return KVCache(tuple(k[:, :, :L] for k in self.keys), tuple(v[:, :, :L] for v in self.values), L)


def _append(buffer: torch.Tensor, length: int, new: torch.Tensor) -> torch.Tensor:
    """``buffer`` (B, H, C, hd) holding ``length`` tokens, plus ``new`` (B, H, S, hd) -> a buffer holding
    ``length + S`` tokens: written in place when there is room and no gradient is involved, else grown
    (by doubling) or, under autograd, rebuilt out of place."""
    S = new.shape[2]
    needed = length + S
    if torch.is_grad_enabled() and (new.requires_grad or buffer.requires_grad):
        return torch.cat([buffer[:, :, :length], new], dim=2)
    if buffer.shape[2] < needed:
        B, H, C, hd = buffer.shape
        grown = buffer.new_zeros(B, H, max(2 * C, needed), hd)
        grown[:, :, :length] = buffer[:, :, :length]
        buffer = grown
    buffer[:, :, length:needed] = new
    return buffer


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class TransformerConfig:
    """Configuration of :class:`TransformerStack` (the blocks, without embedding and head).

    Args:
        dim: model width D.
        num_layers: number of blocks.
        num_heads: query heads; the head size is ``dim // num_heads``.
        num_kv_heads: key/value heads (grouped-query attention); None means ``num_heads`` (plain
            multi-head attention). Must divide ``num_heads``.
        ffn_proj_factor: SwiGLU hidden size / D before rounding (8/3 keeps the parameter count of a
            4x GELU MLP, as in Llama).
        ffn_round_to: the SwiGLU hidden size is rounded up to a multiple of this.
        positions: ``"rope"`` (rotary, relative) or ``"learned"`` (an absolute table added to the input).
        max_len: the longest sequence (cache plus new tokens) accepted. Required for learned positions
            (the size of their table); optional with RoPE (None: no limit).
        rope_base: base of the rotary frequencies.
        norm_eps: epsilon of the RMSNorms.
        dropout: on the input, the attention weights and each residual branch (training only).
    """

    dim: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int | None = None
    ffn_proj_factor: float = 8 / 3
    ffn_round_to: int = 64
    positions: str = "rope"
    max_len: int | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("dim", "num_layers", "num_heads", "ffn_round_to"):
            check_positive_int(self, name)
        for name in ("num_kv_heads", "max_len"):
            if getattr(self, name) is not None:
                check_positive_int(self, name)
        if self.dim % self.num_heads:
            raise ValueError(f"TransformerConfig.dim ({self.dim}) must be divisible by num_heads "
                             f"({self.num_heads})")
        if self.num_heads % self.kv_heads:
            raise ValueError(f"TransformerConfig.num_kv_heads ({self.num_kv_heads}) must divide num_heads "
                             f"({self.num_heads})")
        if self.positions not in ("rope", "learned"):
            raise ValueError(f"TransformerConfig.positions must be 'rope' or 'learned', "
                             f"got {self.positions!r}")
        if self.positions == "learned" and self.max_len is None:
            raise ValueError("TransformerConfig.max_len is required with positions='learned' "
                             "(it is the size of the position table)")
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"TransformerConfig: RoPE needs an even head size, got dim / num_heads = "
                             f"{self.head_dim}")
        for name in ("ffn_proj_factor", "rope_base", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value)
                                                                                     and value > 0):
                raise ValueError(f"TransformerConfig.{name} must be a positive number, got {value!r}")
            setattr(self, name, float(value))
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, int | float) or not 0 <= d < 1:
            raise ValueError(f"TransformerConfig.dropout must be in [0, 1), got {d!r}")
        self.dropout = float(d)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads if self.num_kv_heads is not None else self.num_heads

    def to_dict(self) -> dict:
        """A JSON-able dict; ``from_dict(to_dict())`` gives an equal config."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TransformerConfig:
        """Build from :meth:`to_dict`'s output; unknown keys raise ``ValueError`` naming them."""
        return cls(**known_keys(cls, d))


@dataclass
class TransformerLMConfig:
    """Configuration of :class:`TransformerLM`.

    Args:
        vocab_size: number of token ids; inputs must lie in ``[0, vocab_size)``.
        transformer: the block stack (width, depth, heads, positions).
        tie_weights: share the embedding matrix with the output head.
    """

    vocab_size: int
    transformer: TransformerConfig
    tie_weights: bool = False

    def __post_init__(self):
        check_positive_int(self, "vocab_size")
        if isinstance(self.transformer, dict):
            self.transformer = TransformerConfig.from_dict(self.transformer)
        if not isinstance(self.transformer, TransformerConfig):
            raise ValueError(f"TransformerLMConfig.transformer must be a TransformerConfig (or its dict), "
                             f"got {type(self.transformer).__name__}")
        if not isinstance(self.tie_weights, bool):
            raise ValueError(f"TransformerLMConfig.tie_weights must be a bool, got {self.tie_weights!r}")

    def to_dict(self) -> dict:
        return {"vocab_size": self.vocab_size, "transformer": self.transformer.to_dict(),
                "tie_weights": self.tie_weights}

    @classmethod
    def from_dict(cls, d: dict) -> TransformerLMConfig:
        """Build from :meth:`to_dict`'s output; unknown or missing keys raise ``ValueError`` naming them."""
        d = known_keys(cls, d, required=("vocab_size", "transformer"))
        if not isinstance(d["transformer"], dict):
            raise ValueError(f"TransformerLMConfig: 'transformer' must be a dict, "
                             f"got {type(d['transformer']).__name__}")
        return cls(**d)


# --------------------------------------------------------------------------------------------------
# Attention, block, stack


class CausalSelfAttention(nn.Module):
    """Multi-head (or grouped-query) causal self-attention over the cache and the new tokens.

    Shapes: ``forward(x (B, S, D), rope, k_cache, v_cache (B, H_kv, C, hd) or None, start) ->
    (y (B, S, D), k_cache, v_cache)`` where ``start`` is the number of cached tokens (the position of
    ``x[:, 0]``) and ``rope`` the ``(cos, sin)`` of :func:`rope_angles` for the new positions (or None).
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        D, H, Hkv, hd = config.dim, config.num_heads, config.kv_heads, config.head_dim
        self.qkv = Linear(D, (H + 2 * Hkv) * hd, bias=False)
        self.out = Linear(H * hd, D, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        small_init_(self.qkv.weight, self.config.dim)
        wang_init_(self.out.weight, self.config.dim, self.config.num_layers)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                k_cache: torch.Tensor | None, v_cache: torch.Tensor | None, start: int):
        cfg = self.config
        B, S, _ = x.shape
        H, Hkv, hd = cfg.num_heads, cfg.kv_heads, cfg.head_dim
        q, k, v = self.qkv(x).split([H * hd, Hkv * hd, Hkv * hd], dim=-1)
        q = q.view(B, S, H, hd).transpose(1, 2)  # (B, H, S, hd)
        k = k.view(B, S, Hkv, hd).transpose(1, 2)  # (B, Hkv, S, hd)
        v = v.view(B, S, Hkv, hd).transpose(1, 2)  # (B, Hkv, S, hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if k_cache is None:  # nothing cached: the new keys are the cache
            k_cache, v_cache = k, v
        else:
            k_cache, v_cache = _append(k_cache, start, k), _append(v_cache, start, v)
        end = start + S
        keys, values = k_cache[:, :, :end], v_cache[:, :, :end]  # (B, Hkv, start + S, hd)
        mask = None
        if start > 0 and S > 1:
            # Query i sits at position start + i and sees the keys at positions <= start + i.
            kpos = torch.arange(end, device=x.device)
            mask = kpos[None, :] <= (start + torch.arange(S, device=x.device))[:, None]  # (S, start + S)
        y = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, is_causal=start == 0 and S > 1,
            dropout_p=cfg.dropout if self.training else 0.0, enable_gqa=Hkv != H,
        )  # (B, H, S, hd)
        y = y.transpose(1, 2).reshape(B, S, H * hd)
        return self.out(y), k_cache, v_cache


class TransformerBlock(nn.Module):
    """``x + attn(norm(x))`` then ``x + swiglu(norm(x))``; the same shapes as :class:`CausalSelfAttention`."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ffn_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.ffn = GatedFFN(config.dim, proj_factor=config.ffn_proj_factor, act="swish",
                            round_to=config.ffn_round_to, num_blocks=config.num_layers)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope, k_cache, v_cache, start: int):
        a, k_cache, v_cache = self.attn(self.attn_norm(x), rope, k_cache, v_cache, start)
        x = x + self.dropout(a)
        x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return x, k_cache, v_cache


class TransformerStack(nn.Module):
    """Positions, ``config.num_layers`` blocks and a final RMSNorm, over input embeddings.

    Shapes: ``forward(x (B, S, D), state=None) -> (y (B, S, D), state)``; ``step(x_t (B, D), state) ->
    (y_t (B, D), state)``. ``state`` is a :class:`KVCache` (None: empty, as :meth:`init_state`). Any
    model that embeds its own inputs (actions, observations) can use the stack directly.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"TransformerStack expects a TransformerConfig, got {type(config).__name__}")
        self.config = config
        self.pos_embedding = (nn.Embedding(config.max_len, config.dim) if config.positions == "learned"
                              else None)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.dim, eps=config.norm_eps)
        if self.pos_embedding is not None:
            small_init_(self.pos_embedding.weight, config.dim)

    def init_state(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> KVCache:
        """An empty cache for ``batch_size`` rows with room for ``max_len`` tokens (None: it grows on use)."""
        cfg = self.config
        capacity = 0 if max_len is None else max_len
        shape = (batch_size, cfg.kv_heads, capacity, cfg.head_dim)
        keys = tuple(torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers))
        values = tuple(torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers))
        return KVCache(keys, values, 0)

    def _check_state(self, state, x: torch.Tensor) -> None:
        cfg = self.config
        if not isinstance(state, KVCache):
            raise ValueError(f"TransformerStack: state must be a KVCache (or None), "
                             f"got {type(state).__name__}")
        if len(state.keys) != cfg.num_layers or len(state.values) != cfg.num_layers:
            raise ValueError(f"TransformerStack: the KVCache has {len(state.keys)} layers, the model "
                             f"{cfg.num_layers}")
        B = x.shape[0]
        expected = (B, cfg.kv_heads, cfg.head_dim)
        for k in state.keys + state.values:
            got = (k.shape[0], k.shape[1], k.shape[3]) if k.dim() == 4 else tuple(k.shape)
            if k.dim() != 4 or got != expected or k.shape[2] < state.length:
                raise ValueError(f"TransformerStack: KVCache tensors must be (B={B}, H_kv={cfg.kv_heads}, "
                                 f"C>={state.length}, hd={cfg.head_dim}), got {tuple(k.shape)}")
            if k.device != x.device:
                raise ValueError(f"TransformerStack: the KVCache is on {k.device}, the input on {x.device}")

    def forward(self, x: torch.Tensor, state: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        cfg = self.config
        if x.dim() != 3 or x.shape[-1] != cfg.dim:
            raise ValueError(f"TransformerStack.forward: x must be (B, S, {cfg.dim}), got {tuple(x.shape)}")
        B, S, _ = x.shape
        if state is not None:
            self._check_state(state, x)
        start = 0 if state is None else state.length
        if cfg.max_len is not None and start + S > cfg.max_len:
            raise ValueError(f"TransformerStack: positions {start}..{start + S - 1} exceed "
                             f"max_len={cfg.max_len} ({start} cached + {S} new tokens); the model has no "
                             f"positions beyond {cfg.max_len - 1}")
        positions = torch.arange(start, start + S, device=x.device)  # (S,)
        rope = None
        if self.pos_embedding is not None:
            x = x + self.pos_embedding(positions)  # (B, S, D)
        else:
            rope = rope_angles(positions, cfg.head_dim, cfg.rope_base, x.dtype)  # (S, hd/2) each
        x = self.dropout(x)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            k_cache = None if state is None else state.keys[i]
            v_cache = None if state is None else state.values[i]
            x, k_cache, v_cache = block(x, rope, k_cache, v_cache, start)
            keys.append(k_cache)
            values.append(v_cache)
        return self.norm(x), KVCache(tuple(keys), tuple(values), start + S)

    def step(self, x: torch.Tensor, state: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """One token per row: ``x (B, D)`` -> ``(y (B, D), state)``, attending to the cache."""
        if x.dim() != 2 or x.shape[-1] != self.config.dim:
            raise ValueError(f"TransformerStack.step: x must be (B, {self.config.dim}), got {tuple(x.shape)}")
        y, state = self.forward(x.unsqueeze(1), state)
        return y[:, 0], state


# --------------------------------------------------------------------------------------------------
# Language model


class TransformerLM(GenerationMixin, PretrainedMixin, nn.Module):
    """Transformer language model: ``nn.Embedding`` -> :class:`TransformerStack` -> ``nn.Linear`` (no bias).

    The interface is :class:`xlram.models.XLSTMLM`'s, with a :class:`KVCache` as the state. The weights
    are initialised as in the xLSTM models, so that comparisons differ in the architecture only:
    small-init (N(0, sqrt(2 / 5D))) for the embeddings, the head and the projections that read the
    residual stream, wang-init for the two that write into it (attention output, SwiGLU down).
    """

    model_type = "transformer_lm"
    config_class = TransformerLMConfig

    def __init__(self, config: TransformerLMConfig):
        super().__init__()
        if not isinstance(config, TransformerLMConfig):
            raise TypeError(f"TransformerLM expects a TransformerLMConfig, got {type(config).__name__}")
        self.config = config
        D = config.transformer.dim
        self.embedding = nn.Embedding(config.vocab_size, D)
        self.stack = TransformerStack(config.transformer)
        self.lm_head = Linear(D, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.embedding.weight
        small_init_(self.embedding.weight, D)
        if not config.tie_weights:
            small_init_(self.lm_head.weight, D)

    def forward(self, ids: torch.Tensor, state: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """Logits for every position. ``ids`` (B, S) integer -> ``(logits (B, S, V), state)``.

        ``state`` is the cache a previous call returned (None: empty); the returned cache holds the
        keys and values of every token so far.
        """
        ids = check_token_ids(ids, "ids", 2, self.config.vocab_size)
        self._check_device(ids, "ids")
        h, state = self.stack(self.embedding(ids), state)  # (B, S, D)
        return self.lm_head(h), state

    def step(self, ids_t: torch.Tensor, state: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """One token per row. ``ids_t`` (B,) integer -> ``(logits_t (B, V), state)``."""
        ids_t = check_token_ids(ids_t, "ids_t", 1, self.config.vocab_size)
        self._check_device(ids_t, "ids_t")
        return self._step(ids_t, state)

    def _check_device(self, ids: torch.Tensor, name: str) -> None:
        device = self.embedding.weight.device
        if ids.device != device:
            raise ValueError(f"{name} is on {ids.device} but the model is on {device}; move one of them")

    def init_state(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> KVCache:
        """An empty cache for ``batch_size`` rows (``state=None`` means the same).

        ``max_len`` preallocates room for that many tokens, so that no call up to that length
        reallocates; without it the cache grows by doubling as tokens arrive.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
            raise ValueError(f"max_len must be a positive int or None, got {max_len!r}")
        limit = self.config.transformer.max_len
        if max_len is not None and limit is not None and max_len > limit:
            raise ValueError(f"max_len={max_len} exceeds the model's max_len={limit}")
        ref = self.embedding.weight
        device, dtype = device or ref.device, dtype or ref.dtype
        return self.stack.init_state(batch_size, max_len, device=device, dtype=dtype)

    def _step(self, ids_t: torch.Tensor, state):
        h, state = self.stack.step(self.embedding(ids_t), state)  # (B, D)
        return self.lm_head(h), state  # (B, V)

    def _prefill(self, ids: torch.Tensor, total_len: int):
        """For :meth:`generate`: a cache sized for ``total_len`` tokens, filled with ``ids``; the logits of
        the last position only."""
        limit = self.config.transformer.max_len
        if limit is not None and total_len > limit:
            raise ValueError(f"generate: the longest prompt plus max_new_tokens - 1 needs {total_len} "
                             f"positions, more than max_len={limit}")
        state = self.init_state(ids.shape[0], total_len)
        h, state = self.stack(self.embedding(ids), state)  # (B, S, D)
        return self.lm_head(h[:, -1]), state  # (B, V)

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (tied weights counted once); optionally without the token embedding."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embedding.weight.numel() if non_embedding else n


# -------------------------------------------------------------------------------------------------
# Registered variants


def transformer_lm(*, vocab_size: int, dim: int, num_layers: int, num_heads: int, tie_weights: bool = False,
                   **transformer_kwargs) -> TransformerLM:
    """A :class:`TransformerLM` from flat keywords; extra keywords go to :class:`TransformerConfig`."""
    stack = TransformerConfig(dim=dim, num_layers=num_layers, num_heads=num_heads, **transformer_kwargs)
    config = TransformerLMConfig(vocab_size=vocab_size, transformer=stack, tie_weights=tie_weights)
    return TransformerLM(config)


@register_model("lm-transformer-tiny", task="lm")
def transformer_tiny(**overrides) -> TransformerLM:
    """Tiny Llama-style Transformer language model for tests (2 layers, width 32, 4 heads, 64 tokens)."""
    return transformer_lm(**{"vocab_size": 64, "dim": 32, "num_layers": 2, "num_heads": 4, **overrides})


@register_model("lm-transformer-learnedpos-tiny", task="lm")
def transformer_learnedpos_tiny(**overrides) -> TransformerLM:
    """Tiny GPT-2-style (learned absolute positions, max_len 64) Transformer language model for tests."""
    kwargs = {"vocab_size": 64, "dim": 32, "num_layers": 2, "num_heads": 4, "positions": "learned",
              "max_len": 64, **overrides}
    return transformer_lm(**kwargs)


@register_model("lm-transformer-demo", task="lm")
def transformer_demo(**overrides) -> TransformerLM:
    """Byte-level Llama-style Transformer with the parameter count of ``lm-xlstm[7:1]-demo`` (within 5%)."""
    kwargs = {"vocab_size": 256, "dim": 128, "num_layers": 4, "num_heads": 4, "tie_weights": True,
              **overrides}
    return transformer_lm(**kwargs)

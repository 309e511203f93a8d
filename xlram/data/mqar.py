"""Multi-Query Associative Recall (MQAR) as in Zoology (Arora et al. 2023), the xLSTM paper's Exp. 1.

A sequence of ``context_len`` tokens starts with ``num_kv_pairs`` key-value pairs ``k_1 v_1 ... k_K v_K``;
after them, each key is queried once at an even offset of the rest of the sequence, and the model must
answer with its value at the query position::

    ids      k_1  v_1  k_2  v_2   r   r   k_2   r    r   k_1   r ...
    targets  -100 -100 -100 -100 -100 -100 v_2 -100 -100  v_1 -100 ...

``targets`` is aligned with ``ids``: the value is predicted *at* the query key, from the prefix that ends
there (Zoology's labels after its one-token shift). As in Zoology's ``multiquery_ar``:

- the vocabulary has 8192 tokens; keys come from ``[1, V/2)`` and values from ``[V/2, V)``, so the two
  ranges are disjoint; the keys of one sample are distinct, and so are its values;
- query ``i`` sits at offset ``2 * g_i`` after the key-value block, where the gaps ``g_i`` are drawn
  without replacement from ``[0, (context_len - 2K) / 2)`` with probability ``∝ a * g^(a - 1)`` for
  ``g = 1, 2, ...`` and ``a = power_a = 0.01``: a power law that puts most queries close to the pairs;
- every other position holds a uniform random token of the whole vocabulary (``random_non_queries``);
- ``context_len`` must be even and at least ``4 * num_kv_pairs``.

The paper's Exp. 1 settings are the :data:`PRESETS` ``(64, 4)``, ``(128, 8)`` and ``(256, 16)``;
:func:`fixed_split` gives the fixed 100,000-sample train and 3,000-sample test sets by seed. Score with
:func:`answer_metrics` (re-exported from :mod:`xlram.data.formal`) from logits, or from hidden states and
the output head so that only the answer positions pay for the 8192-way projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xlram.data.formal import IGNORE_INDEX, AnswerMetrics, Batch, answer_metrics

__all__ = ["IGNORE_INDEX", "VOCAB_SIZE", "POWER_A", "PRESETS", "SPLIT_SIZES", "AnswerMetrics", "Batch",
           "MQARSetting", "answer_metrics", "fixed_split", "get_setting", "sample"]

VOCAB_SIZE = 8192
POWER_A = 0.01
SPLIT_SIZES = {"train": 100_000, "test": 3_000}  # the paper's (and Zoology's) sample counts
_CHUNK = 4096  # fixed splits are drawn this many rows at a time; part of what a seed determines


@dataclass(frozen=True)
class MQARSetting:
    """One (context length, key-value pairs) setting, with the batch size the paper trains it with."""

    context_len: int
    num_kv_pairs: int
    batch_size: int

    @property
    def name(self) -> str:
        return f"cl{self.context_len}_kv{self.num_kv_pairs}"


# The paper's Exp. 1 (Zoology's design); batch 512 for context 64 and 128, 256 for context 256.
PRESETS = {s.name: s for s in (MQARSetting(64, 4, 512), MQARSetting(128, 8, 512), MQARSetting(256, 16, 256))}


def get_setting(name: str | MQARSetting) -> MQARSetting:
    """A preset by name (``"cl64_kv4"``, ``"cl128_kv8"``, ``"cl256_kv16"``); a setting is returned as is."""
    if isinstance(name, MQARSetting):
        return name
    if name not in PRESETS:
        raise ValueError(f"MQAR preset name must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]


def _check_int(value, name: str, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_args(batch_size, context_len, num_kv_pairs, vocab_size, power_a) -> None:
    _check_int(batch_size, "batch_size", 1)
    _check_int(num_kv_pairs, "num_kv_pairs", 1)
    _check_int(context_len, "context_len", 4)
    if context_len % 2:
        raise ValueError(f"context_len must be even (queries sit at even offsets), got {context_len}")
    if 4 * num_kv_pairs > context_len:
        raise ValueError(f"num_kv_pairs={num_kv_pairs} is too large for context_len={context_len}: "
                         f"the pairs and their queries need context_len >= 4 * num_kv_pairs = "
                         f"{4 * num_kv_pairs}")
    _check_int(vocab_size, "vocab_size", 4)
    if num_kv_pairs > vocab_size // 2 - 1:
        raise ValueError(f"num_kv_pairs={num_kv_pairs} exceeds the {vocab_size // 2 - 1} distinct keys of "
                         f"vocab_size={vocab_size}")
    if not isinstance(power_a, (int, float)) or isinstance(power_a, bool) or not 0 < power_a <= 1:
        raise ValueError(f"power_a must be in (0, 1], got {power_a!r}")


def _distinct(batch_size: int, low: int, high: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``(batch_size, k)`` int64: per row, ``k`` distinct uniform ints of ``[low, high)`` in random order."""
    n = high - low
    if k * k > n:  # repeats would be common: the k largest of n i.i.d. uniforms are a uniform k-subset
        return torch.rand(batch_size, n, generator=generator).topk(k, dim=1).indices + low
    # Otherwise draw with replacement and redraw the rows with a repeat (fewer than half of them):
    # conditioned on no repeat, a row is a uniform k-subset in uniform order, at O(k) cost instead of O(n).
    out = torch.randint(low, high, (batch_size, k), generator=generator)
    while True:
        ordered = out.sort(dim=1).values
        repeated = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1)
        if not repeated.any():
            return out
        out[repeated] = torch.randint(low, high, (int(repeated.sum()), k), generator=generator)


def sample(batch_size: int, context_len: int, num_kv_pairs: int, generator: torch.Generator, *,
           vocab_size: int = VOCAB_SIZE, power_a: float = POWER_A, random_non_queries: bool = True) -> Batch:
    """A batch of MQAR sequences: ``ids`` and ``targets`` are ``(batch_size, context_len)`` int64.

    ``targets`` is -100 except at the ``num_kv_pairs`` query positions of each row, where it holds the
    value paired with the queried key. Deterministic given ``generator``'s state, which it advances.
    With ``random_non_queries=False`` the filler positions hold token 0 instead of random tokens.
    """
    _check_args(batch_size, context_len, num_kv_pairs, vocab_size, power_a)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    B, S, K = batch_size, context_len, num_kv_pairs
    half = vocab_size // 2
    keys = _distinct(B, 1, half, K, generator)  # (B, K) in [1, V/2)
    values = _distinct(B, half, vocab_size, K, generator)  # (B, K) in [V/2, V)

    # Query i goes to offset 2 * gap_i after the pairs; gaps are distinct and power-law distributed.
    space = (S - 2 * K) // 2
    gap_weights = power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    gaps = torch.multinomial(gap_weights.expand(B, space), K, replacement=False, generator=generator)
    query_pos = 2 * K + 2 * gaps  # (B, K)

    ids = torch.zeros(B, S, dtype=torch.long)
    ids[:, 0 : 2 * K : 2] = keys
    ids[:, 1 : 2 * K : 2] = values
    ids.scatter_(1, query_pos, keys)
    targets = torch.full((B, S), IGNORE_INDEX, dtype=torch.long)
    targets.scatter_(1, query_pos, values)

    if random_non_queries:
        noise = torch.randint(0, vocab_size, (B, S), generator=generator)
        filler = torch.ones(B, S, dtype=torch.bool)
        filler[:, : 2 * K] = False
        filler.scatter_(1, query_pos, False)
        ids = torch.where(filler, noise, ids)
    lengths = torch.full((B,), S, dtype=torch.long)
    return Batch(ids=ids, targets=targets, lengths=lengths, num_tokens=lengths.clone())


def fixed_split(setting: str | MQARSetting, split: str = "test", num_samples: int | None = None,
                seed: int = 0, *, vocab_size: int = VOCAB_SIZE, power_a: float = POWER_A) -> Batch:
    """The fixed ``"train"`` or ``"test"`` set of a setting: ``num_samples`` sequences (default 100,000 for
    train, 3,000 for test), the same for a given ``seed`` on every machine; train and test come from
    different streams."""
    setting = get_setting(setting)
    if split not in SPLIT_SIZES:
        raise ValueError(f"split must be one of {tuple(SPLIT_SIZES)}, got {split!r}")
    num_samples = SPLIT_SIZES[split] if num_samples is None else num_samples
    _check_int(num_samples, "num_samples", 1)
    _check_int(seed, "seed", 0)
    generator = torch.Generator().manual_seed(2 * seed + (split == "test"))
    parts = [sample(min(_CHUNK, num_samples - start), setting.context_len, setting.num_kv_pairs,
                    generator, vocab_size=vocab_size, power_a=power_a)
             for start in range(0, num_samples, _CHUNK)]
    return Batch(*(torch.cat([getattr(p, f) for p in parts])
                   for f in ("ids", "targets", "lengths", "num_tokens")))

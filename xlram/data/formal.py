"""Formal-language tasks of the xLSTM paper (§4.1, App. B.1.1), seeded generators with exact answers.

The tasks follow the Chomsky-hierarchy benchmark of Delétang et al. (2023) as the xLSTM paper adapted it:
train on input lengths 3-40, test on 40-256, and score accuracy on the answer tokens only, optionally
scaled as ``(acc - chance) / (1 - chance)`` (:func:`scaled_accuracy`). Where neither paper pins a detail
down, the task's docstring states the definition used here.

Layout of one sample, in token ids (``n`` is the sample's *length*, the number of input symbols)::

    ids      x_1  x_2 ... x_n  <sep>  s_1 ... s_{m-1}  <pad> ...
    targets  -100 -100 ... -100  a_1    a_2 ... a_m      -100 ...

``targets`` is already aligned for a causal model: ``targets[:, t]`` is what the model must output after
reading ``ids[:, :t + 1]``, so the loss compares ``logits[:, t]`` with ``targets[:, t]`` without a shift.
Most tasks have a one-token answer (``m = 1``): the model answers at the separator. Tasks with an
``m``-token answer (Reverse String, Stack Manipulation, ...) fill the answer slots ``s_j`` with
``<pad>`` by default, so the whole answer must come from the input as in Delétang et al. (whose models
read empty inputs while they write) and the SLiCE reimplementation; ``teacher_forcing=True`` puts the
previous answer token ``a_j`` there instead. Token id 0 is ``<pad>`` and id 1 is ``<sep>`` in every task.

A vocabulary is ``<pad>``, ``<sep>``, the input symbols, answer symbols that are not input symbols, and
``<end>`` for tasks whose answer length varies; its size matches the paper's ``|V|`` (App. B.1.1) up to
those separator and end tokens. ``chance_accuracy`` is the paper's ``s_rand``: one over the number of
answer symbols (the end token is not counted, as in the paper).

Every task has a pure-Python ``solve(sequence) -> answer`` on symbol strings that makes the targets;
tests check the generated targets against it. Samples are drawn from a ``torch.Generator``: the same
seed gives the same batches on every machine.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
PAD, SEP, END = "<pad>", "<sep>", "<end>"
PAD_ID, SEP_ID = 0, 1

# The paper's protocol: train on lengths 3-40, evaluate length generalisation on 40-256.
SPLIT_LENGTHS = {"train": (3, 40), "test": (40, 256)}


# ----------------------------------------------------------------------------------------------------
# Batches and answer-position metrics (shared with xlram.data.mqar)


@dataclass(frozen=True)
class Batch:
    """A batch of synthetic sequences with targets only at the answer positions.

    ``ids``: ``(B, S)`` int64 inputs. ``targets``: ``(B, S)`` int64, :data:`IGNORE_INDEX` (-100) except at
    answer positions, aligned with ``ids`` (no shift needed). ``lengths``: ``(B,)`` int64, the task length
    of each sample (the number of input symbols for a formal language, the context length for MQAR).
    ``num_tokens``: ``(B,)`` int64, how many leading positions of each row are real; the rest is padding.
    """

    ids: torch.Tensor
    targets: torch.Tensor
    lengths: torch.Tensor
    num_tokens: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.ids.shape[0]

    @property
    def answer_mask(self) -> torch.Tensor:
        """``(B, S)`` bool, True at the answer positions."""
        return self.targets != IGNORE_INDEX

    @property
    def num_answers(self) -> int:
        return int(self.answer_mask.sum())

    def to(self, device: str | torch.device) -> Batch:
        """The same batch on ``device``."""
        return Batch(*(t.to(device) for t in (self.ids, self.targets, self.lengths, self.num_tokens)))

    def minibatches(self, batch_size: int, *, trim: bool = True) -> Iterator[Batch]:
        """Consecutive slices of ``batch_size`` rows (the last may be smaller), in order.

        With ``trim`` every slice is cut to its own longest row, so a fixed test set padded to 257+
        tokens is not evaluated at full width where its rows are shorter.
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        for start in range(0, self.batch_size, batch_size):
            rows = slice(start, start + batch_size)
            width = int(self.num_tokens[rows].max()) if trim else self.ids.shape[1]
            yield Batch(self.ids[rows, :width], self.targets[rows, :width], self.lengths[rows],
                        self.num_tokens[rows])


@dataclass(frozen=True)
class AnswerMetrics:
    """``loss``: mean cross-entropy over the answer tokens (differentiable scalar). ``accuracy``: share of
    answer tokens whose argmax is right (detached float scalar). ``num_answers``: how many were scored."""

    loss: torch.Tensor
    accuracy: torch.Tensor
    num_answers: int


def answer_metrics(targets: torch.Tensor, logits: torch.Tensor | None = None, *,
                   hidden: torch.Tensor | None = None,
                   head: Callable[[torch.Tensor], torch.Tensor] | None = None) -> AnswerMetrics:
    """Loss and accuracy at the answer positions only (where ``targets != -100``).

    Give either ``logits`` ``(B, S, V)``, or ``hidden`` ``(B, S, D)`` and ``head`` (e.g. the model's output
    ``nn.Linear``): the head is then applied to the answer positions alone, ``(N, D) -> (N, V)``, which
    avoids a V-way projection of every position (MQAR has V = 8192 and a few answers per sequence).
    """
    if not isinstance(targets, torch.Tensor) or targets.dim() != 2:
        got = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f"targets must be a (B, S) tensor, got {got}")
    if (logits is None) == (hidden is None):
        raise ValueError("give exactly one of logits or hidden (with head)")
    mask = targets != IGNORE_INDEX
    y = targets[mask]  # (N,)
    if y.numel() == 0:
        raise ValueError("targets has no answer positions (every entry is -100)")
    if logits is not None:
        if logits.dim() != 3 or logits.shape[:2] != targets.shape:
            raise ValueError(f"logits must be (B, S, V) with (B, S) = {tuple(targets.shape)}, "
                             f"got {tuple(logits.shape)}")
        selected = logits[mask]  # (N, V)
    else:
        if head is None:
            raise ValueError("hidden needs head, the (N, D) -> (N, V) output projection")
        if hidden.dim() != 3 or hidden.shape[:2] != targets.shape:
            raise ValueError(f"hidden must be (B, S, D) with (B, S) = {tuple(targets.shape)}, "
                             f"got {tuple(hidden.shape)}")
        selected = head(hidden[mask])  # (N, V)
    loss = F.cross_entropy(selected.float(), y)
    accuracy = (selected.detach().argmax(dim=-1) == y).float().mean()
    return AnswerMetrics(loss=loss, accuracy=accuracy, num_answers=int(y.numel()))


def scaled_accuracy(accuracy: float, chance: float) -> float:
    """The paper's scaled accuracy ``(acc - chance) / (1 - chance)``: 0 is random guessing, 1 is perfect."""
    if not 0.0 <= chance < 1.0:
        raise ValueError(f"chance must be in [0, 1), got {chance!r}")
    return (float(accuracy) - chance) / (1.0 - chance)


# ----------------------------------------------------------------------------------------------------
# The task base class


def _check_positive_int(value, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class FormalTask:
    """A formal-language task: an input alphabet, an answer alphabet, a sampler and an exact solver.

    Subclasses set ``name``, ``group`` (the paper's Fig. 4 group, or ``"supplementary"`` for Fig. 12),
    ``symbols`` (input alphabet), ``answer_symbols`` and ``solve``; ``multi_token`` tasks answer with a
    tuple of symbols, ``uses_end`` tasks end that answer with :data:`END`. Valid lengths are
    ``min_length, min_length + length_step, ...``.
    """

    name: ClassVar[str]
    group: ClassVar[str]
    multi_token: ClassVar[bool] = False
    uses_end: ClassVar[bool] = False
    min_length: ClassVar[int] = 1
    length_step: ClassVar[int] = 1
    symbols: tuple[str, ...]
    answer_symbols: tuple[str, ...]

    def __init__(self):
        extra = tuple(a for a in self.answer_symbols if a not in self.symbols)
        self.vocab: tuple[str, ...] = (PAD, SEP, *self.symbols, *extra) + ((END,) if self.uses_end else ())
        self.token_to_id = {token: i for i, token in enumerate(self.vocab)}
        if len(self.token_to_id) != len(self.vocab):
            raise RuntimeError(f"{self.name}: duplicate tokens in the vocabulary {self.vocab}")
        self._symbol_set = frozenset(self.symbols)
        self.chance_accuracy: float = 1.0 / len(self.answer_symbols)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(vocab_size={self.vocab_size}, "
                f"chance_accuracy={self.chance_accuracy:.4g})")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # --- the task itself -----------------------------------------------------------------------------

    def solve(self, sequence: Sequence[str]) -> str | tuple[str, ...]:
        """The exact answer for an input ``sequence`` of symbols (a symbol, or a tuple for multi-token tasks).

        Raises ``ValueError`` when the sequence is not an input of this task.
        """
        sequence = list(sequence)
        if not self.length_ok(len(sequence)):
            raise ValueError(f"{self.name}: sequence has length {len(sequence)}, "
                             f"expected {self._length_rule()}")
        unknown = sorted(set(sequence) - self._symbol_set)
        if unknown:
            raise ValueError(f"{self.name}: sequence has symbols {unknown[:5]} outside the alphabet "
                             f"{self.symbols[:12]}")
        self._check_structure(sequence)
        return self._solve(sequence)

    def _solve(self, sequence: list[str]) -> str | tuple[str, ...]:
        raise NotImplementedError

    def _draw(self, n: int, rng: random.Random) -> list[str]:
        """A random input of length ``n``; by default i.i.d. uniform symbols."""
        return rng.choices(self.symbols, k=n)

    def _check_structure(self, sequence: list[str]) -> None:
        """Raise ``ValueError`` if a sequence over the alphabet is not a valid input (default: any is)."""

    def length_ok(self, n: int) -> bool:
        """Whether ``n`` input symbols make a valid input of this task."""
        return n >= self.min_length and (n - self.min_length) % self.length_step == 0

    def _length_rule(self) -> str:
        if self.length_step == 1:
            return f"a length >= {self.min_length}"
        parity = "odd" if self.min_length % 2 else "even"
        return f"an {parity} length >= {self.min_length}"

    # --- tokens --------------------------------------------------------------------------------------

    def answer_tokens(self, sequence: Sequence[str]) -> tuple[str, ...]:
        """The supervised answer: ``solve(sequence)`` as a tuple, then :data:`END` if the task has one."""
        answer = self.solve(sequence)
        answer = answer if self.multi_token else (answer,)
        return (*answer, END) if self.uses_end else answer

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Token ids of vocabulary tokens."""
        try:
            return [self.token_to_id[t] for t in tokens]
        except KeyError as err:
            raise ValueError(f"{self.name}: token {err.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids) -> list[str]:
        """Vocabulary tokens of ids (a 1-D tensor or a sequence of ints)."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode: ids must be 1-D, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise ValueError(f"{self.name}: ids must be in [0, {self.vocab_size}), got {ids}")
        return [self.vocab[i] for i in ids]

    def input_of(self, ids) -> list[str]:
        """The input symbols of one row of ``Batch.ids``: the tokens before the first separator."""
        tokens = self.decode(ids)
        if SEP not in tokens:
            raise ValueError(f"{self.name}: the row has no {SEP} token")
        return tokens[: tokens.index(SEP)]

    # --- sampling ------------------------------------------------------------------------------------

    def valid_lengths(self, min_len: int, max_len: int) -> list[int]:
        """The valid input lengths in ``[min_len, max_len]``; raises if there is none."""
        _check_positive_int(min_len, "min_len")
        _check_positive_int(max_len, "max_len")
        if min_len > max_len:
            raise ValueError(f"min_len ({min_len}) must be <= max_len ({max_len})")
        lengths = [n for n in range(min_len, max_len + 1) if self.length_ok(n)]
        if not lengths:
            raise ValueError(f"{self.name}: no valid length in [min_len, max_len] = [{min_len}, {max_len}]; "
                             f"the task needs {self._length_rule()}")
        return lengths

    def sample(self, batch_size: int, min_len: int, max_len: int, generator: torch.Generator, *,
               pad_to: int | None = None, teacher_forcing: bool = False) -> Batch:
        """A batch of ``batch_size`` samples whose lengths are uniform over the valid lengths in
        ``[min_len, max_len]``, padded with ``<pad>`` to the longest row (or to ``pad_to`` tokens).

        Deterministic given ``generator``'s state, which it advances. See the module docstring for the
        layout and for ``teacher_forcing``.
        """
        _check_positive_int(batch_size, "batch_size")
        lengths = self.valid_lengths(min_len, max_len)
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if pad_to is not None:
            _check_positive_int(pad_to, "pad_to")
        # One draw from the torch generator seeds Python's Mersenne Twister for the per-symbol draws:
        # reproducible from the torch seed, and much cheaper than a torch call per symbol.
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
        rows_ids, rows_targets, row_lengths = [], [], []
        for _ in range(batch_size):
            n = lengths[rng.randrange(len(lengths))]
            sequence = self._draw(n, rng)
            answer = self.encode(self.answer_tokens(sequence))
            slots = answer[:-1] if teacher_forcing else [PAD_ID] * (len(answer) - 1)
            rows_ids.append(self.encode(sequence) + [SEP_ID] + slots)
            rows_targets.append([IGNORE_INDEX] * n + answer)
            row_lengths.append(n)
        num_tokens = [len(r) for r in rows_ids]
        width = max(num_tokens)
        if pad_to is not None:
            if pad_to < width:
                raise ValueError(f"pad_to ({pad_to}) is shorter than the longest sample ({width} tokens)")
            width = pad_to
        ids = torch.tensor([r + [PAD_ID] * (width - len(r)) for r in rows_ids], dtype=torch.long)
        targets = torch.tensor([r + [IGNORE_INDEX] * (width - len(r)) for r in rows_targets],
                               dtype=torch.long)
        num_tokens = torch.tensor(num_tokens, dtype=torch.long)
        return Batch(ids=ids, targets=targets, lengths=torch.tensor(row_lengths, dtype=torch.long),
                     num_tokens=num_tokens)


# ----------------------------------------------------------------------------------------------------
# Regular languages


class Parity(FormalTask):
    """Parity (regular). Input: bits ``x in {0, 1}^n``. Answer: the number of ``1``s mod 2 (``"0"``/``"1"``).

    Delétang's Parity Check; the official xLSTM generator answers the same (count of one symbol mod 2).
    """

    name, group = "parity", "regular"
    symbols = answer_symbols = ("0", "1")

    def _solve(self, sequence):
        return str(sequence.count("1") % 2)


class EvenPairs(FormalTask):
    """Even Pairs (regular). Input: bits ``x in {0, 1}^n``. Answer: ``"0"`` if the number of ``01`` and
    ``10`` substrings is even, else ``"1"`` (which equals ``x_1 xor x_n``; ``n = 1`` has none: ``"0"``)."""

    name, group = "even_pairs", "regular"
    symbols = answer_symbols = ("0", "1")

    def _solve(self, sequence):
        changes = sum(a != b for a, b in zip(sequence[:-1], sequence[1:], strict=True))
        return str(changes % 2)


class CycleNavigation(FormalTask):
    """Cycle Navigation (regular). Input: moves ``-1``/``0``/``+1`` on a cycle of 5 positions, starting at
    position 0. Answer: the final position ``@k``, ``k = sum(moves) mod 5``."""

    name, group = "cycle_navigation", "regular"
    symbols = ("-1", "0", "+1")

    def __init__(self, cycle_length: int = 5):
        _check_positive_int(cycle_length, "cycle_length")
        self.cycle_length = cycle_length
        self.answer_symbols = tuple(f"@{k}" for k in range(cycle_length))
        super().__init__()

    def _solve(self, sequence):
        return f"@{sum(int(s) for s in sequence) % self.cycle_length}"


class ModularArithmetic(FormalTask):
    """Modular Arithmetic without brackets (regular). Input: ``d_0 o_1 d_1 ... o_k d_k`` (odd length),
    digits ``d in {0..4}`` and operators ``o in {+, -, *}``, all uniform. Answer: the value mod 5 as a digit,
    with the usual precedence (``*`` before ``+``/``-``, left to right), as Delétang et al. and the
    official xLSTM generator evaluate it. Example: ``1 - 2 * 3`` = -5 -> ``"0"``. The separator plays the
    role of ``=``."""

    name, group = "modular_arithmetic", "regular"
    length_step = 2
    operators = ("+", "-", "*")

    def __init__(self, modulus: int = 5):
        if not isinstance(modulus, int) or isinstance(modulus, bool) or modulus < 2:
            raise ValueError(f"modulus must be an int >= 2, got {modulus!r}")
        self.modulus = modulus
        self.digits = tuple(str(d) for d in range(modulus))
        self.symbols = self.digits + self.operators
        self.answer_symbols = self.digits
        super().__init__()

    def _draw(self, n, rng):
        return [rng.choice(self.digits) if i % 2 == 0 else rng.choice(self.operators) for i in range(n)]

    def _check_structure(self, sequence):
        for i, s in enumerate(sequence):
            if (s in self.operators) != (i % 2 == 1):
                raise ValueError(f"{self.name}: expected digits at even and operators at odd positions, "
                                 f"got {s!r} at position {i}")

    def _solve(self, sequence):
        total, sign, term = 0, 1, int(sequence[0])
        for op, digit in zip(sequence[1::2], sequence[2::2], strict=True):
            if op == "*":
                term *= int(digit)
            else:  # a + or - closes the running product
                total += sign * term
                sign, term = (1 if op == "+" else -1), int(digit)
        total += sign * term
        return str(total % self.modulus)


# ----------------------------------------------------------------------------------------------------
# Counting


_COUNT_SYMBOLS = tuple(str(i) for i in range(1, 64))  # the paper's |V| = 64 is <pad> + 63 symbols


class Majority(FormalTask):
    """Majority (counting). Input: ``n`` uniform symbols from 63 (``"1"`` .. ``"63"``). Answer: the most
    frequent symbol; ties go to the smallest symbol, so the answer depends on the counts alone (the SLiCE
    reimplementation breaks ties by first occurrence instead)."""

    name, group = "majority", "counting"
    symbols = answer_symbols = _COUNT_SYMBOLS

    def _solve(self, sequence):
        counts = Counter(sequence)
        return min(counts, key=lambda s: (-counts[s], int(s)))


class MajorityCount(FormalTask):
    """Majority Count (counting). Input: as Majority. Answer: the count of the most frequent symbol,
    written with the symbol of that number (count 3 -> ``"3"``), capped at 63 (as SLiCE caps it at its
    vocabulary); at the test lengths (<= 256 over 63 symbols) the cap is essentially never reached."""

    name, group = "majority_count", "counting"
    symbols = answer_symbols = _COUNT_SYMBOLS

    def _solve(self, sequence):
        return str(min(max(Counter(sequence).values()), len(self.answer_symbols)))


# ----------------------------------------------------------------------------------------------------
# Context-sensitive (Fig. 4)


_DIGITS10 = tuple(str(d) for d in range(10))


class BucketSort(FormalTask):
    """Bucket Sort (context-sensitive). Input: ``n`` uniform symbols ``"0"`` .. ``"9"``. Answer: the same
    symbols sorted ascending (``n`` tokens)."""

    name, group, multi_token = "bucket_sort", "cs", True
    symbols = answer_symbols = _DIGITS10

    def _solve(self, sequence):
        return tuple(sorted(sequence, key=int))


class MissingDuplicate(FormalTask):
    """Missing Duplicate (context-sensitive). Input: ``w w`` for a uniform ``w`` of ``n / 2`` symbols
    ``"0"`` .. ``"8"`` (``n`` even), with one uniform position replaced by ``"_"``. Answer: the symbol that
    ``"_"`` hides, read from the other copy. (Delétang pads odd lengths with an empty token; here odd
    lengths are not sampled.)"""

    name, group = "missing_duplicate", "cs"
    min_length, length_step = 2, 2
    answer_symbols = tuple(str(d) for d in range(9))
    symbols = (*answer_symbols, "_")

    def _draw(self, n, rng):
        half = rng.choices(self.answer_symbols, k=n // 2)
        sequence = half + half
        sequence[rng.randrange(n)] = "_"
        return sequence

    def _check_structure(self, sequence):
        half = len(sequence) // 2
        if sequence.count("_") != 1:
            raise ValueError(f"{self.name}: expected exactly one '_', got {sequence.count('_')}")
        if any(a != b and "_" not in (a, b) for a, b in zip(sequence[:half], sequence[half:], strict=True)):
            raise ValueError(f"{self.name}: the two halves of the sequence differ")

    def _solve(self, sequence):
        half = len(sequence) // 2
        i = sequence.index("_")
        return sequence[i + half] if i < half else sequence[i - half]


# ----------------------------------------------------------------------------------------------------
# Supplementary (Fig. 12)


class ReverseString(FormalTask):
    """Reverse String (deterministic context-free). Input: ``n`` uniform symbols ``"0"`` .. ``"9"``.
    Answer: the input reversed (``n`` tokens)."""

    name, group, multi_token = "reverse_string", "supplementary", True
    symbols = answer_symbols = _DIGITS10

    def _solve(self, sequence):
        return tuple(reversed(sequence))


class Repetition(FormalTask):
    """Repetition. Input: ``n`` uniform symbols ``"0"`` .. ``"9"``. Answer: the input again, a copy of
    ``n`` tokens (the SLiCE reimplementation's target; Delétang's Duplicate String would emit ``w w``)."""

    name, group, multi_token = "repetition", "supplementary", True
    symbols = answer_symbols = _DIGITS10

    def _solve(self, sequence):
        return tuple(sequence)


class OddsFirst(FormalTask):
    """Odds First (context-sensitive). Input: ``x_1 .. x_n``, uniform symbols ``"0"`` .. ``"9"``. Answer:
    ``x_1 x_3 x_5 ... x_2 x_4 ...`` (1-based odd positions first), as Delétang's docstring and examples
    define it (``00110101 -> 0100 0111``; their code takes 0-based odd positions first)."""

    name, group, multi_token = "odds_first", "supplementary", True
    symbols = answer_symbols = _DIGITS10

    def _solve(self, sequence):
        return tuple(sequence[0::2] + sequence[1::2])


class StackManipulation(FormalTask):
    """Stack Manipulation (deterministic context-free). Input: an initial stack of ``s`` uniform symbols
    ``"0"`` .. ``"3"`` given bottom to top (``s`` uniform in ``[1, n - 1]``; ``s = 1`` when ``n = 1``), then
    ``n - s`` uniform actions ``pop``, ``push0`` .. ``push3``; a ``pop`` on an empty stack does nothing.
    Answer: the final stack top to bottom, then ``<end>`` (Delétang's termination token). Four stack
    symbols and five actions match the paper's ``|V| = 11`` (with its pad and separator) and
    ``s_rand = 1/4``."""

    name, group, multi_token, uses_end = "stack_manipulation", "supplementary", True, True
    answer_symbols = ("0", "1", "2", "3")
    actions = ("pop", "push0", "push1", "push2", "push3")
    symbols = answer_symbols + actions

    def _draw(self, n, rng):
        stack_size = 1 if n == 1 else rng.randint(1, n - 1)
        return rng.choices(self.answer_symbols, k=stack_size) + rng.choices(self.actions, k=n - stack_size)

    def _check_structure(self, sequence):
        first_action = next((i for i, s in enumerate(sequence) if s in self.actions), len(sequence))
        if any(s not in self.actions for s in sequence[first_action:]):
            raise ValueError(f"{self.name}: stack symbols must all come before the first action")

    def _solve(self, sequence):
        stack = []
        for s in sequence:
            if s == "pop":
                if stack:
                    stack.pop()
            elif s.startswith("push"):
                stack.append(s[len("push"):])
            else:
                stack.append(s)
        return tuple(reversed(stack))


class SetTask(FormalTask):
    """Set. Input: ``n`` uniform symbols ``"1"`` .. ``"126"``. Answer: the distinct symbols in order of
    first occurrence, then ``<end>`` (the SLiCE reimplementation's definition; ``s_rand = 1/126``)."""

    name, group, multi_token, uses_end = "set", "supplementary", True, True
    symbols = answer_symbols = tuple(str(i) for i in range(1, 127))

    def _solve(self, sequence):
        return tuple(dict.fromkeys(sequence))


# ----------------------------------------------------------------------------------------------------
# Registry and the paper's splits


TASKS: dict[str, type[FormalTask]] = {cls.name: cls for cls in (
    Parity, EvenPairs, CycleNavigation, ModularArithmetic, Majority, MajorityCount, BucketSort,
    MissingDuplicate, ReverseString, Repetition, OddsFirst, StackManipulation, SetTask)}
# The tasks of the paper's Fig. 4 that the official xLSTM experiments ship, plus Majority.
CORE_TASKS = ("parity", "even_pairs", "cycle_navigation", "modular_arithmetic", "majority")


def get_task(name: str | FormalTask) -> FormalTask:
    """A task by name (one of :data:`TASKS`); a task instance is returned as it is."""
    if isinstance(name, FormalTask):
        return name
    if name not in TASKS:
        raise ValueError(f"task name must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name]()


def split_lengths(split: str) -> tuple[int, int]:
    """``(min_len, max_len)`` of the paper's ``"train"`` (3-40) or ``"test"`` (40-256) split."""
    if split not in SPLIT_LENGTHS:
        raise ValueError(f"split must be one of {tuple(SPLIT_LENGTHS)}, got {split!r}")
    return SPLIT_LENGTHS[split]


def _split_generator(split: str, seed: int) -> torch.Generator:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    # Train and test draw from different streams for the same seed: 2 * seed and 2 * seed + 1.
    return torch.Generator().manual_seed(2 * seed + list(SPLIT_LENGTHS).index(split))


def fixed_set(task: str | FormalTask, split: str = "test", num_samples: int = 8192, seed: int = 0, *,
              pad_to: int | None = None) -> Batch:
    """A fixed evaluation set: ``num_samples`` samples of ``split``'s lengths, the same for every
    ``seed`` on every machine (the official experiments use 8192 validation and 8192 test samples)."""
    task = get_task(task)
    min_len, max_len = split_lengths(split)
    return task.sample(num_samples, min_len, max_len, _split_generator(split, seed), pad_to=pad_to)


def batches(task: str | FormalTask, split: str = "train", batch_size: int = 256, seed: int = 0, *,
            pad_to: int | None = None) -> Iterator[Batch]:
    """An endless stream of random batches of ``split``'s lengths; the same ``seed`` gives the same
    stream, so every model can see the same samples, as in the paper."""
    task = get_task(task)
    min_len, max_len = split_lengths(split)
    generator = _split_generator(split, seed)
    while True:
        yield task.sample(batch_size, min_len, max_len, generator, pad_to=pad_to)

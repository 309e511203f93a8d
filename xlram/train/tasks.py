"""Tasks: what the engine trains on, and how a batch becomes a loss.

The engine knows nothing about models or data; a task tells it. A task

- builds any rows of the global batch of a step from a :class:`BatchIndex` (``task.batch(index)``).
  The rows must be a pure function of ``(seed, step)`` (use ``index.generator()``), so that there is no
  iterator state to checkpoint, a resumed run sees the same data as one that never stopped, and any
  number of processes (each taking its own rows) sees the global batch of one process;
- turns a batch into ``(loss, metrics)`` (``task.loss(model, batch)``), the loss a mean over the
  batch's rows with an equal weight per row (so that means of equal micro-batches give the mean of the
  global batch);
- optionally counts tokens (``num_tokens``), evaluates (``evaluate``), checks the model
  (``check_model``) and describes itself (``config``, saved with every checkpoint and compared on resume).

:class:`LMTask` is next-byte prediction on a byte corpus (``xlram.data.text``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xlram.data.text import CORPORA, VOCAB_SIZE, ByteCorpus, load_corpus
from xlram.data.text import eval_windows as fixed_windows

__all__ = ["BatchIndex", "LMTask", "Task", "load_lm_corpus", "step_seed"]


def step_seed(seed: int, step: int) -> int:
    """A 64-bit seed mixed from ``(seed, step)`` (NumPy's SeedSequence: nearby inputs, unrelated outputs)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0])


@dataclass(frozen=True)
class BatchIndex:
    """Rows ``[start, stop)`` of the global batch (``size`` rows) of optimizer step ``step`` (0-based)."""

    seed: int
    step: int
    start: int
    stop: int
    size: int

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)

    def generator(self) -> torch.Generator:
        """A CPU generator seeded from ``(seed, step)`` only: draw the whole global batch from it, then
        keep :attr:`rows`, so that every split of the batch sees the same rows."""
        return torch.Generator().manual_seed(step_seed(self.seed, self.step))


class Task:
    """Base class of tasks; subclasses implement :meth:`batch` and :meth:`loss`."""

    name = "task"

    def batch(self, index: BatchIndex) -> Any:
        """Rows ``index.rows`` of the global batch of ``index.step``: tensors (or tuples or dicts of
        tensors) on the CPU; the engine moves them to the device."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """``(scalar loss to minimise, {name: scalar})`` of one micro-batch; both means over its rows."""
        raise NotImplementedError

    def num_tokens(self, batch: Any) -> int:
        """Tokens (or examples) in ``batch``, for the throughput in the logs."""
        return 0

    def evaluate(self, model: nn.Module) -> dict[str, float] | None:
        """Validation metrics, or None when the task has no validation data."""
        return None

    def check_model(self, model: nn.Module) -> None:
        """Raise ``ValueError`` when ``model`` cannot be trained on this task."""

    def config(self) -> dict:
        """A JSON-able description, saved with every checkpoint; resuming requires an equal one."""
        return {"task": self.name}


# --------------------------------------------------------------------------------------------------
# Language modelling on bytes


def load_lm_corpus(corpus: str) -> ByteCorpus:
    """``"docs"``, ``"code"`` or ``"english"`` (``xlram.data.text``), or the path of a UTF-8 text file.

    A file's last tenth is its validation split. Raises ``ValueError`` for an unknown name, a missing
    file or one that is not UTF-8 text.
    """
    if corpus in CORPORA:
        return load_corpus(corpus)
    path = Path(corpus)
    if not path.is_file():
        raise ValueError(f"corpus must be one of {CORPORA} or the path of a text file; "
                         f"{corpus!r} is neither")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"corpus file {path} is not UTF-8 text: {e}") from None
    raw = text.encode("utf-8")
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    cut = data.numel() - data.numel() // 10
    return ByteCorpus(name=path.name, train=data[:cut], val=data[cut:],
                      source=f"file {path} ({data.numel()} bytes)")


class LMTask(Task):
    """Next-byte prediction: random windows of ``seq_len + 1`` bytes, cross-entropy on every position.

    Args:
        corpus: a :class:`~xlram.data.text.ByteCorpus`, or a name or file for :func:`load_lm_corpus`.
        seq_len: bytes per training window (the model sees ``seq_len``, predicts the next of each).
        eval_windows: fixed, evenly spaced validation windows for :meth:`evaluate` (0: no evaluation).
        eval_batch_size: windows per forward pass during evaluation.

    A batch is ``(inputs, targets)``, both ``(rows, seq_len)`` int64. Window starts of step ``s`` are
    ``torch.randint`` draws from ``index.generator()``: a pure function of ``(seed, s)``.
    """

    name = "lm"

    def __init__(self, corpus: ByteCorpus | str = "docs", *, seq_len: int = 128, eval_windows: int = 64,
                 eval_batch_size: int = 16):
        if isinstance(corpus, str):
            corpus = load_lm_corpus(corpus)
        if not isinstance(corpus, ByteCorpus):
            raise TypeError(f"corpus must be a ByteCorpus or a corpus name, got {type(corpus).__name__}")
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
        if isinstance(eval_windows, bool) or not isinstance(eval_windows, int) or eval_windows < 0:
            raise ValueError(f"eval_windows must be an int >= 0, got {eval_windows!r}")
        if isinstance(eval_batch_size, bool) or not isinstance(eval_batch_size, int) or eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be a positive int, got {eval_batch_size!r}")
        n = corpus.train.numel()
        if n == 0:
            raise ValueError(f"corpus {corpus.name!r} is empty: its training split has no bytes "
                             f"({corpus.source})")
        if n < seq_len + 1:
            raise ValueError(f"corpus {corpus.name!r} has {n} training bytes, fewer than one window of "
                             f"seq_len + 1 = {seq_len + 1}; use a larger corpus or a smaller seq_len")
        self.corpus, self.seq_len, self.eval_batch_size = corpus, seq_len, eval_batch_size
        self._offsets = torch.arange(seq_len + 1)
        self.val = None
        if eval_windows and corpus.val.numel() >= seq_len + 1:
            self.val = fixed_windows(corpus.val, seq_len, eval_windows)

    def batch(self, index: BatchIndex) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.corpus.train
        starts = torch.randint(0, data.numel() - self.seq_len, (index.size,), generator=index.generator())
        windows = data[starts[index.rows, None] + self._offsets].long()  # (rows, S + 1)
        return windows[:, :-1], windows[:, 1:]

    def loss(self, model, batch):
        inputs, targets = batch
        logits, _ = model(inputs)  # (B, S, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return loss, {"bpb": loss.detach() / math.log(2)}

    def num_tokens(self, batch) -> int:
        return batch[0].numel()

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float] | None:
        """Mean cross-entropy (nats) and bits per byte over the fixed validation windows."""
        if self.val is None:
            return None
        inputs, targets = self.val
        was_training = model.training
        model.eval()
        device, total = _param_device(model), 0.0
        for i in range(0, inputs.shape[0], self.eval_batch_size):
            x = inputs[i:i + self.eval_batch_size].to(device)  # (b, S)
            y = targets[i:i + self.eval_batch_size].to(device)
            logits, _ = model(x)
            total += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum").item()
        model.train(was_training)
        val_loss = total / targets.numel()
        return {"val_loss": val_loss, "val_bpb": val_loss / math.log(2)}

    def check_model(self, model) -> None:
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        if vocab is not None and vocab < VOCAB_SIZE:
            raise ValueError(f"the model's vocab_size is {vocab}, but byte corpora need {VOCAB_SIZE} "
                             f"(create it with vocab_size={VOCAB_SIZE})")

    def config(self) -> dict:
        return {"task": self.name, "corpus": self.corpus.name, "source": self.corpus.source,
                "train_bytes": self.corpus.train.numel(), "seq_len": self.seq_len}


def _param_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device if p.device.type != "meta" else torch.device("cpu")
    return torch.device("cpu")

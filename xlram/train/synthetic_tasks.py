"""Tasks for the engine on synthetic data: formal languages and MQAR (the xLSTM paper's §4.1).

Both score the model at the answer positions only (``targets != -100``, see :mod:`xlram.data.formal`):

- :class:`FormalLanguageTask` trains on the paper's train lengths (3-40) and evaluates on a fixed set of
  test lengths (40-256): raw accuracy, the paper's scaled accuracy ``(acc - chance) / (1 - chance)``,
  and the accuracy per bin of test lengths (kept in :attr:`FormalLanguageTask.last_eval`);
- :class:`MQARTask` trains on fresh Zoology-style MQAR sequences each step and evaluates the accuracy on
  a fixed test split. Only the answer positions go through the 8192-way output head (see
  :func:`answer_features`).

Rows of step ``s`` are drawn from ``index.generator()`` (the whole global batch, then the rows are kept),
a pure function of ``(seed, s)`` as the engine requires. Each row of a formal task has one answer token
and each MQAR row has ``num_kv_pairs``, so the mean over answer tokens is the mean over rows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from xlram.data import formal, mqar
from xlram.data.formal import IGNORE_INDEX, answer_metrics, scaled_accuracy
from xlram.train.tasks import BatchIndex, Task

__all__ = ["DEFAULT_LENGTH_BINS", "FormalLanguageTask", "MQARTask", "answer_features"]

# Bins of the test lengths 40-256 for accuracy-per-length figures: [lo, hi) except the last, [224, 256].
DEFAULT_LENGTH_BINS = (40, 64, 96, 128, 160, 192, 224, 257)


def _check_int(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_val(num_val, val_seed, test_seed) -> None:
    _check_int(num_val, "num_val", 0)
    _check_int(val_seed, "val_seed", 0)
    if num_val and val_seed == test_seed:
        raise ValueError(f"val_seed must differ from test_seed ({test_seed}), or the validation set is "
                         f"the test set")


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def answer_features(model: nn.Module, ids: torch.Tensor
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None, Callable | None]:
    """``(logits, hidden, head)`` of a language model on ``ids`` (B, S): the last hidden states (B, S, D)
    and the output head ``(N, D) -> (N, V)`` where the model exposes them, so that only the answer
    positions are projected to the vocabulary; otherwise the full logits (B, S, V).

    Knows :class:`~xlram.models.lm.XLSTMLM` and the Transformer baseline (``embedding``, ``stack``,
    ``lm_head``) and :class:`~xlram.baselines.LSTMLM` (``embedding``, ``lstm``, ``lm_head``).
    """
    if hasattr(model, "embedding") and hasattr(model, "lm_head"):
        if hasattr(model, "stack"):
            h, _ = model.stack(model.embedding(ids))  # (B, S, D)
            head = getattr(model, "_head", model.lm_head)  # XLSTMLM's _head applies its logit soft cap
            return None, h, head
        if isinstance(getattr(model, "lstm", None), nn.LSTM):
            drop = getattr(model, "dropout", nn.Identity())
            h, _ = model.lstm(drop(model.embedding(ids)))  # (B, S, Hd)
            return None, h, lambda x: model.lm_head(drop(x))
    logits, _ = model(ids)
    return logits, None, None


def _metrics(model: nn.Module, ids: torch.Tensor, targets: torch.Tensor):
    logits, hidden, head = answer_features(model, ids)
    if logits is not None:
        return answer_metrics(targets, logits)
    return answer_metrics(targets, hidden=hidden, head=head)


# --------------------------------------------------------------------------------------------------
# Formal languages


class _AnswerTask(Task):
    """What both tasks share: a batch is ``(ids, targets)`` with the loss and accuracy at the answers."""

    def loss(self, model, batch):
        ids, targets = batch
        m = _metrics(model, ids, targets)
        return m.loss, {"accuracy": m.accuracy}

    def num_tokens(self, batch) -> int:
        return batch[0].numel()


class FormalLanguageTask(_AnswerTask):
    """A formal-language task of :mod:`xlram.data.formal`: train on lengths 3-40, test on 40-256.

    Args:
        task: a task name (``"parity"``, ``"even_pairs"``, ...) or a :class:`~xlram.data.formal.FormalTask`.
        num_test: samples of the fixed test set (the paper's 8192 is slow on a CPU; 1024 by default).
        test_seed: which fixed test set (:func:`xlram.data.formal.fixed_set`).
        num_val: samples of a validation set of the test lengths, drawn with ``val_seed`` (0: none);
            :meth:`evaluate` then also reports ``val_accuracy``, e.g. to choose a learning rate without
            looking at the test set.
        val_seed: which fixed set is the validation set (must differ from ``test_seed``).
        eval_batch_size: test samples per forward pass.
        length_bins: edges of the test-length bins reported by :meth:`evaluate` in :attr:`last_eval`.
        train_lengths: ``(min, max)`` input lengths of the training batches (the paper's 3-40).
        select: ``"last"``: :meth:`evaluate` reports the model as it is; ``"best_val"`` (needs a
            validation set): it reports the test metrics of the evaluation with the best validation
            accuracy so far (the later one on a tie), SLiCE's protocol; with evaluations during
            training (the engine's ``eval_every``) the last one is then the selected checkpoint's.

    A batch is ``(ids, targets)``, both ``(rows, width)`` int64, ``width`` the longest sample of the
    step's global batch plus its answer; targets are -100 except at the answer tokens.
    """

    name = "formal"

    def __init__(self, task: str | formal.FormalTask, *, num_test: int = 1024, test_seed: int = 0,
                 num_val: int = 0, val_seed: int = 1, eval_batch_size: int = 256,
                 length_bins: tuple[int, ...] = DEFAULT_LENGTH_BINS,
                 train_lengths: tuple[int, int] | None = None, select: str = "last"):
        self.task = formal.get_task(task)
        _check_int(num_test, "num_test", 1)
        _check_int(test_seed, "test_seed", 0)
        _check_int(eval_batch_size, "eval_batch_size", 1)
        edges = list(length_bins)
        if len(edges) < 2 or any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=True)):
            raise ValueError(f"length_bins must be at least two increasing edges, got {length_bins!r}")
        self.train_lengths = tuple(train_lengths or formal.split_lengths("train"))
        self.task.valid_lengths(*self.train_lengths)  # raises when the range holds no valid length
        self.num_test, self.test_seed, self.eval_batch_size = num_test, test_seed, eval_batch_size
        self.length_bins = tuple(length_bins)
        _check_val(num_val, val_seed, test_seed)
        self.num_val, self.val_seed = num_val, val_seed
        self.test_set = formal.fixed_set(self.task, "test", num_test, seed=test_seed)
        self.val_set = formal.fixed_set(self.task, "test", num_val, seed=val_seed) if num_val else None
        if select not in ("last", "best_val"):
            raise ValueError(f"select must be 'last' or 'best_val', got {select!r}")
        if select == "best_val" and not num_val:
            raise ValueError("select='best_val' needs a validation set (num_val > 0)")
        self.select = select
        self.last_eval: dict | None = None
        self._best: tuple[float, dict, dict] | None = None  # (val accuracy, metrics, last_eval) so far
        self._evaluations = 0

    @property
    def chance(self) -> float:
        return self.task.chance_accuracy

    @property
    def vocab_size(self) -> int:
        """Token ids the model must accept (the task's vocabulary)."""
        return self.task.vocab_size

    def batch(self, index: BatchIndex) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.task.sample(index.size, *self.train_lengths, index.generator())
        return b.ids[index.rows], b.targets[index.rows]

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        """``test_accuracy`` (raw share of right answers on the fixed test set), ``test_scaled_accuracy``
        and, with a validation set, ``val_accuracy``; per-bin test accuracies go to :attr:`last_eval`.
        With ``select="best_val"``: the metrics of the best evaluation so far (see the class), plus
        ``selected_eval`` (which evaluation, counting from 1) and ``val_accuracy_now``."""
        was_training = model.training
        model.eval()
        val = self._correct(model, self.val_set).float().mean().item() if self.val_set is not None else None
        self._evaluations += 1
        if self.select == "best_val" and self._best is not None and val < self._best[0]:
            model.train(was_training)  # not better: the test set is not even read
            _, out, self.last_eval = self._best
            return {**out, "val_accuracy_now": val}
        correct = self._correct(model, self.test_set)
        model.train(was_training)
        acc = correct.float().mean().item()
        lengths = self.test_set.lengths
        bins = []
        for lo, hi in zip(self.length_bins[:-1], self.length_bins[1:], strict=True):
            sel = (lengths >= lo) & (lengths < hi)
            if sel.any():
                bins.append({"lo": lo, "hi": hi - 1, "count": int(sel.sum()),
                             "accuracy": correct[sel].float().mean().item()})
        self.last_eval = {"accuracy": acc, "scaled_accuracy": scaled_accuracy(acc, self.chance), "bins": bins}
        out = {"test_accuracy": acc, "test_scaled_accuracy": self.last_eval["scaled_accuracy"]}
        if val is not None:
            out["val_accuracy"] = val
        if self.select == "best_val":
            out["selected_eval"] = self._evaluations
            self._best = (val, out, self.last_eval)
            return {**out, "val_accuracy_now": val}
        return out

    def _correct(self, model, data: formal.Batch) -> torch.Tensor:
        """``(N,)`` bool: whether the model answers each sample of ``data`` right (every answer token)."""
        device = _device(model)
        correct = torch.zeros(data.batch_size, dtype=torch.bool)
        for start, mb in zip(range(0, data.batch_size, self.eval_batch_size),
                             data.minibatches(self.eval_batch_size), strict=True):
            ids, targets = mb.ids.to(device), mb.targets.to(device)
            logits, hidden, head = answer_features(model, ids)
            mask = targets != IGNORE_INDEX
            selected = logits[mask] if logits is not None else head(hidden[mask])  # (N, V)
            right = (selected.argmax(-1) == targets[mask]).cpu()
            # One answer token per row (single-token tasks); a multi-token answer is right when all are.
            rows = mask.nonzero()[:, 0].cpu()
            wrong = torch.zeros(ids.shape[0]).index_add_(0, rows, (~right).float())
            correct[start:start + ids.shape[0]] = wrong == 0
        return correct

    def check_model(self, model) -> None:
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        if vocab is not None and vocab < self.task.vocab_size:
            raise ValueError(f"the model's vocab_size is {vocab}, but task {self.task.name!r} has "
                             f"{self.task.vocab_size} tokens")

    def config(self) -> dict:
        return {"task": self.name, "language": self.task.name, "train_lengths": list(self.train_lengths),
                "num_test": self.num_test, "test_seed": self.test_seed, "num_val": self.num_val,
                "val_seed": self.val_seed, "select": self.select}


# --------------------------------------------------------------------------------------------------
# MQAR


class MQARTask(_AnswerTask):
    """Multi-Query Associative Recall (:mod:`xlram.data.mqar`): loss and accuracy at the query positions.

    Args:
        setting: a preset name (``"cl64_kv4"``, ``"cl128_kv8"``, ``"cl256_kv16"``) or an
            :class:`~xlram.data.mqar.MQARSetting`.
        num_test: sequences of the fixed test split (the paper's 3000).
        test_seed: which fixed test split.
        num_val: sequences of a validation split drawn with ``val_seed`` (0: none); :meth:`evaluate`
            then also reports ``val_accuracy``.
        val_seed: which fixed split is the validation split (must differ from ``test_seed``).
        eval_batch_size: test sequences per forward pass.

    Training sequences are drawn fresh every step (an endless stream, where the paper cycles 100,000
    fixed ones for 64 epochs). A batch is ``(ids, targets)``, both ``(rows, context_len)`` int64.
    """

    name = "mqar"

    def __init__(self, setting: str | mqar.MQARSetting, *, num_test: int = 3000, test_seed: int = 0,
                 num_val: int = 0, val_seed: int = 1, eval_batch_size: int = 250):
        self.setting = mqar.get_setting(setting)
        _check_int(num_test, "num_test", 1)
        _check_int(test_seed, "test_seed", 0)
        _check_int(eval_batch_size, "eval_batch_size", 1)
        self.num_test, self.test_seed, self.eval_batch_size = num_test, test_seed, eval_batch_size
        _check_val(num_val, val_seed, test_seed)
        self.num_val, self.val_seed = num_val, val_seed
        self.test_set = mqar.fixed_split(self.setting, "test", num_test, seed=test_seed)
        self.vocab_size = mqar.VOCAB_SIZE
        self.val_set = mqar.fixed_split(self.setting, "test", num_val, seed=val_seed) if num_val else None

    def batch(self, index: BatchIndex) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.setting
        b = mqar.sample(index.size, s.context_len, s.num_kv_pairs, index.generator())
        return b.ids[index.rows], b.targets[index.rows]

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        """``accuracy`` (share of right values over every query of the test split), ``test_loss`` and,
        with a validation split, ``val_accuracy``."""
        was_training = model.training
        model.eval()
        acc, loss = self._score(model, self.test_set)
        out = {"accuracy": acc, "test_loss": loss}
        if self.val_set is not None:
            out["val_accuracy"] = self._score(model, self.val_set)[0]
        model.train(was_training)
        return out

    def _score(self, model, data: mqar.Batch) -> tuple[float, float]:
        device = _device(model)
        right, loss, n = 0.0, 0.0, 0
        for mb in data.minibatches(self.eval_batch_size):
            m = _metrics(model, mb.ids.to(device), mb.targets.to(device))
            right += m.accuracy.item() * m.num_answers
            loss += m.loss.item() * m.num_answers
            n += m.num_answers
        return right / n, loss / n

    def check_model(self, model) -> None:
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        if vocab is not None and vocab < mqar.VOCAB_SIZE:
            raise ValueError(f"the model's vocab_size is {vocab}, but MQAR needs {mqar.VOCAB_SIZE}")

    def config(self) -> dict:
        s = self.setting
        return {"task": self.name, "context_len": s.context_len, "num_kv_pairs": s.num_kv_pairs,
                "num_test": self.num_test, "test_seed": self.test_seed, "num_val": self.num_val,
                "val_seed": self.val_seed}

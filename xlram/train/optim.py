"""AdamW with weight decay on matrices only, and a linear warm-up followed by a cosine decay.

The schedule is a pure function of the step (:func:`lr_at`), so the scheduler's whole state is the
number of steps taken: it saves to JSON and resumes exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from xlram.train.config import TrainConfig

__all__ = ["WarmupCosine", "build_optimizer", "lr_at", "param_groups"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices (``p.dim() >= 2``) decay, everything else does not.

    Biases, norm scales and gate vectors set offsets and scales; pulling them towards zero would
    change what the layer computes rather than regularise it. Parameters are taken in
    ``named_parameters`` order (shared parameters once), so the order is the same in every process.
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with the config's lr, betas, eps and weight decay."""
    groups = param_groups(model, config.weight_decay)
    if not groups:
        raise ValueError("the model has no parameters that require gradients; there is nothing to train")
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)


def lr_at(step: int, *, lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Learning rate of the update with 0-based index ``step``.

    Linear warm-up: ``lr * (step + 1) / warmup_steps`` for the first ``warmup_steps`` updates; then a
    cosine from ``lr`` down to ``min_lr_ratio * lr`` at the last update (``step = max_steps - 1``);
    constant at the minimum after that.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max_steps - 1 - warmup_steps
    # No room for a decay (a run no longer than its warm-up + 1): stay at the peak.
    progress = 0.0 if decay_steps <= 0 else min(1.0, (step - warmup_steps) / decay_steps)
    lr_min = lr * min_lr_ratio
    return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """Sets every param group's ``lr`` to :func:`lr_at` of the current step.

    Call :meth:`apply` before ``optimizer.step()`` and :meth:`step` after it. The state is
    ``{"step": n}``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig):
        self.optimizer = optimizer
        self.lr, self.warmup_steps = config.lr, config.warmup_steps
        self.max_steps, self.min_lr_ratio = config.max_steps, config.min_lr_ratio
        self.last_step = 0

    def get_lr(self, step: int | None = None) -> float:
        """The learning rate of update ``step`` (default: the next one)."""
        return lr_at(self.last_step if step is None else step, lr=self.lr, warmup_steps=self.warmup_steps,
                     max_steps=self.max_steps, min_lr_ratio=self.min_lr_ratio)

    def apply(self) -> float:
        """Write the next update's learning rate into the optimizer; return it."""
        lr = self.get_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def step(self) -> None:
        self.last_step += 1

    def state_dict(self) -> dict:
        return {"step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        step = state.get("step") if isinstance(state, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"scheduler state must be {{'step': int >= 0}}, got {state!r}")
        self.last_step = step

"""The typed configuration of a training run, saved as JSON with every checkpoint.

Every field is validated in ``__post_init__`` (the error names the field, what it expects and what it
got), and ``TrainConfig.from_dict(config.to_dict()) == config``. On resume the saved config is compared
with the new one: fields that change what is computed (learning rate, batch, seed, ...) must match,
while the fields in :data:`RESUMABLE_FIELDS` (where files go, how often to log or save) may change.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["RESUMABLE_FIELDS", "STRATEGIES", "TrainConfig"]

STRATEGIES = ("auto", "single", "ddp", "fsdp")

# Fields that may differ between a run and its resumption: they say where results go and how often
# they are written, or (strategy, compile) how the same computation is carried out, never what it is.
RESUMABLE_FIELDS = frozenset({"out_dir", "ckpt_every", "keep_last", "eval_every", "progress",
                              "tensorboard", "compile", "strategy", "device"})


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class TrainConfig:
    """How to train: optimiser, schedule, batch, precision, parallelism, checkpoints and logs.

    Args:
        max_steps: optimizer steps of the whole run; the cosine decay ends here.
        batch_size: sequences (examples) per optimizer step, over all processes and micro-steps (the
            global batch). It must divide into ``grad_accum_steps * world_size`` equal micro-batches.
        grad_accum_steps: micro-batches whose gradients are summed before each optimizer step.
        lr: peak learning rate, reached at the end of the warm-up.
        min_lr_ratio: the cosine decays the learning rate from ``lr`` to ``min_lr_ratio * lr``.
        warmup_steps: the learning rate rises linearly from ``lr / warmup_steps`` to ``lr`` over these
            steps (0: no warm-up).
        weight_decay: AdamW's decoupled weight decay, applied to matrices only (parameters with two
            or more dimensions); biases, norm scales and gate vectors are not decayed.
        betas: AdamW's ``(beta1, beta2)``.
        eps: AdamW's epsilon.
        clip_grad_norm: clip the global gradient norm to this value (None: no clipping; the norm is
            still logged).
        bf16: run forward and loss under ``torch.autocast`` in bfloat16 (weights and optimizer stay fp32).
        compile: wrap the model in ``torch.compile``.
        seed: seeds the random number generators and, with the step, the data order.
        strategy: ``"single"`` (one process), ``"ddp"`` (DistributedDataParallel), ``"fsdp"`` (FSDP2
            ``fully_shard``: parameters, gradients and optimizer state sharded over processes) or
            ``"auto"`` (``"ddp"`` when launched by ``torchrun`` with more than one process, else
            ``"single"``).
        device: ``"auto"`` (CUDA when present, else CPU) or a torch device string.
        out_dir: where checkpoints, metrics and TensorBoard logs go.
        ckpt_every: save a checkpoint every this many steps (0: only at the end); the last step is
            always saved.
        keep_last: keep the newest this many checkpoints (0: keep all).
        eval_every: evaluate every this many steps (0: only at the end, when the task can evaluate).
        progress: show a progress bar (on the first process only).
        tensorboard: write TensorBoard logs when the ``tensorboard`` package is importable.
    """

    max_steps: int = 1000
    batch_size: int = 16
    grad_accum_steps: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    clip_grad_norm: float | None = 1.0
    bf16: bool = False
    compile: bool = False
    seed: int = 0
    strategy: str = "auto"
    device: str = "auto"
    out_dir: str = "runs/train"
    ckpt_every: int = 500
    keep_last: int = 3
    eval_every: int = 0
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "grad_accum_steps"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}")
        for name in ("warmup_steps", "ckpt_every", "keep_last", "eval_every"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be an int >= 0, got {value!r}")
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(f"TrainConfig.batch_size ({self.batch_size}) must be a multiple of "
                             f"grad_accum_steps ({self.grad_accum_steps})")
        if not _is_number(self.lr) or self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        if not _is_number(self.min_lr_ratio) or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be a number >= 0, got {self.weight_decay!r}")
        betas = self.betas
        if (not isinstance(betas, tuple | list) or len(betas) != 2
                or not all(_is_number(b) and 0 <= b < 1 for b in betas)):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        if not _is_number(self.eps) or self.eps <= 0:
            raise ValueError(f"TrainConfig.eps must be a positive number, got {self.eps!r}")
        clip = self.clip_grad_norm
        if clip is not None and (not _is_number(clip) or clip <= 0):
            raise ValueError(f"TrainConfig.clip_grad_norm must be a positive number or None, got {clip!r}")
        for name in ("bf16", "compile", "progress", "tensorboard"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TrainConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"TrainConfig.seed must be an int >= 0, got {self.seed!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"TrainConfig.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        for name in ("device", "out_dir"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"TrainConfig.{name} must be a non-empty string, got {value!r}")

    def to_dict(self) -> dict:
        """A JSON-able dict (``betas`` as a list); ``from_dict(to_dict())`` gives an equal config."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build from :meth:`to_dict`'s output; unknown keys raise ``ValueError`` naming them."""
        if not isinstance(d, dict):
            raise ValueError(f"TrainConfig.from_dict expects a dict, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"TrainConfig: unknown keys {unknown}; known keys are {sorted(names)}")
        d = dict(d)
        if isinstance(d.get("betas"), list):
            d["betas"] = tuple(d["betas"])
        return cls(**d)

    def differences(self, other: TrainConfig, *, ignore=RESUMABLE_FIELDS) -> list[str]:
        """``"name: self_value != other_value"`` for every field (outside ``ignore``) that differs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}: {mine[k]!r} != {theirs[k]!r}"
                for k in mine if k not in ignore and mine[k] != theirs[k]]

"""The training engine: one loop for every model and task.

    trainer = Trainer(model, task, TrainConfig(max_steps=1000, batch_size=32, out_dir="runs/lm"))
    history = trainer.fit()              # or fit(resume=True) to continue from the latest checkpoint
    trainer.close()

Each optimizer step takes the global batch of ``config.batch_size`` rows, split into
``grad_accum_steps`` micro-batches, each split evenly over the processes. Micro-batch ``j`` of process
``r`` holds rows ``[(j * W + r) * m, (j * W + r + 1) * m)`` of the global batch (``W`` processes,
``m = batch_size / (grad_accum_steps * W)`` rows each). Its loss is divided by ``grad_accum_steps``
before backward, and DDP averages gradients over processes, so the gradient is that of the mean loss
over the global batch: one process, several, with or without accumulation, take the same steps (up to
floating-point rounding).

The data of step ``s`` is a pure function of ``(seed, s)`` (see :class:`~xlram.train.tasks.BatchIndex`),
and a checkpoint holds the weights, the optimizer and scheduler state and every process's RNG states,
so a resumed run repeats the losses of an uninterrupted one exactly.
"""

from __future__ import annotations

import atexit
import gc
import random
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xlram.checkpoint import CheckpointError
from xlram.train import distributed as D
from xlram.train.config import RESUMABLE_FIELDS, TrainConfig
from xlram.train.logs import MetricsLogger
from xlram.train.optim import WarmupCosine, build_optimizer
from xlram.train.state import (
    CHECKPOINTS_DIR,
    TRAINER_NAME,
    CheckpointWriteError,
    TrainingState,
    capture_rng,
    find_checkpoint,
    list_checkpoints,
    load_training_checkpoint,
    restore_rng,
    save_training_checkpoint,
)
from xlram.train.tasks import BatchIndex, Task

__all__ = ["Callback", "StopTraining", "Trainer"]

Callback = Callable[["Trainer", dict], None]


class StopTraining(Exception):  # noqa: N818 (a signal, not an error)
    """Raise from a callback to end :meth:`Trainer.fit` after the current step (a checkpoint is saved)."""


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple | list):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the global generator that user code draws from)
    torch.manual_seed(seed)


class Trainer:
    """Trains ``model`` on ``task`` as ``config`` says; see the module docstring.

    Args:
        model: any ``nn.Module``; moved to the config's device. When it has a typed ``config`` (with
            ``to_dict``) and a ``model_type``, the config is stored in (and checked against) every
            checkpoint, and each checkpoint directory also loads with ``from_pretrained``.
        task: a :class:`~xlram.train.tasks.Task`.
        config: a :class:`~xlram.train.config.TrainConfig`.
        callbacks: called as ``callback(trainer, record)`` after every step on every process
            (``record``: the step's logged values); raise :class:`StopTraining` to stop early.
    """

    def __init__(self, model: nn.Module, task: Task, config: TrainConfig, *,
                 callbacks: Sequence[Callback] = ()):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.config, self.task, self.callbacks = config, task, list(callbacks)
        task.check_model(model)
        self.dist = D.setup(config.device)
        world = self.dist.world_size
        strategy = config.strategy
        if strategy == "auto":
            strategy = "ddp" if world > 1 else "single"
        if strategy in ("ddp", "fsdp") and world == 1:
            strategy = "single"  # one process: nothing to distribute or shard
        if strategy == "single" and world > 1:
            raise ValueError(f"strategy 'single' with {world} processes: use 'ddp' or 'fsdp' (or 'auto')")
        self.strategy = strategy
        per_step = config.grad_accum_steps * world
        if config.batch_size % per_step:
            raise ValueError(f"batch_size {config.batch_size} does not split into grad_accum_steps "
                             f"({config.grad_accum_steps}) x processes ({world}) equal micro-batches; "
                             f"use a multiple of {per_step}")
        self.micro_batch = config.batch_size // per_step

        self.raw_model = model.to(self.dist.device)
        self.model = D.wrap(self.raw_model, strategy, self.dist)
        # FSDP2 shards raw_model in place, so raw_model is what checkpoints and evaluation use either way.
        self.optimizer = build_optimizer(self.raw_model, config)
        self.scheduler = WarmupCosine(self.optimizer, config)
        self._forward_model = torch.compile(self.model) if config.compile else self.model
        self.step = 0
        self.history: list[dict] = []
        self.eval_history: list[dict] = []
        self.out_dir = Path(config.out_dir)
        self.ckpt_root = self.out_dir / CHECKPOINTS_DIR
        self.last_checkpoint: Path | None = None
        self._autocast_device = self.dist.device.type
        if self.dist.owns_group:  # leave the group cleanly even if the caller never calls close()
            atexit.register(_close_at_exit, weakref.ref(self))

    # ---------------------------------------------------------------------------------------------
    # The loop

    def fit(self, *, resume: bool | str | Path = False, stop_at: int | None = None) -> list[dict]:
        """Train until ``config.max_steps`` (or ``stop_at``, or a callback's :class:`StopTraining`).

        Args:
            resume: False for a new run (the out_dir must hold no checkpoint) or, when this trainer
                has already trained, to go on from where it stopped; True to continue from the latest
                checkpoint in ``out_dir``; or the path of a checkpoint directory.
            stop_at: stop after this step, as though interrupted, and save a checkpoint there (the
                schedule still runs to ``max_steps``, so a later ``fit(resume=True)`` continues exactly).

        Returns the records of the steps this call ran (``step``, ``loss``, ``lr``, ``grad_norm``, the
        task's metrics, ``tokens``, ``tokens_per_s``, ``seconds``). Checkpoints are saved every
        ``ckpt_every`` steps and at the end; a failing save raises :class:`CheckpointWriteError`.
        """
        cfg = self.config
        end = cfg.max_steps if stop_at is None else min(cfg.max_steps, stop_at)
        continuing = self.step > 0 and not resume  # a second fit() of this trainer goes on in memory
        if resume:
            self._resume(resume)
        elif not continuing:
            existing = list_checkpoints(self.ckpt_root)
            if existing:
                raise ValueError(f"{self.ckpt_root} already holds checkpoints (up to step "
                                 f"{existing[-1][0]}); pass resume=True (--resume) to continue that run, "
                                 f"or use another out_dir")
            _seed_everything(cfg.seed + self.dist.rank)
        logger = MetricsLogger(self.out_dir, enabled=self.dist.is_main,
                               resume_step=self.step if resume or continuing else None,
                               total_steps=cfg.max_steps,
                               progress=cfg.progress, tensorboard=cfg.tensorboard)
        ran: list[dict] = []
        try:
            if resume:
                logger.message(f"resumed from {self.last_checkpoint} at step {self.step}")
            stopped = False
            while self.step < end and not stopped:
                record = self._train_step()
                ran.append(record)
                self.history.append(record)
                logger.log_train(record)
                try:
                    for callback in self.callbacks:
                        callback(self, record)
                except StopTraining:
                    stopped = True
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == cfg.max_steps:
                    self._evaluate(logger)
                if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or self.step == end or stopped:
                    self.save_checkpoint()
        finally:
            logger.close()
        return ran

    def _train_step(self) -> dict:
        cfg, info = self.config, self.dist
        t0 = time.perf_counter()
        lr = self.scheduler.apply()
        self.model.train()
        accum, world = cfg.grad_accum_steps, info.world_size
        loss_sum = torch.zeros((), device=info.device)
        metric_sums: dict[str, torch.Tensor] = {}
        tokens = 0
        for j in range(accum):
            start = (j * world + info.rank) * self.micro_batch
            index = BatchIndex(seed=cfg.seed, step=self.step, start=start, stop=start + self.micro_batch,
                               size=cfg.batch_size)
            batch = _to_device(self.task.batch(index), info.device)
            with D.no_sync(self.model, self.strategy, sync=j == accum - 1):
                with torch.autocast(self._autocast_device, dtype=torch.bfloat16, enabled=cfg.bf16):
                    loss, metrics = self.task.loss(self._forward_model, batch)
                (loss / accum).backward()
            loss_sum += loss.detach().float()
            for key, value in metrics.items():
                value = torch.as_tensor(value, dtype=torch.float32, device=info.device).detach()
                metric_sums[key] = metric_sums.get(key, 0.0) + value
            tokens += self.task.num_tokens(batch)

        grad_norm = self._clip_gradients()
        # One reduction for everything logged: means over micro-batches and processes, tokens summed.
        keys = sorted(metric_sums)
        local = torch.stack([loss_sum, *(metric_sums[k] for k in keys), grad_norm.float().reshape(()),
                             torch.tensor(float(tokens), device=info.device)])
        total = D.sum_across(local, info).tolist()
        n = accum * world
        loss_value = total[0] / n
        if not np.isfinite(loss_value):
            raise FloatingPointError(f"the loss is {loss_value} at step {self.step + 1} (lr {lr:.3g}); "
                                     f"the last checkpoint is {self.last_checkpoint}. Lower the learning "
                                     f"rate or check the data, then resume from it")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        seconds = time.perf_counter() - t0
        record = {"step": self.step, "loss": loss_value, "lr": lr,
                  "grad_norm": total[1 + len(keys)] / world}
        record.update({k: total[1 + i] / n for i, k in enumerate(keys)})
        global_tokens = int(total[-1])
        record.update({"tokens": global_tokens, "tokens_per_s": global_tokens / seconds, "seconds": seconds})
        return record

    def _clip_gradients(self) -> torch.Tensor:
        """Clip the global gradient norm to ``clip_grad_norm`` (if set); return the norm before clipping."""
        params = [p for p in self.raw_model.parameters() if p.grad is not None]
        max_norm = self.config.clip_grad_norm if self.config.clip_grad_norm is not None else float("inf")
        if not params:
            return torch.zeros((), device=self.dist.device)
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor holding the global norm
            norm = norm.full_tensor()
        return norm.detach()

    def _evaluate(self, logger: MetricsLogger) -> dict | None:
        # Evaluation runs in every process (FSDP needs all of them to gather parameters); the first logs.
        with torch.autocast(self._autocast_device, dtype=torch.bfloat16, enabled=self.config.bf16):
            metrics = self.task.evaluate(self.raw_model)
        if metrics:
            self.eval_history.append({"step": self.step, **metrics})
            logger.log_eval(self.step, metrics)
        return metrics

    # ---------------------------------------------------------------------------------------------
    # Checkpoints

    def _state_options(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True)

    def save_checkpoint(self) -> Path:
        """Save the current step into ``out_dir/checkpoints`` (all processes must call it); return the path.

        Parameters and optimizer state are gathered to the first process, which writes; every process
        raises :class:`CheckpointWriteError` if the write fails.
        """
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        options = self._state_options()
        model_state = get_model_state_dict(self.raw_model, options=options)
        optim_state = get_optimizer_state_dict(self.raw_model, self.optimizer, options=options)
        rngs = D.all_gather_objects(capture_rng(), self.dist)
        error, outcome = None, None
        if self.dist.is_main:
            model_type, model_config = _model_identity(self.raw_model)
            state = TrainingState(step=self.step, model=model_state, optimizer=optim_state,
                                  scheduler=self.scheduler.state_dict(), rng=rngs,
                                  train_config=self.config.to_dict(), task_config=self.task.config(),
                                  model_type=model_type, model_config=model_config,
                                  metrics={"train": _last(self.history), "eval": _last(self.eval_history)})
            try:
                outcome = ("saved", str(save_training_checkpoint(self.ckpt_root, state,
                                                                 keep_last=self.config.keep_last)))
            except Exception as e:  # every process must hear of it, or the others wait forever
                error = e
                outcome = ("failed", getattr(e, "errno", None), f"{type(e).__name__}: {e}")
        outcome = D.broadcast_object(outcome, self.dist)
        if error is not None:
            raise error
        if outcome[0] == "failed":
            if outcome[1] is not None:
                raise CheckpointWriteError(outcome[1], f"(on the first process) {outcome[2]}")
            raise RuntimeError(f"saving the checkpoint failed on the first process: {outcome[2]}")
        self.last_checkpoint = Path(outcome[1])
        return self.last_checkpoint

    def _resume(self, resume: bool | str | Path) -> None:
        if resume is True:
            path = find_checkpoint(self.ckpt_root)
        else:
            path = Path(resume)
            if not (path / TRAINER_NAME).is_file():
                if (path / CHECKPOINTS_DIR).is_dir():
                    path = find_checkpoint(path / CHECKPOINTS_DIR)
                elif not path.exists():
                    raise CheckpointError(f"checkpoint not found: {path}")
        state = load_training_checkpoint(path)
        self._check_compatible(path, state)
        self._load_state(path, state)
        self.last_checkpoint = path

    def _check_compatible(self, path: Path, state: TrainingState) -> None:
        """Raise :class:`CheckpointError` listing every way the checkpoint's run differs from this one."""
        problems = []
        try:
            saved = TrainConfig.from_dict(state.train_config)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path / TRAINER_NAME}: invalid train_config: {e}") from None
        config_problems = [f"train config {d}" for d in saved.differences(self.config)]
        problems += config_problems
        problems += _differences("task", state.task_config, self.task.config())
        model_type, model_config = _model_identity(self.raw_model)
        if state.model_type != model_type:
            problems.append(f"model type: {state.model_type!r} != {model_type!r}")
        elif state.model_config is not None and model_config is not None:
            problems += _differences("model config", state.model_config, model_config)
        expected = {k: tuple(v.shape) for k, v in self.raw_model.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.model.items()}
        missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        if missing:
            problems.append(f"weights missing from the checkpoint: {missing[:8]}")
        if unexpected:
            problems.append(f"weights in the checkpoint that the model lacks: {unexpected[:8]}")
        reshaped = [k for k in sorted(set(expected) & set(found)) if expected[k] != found[k]]
        problems += [f"weight {k!r}: shape {found[k]} in the checkpoint, {expected[k]} in the model"
                     for k in reshaped[:6]]
        if len(reshaped) > 6:
            problems.append(f"... and {len(reshaped) - 6} more weights of another shape")
        if state.step > self.config.max_steps:
            problems.append(f"the checkpoint is at step {state.step}, beyond max_steps "
                            f"{self.config.max_steps}")
        if problems:
            note = ""
            if config_problems:
                note = ("\n(the train config fields that may change on resume: "
                        f"{', '.join(sorted(RESUMABLE_FIELDS))})")
            raise CheckpointError(f"cannot resume from {path}: it does not match this run (saved != now):\n  "
                                  + "\n  ".join(problems) + note)

    def _load_state(self, path: Path, state: TrainingState) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, strict=True)
        try:
            set_model_state_dict(self.raw_model, state.model, options=options)
            set_optimizer_state_dict(self.raw_model, self.optimizer, state.optimizer, options=options)
            self.scheduler.load_state_dict(state.scheduler)
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"cannot load the model or optimizer state of {path}: {e}") from None
        self.step = state.step
        if len(state.rng) == self.dist.world_size:
            restore_rng(state.rng[self.dist.rank])
        else:
            warnings.warn(f"{path} was saved by {len(state.rng)} processes and this run has "
                          f"{self.dist.world_size}: data and weights continue exactly, but random "
                          f"generators (dropout, ...) are reseeded", stacklevel=3)
            _seed_everything(self.config.seed + self.dist.rank + 7919 * state.step)

    def close(self, *, sync: bool = True) -> None:
        """Drop the DDP wrapper and leave the process group if this trainer joined it.

        The wrapper holds the process group; destroyed later, during interpreter shutdown, gloo's
        worker threads abort the process ("terminate called without an active exception").
        ``sync=False`` on an error path: do not wait for the other processes.
        """
        self.model = self._forward_model = self.raw_model
        gc.collect()
        self.dist.close(sync=sync)

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(sync=exc_type is None)


def _close_at_exit(ref: weakref.ref) -> None:
    trainer = ref()
    if trainer is not None:
        trainer.close(sync=False)  # other processes may have failed; do not wait for them


def _model_identity(model: nn.Module) -> tuple[str | None, dict | None]:
    """``(model_type, config dict)`` of a model with a typed config, else ``(None, None)``."""
    config = getattr(model, "config", None)
    model_type = getattr(model, "model_type", None)
    if config is None or not hasattr(config, "to_dict") or not isinstance(model_type, str):
        return None, None
    return model_type, config.to_dict()


def _differences(what: str, saved: dict, now: dict, prefix: str = "") -> list[str]:
    """``"what key.sub: saved != now"`` for every leaf that differs between two JSON-like dicts."""
    out = []
    for key in sorted(set(saved) | set(now), key=str):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(what, a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{what} {prefix}{key}: {a!r} != {b!r}")
    return out


def _last(records: list[dict]) -> dict:
    return dict(records[-1]) if records else {}

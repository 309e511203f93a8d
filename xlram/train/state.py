"""Training checkpoints: everything needed to continue a run exactly, written atomically, read without pickle.

A run keeps its checkpoints in ``OUT/checkpoints/``::

    step-00000020/
        model.safetensors       model weights (safetensors, shared tensors stored once)
        config.json             the model's config, as ``save_pretrained`` writes it (when the model
                                has a typed config), so ``XLSTMLM.from_pretrained(step_dir)`` works
        optimizer.safetensors   the optimizer's tensors, keyed ``"{parameter name}/{state name}"``
        rng.safetensors         each process's torch (and CUDA) generator state, ``"rank{r}/torch"``
        trainer.json            written last: step, train config, task, model config, optimizer
                                param groups and scalars, scheduler state, NumPy and Python RNG states
                                of every process, the last metrics, and the size and SHA-256 of every
                                other file (so a truncated, corrupted or swapped file is caught)
    latest                      the name of the newest complete checkpoint

A checkpoint is first written into a hidden temporary directory and renamed into place only when
whole; ``latest`` is replaced atomically after that; old checkpoints are pruned (``keep_last``) only
after both. A failure at any point (a full disk included) removes the temporary directory and leaves
every earlier checkpoint and the ``latest`` pointer as they were.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xlram import checkpoint as ckpt
from xlram.checkpoint import CheckpointError

__all__ = ["CheckpointError", "CheckpointWriteError", "TrainingState", "capture_rng", "find_checkpoint",
           "list_checkpoints", "load_training_checkpoint", "restore_rng", "save_training_checkpoint"]

CHECKPOINTS_DIR = "checkpoints"
LATEST_NAME = "latest"
TRAINER_NAME = "trainer.json"
OPTIMIZER_NAME = "optimizer.safetensors"
RNG_NAME = "rng.safetensors"
TRAIN_FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); earlier checkpoints are intact."""


@dataclass
class TrainingState:
    """The contents of a training checkpoint, on the CPU.

    ``model``: the full model state dict. ``optimizer``: ``{"state": {param name: {name: value}},
    "param_groups": [{..., "params": [param names]}]}`` (the form of
    ``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict``). ``rng``: one
    :func:`capture_rng` dict per process. ``model_type``/``model_config``: from the model's typed
    config when it has one.
    """

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    rng: list[dict]
    train_config: dict
    task_config: dict
    model_type: str | None = None
    model_config: dict | None = None
    metrics: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Random number generators


def capture_rng() -> dict:
    """This process's RNG states: torch CPU (and every CUDA device), NumPy's global, Python's ``random``."""
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002 (saving the global generator is the point)
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_initialized() else [],
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "state": {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])},
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "python": [version, list(internal), gauss],
    }


def restore_rng(state: dict) -> None:
    """Set this process's generators to a :func:`capture_rng` dict."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    saved = state["numpy"]
    key = np.asarray(saved["state"]["key"], dtype=np.uint32)
    np_state = {"bit_generator": saved["bit_generator"], "state": {"key": key, "pos": saved["state"]["pos"]},
                "has_gauss": saved["has_gauss"], "gauss": saved["gauss"]}
    np.random.set_state(np_state)  # noqa: NPY002 (restoring the global generator)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# --------------------------------------------------------------------------------------------------
# Writing


def _write_bytes(path: Path, data: bytes) -> dict:
    """Write one file of a checkpoint; return its ``{"bytes", "sha256"}`` record."""
    ckpt.atomic_write_bytes(path, data)
    return {"bytes": path.stat().st_size, "sha256": ckpt.sha256_file(path)}


def _safetensors_file(path: Path, tensors: dict[str, torch.Tensor]) -> dict:
    ckpt.save_state_dict(tensors, path)
    return {"bytes": path.stat().st_size, "sha256": ckpt.sha256_file(path)}


def _json_safe(value: Any, where: str) -> Any:
    """Tuples to lists; anything JSON cannot hold raises ``TypeError`` naming ``where``."""
    if isinstance(value, tuple | list):
        return [_json_safe(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v, where) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"{where}: {type(value).__name__} value {value!r} cannot be saved as JSON")


def _split_optimizer(optimizer: dict) -> tuple[dict[str, torch.Tensor], dict, list[dict]]:
    """-> (tensors keyed ``"{param}/{name}"``, JSON scalars ``{param: {name: value}}``, param groups)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for name, per_param in optimizer.get("state", {}).items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{key}"] = value.detach().cpu()
            else:
                scalars.setdefault(name, {})[key] = _json_safe(value, f"optimizer state {name}.{key}")
    groups = [_json_safe(g, "optimizer param group") for g in optimizer.get("param_groups", [])]
    return tensors, scalars, groups


def _dtype_name(tensors: dict[str, torch.Tensor]) -> str | None:
    dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    return str(dtypes.pop()).removeprefix("torch.") if len(dtypes) == 1 else None


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, directory)`` of the ``step-N`` directories in ``root``, oldest first (complete or not)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def save_training_checkpoint(root: str | os.PathLike, state: TrainingState, *, keep_last: int = 0) -> Path:
    """Write ``state`` as ``root/step-{step:08d}``, point ``root/latest`` at it, prune; return its path.

    Raises :class:`CheckpointWriteError` (an ``OSError`` with the original errno) when a write fails;
    the temporary directory is removed and earlier checkpoints and ``latest`` are untouched.
    """
    root = Path(root)
    name = f"step-{state.step:08d}"
    final = root / name
    tmp = root / f".{name}.tmp-{os.getpid()}"
    try:
        previous = find_checkpoint(root, required=False)
    except CheckpointError:
        previous = None
    stale, renamed = None, False
    try:
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(".step-*.tmp-*"):  # from a process that died while saving
            shutil.rmtree(leftover, ignore_errors=True)
        tmp.mkdir()
        files = {ckpt.WEIGHTS_NAME: _safetensors_file(tmp / ckpt.WEIGHTS_NAME, state.model)}
        if state.model_type is not None and state.model_config is not None:
            # The same record as save_pretrained writes, so from_pretrained loads a training checkpoint.
            config = {"xlram_format": ckpt.FORMAT_VERSION, "model_type": state.model_type,
                      "dtype": _dtype_name(state.model), "weights_bytes": files[ckpt.WEIGHTS_NAME]["bytes"],
                      "weights_sha256": files[ckpt.WEIGHTS_NAME]["sha256"], "config": state.model_config}
            files[ckpt.CONFIG_NAME] = _write_bytes(tmp / ckpt.CONFIG_NAME,
                                                   (json.dumps(config, indent=2) + "\n").encode())
        opt_tensors, opt_scalars, opt_groups = _split_optimizer(state.optimizer)
        files[OPTIMIZER_NAME] = _safetensors_file(tmp / OPTIMIZER_NAME, opt_tensors)
        rng_tensors = {}
        for rank, rng in enumerate(state.rng):
            rng_tensors[f"rank{rank}/torch"] = rng["torch"]
            for i, cuda in enumerate(rng["cuda"]):
                rng_tensors[f"rank{rank}/cuda{i}"] = cuda
        files[RNG_NAME] = _safetensors_file(tmp / RNG_NAME, rng_tensors)
        record = {
            "xlram_train_format": TRAIN_FORMAT,
            "step": state.step,
            "train_config": state.train_config,
            "task": state.task_config,
            "model_type": state.model_type,
            "model_config": state.model_config,
            "optimizer": {"param_groups": opt_groups, "scalars": opt_scalars},
            "scheduler": state.scheduler,
            "rng": [{"cuda_devices": len(r["cuda"]), "numpy": r["numpy"], "python": r["python"]}
                    for r in state.rng],
            "metrics": _json_safe(state.metrics, "metrics"),
            "files": files,
        }
        _write_bytes(tmp / TRAINER_NAME, (json.dumps(record, indent=1) + "\n").encode())
        _fsync_dir(tmp)
        if final.exists():  # the same step written again (e.g. by a run resumed from an earlier one)
            stale = root / f".{name}.old-{os.getpid()}"
            os.replace(final, stale)
        os.replace(tmp, final)
        renamed = True
        _fsync_dir(root)
        ckpt.atomic_write_text(root / LATEST_NAME, name + "\n")
    except OSError as e:
        # Undo everything: no temporary directory, no new checkpoint that 'latest' does not name.
        shutil.rmtree(tmp, ignore_errors=True)
        if renamed:
            shutil.rmtree(final, ignore_errors=True)
        if stale is not None and stale.exists():
            os.replace(stale, final)
        reason = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        kept = (f"the last good checkpoint {previous} is intact" if previous
                else "there is no earlier checkpoint")
        raise CheckpointWriteError(e.errno, f"could not write checkpoint {final}: {reason} ({e}); "
                                            f"it was not saved and {kept}") from e
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)
    if keep_last > 0:
        # Only checkpoints up to this step count: later ones (left by a run that went further before
        # this one resumed from an earlier step) are replaced when this run gets there.
        older = [p for step, p in list_checkpoints(root) if step <= state.step]
        for old in older[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (where the platform allows opening directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------
# Reading


def find_checkpoint(root: str | os.PathLike, *, required: bool = True) -> Path | None:
    """The checkpoint ``root/latest`` names or, with no pointer, the newest complete ``step-N`` directory.

    With ``required``, raises :class:`CheckpointError` when there is none (naming what was looked for);
    otherwise returns None.
    """
    root = Path(root)
    pointer = root / LATEST_NAME
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        if not _STEP_DIR.match(name):
            raise CheckpointError(f"{pointer} should hold a checkpoint name such as 'step-00000100', "
                                  f"found {name[:80]!r}")
        if not (root / name).is_dir():
            raise CheckpointError(f"{pointer} names {name}, but {root / name} does not exist; available: "
                                  f"{[p.name for _, p in list_checkpoints(root)] or 'none'}")
        return root / name
    complete = [p for _, p in list_checkpoints(root) if (p / TRAINER_NAME).is_file()]
    if complete:
        return complete[-1]
    if required:
        raise CheckpointError(f"no checkpoint to resume from in {root}: no {LATEST_NAME!r} pointer and no "
                              f"complete step-N directory")
    return None


def _verify_files(directory: Path, record: dict) -> None:
    files = record.get("files")
    if not isinstance(files, dict) or ckpt.WEIGHTS_NAME not in files:
        raise CheckpointError(f"{directory / TRAINER_NAME}: no 'files' record of {ckpt.WEIGHTS_NAME}")
    for name, info in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing ({TRAINER_NAME} lists it)")
        size = path.stat().st_size
        if size != info.get("bytes"):
            how = "truncated" if size < info.get("bytes", 0) else "grown"
            raise CheckpointError(f"{path} has {size} bytes, {TRAINER_NAME} records {info.get('bytes')} "
                                  f"({how} since it was saved)")
        digest = ckpt.sha256_file(path)
        if digest != info.get("sha256"):
            raise CheckpointError(f"{path} is corrupt or from another save: its SHA-256 is {digest}, "
                                  f"{TRAINER_NAME} records {info.get('sha256')}")


def load_training_checkpoint(directory: str | os.PathLike) -> TrainingState:
    """Read and verify a checkpoint written by :func:`save_training_checkpoint`.

    Raises :class:`CheckpointError` naming the file when the directory or a file is missing, a file is
    truncated or corrupt, or the record is malformed or of another format.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    path = directory / TRAINER_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} not found: {directory} is not a complete training checkpoint")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON (truncated or corrupt?): {e}") from None
    if not isinstance(record, dict) or record.get("xlram_train_format") != TRAIN_FORMAT:
        found = record.get("xlram_train_format") if isinstance(record, dict) else type(record).__name__
        raise CheckpointError(f"{path}: xlram_train_format is {found!r}, this version reads {TRAIN_FORMAT}")
    _verify_files(directory, record)
    try:
        model = ckpt.load_state_dict(directory / ckpt.WEIGHTS_NAME)
        opt_tensors = ckpt.load_state_dict(directory / OPTIMIZER_NAME)
        rng_tensors = ckpt.load_state_dict(directory / RNG_NAME)
        optimizer: dict = {"state": {}, "param_groups": []}
        for key, tensor in opt_tensors.items():
            name, _, item = key.rpartition("/")
            optimizer["state"].setdefault(name, {})[item] = tensor
        for name, items in record["optimizer"]["scalars"].items():
            optimizer["state"].setdefault(name, {}).update(items)
        optimizer["param_groups"] = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v)
                                      for k, v in g.items()} for g in record["optimizer"]["param_groups"]]
        rng = []
        for rank, r in enumerate(record["rng"]):
            rng.append({"torch": rng_tensors[f"rank{rank}/torch"],
                        "cuda": [rng_tensors[f"rank{rank}/cuda{i}"] for i in range(r["cuda_devices"])],
                        "numpy": r["numpy"], "python": r["python"]})
        return TrainingState(step=int(record["step"]), model=model, optimizer=optimizer,
                             scheduler=record["scheduler"], rng=rng, train_config=record["train_config"],
                             task_config=record["task"], model_type=record.get("model_type"),
                             model_config=record.get("model_config"), metrics=record.get("metrics", {}))
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: malformed training record ({type(e).__name__}: {e})") from None

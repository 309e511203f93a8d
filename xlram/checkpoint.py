"""Saving and loading models: safetensors weights and a JSON config, written atomically, read without pickle.

A checkpoint is a directory with two files:

- ``model.safetensors``: the tensors of ``model.state_dict()``. Tensors that share memory (tied weights)
  are stored once; the duplicates are listed in the file's metadata and restored on load.
- ``config.json``: ``{"xlram_format": 1, "model_type": ..., "dtype": ..., "weights_bytes": ...,
  "weights_sha256": ..., "config": {...}}``. It is written last, so a directory with a config has
  complete weights; the size and SHA-256 tie the two files together and catch a truncated, corrupted
  or swapped weights file.

Every file goes through a temporary file in the same directory and ``os.replace``, so a crash never
leaves half a file behind. Any model whose ``config`` has ``to_dict()`` and whose config class has
``from_dict()`` gets ``save_pretrained`` / ``from_pretrained`` by inheriting :class:`PretrainedMixin`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _safetensors_bytes

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1
_ALIASES_KEY = "xlram_aliases"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not match the model it is loaded into."""


# --------------------------------------------------------------------------------------------------
# Atomic writes


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename; return the path.

    The temporary file lives in the destination directory so that ``os.replace`` is a rename on one
    file system (atomic on POSIX); it is removed if anything fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically; return the path."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks so large checkpoints do not sit in memory twice."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# State dicts <-> safetensors


def _split_shared(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split a state dict into tensors to store and ``{duplicate_key: stored_key}`` aliases.

    safetensors refuses tensors that share memory. Keys that are the very same view (tied weights)
    become aliases of the first key in sorted order; tensors that only overlap are copied.
    """
    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen_views: dict[tuple, str] = {}
    seen_storages: set[int] = set()
    for key in sorted(state_dict):
        t = state_dict[key]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state_dict[{key!r}] is a {type(t).__name__}, expected a torch.Tensor")
        t = t.detach()
        if t.device.type == "meta":
            raise ValueError(f"state_dict[{key!r}] is on the meta device and has no data to save")
        storage = t.untyped_storage().data_ptr() if t.numel() else None
        view = (storage, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if storage is not None and view in seen_views:
            aliases[key] = seen_views[view]
            continue
        if storage is not None and storage in seen_storages:
            t = t.clone()
        elif storage is not None:
            seen_storages.add(storage)
            seen_views[view] = key
        stored[key] = t.contiguous().cpu()
    return stored, aliases


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write a state dict to a safetensors file atomically (shared tensors stored once); return the path."""
    stored, aliases = _split_shared(state_dict)
    data = _safetensors_bytes(stored, metadata={"format": "pt", _ALIASES_KEY: json.dumps(aliases)})
    return atomic_write_bytes(path, data)


def load_state_dict(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file written by :func:`save_state_dict` (aliases restored), never unpickling.

    Raises :class:`CheckpointError` naming the file when it is missing, truncated or not safetensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except SafetensorError as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {e}"
        ) from None
    try:
        aliases = json.loads(metadata.get(_ALIASES_KEY, "{}"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: metadata {_ALIASES_KEY!r} is not valid JSON: {e}") from None
    for key, target in aliases.items():
        if target not in tensors:
            raise CheckpointError(f"{path}: tensor {key!r} is stored as an alias of {target!r}, "
                                  f"which is not in the file")
        tensors[key] = tensors[target]
    return tensors


def load_weights_into(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load a safetensors file into ``model``, checking keys and shapes first.

    Raises :class:`CheckpointError` listing missing keys (the model has them, the file does not),
    unexpected keys (the file has them, the model does not), and every shape mismatch with both shapes.
    Values are cast to each parameter's dtype by ``load_state_dict``.
    """
    path = Path(path)
    expected = model.state_dict()
    device = next((t.device for t in expected.values()), torch.device("cpu"))
    found = load_state_dict(path, device="cpu" if device.type == "meta" else device)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing keys (the config expects them, the file lacks them): "
                        f"{_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys (in the file, not in the model the config builds): "
                        f"{_short_list(unexpected)}")
    mismatched = [k for k in sorted(set(expected) & set(found)) if expected[k].shape != found[k].shape]
    for key in mismatched[:10]:
        problems.append(f"tensor {key!r}: the config expects shape {tuple(expected[key].shape)}, "
                        f"the file has {tuple(found[key].shape)}")
    if len(mismatched) > 10:
        problems.append(f"... and {len(mismatched) - 10} more tensors of another shape")
    if problems:
        raise CheckpointError(f"{path} does not match the model config:\n  " + "\n  ".join(problems))
    model.load_state_dict(found, strict=True)


def _short_list(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# --------------------------------------------------------------------------------------------------
# Checkpoint directories


def _common_float_dtype(model: torch.nn.Module) -> torch.dtype | None:
    dtypes = {t.dtype for t in model.state_dict().values() if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def save_checkpoint(directory: str | os.PathLike, model: torch.nn.Module, *, model_type: str,
                    config: dict) -> Path:
    """Write ``model``'s weights and ``config`` (a JSON-able dict) into ``directory``; return it.

    The weights go first and the config last, each atomically, so a config always describes complete
    weights.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = save_state_dict(model.state_dict(), directory / WEIGHTS_NAME)
    dtype = _common_float_dtype(model)
    atomic_write_json(directory / CONFIG_NAME, {
        "xlram_format": FORMAT_VERSION,
        "model_type": model_type,
        "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
        "weights_bytes": weights.stat().st_size,
        "weights_sha256": sha256_file(weights),
        "config": config,
    })
    return directory


def read_checkpoint_config(directory: str | os.PathLike, *, model_type: str | None = None) -> dict:
    """Read and check ``directory/config.json``; return the record (``record["config"]`` is the model's).

    Raises :class:`CheckpointError` naming the file when it is missing, not JSON, from another format
    version, or (when ``model_type`` is given) for another kind of model.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} not found: a checkpoint directory holds {CONFIG_NAME} and "
                              f"{WEIGHTS_NAME} (written by save_pretrained)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise CheckpointError(f"{path}: expected an object with a 'config' object, found {_kind(record)}")
    if record.get("xlram_format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: xlram_format is {record.get('xlram_format')!r}, "
                              f"this version reads format {FORMAT_VERSION}")
    if model_type is not None and record.get("model_type") != model_type:
        raise CheckpointError(f"{path}: model_type is {record.get('model_type')!r}, expected {model_type!r}")
    return record


def _kind(obj: Any) -> str:
    return f"a JSON {type(obj).__name__}" if not isinstance(obj, dict) else f"keys {sorted(obj)}"


def verify_weights_file(directory: str | os.PathLike, record: dict) -> Path:
    """Check that ``directory/model.safetensors`` exists and is the file ``record`` was written with."""
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} not found (the config {Path(directory) / CONFIG_NAME} is there)")
    size, expected_size = path.stat().st_size, record.get("weights_bytes")
    if expected_size is not None and size != expected_size:
        raise CheckpointError(f"{path} has {size} bytes, {CONFIG_NAME} records {expected_size} "
                              f"({'truncated' if size < expected_size else 'grown'} since it was saved)")
    expected = record.get("weights_sha256")
    if expected is not None:
        found = sha256_file(path)
        if found != expected:
            raise CheckpointError(f"{path} is corrupt or from another save: its SHA-256 is {found}, "
                                  f"{CONFIG_NAME} expects {expected}")
    return path


class PretrainedMixin:
    """``save_pretrained(dir)`` and ``cls.from_pretrained(dir)`` for an ``nn.Module`` with a typed config.

    The class sets ``model_type`` (a string stored in the checkpoint) and ``config_class`` (with
    ``from_dict``); instances keep their config in ``self.config`` (with ``to_dict``) and are built by
    ``cls(config)``.
    """

    model_type: ClassVar[str]
    config_class: ClassVar[type]

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Save weights (safetensors) and config (JSON) into ``directory``; return the directory."""
        return save_checkpoint(directory, self, model_type=self.model_type, config=self.config.to_dict())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None):
        """Build the model from ``directory/config.json`` and load ``directory/model.safetensors``.

        ``dtype`` defaults to the dtype the model was saved in; ``device`` to CPU.
        """
        record = read_checkpoint_config(directory, model_type=cls.model_type)
        config_path = Path(directory) / CONFIG_NAME
        try:
            config = cls.config_class.from_dict(record["config"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{config_path}: invalid config: {e}") from None
        weights = verify_weights_file(directory, record)
        if dtype is None and record.get("dtype") is not None:
            dtype = getattr(torch, str(record["dtype"]), None)
            if not isinstance(dtype, torch.dtype):
                raise CheckpointError(f"{config_path}: unknown dtype {record['dtype']!r}")
        model = cls(config)
        model.to(device=device, dtype=dtype)
        load_weights_into(model, weights)
        return model.eval()

"""Validation helpers shared by the baseline configs."""

from __future__ import annotations

from dataclasses import fields


def check_positive_int(config, name: str) -> None:
    """Raise ``ValueError`` naming ``type(config).name`` unless that field is an int >= 1 (not a bool)."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{type(config).__name__}.{name} must be a positive int, got {value!r}")


def known_keys(cls, d, required: tuple[str, ...] = ()) -> dict:
    """``d`` checked against the fields of the dataclass ``cls``: a dict, no unknown and no missing keys."""
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__}.from_dict expects a dict, got {type(d).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known keys are {sorted(names)}")
    missing = sorted(k for k in required if k not in d)
    if missing:
        raise ValueError(f"{cls.__name__}: missing required keys {missing}")
    return dict(d)

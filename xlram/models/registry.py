"""A tiny model registry: every model variant has a name, and ``create_model(name, **overrides)`` builds it.

Each model module registers its variants with ``@register_model(name, task=...)``, including a
``-tiny`` variant of every architecture so that generic tests (output shape, no NaN, every parameter
gets a gradient) run over all models in seconds. ``task`` tells such tests what input the model takes
(``"lm"``: token ids ``(B, S)`` -> ``(logits, state)``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

__all__ = ["ModelEntry", "create_model", "get_model_entry", "list_models", "register_model"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered variant: its name, the kind of input it takes, and the function that builds it."""

    name: str
    task: str
    factory: Callable[..., nn.Module]
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}
# Modules whose import registers models; imported on first lookup so the registry never imports them eagerly.
_MODEL_MODULES = ("xlram.models",)


def register_model(name: str, *, task: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``factory(**overrides) -> nn.Module`` under ``name``.

    Registering the same name twice is an error (it would silently shadow a model).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_model: name must be a non-empty string, got {name!r}")

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"register_model: a model named {name!r} is already registered "
                             f"(by {_REGISTRY[name].factory.__module__})")
        doc = (factory.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelEntry(name=name, task=task, factory=factory, description=doc[0] if doc else "")
        return factory

    return decorator


def _load_model_modules() -> None:
    for module in _MODEL_MODULES:
        importlib.import_module(module)


def list_models(contains: str = "", *, task: str | None = None) -> list[str]:
    """Sorted names of registered models containing ``contains`` (plain substring: names have brackets)."""
    _load_model_modules()
    return sorted(n for n, e in _REGISTRY.items() if contains in n and (task is None or e.task == task))


def get_model_entry(name: str) -> ModelEntry:
    """The :class:`ModelEntry` of ``name``; unknown names raise ``KeyError`` listing the known ones."""
    _load_model_modules()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, **overrides) -> nn.Module:
    """Build the registered model ``name``; ``overrides`` replace its defaults (e.g. ``vocab_size=10``)."""
    return get_model_entry(name).factory(**overrides)

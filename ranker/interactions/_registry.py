"""Name -> factory registry for interaction layers (same pattern as the tower and pipeline-step registries)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    """Decorator registering a factory (a class or a function returning an ``nn.Module``) under ``name``."""

    def decorator(factory: Factory) -> Factory:
        if name in _FACTORIES:
            raise ValueError(f"interaction {name!r} is already registered")
        _FACTORIES[name] = factory
        return factory

    return decorator


def create(name: str, **kwargs: object) -> nn.Module:
    """Builds the interaction registered as ``name``; ``kwargs`` go to its factory (unknown keys raise TypeError)."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown interaction {name!r}; registered: {list_names()}")
    return _FACTORIES[name](**kwargs)


def list_names() -> list[str]:
    """Registered interaction names, sorted."""
    return sorted(_FACTORIES)

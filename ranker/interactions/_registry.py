"""Name -> factory registry for interaction layers (same pattern as the tower and pipeline-step registries)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from torch import nn

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}

# Supplied by the model builder, never by a config: the token count and width, the task count, placement.
BUILDER_ARGS = ("num_tokens", "dim", "num_tasks", "device", "dtype")


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


def hyper_parameters(name: str) -> dict[str, object]:
    """The configurable keyword arguments of interaction ``name`` and their defaults (builder arguments excluded).

    Example::

        hyper_parameters("dlrm")  # {"hidden": (256, 128)}
    """
    if name not in _FACTORIES:
        raise ValueError(f"unknown interaction {name!r}; registered: {list_names()}")
    factory = _FACTORIES[name]
    signature = inspect.signature(factory.__init__ if inspect.isclass(factory) else factory)
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in BUILDER_ARGS
    }

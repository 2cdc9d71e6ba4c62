"""Name -> factory registry for interaction layers (same pattern as the tower and pipeline-step registries)."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
_OPTIONS: dict[str, Any] = {}  # name -> the frozen options dataclass its factory takes as ``options``

# Supplied by the model builder, never by a config: the token count and width, the task count, placement.
BUILDER_ARGS = ("num_tokens", "dim", "num_tasks", "device", "dtype")


def register(name: str, options: Any = None) -> Callable[[Factory], Factory]:
    """Decorator registering a factory (a class or a function returning an ``nn.Module``) under ``name``.

    Its hyper-parameters are its keyword-only arguments, or with ``options`` (a frozen dataclass) the fields of
    ``options``: the factory then takes the builder arguments and ``options=``, which :func:`create` fills from the
    other keyword arguments, so several factories share one set of hyper-parameters.
    """

    def decorator(factory: Factory) -> Factory:
        if name in _FACTORIES:
            raise ValueError(f"interaction {name!r} is already registered")
        _FACTORIES[name] = factory
        if options is not None:
            _OPTIONS[name] = options
        return factory

    return decorator


def create(name: str, **kwargs: object) -> nn.Module:
    """Builds the interaction registered as ``name``; ``kwargs`` go to its factory (unknown keys raise TypeError)."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown interaction {name!r}; registered: {list_names()}")
    options = _OPTIONS.get(name)
    if options is None:
        return _FACTORIES[name](**kwargs)
    builder = {k: kwargs.pop(k) for k in BUILDER_ARGS if k in kwargs}
    return _FACTORIES[name](**builder, options=options(**kwargs))


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
    if name in _OPTIONS:
        return {f.name: f.default for f in dataclasses.fields(_OPTIONS[name])}
    factory = _FACTORIES[name]
    signature = inspect.signature(factory.__init__ if inspect.isclass(factory) else factory)
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in BUILDER_ARGS
    }

"""Name -> constructor registry for vision towers.

Each architecture file registers one function per configuration with ``@register_tower``; importing
``vision_towers`` imports every file, so ``list_towers()`` sees all of them.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from torch import nn

TowerFn = TypeVar("TowerFn", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., nn.Module]
    published: bool  # full-size ImageNet config (3 x 224 x 224, 1000 classes): too slow for CPU unit tests


_TOWERS: dict[str, _Entry] = {}


def register_tower(fn: TowerFn | None = None, *, published: bool = False) -> TowerFn | Callable[[TowerFn], TowerFn]:
    """Registers ``fn`` under its ``__name__``. Use bare (``@register_tower``) or with ``published=True``."""

    def _register(f: TowerFn) -> TowerFn:
        name = f.__name__
        if name in _TOWERS:
            raise ValueError(f"vision tower {name!r} is already registered")
        _TOWERS[name] = _Entry(fn=f, published=published)
        return f

    return _register(fn) if fn is not None else _register


def create_tower(name: str, **overrides: object) -> nn.Module:
    """Builds the registered tower ``name``; ``overrides`` replace the config's constructor arguments."""
    if name not in _TOWERS:
        raise KeyError(f"unknown vision tower {name!r}; registered: {list_towers()}")
    return _TOWERS[name].fn(**overrides)


def list_towers(published: bool | None = None) -> list[str]:
    """Sorted registered names; ``published=False`` keeps only the small configs, ``True`` only the 224 px ones."""
    return sorted(n for n, e in _TOWERS.items() if published is None or e.published == published)


def tower_parameters(name: str) -> dict[str, object]:
    """Constructor arguments a config may override for tower ``name``, with the class defaults.

    Every registered function returns one tower class built with ``**overrides``; the keys it accepts are that
    class's ``__init__`` arguments (from the return annotation).
    """
    if name not in _TOWERS:
        raise KeyError(f"unknown vision tower {name!r}; registered: {list_towers()}")
    cls = typing.get_type_hints(_TOWERS[name].fn)["return"]
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD}

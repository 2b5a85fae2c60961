"""Tiny registries: a dict, a ``register`` decorator and a getter whose error lists the valid names.

    @GENERATORS.register("dummy")
    def build_dummy(**options): ...

    GENERATORS.get("dumy")  # KeyError: unknown generator 'dumy'; valid generators are: codi, dummy

Registries (filled when their modules are imported, see :func:`load_builtins`):

- ``GENERATORS``: name -> ``build(**options) -> generator`` (see :mod:`metrics.generators`);
- ``METRICS``: metric identifier (``fid``, ``clip_score``, ...) -> metric builder (:mod:`metrics.build`);
- ``DATASETS``: dataset kind (``coco``, ``audiocaps``, ``msrvtt``, ``jsonl``) -> adapter class (:mod:`metrics.data`);
- ``EMBEDDERS``: SIM embedder name (``codi``, ``evaluator``) -> builder (:mod:`metrics.sim`).
"""
from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "GENERATORS", "METRICS", "DATASETS", "EMBEDDERS", "load_builtins"]


class Registry(Generic[T]):
    """A named dict with a decorator to fill it and a getter whose error lists the valid names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        load_builtins()
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} {name!r}; valid {self.kind}s are: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        load_builtins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


GENERATORS: Registry[Callable[..., Any]] = Registry("generator")
METRICS: Registry[Callable[..., Any]] = Registry("metric")
DATASETS: Registry[Any] = Registry("dataset")
EMBEDDERS: Registry[Callable[..., Any]] = Registry("embedder")

_LOADED = False


def load_builtins() -> None:
    """Import the modules that register the built-in entries (once; cheap, no model is built)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import metrics.build  # noqa: F401  (METRICS)
    import metrics.data  # noqa: F401  (DATASETS)
    import metrics.generators  # noqa: F401  (GENERATORS)
    import metrics.sim  # noqa: F401  (EMBEDDERS)

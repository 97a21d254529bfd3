"""Name -> class registries for strategies, verifiers and backends.

Built-in classes register themselves with a decorator when their package is imported; third-party
packages add theirs through the entry-point groups ``ttc.strategies``, ``ttc.verifiers`` and
``ttc.backends`` (the entry point's value is the class; its name is the registered name). A
plugin that fails to load is logged and skipped, never fatal.

Example::

    @strategies.register("single")
    class Single(Strategy): ...

    strategies.get("single")  # -> Single
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from orchestrator.errors import ConfigError, RegistryError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Registry(Generic[T]):
    """A registry of classes (or factories) by name.

    Args:
        kind: what is registered, for messages ("strategy").
        group: the entry-point group that plugins use.
        builtins: modules imported on first lookup so that built-ins register themselves.
    """

    def __init__(self, kind: str, group: str, builtins: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.group = group
        self._builtins = builtins
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering a class (or factory) under ``name`` and setting its ``name``."""

        def deco(cls: T) -> T:
            existing = self._items.get(name)
            if existing is not None and existing is not cls:
                raise RegistryError(f"{self.kind} {name!r} is already registered by {existing}")
            cls.name = name  # type: ignore[attr-defined]
            self._items[name] = cls
            return cls

        return deco

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._builtins:
            importlib.import_module(module)
        for ep in entry_points(group=self.group):
            try:
                cls = ep.load()
                self.register(ep.name)(cls)
            except Exception as exc:  # a broken plugin must not break ttc
                log.warning("skipping %s plugin %r from %s: %s", self.kind, ep.name, ep.value, exc)

    def get(self, name: str) -> T:
        """The class registered as ``name``; RegistryError lists the known names otherwise."""
        self._load()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise RegistryError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._load()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, class) pairs, sorted by name."""
        self._load()
        for name in sorted(self._items):
            yield name, self._items[name]

    def build(self, spec: str | Mapping[str, Any], key: str) -> Any:
        """An instance from a name, or from a spec mapping ``{key: name, **config}``.

        Raises:
            ConfigError: the mapping has no string ``key`` field.
            RegistryError: the name is unknown.
        """
        if isinstance(spec, str):
            factory: Any = self.get(spec)
            return factory()
        data = dict(spec)
        name = data.pop(key, None)
        if not isinstance(name, str):
            raise ConfigError(f"a {self.kind} spec needs a {key!r} name field, got {spec!r}")
        factory = self.get(name)
        return factory(data)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items


def _lazy(kind: str, group: str, *builtins: str) -> Registry[Any]:
    return Registry(kind, group, builtins)


strategies: Registry[Any] = _lazy("strategy", "ttc.strategies", "strategies")
verifiers: Registry[Any] = _lazy("verifier", "ttc.verifiers", "verifiers")
backends: Registry[Any] = _lazy("backend kind", "ttc.backends", "orchestrator.backends.kinds")

"""BackendSet: the backends of a backends file, each built the first time a run needs it.

Building a backend is cheap (an HTTP client, an engine *description*); starting one may not be
(a vLLM engine loads its model). A BackendSet builds a declared backend on first lookup and
keeps it, so a configuration that declares a remote API whose key is not set still serves the
runs that never use that backend (the key is read only when that backend is built). Starting is
the Orchestrator's job (``Orchestrator.run`` starts the backends a strategy tree uses).

It is a read-only ``Mapping[str, Backend]``: iteration and ``len`` cover every *declared* name
(``in`` answers without building); ``[name]`` builds on first access and raises ``KeyError`` for
an undeclared name and ``ConfigError`` when the declaration cannot be built (e.g. the API key's
environment variable is unset). ``built()`` lists what has been built so far (what to close).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from orchestrator.backends.base import Backend
from orchestrator.backends.config import BackendConfig, BackendsFile
from orchestrator.backends.kinds import create_backend
from orchestrator.errors import ConfigError

__all__ = ["BackendSet"]


class BackendSet(Mapping[str, Backend]):
    """Declared backends, built lazily (see the module docstring).

    Args:
        config: the validated backends file.
        only: names that may be built (None: every declared backend); others are not declared
            as far as this set is concerned.
        models: per-backend model overrides (``{"local": "other-model"}``).
        progress: a callback for long preparation steps (the embedded model's conversion).
    """

    def __init__(
        self,
        config: BackendsFile,
        *,
        only: Iterable[str] | None = None,
        models: Mapping[str, str] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        allowed = set(config.backends) if only is None else set(only)
        unknown = sorted(allowed - set(config.backends))
        if unknown:
            raise ConfigError(
                f"unknown backend {unknown[0]!r}; declared: {', '.join(sorted(config.backends))}"
            )
        self._configs = {n: c for n, c in config.backends.items() if n in allowed}
        for name, model in (models or {}).items():
            if name not in self._configs:
                raise ConfigError(f"--model for unknown backend {name!r}")
            self._configs[name] = self._configs[name].model_copy(update={"model": model})
        self._progress = progress
        self._built: dict[str, Backend] = {}

    def config(self, name: str) -> BackendConfig:
        """The declaration of ``name``; KeyError when it is not declared."""
        return self._configs[name]

    def __getitem__(self, name: str) -> Backend:
        backend = self._built.get(name)
        if backend is None:
            backend = self._build(name, self._configs[name])
            self._built[name] = backend
        return backend

    def _build(self, name: str, cfg: BackendConfig) -> Backend:
        if cfg.kind == "embedded" and self._progress is not None:
            cfg = cfg.model_copy(update={"options": {"progress": self._progress, **cfg.options}})
        return create_backend(name, cfg)

    def __iter__(self) -> Iterator[str]:
        return iter(self._configs)

    def __len__(self) -> int:
        return len(self._configs)

    def __contains__(self, name: object) -> bool:
        return name in self._configs

    def built(self) -> dict[str, Backend]:
        """The backends built so far, by name."""
        return dict(self._built)

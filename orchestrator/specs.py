"""Strategy specs: the catalog of named configs, spec resolution, and the one override rule.

A *spec* is ``{"strategy": <registered name>, **config}``. Every surface (``ttc solve``,
``ttc eval``, ``ttc search``, the REST service, the SDK's in-process use) turns what its user
wrote into a spec here, the same way:

* :class:`Catalog`: named strategy configs, ``NAME.yaml`` files in one directory. The directory
  is a setting (``Catalog(path)``, else ``$TTC_STRATEGY_DIR``); by default the project's
  ``configs/strategies`` (found next to this package in a source checkout, or in
  ``<prefix>/share/ttc/configs/strategies`` where a wheel installed it), never the working
  directory. Only names the catalog lists are opened, so a name sent by a client cannot reach
  another file (``../x``).
* :func:`resolve_spec`: a registered name, a named config or an inline spec -> a full spec; an
  inline spec naming a named config gets that config's fields, its own fields winning.
* :func:`apply_overrides`: the one rule for the settings a surface lets its user override
  (``n``, ``temperature``, ``max_tokens``, ``verifier``, ...): each given value is set when the
  spec's strategy has that config field; the names it does not have are returned, and the caller
  decides whether that is an error (``ttc solve``: yes; ``ttc eval`` with several strategies:
  only when no strategy has it).
* :func:`run_budget`: the one rule for a run's budget: the requested one, else the default,
  each limit capped by ``cap`` when one is given.
* :func:`result_json`: a Result as JSON, token logprobs dropped unless asked for.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.budget import Budget
from orchestrator.config import load_yaml
from orchestrator.errors import ConfigError, RegistryError
from orchestrator.registry import strategies
from orchestrator.types import Result

__all__ = [
    "OVERRIDE_FIELDS",
    "STRATEGY_DIR_ENV",
    "Catalog",
    "apply_overrides",
    "config_fields",
    "default_strategy_dir",
    "resolve_spec",
    "result_json",
    "run_budget",
]

STRATEGY_DIR_ENV = "TTC_STRATEGY_DIR"
"""Environment variable naming the directory of named strategy configs."""

OVERRIDE_FIELDS = ("n", "temperature", "max_tokens", "verifier")
"""The config fields ``ttc solve`` and ``ttc eval`` take as flags."""

_PROJECT_DIR = Path(__file__).resolve().parents[1] / "configs" / "strategies"
_INSTALLED_DIR = Path(sys.prefix) / "share" / "ttc" / "configs" / "strategies"

StrategyRef = str | Mapping[str, Any]


def default_strategy_dir() -> Path:
    """``$TTC_STRATEGY_DIR``, else the project's ``configs/strategies`` (source checkout), else
    the installed copy under ``<prefix>/share/ttc`` (which may not exist: an empty catalog)."""
    if env := os.environ.get(STRATEGY_DIR_ENV):
        return Path(env).expanduser()
    return _PROJECT_DIR if _PROJECT_DIR.is_dir() else _INSTALLED_DIR


class Catalog:
    """The named strategy configs of one directory (see the module docstring).

    Args:
        directory: where the ``NAME.yaml`` files are; None: :func:`default_strategy_dir`.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_strategy_dir()

    def names(self) -> list[str]:
        """The named configs, sorted (empty when the directory does not exist)."""
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.yaml"))

    def path(self, name: str) -> Path:
        """The file of the named config ``name`` (which must be listed by ``names``)."""
        return self.directory / f"{name}.yaml"

    def load(self, name: str) -> dict[str, Any]:
        """The spec of the named config ``name``.

        Raises:
            RegistryError: ``name`` is not a named config (the message lists them).
            ConfigError: the file is not a mapping with a ``strategy`` name field.
        """
        if name not in self.names():
            raise RegistryError(self.unknown(name))
        path = self.path(name)
        data = load_yaml(path)
        if not isinstance(data, dict) or not isinstance(data.get("strategy"), str):
            raise ConfigError(f"{path}: expected a mapping with a 'strategy' name field")
        return dict(data)

    def available(self) -> list[str]:
        """Registered strategy names, then the named configs that are not also registered."""
        names = strategies.names()
        return names + [n for n in self.names() if n not in names]

    def unknown(self, name: str) -> str:
        """The message for an unknown strategy name: what is registered and what is named."""
        named = self.names()
        return f"unknown strategy {name!r}; registered: {', '.join(strategies.names())}" + (
            f"; named configs in {self.directory}: {', '.join(named)}" if named else ""
        )

    def named_spec(self, name: str) -> dict[str, Any]:
        """The spec of a registered strategy name or of a named config."""
        if name in strategies:
            return {"strategy": name}
        if name not in self.names():
            raise RegistryError(self.unknown(name))
        return self.load(name)

    def spec_file(self, path: str | Path) -> dict[str, Any]:
        """The spec in a YAML file (``--config FILE``), resolved like an inline spec."""
        data = load_yaml(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping with a 'strategy' field")
        return resolve_spec(data, catalog=self)


def resolve_spec(
    ref: StrategyRef | None,
    default: StrategyRef | None = None,
    *,
    catalog: Catalog | None = None,
) -> dict[str, Any]:
    """The full spec ``{"strategy": <registered name>, **config}`` for ``ref`` (None: the
    ``default``), see the module docstring.

    Raises:
        RegistryError: an unknown name.
        ConfigError: neither ``ref`` nor ``default`` given, or an inline spec without a string
            ``strategy`` field.
    """
    catalog = catalog or Catalog()
    chosen = default if ref is None else ref
    if chosen is None:
        raise ConfigError("no strategy given and no default strategy configured")
    if isinstance(chosen, str):
        return catalog.named_spec(chosen)
    name = chosen.get("strategy")
    if not isinstance(name, str):
        raise ConfigError(f"a strategy spec needs a 'strategy' name field, got {dict(chosen)!r}")
    if name in strategies:
        return dict(chosen)
    return {**catalog.named_spec(name), **{k: v for k, v in chosen.items() if k != "strategy"}}


def config_fields(spec: Mapping[str, Any]) -> set[str]:
    """The config field names of the registered strategy a resolved spec names."""
    cls = strategies.get(str(spec["strategy"]))
    return set(cls.Config.model_fields)


def apply_overrides(
    spec: Mapping[str, Any], overrides: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """``spec`` with each non-None override whose field its strategy's config has, and the
    names of the given overrides it does not have (in the order given)."""
    fields = config_fields(spec)
    out = dict(spec)
    unused: list[str] = []
    for name, value in overrides.items():
        if value is None:
            continue
        if name in fields:
            out[name] = value
        else:
            unused.append(name)
    return out, unused


def run_budget(
    requested: Budget | None, default: Budget | None = None, cap: Budget | None = None
) -> Budget | None:
    """The budget a run gets: ``requested``, else ``default``; with ``cap``, every limit is at
    most the cap's (a limit the run leaves open becomes the cap's)."""
    budget = requested if requested is not None else default
    if cap is None:
        return budget
    if budget is None:
        return cap
    limits = {}
    for name in Budget.model_fields:
        mine, theirs = getattr(budget, name), getattr(cap, name)
        limits[name] = theirs if mine is None else mine if theirs is None else min(mine, theirs)
    return Budget(**limits)


def result_json(result: Result, keep_logprobs: bool = False) -> dict[str, Any]:
    """The Result as JSON; token logprobs are set to None unless ``keep_logprobs``."""
    data = result.model_dump(mode="json")
    if not keep_logprobs:
        for sc in data["candidates"]:
            sc["candidate"]["logprobs"] = None
        if data.get("candidate"):
            data["candidate"]["logprobs"] = None
    return data

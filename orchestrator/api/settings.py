"""ServiceSettings: how the ttc REST service is configured.

Sources, later ones winning: the defaults below, an optional YAML file (``--config FILE`` of
``ttc serve``, else ``$TTC_SERVICE_CONFIG``) holding a mapping of these fields, environment
variables ``TTC_SERVICE__<FIELD>=VALUE`` (``__`` also separates nested fields, e.g.
``TTC_SERVICE__DEFAULT_BUDGET__MAX_CALLS=20``; VALUE is parsed as YAML, so ``32`` is a number
and ``{strategy: sc8}`` a mapping), then explicit keyword overrides (command-line flags).

Example file::

    host: 0.0.0.0
    port: 8080
    backends_file: configs/backends.yaml
    default_strategy: {strategy: self_consistency, n: 8}
    default_budget: {max_completion_tokens: 8192}
    store_url: postgresql://ttc@db/ttc
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.budget import Budget
from orchestrator.config import load_yaml, validate_config
from orchestrator.errors import ConfigError
from orchestrator.specs import Catalog

ENV_PREFIX = "TTC_SERVICE__"
CONFIG_ENV = "TTC_SERVICE_CONFIG"


class ServiceSettings(BaseModel):
    """Settings of one service process. Unknown fields are errors (typos do not pass silently)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="interface to bind (loopback by default)")
    port: int = Field(8000, ge=0, le=65535)
    backends_file: str | None = Field(
        None, description="backends file (None: $TTC_BACKENDS_FILE or configs/backends.yaml)"
    )
    default_backend: str | None = Field(None, description="None: the backends file's default")
    strategy_dir: str | None = Field(
        None,
        description="directory of named strategy configs (None: $TTC_STRATEGY_DIR or the "
        "project's configs/strategies)",
    )
    default_strategy: str | dict[str, Any] = Field(
        default_factory=lambda: {"strategy": "self_consistency", "n": 4},
        description="spec used when a request names no strategy (a name or a spec mapping)",
    )
    store_url: str | None = Field(
        None, description="runs and API keys database (None: $TTC_STORE_URL or the cache dir)"
    )
    shutdown_grace_seconds: float = Field(
        10.0, ge=0, description="on shutdown, in-flight runs get this long, then are cancelled"
    )
    max_concurrent_runs: int = Field(
        64, ge=1, description="runs executing at once; more wait in status 'queued'"
    )
    default_budget: Budget | None = Field(None, description="per-run budget when none is given")
    max_request_n: int = Field(16, ge=1, le=128, description="largest OpenAI `n` accepted")

    def catalog(self) -> Catalog:
        """The named strategy configs this service offers."""
        return Catalog(self.strategy_dir)

    @classmethod
    def from_env(
        cls,
        config_file: str | Path | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> ServiceSettings:
        """Settings from the YAML file, the environment and ``overrides`` (see module doc).

        Overrides whose value is None are ignored, so unset command-line flags can be passed
        as they are. Raises ConfigError naming the source and the bad field.
        """
        env = os.environ if environ is None else environ
        data: dict[str, Any] = {}
        source = config_file or env.get(CONFIG_ENV)
        where = "service settings"
        if source:
            loaded = load_yaml(source)
            if loaded is not None and not isinstance(loaded, dict):
                raise ConfigError(f"{source}: expected a mapping of service settings")
            data.update(loaded or {})
            where = f"service settings ({source} and the environment)"
        _merge(data, env_overrides(env))
        data.update({k: v for k, v in overrides.items() if v is not None})
        settings: ServiceSettings = validate_config(cls, data, where)
        return settings


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The nested mapping set by ``TTC_SERVICE__<FIELD>[__<SUBFIELD>]`` variables."""
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            raise ConfigError(f"environment {key}: expected {ENV_PREFIX}<FIELD>[__<SUBFIELD>]")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"environment {key}: invalid YAML value {raw!r}: {exc}") from None
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment {key}: {part!r} is also set to a plain value")
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """Deep-merge ``extra`` into ``base`` (mappings merge, everything else replaces)."""
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value

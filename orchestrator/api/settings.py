"""ServiceSettings: how the ttc REST service is configured.

Sources, later ones winning: the defaults below, an optional YAML file (``--config FILE`` of
``ttc serve``, else ``$TTC_SERVICE_CONFIG``) holding a mapping of these fields, environment
variables ``TTC_SERVICE__<FIELD>=VALUE`` (``__`` also separates nested fields, e.g.
``TTC_SERVICE__DEFAULT_BUDGET__MAX_CALLS=20``; VALUE is parsed as YAML, so ``32`` is a number
and ``{strategy: sc8}`` a mapping), then explicit keyword overrides (command-line flags).

Example file::

    host: 0.0.0.0
    port: 8080
    auth: required                 # or off (refused off loopback without --insecure)
    backends_file: configs/backends.yaml
    default_strategy: {strategy: self_consistency, n: 8}
    default_budget: {max_completion_tokens: 8192, max_prompt_tokens: 32768}
    max_budget: {max_completion_tokens: 65536, max_prompt_tokens: 262144, max_seconds: 600}
    allow: [verifier.unit_tests.tests]   # privileged fields every client may set
    store_url: postgresql://ttc@db/ttc

The caps (``max_*``, ``resource_caps``) bound what one client request can make the service do;
``docs``: README, "The service's trust boundary".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.budget import Budget
from orchestrator.config import load_yaml, validate_config
from orchestrator.errors import ConfigError
from orchestrator.specs import Catalog
from orchestrator.trust import check_grant

MiB = 1 << 20
DEFAULT_BUDGET = Budget(
    max_completion_tokens=16384, max_prompt_tokens=65536, max_calls=256, max_seconds=300
)
MAX_BUDGET = Budget(
    max_completion_tokens=131072, max_prompt_tokens=524288, max_calls=2048, max_seconds=1800
)
RESOURCE_CAPS: dict[str, float] = {
    "wall_seconds": 30,
    "cpu_seconds": 30,
    "memory_bytes": 1024 * MiB,
    "max_processes": 16,
    "file_size_bytes": 64 * MiB,
    "disk_bytes": 256 * MiB,
    "output_bytes": 1 * MiB,
    "concurrency": 8,
    "max_concurrency": 16,
    "timeout": 120,
    "max_retries": 5,
}
"""The default ``resource_caps``: the largest value a client may give a resource field (by the
field's name), even where the operator granted it."""


ENV_PREFIX = "TTC_SERVICE__"
CONFIG_ENV = "TTC_SERVICE_CONFIG"


class ServiceSettings(BaseModel):
    """Settings of one service process. Unknown fields are errors (typos do not pass silently)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="interface to bind (loopback by default)")
    port: int = Field(8000, ge=0, le=65535)
    auth: Literal["required", "off"] = Field(
        "required",
        description="required: every request but /healthz and /readyz needs an active API "
        "key (none configured: 401); off: no keys (refused off loopback without --insecure)",
    )
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
    default_budget: Budget | None = Field(
        DEFAULT_BUDGET, description="per-run budget when the request gives none"
    )
    max_budget: Budget | None = Field(
        MAX_BUDGET, description="each limit of a run's budget is at most this (None: no cap)"
    )
    max_request_n: int = Field(16, ge=1, le=128, description="largest OpenAI `n` accepted")
    max_samples_per_run: int = Field(
        256, ge=1, description="model samples one run may draw across nesting, from its spec"
    )
    max_depth: int = Field(3, ge=1, le=16, description="strategy nesting levels (inner specs)")
    max_body_bytes: int = Field(MiB, ge=1024, description="request body size (413 above)")
    max_messages: int = Field(64, ge=1, description="messages of one chat request")
    max_chars: int = Field(
        100_000, ge=1, description="characters of a request's question, messages and system prompt"
    )
    max_runs_per_key: int = Field(
        8, ge=1, description="runs of one API key queued or running at once (429 above)"
    )
    max_queued_runs: int = Field(
        256, ge=0, description="runs waiting for a slot; more answer 429 with Retry-After"
    )
    resource_caps: dict[str, float] = Field(
        default_factory=lambda: dict(RESOURCE_CAPS),
        description="largest value of a (granted) resource field, by field name",
    )
    allow: list[str] = Field(
        default_factory=list,
        description="privileges or single fields (strategy|verifier.<name>.<field>) every "
        "client may set; per-key grants: `ttc keys create --scope`",
    )
    readyz_cache_seconds: float = Field(
        5.0, ge=0, description="how long a /readyz probe result is reused"
    )

    @field_validator("auth", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        """YAML reads a bare ``off`` (and ``on``) as a boolean: accept them as written."""
        if isinstance(value, bool):
            return "required" if value else "off"
        return value

    @field_validator("allow")
    @classmethod
    def _known_grants(cls, value: list[str]) -> list[str]:
        return [check_grant(g) for g in value]

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

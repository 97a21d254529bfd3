"""Configuration: validation with clear errors, and the backends file.

``configs/backends.yaml`` declares the backends::

    default: local
    backends:
      local:
        kind: embedded
      vllm-server:
        kind: openai
        base_url: http://127.0.0.1:8001/v1
        model: smollm2
        max_concurrency: 32
        pricing: {prompt: 0.0, completion: 0.0}

Where the file comes from: the ``path`` argument, else ``$TTC_BACKENDS_FILE``, else
``./configs/backends.yaml`` when it exists, else the built-in default (only ``local``, the
embedded model). Environment overrides: ``TTC_DEFAULT_BACKEND=NAME`` picks the default, and
``TTC_BACKEND__<NAME>__<FIELD>=VALUE`` sets one field of one backend (NAME upper-cased, ``-``
as ``_``; VALUE parsed as YAML, so ``32`` is a number).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.backends.base import Capabilities, Pricing
from orchestrator.config import load_yaml, validate_config
from orchestrator.errors import ConfigError
from orchestrator.trust import privileged, tuning

DEFAULT_BACKENDS: dict[str, Any] = {"default": "local", "backends": {"local": {"kind": "embedded"}}}


class BackendConfig(BaseModel):
    """One backend's declaration. ``kind`` picks the implementation (see ``ttc backends``)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(
        description="openai | vllm | embedded | fake, or a plugin's kind",
        json_schema_extra=privileged(
            "code", "picks the implementation (a plugin kind loads its code)"
        ),
    )
    model: str | None = Field(
        None,
        description="model name (openai) or path / id (vllm)",
        json_schema_extra=privileged("model", "the model served"),
    )
    base_url: str | None = Field(
        None,
        description="OpenAI-compatible base URL, e.g. .../v1",
        json_schema_extra=privileged("network", "the server connected to"),
    )
    api_key_env: str | None = Field(
        None,
        description="environment variable with the API key",
        json_schema_extra=privileged("environment", "reads a server environment variable"),
    )
    server: Literal["auto", "vllm", "openai", "generic"] = Field("auto", json_schema_extra=tuning())
    max_concurrency: int = Field(
        16, ge=1, le=4096, json_schema_extra=privileged("resources", "requests in flight")
    )
    requests_per_second: float | None = Field(
        None, gt=0, json_schema_extra=privileged("resources", "request rate")
    )
    timeout: float = Field(
        120.0, gt=0, json_schema_extra=privileged("resources", "seconds per attempt")
    )
    max_retries: int = Field(
        4, ge=0, le=20, json_schema_extra=privileged("resources", "retries per request")
    )
    pricing: Pricing = Field(
        default_factory=Pricing,
        json_schema_extra=privileged("resources", "the prices budgets are charged"),
    )
    capabilities: Capabilities | None = Field(
        None,
        description="override detected capabilities",
        json_schema_extra=privileged("model", "what the server is trusted to offer"),
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="kind-specific options",
        json_schema_extra=privileged("code", "kind-specific options of the implementation"),
    )


class BackendsFile(BaseModel):
    """The whole backends file."""

    model_config = ConfigDict(extra="forbid")

    default: str = "local"
    backends: dict[str, BackendConfig]


def _env_overrides(data: dict[str, Any]) -> dict[str, Any]:
    if os.environ.get("TTC_DEFAULT_BACKEND"):
        data["default"] = os.environ["TTC_DEFAULT_BACKEND"]
    backends = data.setdefault("backends", {})
    by_env = {name.upper().replace("-", "_"): name for name in backends}
    for key, value in os.environ.items():
        if not key.startswith("TTC_BACKEND__"):
            continue
        parts = key.split("__")
        if len(parts) != 3 or not parts[2]:
            raise ConfigError(f"environment {key}: expected TTC_BACKEND__<NAME>__<FIELD>")
        name = by_env.get(parts[1], parts[1].lower().replace("_", "-"))
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"environment {key}: invalid YAML value {value!r}: {exc}") from None
        backends.setdefault(name, {})[parts[2].lower()] = parsed
    return data


def backends_path(path: str | Path | None = None) -> Path | None:
    """The backends file that ``load_backends`` would read (None = built-in default)."""
    if path is not None:
        return Path(path)
    if os.environ.get("TTC_BACKENDS_FILE"):
        return Path(os.environ["TTC_BACKENDS_FILE"])
    local = Path("configs/backends.yaml")
    return local if local.is_file() else None


def load_backends(path: str | Path | None = None) -> BackendsFile:
    """Read, override from the environment and validate the backends file."""
    source = backends_path(path)
    if source is None:
        data: Any = copy.deepcopy(DEFAULT_BACKENDS)  # env overrides must not edit the default
        where = "built-in backends"
    else:
        data = load_yaml(source)
        where = str(source)
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping with 'backends:', got {data!r}")
    cfg: BackendsFile = validate_config(BackendsFile, _env_overrides(data), where)
    if cfg.default not in cfg.backends:
        raise ConfigError(
            f"{where}: default backend {cfg.default!r} is not declared; "
            f"declared: {', '.join(sorted(cfg.backends))}"
        )
    return cfg

"""Backend kinds: how a ``BackendConfig`` becomes a ``Backend``.

Each kind is a factory ``(name, config) -> Backend`` registered in
``orchestrator.registry.backends``. Built-in kinds: ``openai`` (any OpenAI-compatible server,
vLLM's included), ``vllm`` (in-process engine) and ``embedded`` (the in-process engine on the
embedded SmolLM2 model). A plugin registers another kind through the ``ttc.backends``
entry-point group with a callable of the same shape; the ``fake`` kind (the FakeBackend, for
tests and demos without a model) is registered that way by this package's own pyproject.toml,
so production code never imports the test fake. vLLM and torch are imported only when an
engine starts (``VLLMEngineBackend.start``), so building any backend is cheap and works without
the CPU or GPU extras.
"""

from __future__ import annotations

import os

from orchestrator.backends.base import Backend
from orchestrator.backends.config import BackendConfig
from orchestrator.backends.openai_compat import OpenAICompatBackend
from orchestrator.backends.vllm_engine import VLLMEngineBackend, embedded_backend
from orchestrator.errors import ConfigError
from orchestrator.registry import backends


def _api_key(name: str, cfg: BackendConfig) -> str | None:
    if cfg.api_key_env is None:
        return None
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise ConfigError(
            f"backend {name!r}: environment variable {cfg.api_key_env} (api_key_env) is not set"
        )
    return key


@backends.register("openai")
def openai_backend(name: str, cfg: BackendConfig) -> Backend:
    """An OpenAI-compatible HTTP backend (OpenAI, vLLM's server, any compatible API)."""
    if not cfg.base_url or not cfg.model:
        raise ConfigError(f"backend {name!r} (kind openai) needs `base_url` and `model`")
    return OpenAICompatBackend(
        name=name,
        model=cfg.model,
        base_url=cfg.base_url,
        api_key=_api_key(name, cfg),
        pricing=cfg.pricing,
        max_concurrency=cfg.max_concurrency,
        requests_per_second=cfg.requests_per_second,
        timeout=cfg.timeout,
        max_retries=cfg.max_retries,
        server=cfg.server,
        capabilities=cfg.capabilities,
        **cfg.options,
    )


@backends.register("vllm")
def vllm_backend(name: str, cfg: BackendConfig) -> Backend:
    """The in-process vLLM engine on ``model`` (a local path or a model id)."""
    if not cfg.model:
        raise ConfigError(f"backend {name!r} (kind vllm) needs `model`")
    return VLLMEngineBackend(name=name, model=cfg.model, pricing=cfg.pricing, **cfg.options)


@backends.register("embedded")
def embedded(name: str, cfg: BackendConfig) -> Backend:
    """The embedded SmolLM2-135M-Instruct model on the in-process vLLM engine."""
    return embedded_backend(name=name, **cfg.options)


def create_backend(name: str, cfg: BackendConfig) -> Backend:
    """Build the backend ``name`` declared by ``cfg``."""
    factory = backends.get(cfg.kind)
    try:
        backend: Backend = factory(name, cfg)
    except TypeError as exc:  # an unknown key in `options` reaches the constructor
        raise ConfigError(f"backend {name!r} (kind {cfg.kind}): bad `options`: {exc}") from None
    return backend

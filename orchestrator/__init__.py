"""ttc orchestrator: core types, budget, trace, backends, runner, the SDK and the CLI.

The public names below are imported lazily (PEP 562 ``__getattr__``): ``import orchestrator``
imports nothing else, ``from orchestrator import Client`` imports only the SDK (httpx and the
core types), and only ``Orchestrator`` loads the runner with its strategies and backends. No
public name pulls in vLLM or FastAPI.

::

    from orchestrator import AsyncClient, Client, Orchestrator   # remote and in-process APIs
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.budget import Budget
    from orchestrator.runner import Orchestrator
    from orchestrator.sdk import AsyncClient, Client, TTCAPIError
    from orchestrator.types import Problem, Result, Usage

_LAZY = {
    "AsyncClient": "orchestrator.sdk",
    "Budget": "orchestrator.budget",
    "Client": "orchestrator.sdk",
    "Orchestrator": "orchestrator.runner",
    "Problem": "orchestrator.types",
    "Result": "orchestrator.types",
    "TTCAPIError": "orchestrator.sdk",
    "Usage": "orchestrator.types",
}

__all__ = [
    "AsyncClient",
    "Budget",
    "Client",
    "Orchestrator",
    "Problem",
    "Result",
    "TTCAPIError",
    "Usage",
]


def __getattr__(name: str) -> Any:
    """Import a public name on first access and cache it in the module namespace."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

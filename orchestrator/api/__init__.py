"""The ttc REST service: an OpenAI-compatible API and the native reasoning API.

``create_app(settings, orchestrator=None)`` builds the FastAPI app (see ``orchestrator.api.app``);
``ttc serve`` runs it on uvicorn. Importing this package is cheap: the app and FastAPI are
imported on first use of ``create_app``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.api.app import create_app
    from orchestrator.api.settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from orchestrator.api.app import create_app

        return create_app
    if name == "ServiceSettings":
        from orchestrator.api.settings import ServiceSettings

        return ServiceSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

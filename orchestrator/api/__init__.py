"""The ttc REST service: an OpenAI-compatible API and the native reasoning API.

``create_app(settings, orchestrator=None)`` builds the FastAPI app (see ``orchestrator.api.app``);
``ttc serve`` (``orchestrator.cli.serve``) runs it on uvicorn.
"""

from orchestrator.api.app import create_app
from orchestrator.api.settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]

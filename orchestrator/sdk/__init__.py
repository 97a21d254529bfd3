"""Python SDK of the ttc service: ``AsyncClient`` (httpx) and ``Client`` (its blocking twin).

::

    from orchestrator import Client

    with Client("http://127.0.0.1:8000") as ttc:            # api_key=... or $TTC_API_KEY
        run = ttc.reason("What is 6*7?", {"strategy": "self_consistency", "n": 4},
                         budget={"max_completion_tokens": 4000})
        print(run.answer, run.usage.completion_tokens, run.result.details["votes"])

        run_id = ttc.create_run("What is 6*7?", "best_of_n")   # background run
        for event in ttc.events(run_id):                         # status / progress / result
            print(event.type, event.data)
        info = ttc.wait(run_id, timeout=120)                      # RunInfo: status, result, error

Contract:

* Results are the library's own types: ``RunResult.result`` is an ``orchestrator.types.Result``
  (candidates, scores, trace), exactly what ``Orchestrator.run`` returns in process.
* Every non-2xx answer raises a ``TTCAPIError`` subclass built from the service's error body
  ``{"error": {"message", "type", "param", "code"}}``: 400/422 ``BadRequestError``, 401
  ``AuthenticationError``, 403 ``PermissionDeniedError``, 404 ``NotFoundError``, 409
  ``ConflictError``, 429 ``RateLimitError`` (``retry_after``), 5xx ``ServerError``; a timeout
  raises ``TTCTimeoutError``, an unreachable server ``TTCConnectionError``; a ``reason`` whose run
  failed raises ``RunFailedError``. Callers never see httpx exceptions; all of these are
  ``orchestrator.errors.TTCError``.
* Retries (``max_retries``, default 2): GET and DELETE are retried on transport errors and on
  429/502/503/504, waiting the server's Retry-After (up to 30 s) or 0.5 s, 1 s, 2 s, ... with
  jitter. A POST is retried only when it never reached the server (connect error, connect
  or pool timeout), so the SDK never starts a run twice.
* ``wait`` follows the run's event stream and falls back to polling when the stream is not
  available or breaks off.
* ``Client`` runs one ``AsyncClient`` on a private event-loop thread: usable from any thread
  without a running loop; inside a coroutine it raises ``RuntimeError`` pointing to AsyncClient.
"""

from orchestrator.sdk.client import UNSET, AsyncClient
from orchestrator.sdk.errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RunFailedError,
    ServerError,
    TTCAPIError,
    TTCConnectionError,
    TTCTimeoutError,
)
from orchestrator.sdk.models import (
    RunError,
    RunEvent,
    RunInfo,
    RunResult,
    StrategyInfo,
    VerifierInfo,
)
from orchestrator.sdk.sse import ServerSentEvent, SSEDecoder, iter_sse, parse_sse
from orchestrator.sdk.sync import Client

__all__ = [
    "UNSET",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RunError",
    "RunEvent",
    "RunFailedError",
    "RunInfo",
    "RunResult",
    "SSEDecoder",
    "ServerError",
    "ServerSentEvent",
    "StrategyInfo",
    "TTCAPIError",
    "TTCConnectionError",
    "TTCTimeoutError",
    "VerifierInfo",
    "iter_sse",
    "parse_sse",
]

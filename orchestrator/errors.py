"""One exception tree for ttc.

::

    TTCError
    ├── ConfigError            bad configuration: names the source, the field, the value, the fix
    │   └── DatasetError       a dataset cannot be loaded, generated or split (file, line, field)
    ├── RegistryError          unknown strategy / verifier / backend name (lists the known ones)
    ├── CapabilityError        a strategy needs a backend capability the backend lacks
    ├── BudgetExhausted        the meter refused a call: the run's budget cannot fit it
    ├── StoreError             the persistent store (cache database) failed: names the URL, the fix
    └── BackendError           a backend call failed (transport, protocol or server error)
        ├── BackendTimeout     the call (after retries) timed out
        ├── BackendUnavailable the server could not be reached or kept answering 5xx / 429
        ├── BackendRequestError the server rejected the request (4xx other than 429): not retried
        └── BackendProtocolError the server answered with something that is not a valid response

Transport errors are always re-raised as a ``BackendError`` subclass with ``raise ... from``,
so callers never see ``httpx`` or ``openai`` exceptions.
"""

from __future__ import annotations


class TTCError(Exception):
    """Base class of every error ttc raises on purpose."""


class ConfigError(TTCError, ValueError):
    """A configuration value is invalid: the message names where, the field, the value, the fix."""


class RegistryError(TTCError, KeyError):
    """An unknown name was asked of a registry."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message.
        return str(self.args[0]) if self.args else ""


class CapabilityError(TTCError):
    """A strategy or verifier needs a backend capability that the backend does not offer."""


class BudgetExhausted(TTCError):
    """The run's budget cannot fit another backend call.

    Attributes:
        limit: the name of the limit that was hit (``completion_tokens``, ``calls``, ...).
    """

    def __init__(self, limit: str, message: str | None = None) -> None:
        self.limit = limit
        super().__init__(message or f"budget exhausted: {limit}")


class StoreError(TTCError):
    """The persistent store (``orchestrator.store``) could not do its work.

    The message names the store URL (password masked), what failed and the fix.

    Attributes:
        url: the store URL with its password masked ("" when unknown).
        retryable: whether the same operation could succeed if tried again (a locked SQLite
            database, a PostgreSQL deadlock or serialization failure).
    """

    def __init__(self, message: str, *, url: str = "", retryable: bool = False) -> None:
        self.url = url
        self.retryable = retryable
        super().__init__(message)


class BackendError(TTCError):
    """A backend call failed.

    Attributes:
        backend: the backend's name.
        retryable: whether retrying the same request could succeed.
    """

    retryable: bool = False

    def __init__(self, message: str, *, backend: str = "", status: int | None = None) -> None:
        self.backend = backend
        self.status = status
        super().__init__(f"[{backend}] {message}" if backend else message)


class BackendTimeout(BackendError):
    """The request timed out (after all retries)."""

    retryable = True


class BackendUnavailable(BackendError):
    """The server was unreachable, overloaded (429) or failing (5xx), after all retries."""

    retryable = True


class BackendRequestError(BackendError):
    """The server rejected the request as invalid (a 4xx other than 429). Never retried."""


class BackendProtocolError(BackendError):
    """The server's answer could not be parsed as a completion response."""

    retryable = True


class DatasetError(ConfigError):
    """A dataset cannot be loaded, generated or split.

    The message names the source (a file and line, or a ``builtin:`` name), the offending field or
    parameter, its value, and how to fix it.
    """

"""The ``python`` verifier: score candidates with your own Python function.

``function`` names it by import path, ``module:attribute`` (e.g. ``mypkg.scoring:score``; the
attribute may be dotted, ``mypkg.scoring:Scorer.score``). It is imported once, when the verifier
is built, so a typo fails at configuration time with a ConfigError that names the path. It is
called once per candidate as ``fn(problem, candidate) -> float``:

- an ``async def`` function is awaited on the event loop; a plain function runs in a worker
  thread (``asyncio.to_thread``) so that it cannot block the loop. Up to ``max_concurrency``
  calls run at once.
- an exception, a ``timeout``, or a return value that is not a finite real number gives the
  candidate ``error_score`` (default 0.0) with the reason in ``details["error"]``. A timed-out
  thread cannot be killed: it finishes in the background and its result is dropped.
- failed candidates are not passed to the function; they get ``error_score``.

Example::

    # mypkg/scoring.py
    def score(problem: Problem, candidate: Candidate) -> float:
        return 1.0 if candidate.answer and candidate.answer.isdigit() else 0.0

    {"verifier": "python", "function": "mypkg.scoring:score"}

Packaged plugins: a full ``Verifier`` subclass (with its own ``Config``, batch scoring and
model calls through ``ctx.generate``) is better shipped in a package and registered through the
``ttc.verifiers`` entry-point group, which ``orchestrator.registry`` loads on first lookup (a
plugin that fails to import is logged and skipped)::

    # the plugin's pyproject.toml
    [project.entry-points."ttc.verifiers"]
    toxicity = "mypkg.verifiers:Toxicity"   # usable as {"verifier": "toxicity", ...}
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any

from pydantic import Field, field_validator

from orchestrator.context import RunContext
from orchestrator.errors import ConfigError
from orchestrator.registry import verifiers
from orchestrator.trust import privileged, tuning
from orchestrator.types import Candidate, Problem, Score
from verifiers.base import Verifier, VerifierConfig

ScoreFunction = Callable[[Problem, Candidate], Any]


class PythonConfig(VerifierConfig):
    """``python`` options."""

    function: str = Field(
        description="import path of fn(problem, candidate) -> float",
        json_schema_extra=privileged("code", "imports and runs a function of the server"),
    )
    error_score: float = Field(
        0.0,
        description="score of a candidate whose call failed or returned a non-number",
        json_schema_extra=tuning(),
    )
    timeout: float | None = Field(
        None,
        gt=0,
        description="seconds per call (None = no limit)",
        json_schema_extra=privileged("resources", "the time each call may take"),
    )
    max_concurrency: int = Field(
        8,
        ge=1,
        le=1024,
        description="calls running at once",
        json_schema_extra=privileged("resources", "calls running at once"),
    )

    @field_validator("function")
    @classmethod
    def _module_colon_attribute(cls, value: str) -> str:
        module, sep, attr = value.partition(":")
        if not sep or not module.strip() or not attr.strip():
            raise ValueError("expected 'module:function', e.g. 'mypkg.scoring:score'")
        return value


def load_function(path: str) -> ScoreFunction:
    """Import the callable at ``path`` (``module:attribute``, attribute possibly dotted).

    Raises:
        ConfigError: the module cannot be imported, lacks the attribute, or it is not callable.
    """
    module_name, _, attr = path.partition(":")
    where = f"verifier 'python': function {path!r}"
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{where}: cannot import module {module_name!r} ({exc})") from exc
    except Exception as exc:  # the module itself raised while importing
        raise ConfigError(
            f"{where}: importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"{where}: {module_name!r} has no attribute {attr!r}; check the name after ':'"
            ) from None
    if not callable(obj):
        raise ConfigError(f"{where}: {attr!r} is a {type(obj).__name__}, not a callable")
    fn: ScoreFunction = obj
    return fn


def _is_async(fn: Any) -> bool:
    """Whether calling ``fn`` returns a coroutine (an async function or async ``__call__``)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def as_score_value(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not a finite real number."""
    if not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


@verifiers.register("python")
class Python(Verifier):
    """Scores each candidate with a user function ``fn(problem, candidate) -> float``."""

    Config = PythonConfig

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._fn = load_function(self.config.function)
        self._async = _is_async(self._fn)

    async def score(
        self, problem: Problem, candidates: list[Candidate], ctx: RunContext
    ) -> list[Score]:
        slots = asyncio.Semaphore(self.config.max_concurrency)
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self._score_one(problem, c, slots)) for c in candidates]
        return [t.result() for t in tasks]

    async def _score_one(
        self, problem: Problem, candidate: Candidate, slots: asyncio.Semaphore
    ) -> Score:
        if candidate.failed:
            return self._error(f"candidate failed: {candidate.error}")
        deadline = asyncio.timeout(self.config.timeout)
        try:
            async with slots, deadline:
                raw = await self._call(problem, candidate)
        except Exception as exc:
            expired = deadline.expired()  # not a TimeoutError raised by the function itself
            return self._error(
                f"timed out after {self.config.timeout}s"
                if expired
                else f"{type(exc).__name__}: {exc}"
            )
        value = as_score_value(raw)
        if value is None:
            return self._error(f"returned {raw!r}, not a finite number")
        return Score(value=value, verifier=self.name)

    async def _call(self, problem: Problem, candidate: Candidate) -> Any:
        if self._async:
            return await self._fn(problem, candidate)
        raw = await asyncio.to_thread(self._fn, problem, candidate)
        if inspect.isawaitable(raw):  # e.g. a sync wrapper returning a coroutine
            raw = await raw
        return raw

    def _error(self, message: str) -> Score:
        return Score(
            value=self.config.error_score, verifier=self.name, details={"error": message[:500]}
        )

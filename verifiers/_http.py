"""Helpers for verifiers that call JSON APIs over HTTP (``reward_model``).

``post_json`` sends one request and raises failures as the exception types that
``orchestrator.backends._retry.call_with_retries`` classifies, so retries, backoff and the
``BackendError`` mapping stay in one place. ``gather`` awaits concurrently and lets the first
ttc error through as itself, not wrapped in an ``ExceptionGroup``.

A template is any JSON value whose strings may hold placeholders such as ``{question}``; a
string that is exactly one placeholder takes the value itself (a list stays a list), otherwise
the value is spliced in as text. A score path names a place in a JSON answer: dot-separated
keys and list indices (``data.0.score``, also ``data[0].score``), where ``*`` maps over a list
(``data.*.score`` gives one value per item).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable
from typing import Any, TypeVar, cast

import httpx
import openai

from orchestrator.errors import TTCError

T = TypeVar("T")

PLACEHOLDERS = ("question", "answer", "steps", "answers", "all_steps")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
_INDEX = re.compile(r"-?\d+")


async def post_json(client: httpx.AsyncClient, url: str, body: Any) -> Any:
    """POST ``body`` as JSON and decode the answer; one attempt.

    Raises:
        TimeoutError: the request timed out.
        openai.APIConnectionError: the server could not be reached (cause: the httpx error).
        openai.APIStatusError: an HTTP error status, with the decoded error body.
        json.JSONDecodeError: the answer is not JSON.
    """
    try:
        response = await client.post(url, json=body)
    except httpx.TimeoutException as exc:
        raise TimeoutError(str(exc)) from exc
    except httpx.TransportError as exc:
        # openai's errors wrap an httpx-compatible request / response (httpx, or httpx2 in
        # openai >= 3); classification reads only the status code and the headers.
        raise openai.APIConnectionError(request=cast(Any, httpx.Request("POST", url))) from exc
    if response.is_error:
        try:
            error_body: Any = response.json()
        except ValueError:
            error_body = response.text
        raise openai.APIStatusError(
            f"HTTP {response.status_code}", response=cast(Any, response), body=error_body
        )
    return response.json()


async def gather(aws: list[Awaitable[T]]) -> list[T]:
    """Await concurrently; on failure the first ``TTCError`` propagates as itself."""
    error: BaseException | None = None
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_run(a)) for a in aws]
    except BaseExceptionGroup as failed:
        error = next((e for e in failed.exceptions if isinstance(e, TTCError)), None)
        if error is None:
            raise
    if error is not None:
        raise error
    return [t.result() for t in tasks]


async def _run(aw: Awaitable[T]) -> T:
    return await aw


def fill(template: Any, **values: Any) -> Any:
    """``template`` with every placeholder replaced from ``values``.

    Raises:
        KeyError: the template uses a placeholder missing from ``values``.
    """
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template)
        if whole:
            return values[whole.group(1)]
        return _PLACEHOLDER.sub(lambda m: _text(values[m.group(1)]), template)
    if isinstance(template, dict):
        return {k: fill(v, **values) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, **values) for v in template]
    return template


def placeholders(template: Any) -> set[str]:
    """The placeholder names a template uses (in string values, at any depth)."""
    if isinstance(template, str):
        return set(_PLACEHOLDER.findall(template))
    if isinstance(template, dict):
        template = list(template.values())
    if isinstance(template, list):
        return set().union(*(placeholders(v) for v in template))
    return set()


def resolve(value: Any, path: str) -> Any:
    """The part of ``value`` at ``path``.

    Raises:
        LookupError: nothing is there; the message names the first step that failed and the
            shape found at that point.
    """
    parts = re.sub(r"\[(-?\d+|\*)\]", r".\1", path).strip(".").split(".")
    return _walk(value, parts, "")


def _walk(node: Any, parts: list[str], at: str) -> Any:
    for i, part in enumerate(parts):
        where = f"{at}.{part}".lstrip(".")
        if part == "*" and isinstance(node, list):
            return [
                _walk(item, parts[i + 1 :], f"{at}.{j}".lstrip(".")) for j, item in enumerate(node)
            ]
        if (
            isinstance(node, list)
            and _INDEX.fullmatch(part)
            and -len(node) <= int(part) < len(node)
        ):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            found = f"{at!r} is" if at else "the top is"
            raise LookupError(f"nothing at {where!r} ({found} {shape(node, 2)})")
        at = where
    return node


def shape(value: Any, depth: int = 3) -> str:
    """A compact sketch of a JSON value's structure: keys and types, not the data."""
    if isinstance(value, dict):
        if depth <= 0:
            return "{...}"
        inner = ", ".join(f"{k!r}: {shape(v, depth - 1)}" for k, v in list(value.items())[:8])
        return "{" + inner + (", ..." if len(value) > 8 else "") + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        if depth <= 0:
            return "[...]"
        more = f", ... ({len(value)} items)" if len(value) > 1 else ""
        return f"[{shape(value[0], depth - 1)}{more}]"
    return "null" if value is None else type(value).__name__


def is_number(value: Any) -> bool:
    """True for JSON numbers (ints and floats, not booleans)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)

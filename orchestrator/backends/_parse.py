"""Turn OpenAI-shaped responses (chat and legacy completions) into ``Candidate`` batches.

Parsers accept whatever the ``openai`` client returned (a typed model built without validation,
or a ``str`` when the server did not answer JSON) and raise ``MalformedResponse`` on anything that
is not a well-formed completion, so the caller can retry it as a protocol failure.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from openai.types import Completion, CompletionUsage
from openai.types.chat import ChatCompletion
from openai.types.chat.chat_completion import ChoiceLogprobs
from openai.types.completion_choice import Logprobs

from orchestrator.backends._retry import MalformedResponse
from orchestrator.types import Candidate, TokenLogprob


@dataclass(frozen=True)
class ParseOptions:
    """What the parsed candidates should carry.

    Attributes:
        backend: the backend's configured name (``Candidate.backend``).
        model: the configured model, used when the response names none.
        logprobs: keep per-token logprobs (only when the request asked for them).
        top_logprobs: alternatives per token that were asked for; 0 leaves ``top`` as None.
    """

    backend: str
    model: str
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass(frozen=True)
class Batch:
    """The parsed result of one HTTP request."""

    candidates: list[Candidate]
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class _Draft:
    text: str
    finish_reason: str | None
    logprobs: list[TokenLogprob] | None


def parse_chat(response: object, options: ParseOptions) -> Batch:
    """Parse a ``chat.completion`` response.

    Raises:
        MalformedResponse: the response is not a chat completion or misses required fields.
    """
    if not isinstance(response, ChatCompletion):
        raise MalformedResponse(f"expected a chat.completion object, got {_show(response)}")
    with _malformed("chat.completion"):
        drafts = [
            _Draft(
                text=choice.message.content or "",
                finish_reason=choice.finish_reason,
                logprobs=_chat_logprobs(choice.logprobs, options),
            )
            for choice in response.choices
        ]
        return _batch(drafts, response.usage, response.model, options)


def parse_completion(response: object, options: ParseOptions) -> Batch:
    """Parse a legacy ``text_completion`` response (logprobs as parallel lists).

    Raises:
        MalformedResponse: the response is not a completion or misses required fields.
    """
    if not isinstance(response, Completion):
        raise MalformedResponse(f"expected a text_completion object, got {_show(response)}")
    with _malformed("text_completion"):
        drafts = [
            _Draft(
                text=choice.text or "",
                finish_reason=choice.finish_reason,
                logprobs=_legacy_logprobs(choice.logprobs, options),
            )
            for choice in response.choices
        ]
        return _batch(drafts, response.usage, response.model, options)


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` non-negative integers differing by at most one."""
    if parts <= 0:
        return []
    base, extra = divmod(max(total, 0), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _chat_logprobs(
    logprobs: ChoiceLogprobs | None, options: ParseOptions
) -> list[TokenLogprob] | None:
    if not options.logprobs or logprobs is None or logprobs.content is None:
        return None
    return [
        TokenLogprob(
            token=item.token,
            logprob=item.logprob,
            top={alt.token: alt.logprob for alt in item.top_logprobs or []}
            if options.top_logprobs
            else None,
        )
        for item in logprobs.content
    ]


def _legacy_logprobs(logprobs: Logprobs | None, options: ParseOptions) -> list[TokenLogprob] | None:
    if not options.logprobs or logprobs is None or logprobs.tokens is None:
        return None
    values = logprobs.token_logprobs or []
    tops: Sequence[dict[str, float] | None] = logprobs.top_logprobs or [None] * len(values)
    if not len(logprobs.tokens) == len(values) == len(tops):
        raise MalformedResponse("logprobs: tokens, token_logprobs, top_logprobs lengths differ")
    return [
        TokenLogprob(
            token=token, logprob=value, top=dict(top or {}) if options.top_logprobs else None
        )
        for token, value, top in zip(logprobs.tokens, values, tops, strict=True)
    ]


def _batch(
    drafts: list[_Draft], usage: CompletionUsage | None, model: str | None, options: ParseOptions
) -> Batch:
    completion_tokens = usage.completion_tokens if usage is not None else None
    known = [len(d.logprobs) if d.logprobs is not None else None for d in drafts]
    unknown = sum(1 for k in known if k is None)
    rest = (completion_tokens or 0) - sum(k for k in known if k is not None)
    shares = iter(split_evenly(rest, unknown))
    candidates = [
        Candidate(
            text=d.text,
            tokens=k if k is not None else next(shares),
            logprobs=d.logprobs,
            finish_reason=d.finish_reason,
            model=model or options.model,
            backend=options.backend,
        )
        for d, k in zip(drafts, known, strict=True)
    ]
    if completion_tokens is None:
        completion_tokens = sum(c.tokens for c in candidates)
    prompt_tokens = usage.prompt_tokens if usage is not None else 0
    return Batch(candidates, int(prompt_tokens or 0), int(completion_tokens))


@contextmanager
def _malformed(what: str) -> Iterator[None]:
    """Turn the errors a half-built response model raises into ``MalformedResponse``."""
    try:
        yield
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        raise MalformedResponse(f"{what}: {type(exc).__name__}: {exc}") from exc


def _show(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:200]}{'...' if len(text) > 200 else ''}"

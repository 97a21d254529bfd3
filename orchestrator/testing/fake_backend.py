"""FakeBackend: a real ``Backend`` with scripted or seeded-random completions.

Like httpx's ``MockTransport`` it implements the real contract, so tests exercise the same code
paths as production (meter, trace, strategies) without a model. It supports:

- answers drawn from a weighted distribution (``answers={"42": 0.6, "41": 0.4}``), or a list
  cycled in order, or a ``script(request, index) -> text`` callable for full control of the text;
- per-token logprobs with top alternatives (deterministic from the seed), which a
  ``token_logprobs(request, index, logprobs) -> list[TokenLogprob] | None`` callable may
  replace (None: a reply without logprobs, as a server that drops them);
- latency, a per-call ``timeout`` (``BackendTimeout`` when the latency exceeds it), injected
  failures (by call index or probability), and returning fewer candidates than asked
  (``short_n``), to test top-up and failure handling.

It keeps the ``Backend`` contract as a real model server does (the backend conformance suite,
``orchestrator.testing.backend_suite``, checks it):

- Tokens are the words of the text (split on ``" "``); ``max_tokens`` cuts the text to that
  many words (finish reason ``length``).
- ``stop``: the text is cut before the first occurrence of any stop string, which is not
  included (finish reason ``stop``), unless ``max_tokens`` cuts it first.
- Capabilities are honoured: a request asking for logprobs, more ``top_logprobs`` than declared,
  or prefix continuation that ``capabilities`` do not declare is refused with
  ``CapabilityError`` before anything happens (not counted in ``calls``); logprobs are returned
  only when asked for.
- Prefix continuation (``continue_final``): only the continuation is returned. The text the
  script (or the default) produces is taken as the whole assistant message when it starts with
  the partial message, and the fake returns the rest; any other text is the continuation itself.

Determinism: the completions of a call depend only on the seed, the prompt and how many calls
with that prompt came before, not on task scheduling.

The ``fake`` backend kind (``kind: fake`` in a backends file) is ``fake_kind``, registered
through the package's ``ttc.backends`` entry point (production code never imports this module).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from orchestrator.backends.base import (
    Backend,
    Capabilities,
    Generation,
    GenerationRequest,
    Pricing,
)
from orchestrator.errors import BackendTimeout, BackendUnavailable, CapabilityError
from orchestrator.types import Candidate, TokenLogprob

if TYPE_CHECKING:
    from orchestrator.backends.config import BackendConfig

Script = Callable[[GenerationRequest, int], str]
"""``(request, sample index) -> text``: the completion text of one sample (before any cut)."""

TokenLogprobs = Callable[[GenerationRequest, int, list[TokenLogprob]], list[TokenLogprob] | None]
"""``(request, sample index, default logprobs) -> logprobs``: one entry per token, or None.

Called only when the request asks for logprobs (which the capabilities then declare), with the
fake's default (seeded) logprobs of the tokens that are returned (after the ``stop`` and
``max_tokens`` cuts): one ``TokenLogprob`` per token, ``top`` filled when ``top_logprobs`` was
asked for. Return them changed, replaced (one entry per token) or None."""

FULL = Capabilities(logprobs=True, top_logprobs=20, prefix_continuation=True, native_n=True)


def default_text(answer: str) -> str:
    """The completion text the fake uses for an answer."""
    return (
        f"Let me work this out step by step. The result is {answer}. "
        f"The answer is \\boxed{{{answer}}}."
    )


class FakeBackend(Backend):
    """A seeded, scriptable backend for tests and benchmarks (see the module docstring).

    Args:
        name: the backend's name (``Candidate.backend``, error messages).
        model: the model name reported in ``Candidate.model``.
        answers: a weighted distribution of answers, or a list cycled by sample index; the
            text is ``default_text(answer)``. Ignored when ``script`` is given.
        script: ``(request, index) -> text`` for full control of the text.
        texts: whole completion texts cycled by sample index (a backends file can give them,
            e.g. code for the ``unit_tests`` verifier). Ignored when ``script`` is given.
        token_logprobs: ``(request, index, default logprobs) -> logprobs`` to change the
            logprobs (default: seeded random values with ``"Yes"``/``"No"`` alternatives).
        seed: seeds answers, default logprobs and ``fail_rate``.
        latency: seconds each call waits before answering; or a callable giving them for a
            call index (0-based), e.g. ``lambda call: 5.0 if call == 0 else 0.0``.
        timeout: seconds a call may take; a longer ``latency`` raises ``BackendTimeout``
            after ``timeout`` seconds. None: no limit.
        fail_calls: indices of the calls (0-based) that raise ``BackendUnavailable``.
        fail_rate: probability that a call raises ``BackendUnavailable``.
        short_n: return at most this many candidates per call (as a server ignoring ``n``).
        prompt_tokens: the prompt tokens each call reports.
        capabilities: what the fake declares and honours (default: everything).
        pricing: USD per million tokens.
    """

    kind = "fake"

    def __init__(
        self,
        name: str = "fake",
        model: str = "fake-model",
        *,
        answers: Mapping[str, float] | Sequence[str] | None = None,
        script: Script | None = None,
        texts: Sequence[str] | None = None,
        token_logprobs: TokenLogprobs | None = None,
        seed: int = 0,
        latency: float | Callable[[int], float] = 0.0,
        timeout: float | None = None,
        fail_calls: Iterable[int] = (),
        fail_rate: float = 0.0,
        short_n: int | None = None,
        prompt_tokens: int = 20,
        capabilities: Capabilities | None = None,
        pricing: Pricing | None = None,
    ) -> None:
        super().__init__(name, model, capabilities or FULL, pricing)
        self.answers = answers if answers is not None else {"42": 0.7, "41": 0.2, "7": 0.1}
        self.script = script
        self.texts = list(texts) if texts else None
        self.token_logprobs = token_logprobs
        self.seed = seed
        self.latency = latency
        self.timeout = timeout
        self.fail_calls = set(fail_calls)
        self.fail_rate = fail_rate
        self.short_n = short_n
        self.prompt_tokens = prompt_tokens
        self.calls = 0
        self.requests: list[GenerationRequest] = []
        self._per_prompt: Counter[str] = Counter()
        self._served: Counter[str] = Counter()
        self._fail_rng = random.Random(f"fail:{seed}")

    async def generate(self, request: GenerationRequest) -> Generation:
        """Sample ``request.n`` completions (at most ``short_n``); see the module docstring.

        Raises:
            CapabilityError: the request needs a capability the fake does not declare.
            BackendTimeout: ``latency`` exceeds ``timeout``.
            BackendUnavailable: an injected failure (``fail_calls``, ``fail_rate``).
        """
        self._check_capabilities(request)
        call = self.calls
        self.calls += 1
        self.requests.append(request)
        await self._wait(self.latency(call) if callable(self.latency) else self.latency)
        if call in self.fail_calls or (self.fail_rate and self._fail_rng.random() < self.fail_rate):
            raise BackendUnavailable("injected failure", backend=self.name, status=503)
        key = self._key(request)
        rng = random.Random(f"{self.seed}:{key}:{self._per_prompt[key]}:{request.seed}")
        self._per_prompt[key] += 1
        n = request.n if self.short_n is None else min(request.n, self.short_n)
        start = self._served[key]
        self._served[key] += n
        cands = [self._candidate(request, rng, start + i) for i in range(n)]
        return Generation(
            candidates=cands,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=sum(c.tokens for c in cands),
            calls=1,
        )

    def _check_capabilities(self, request: GenerationRequest) -> None:
        missing = self.capabilities.missing(request.required_capabilities())
        if missing:
            raise CapabilityError(
                f"backend {self.name!r} (fake) does not declare {', '.join(missing)}; "
                "declare it in `capabilities` or do not ask for it"
            )

    async def _wait(self, latency: float) -> None:
        """Sleep ``latency`` seconds, raising ``BackendTimeout`` after ``timeout`` seconds."""
        if not latency:
            return
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.sleep(latency)
        except TimeoutError as exc:
            raise BackendTimeout(
                f"no answer within the timeout of {self.timeout}s (latency {latency}s)",
                backend=self.name,
            ) from exc

    def _key(self, request: GenerationRequest) -> str:
        text = request.prompt if request.prompt is not None else repr(request.messages)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _answer(self, rng: random.Random, index: int) -> str:
        if isinstance(self.answers, Mapping):
            names, weights = zip(*self.answers.items(), strict=True)
            return rng.choices(list(names), weights=list(weights))[0]
        return self.answers[index % len(self.answers)]

    def _candidate(self, request: GenerationRequest, rng: random.Random, index: int) -> Candidate:
        text = (
            self.script(request, index)
            if self.script
            else self.texts[index % len(self.texts)]
            if self.texts
            else default_text(self._answer(rng, index))
        )
        text = cut_at_stop(continuation(request, text), request.stop)
        all_words = text.split(" ")
        words = all_words[: request.max_tokens]
        return Candidate(
            text=" ".join(words),
            tokens=len(words),
            logprobs=self._logprobs(request, rng, index, words) if request.logprobs else None,
            finish_reason="length" if len(all_words) > request.max_tokens else "stop",
            model=self.model,
            backend=self.name,
        )

    def _logprobs(
        self, request: GenerationRequest, rng: random.Random, index: int, words: list[str]
    ) -> list[TokenLogprob] | None:
        logprobs = []
        for w in words:
            lp = -rng.random() * 1.5
            top = _top(w, lp, request.top_logprobs) if request.top_logprobs else None
            logprobs.append(TokenLogprob(token=w, logprob=lp, top=top))
        if self.token_logprobs is None:
            return logprobs
        out = self.token_logprobs(request, index, logprobs)
        if out is not None and len(out) != len(words):
            raise ValueError(
                f"FakeBackend {self.name!r}: token_logprobs returned {len(out)} entries for "
                f"{len(words)} tokens; return one per token (or None)"
            )
        return out


def _top(token: str, logprob: float, k: int) -> dict[str, float]:
    """The ``k`` best alternatives at a position: the token, then "Yes" and "No" below it."""
    alternatives = {token: logprob, "Yes": logprob - 1.0, "No": logprob - 2.0}
    return dict(list(alternatives.items())[:k])


def continuation(request: GenerationRequest, text: str) -> str:
    """``text`` without the partial assistant message it starts with (prefix continuation).

    Unchanged when the request does not continue a message or ``text`` does not start with it.
    """
    if not request.continue_final or not request.messages:
        return text
    prefix = request.messages[-1].content
    return text[len(prefix) :] if prefix and text.startswith(prefix) else text


def cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """``text`` cut before the first occurrence of any stop string (the stop string excluded)."""
    found = [i for i in (text.find(s) for s in stop or () if s) if i >= 0]
    return text[: min(found)] if found else text


def fake_kind(name: str, cfg: BackendConfig) -> FakeBackend:
    """The ``fake`` backend kind: ``cfg.options`` go to the FakeBackend's constructor.

    Registered through the ``ttc.backends`` entry point in pyproject.toml; ``capabilities``,
    ``model`` and ``pricing`` come from the config's own fields, as for the other kinds.
    """
    options = dict(cfg.options)
    if cfg.capabilities is not None:  # the declared override, as for the other kinds
        options["capabilities"] = cfg.capabilities
    return FakeBackend(name=name, model=cfg.model or "fake-model", pricing=cfg.pricing, **options)

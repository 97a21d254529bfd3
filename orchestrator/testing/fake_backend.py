"""FakeBackend: a real ``Backend`` with scripted or seeded-random completions.

Like httpx's ``MockTransport`` it implements the real contract, so tests exercise the same code
paths as production (meter, trace, strategies) without a model. It supports:

- answers drawn from a weighted distribution (``answers={"42": 0.6, "41": 0.4}``), or a list
  cycled in order, or a ``script(request, index) -> text`` callable for full control;
- per-token logprobs with top alternatives (deterministic from the seed);
- latency, injected failures (by call index or probability), and returning fewer candidates
  than asked (``short_n``), to test top-up and failure handling.

Determinism: the completions of a call depend only on the seed, the prompt and how many calls
with that prompt came before, not on task scheduling.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

from orchestrator.backends.base import (
    Backend,
    Capabilities,
    Generation,
    GenerationRequest,
    Pricing,
)
from orchestrator.errors import BackendUnavailable
from orchestrator.types import Candidate, TokenLogprob

Script = Callable[[GenerationRequest, int], str]

FULL = Capabilities(logprobs=True, top_logprobs=20, prefix_continuation=True, native_n=True)


def default_text(answer: str) -> str:
    """The completion text the fake uses for an answer."""
    return (
        f"Let me work this out step by step. The result is {answer}. "
        f"The answer is \\boxed{{{answer}}}."
    )


class FakeBackend(Backend):
    """A seeded, scriptable backend for tests and benchmarks."""

    kind = "fake"

    def __init__(
        self,
        name: str = "fake",
        model: str = "fake-model",
        *,
        answers: Mapping[str, float] | Sequence[str] | None = None,
        script: Script | None = None,
        seed: int = 0,
        latency: float = 0.0,
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
        self.seed = seed
        self.latency = latency
        self.fail_calls = set(fail_calls)
        self.fail_rate = fail_rate
        self.short_n = short_n
        self.prompt_tokens = prompt_tokens
        self.calls = 0
        self.requests: list[GenerationRequest] = []
        self._per_prompt: Counter[str] = Counter()
        self._served: Counter[str] = Counter()
        self._fail_rng = random.Random(f"fail:{seed}")

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
            self.script(request, index) if self.script else default_text(self._answer(rng, index))
        )
        all_words = text.split(" ")
        words = all_words[: request.max_tokens]
        text = " ".join(words)
        logprobs = None
        if request.logprobs:
            logprobs = []
            for w in words:
                lp = -rng.random() * 1.5
                top = {w: lp, "Yes": lp - 1.0, "No": lp - 2.0} if request.top_logprobs else None
                logprobs.append(TokenLogprob(token=w, logprob=lp, top=top))
        finish = "length" if len(all_words) > request.max_tokens else "stop"
        return Candidate(
            text=text,
            tokens=len(words),
            logprobs=logprobs,
            finish_reason=finish,
            model=self.model,
            backend=self.name,
        )

    async def generate(self, request: GenerationRequest) -> Generation:
        call = self.calls
        self.calls += 1
        self.requests.append(request)
        if self.latency:
            await asyncio.sleep(self.latency)
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

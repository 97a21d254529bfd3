"""``self_eval``: the model judges a candidate with a one-token Yes/No probe.

After the problem's messages and the candidate as the assistant turn, the verifier asks a fixed
question and reads the top-k logprobs of ONE generated token (Manvi, Singh, Ermon 2024; see
ALGORITHMS.md, "Adaptive self-evaluation"):

- ``correctness`` (default): "Is the answer above correct? Answer Yes or No."; the score is
  ``P(Yes) / (P(Yes) + P(No))``.
- ``capability``: "Would you do better if you started over? Answer Yes or No."; the score is
  ``P(No) / (P(Yes) + P(No))``, the predicted chance that a fresh sample cannot beat this one.

``P(Yes)`` sums the probabilities of every top-k token that reads "yes" once whitespace, the
tokenizer's word markers (``Ġ``, ``▁``), surrounding punctuation and case are dropped (``Yes``,
`` Yes``, ``yes``, ``YES``, ...); ``P(No)`` likewise. When neither appears in the top k the
candidate gets ``fallback_score`` with ``details["fallback"] = True``.

Where the probe backend has ``prefix_continuation`` the probe continues the candidate's own
assistant message (``candidate.text + "\\n\\n" + question + "\\nAnswer:"``, ``continue_final``),
so that with prefix caching the probe costs about one token of compute (vLLM reuses whole KV
blocks, 128 tokens on CPU, as far as the re-tokenized candidate matches the sampled token ids);
otherwise the question is a new user turn after the candidate. Every probe is
``max_tokens=1``, ``temperature=0`` and goes through ``ctx.generate``, so it is charged to the
run's budget and traced as a backend span inside the verifier span.

Contract and failure behaviour:

- The probe backend (``backend``; None = the run's default, not necessarily the candidates'
  sampling backend) must offer logprobs with ``top_logprobs >= top_logprobs``: ``score`` raises
  ``CapabilityError`` naming the missing capability before any call. ``needs`` stays empty: the
  candidates themselves need nothing from their sampling backend.
- A failed candidate scores 0 without a call (``details["failed"] = True``).
- When the budget refuses a probe (``BudgetExhausted``) the candidate gets ``fallback_score``
  with ``details["budget_exhausted"] = True``; the run's meter is already marked exhausted, so
  the run's Result says ``budget_exhausted`` and the strategy still picks among its candidates.
- When a probe fails (``BackendError``) the candidate gets ``fallback_score`` with
  ``details["error"]``; ``CancelledError`` always propagates.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Literal

from pydantic import Field

from orchestrator.backends.base import Capabilities, GenerationRequest
from orchestrator.context import RunContext
from orchestrator.errors import BackendError, BudgetExhausted, CapabilityError
from orchestrator.registry import verifiers
from orchestrator.trust import tuning
from orchestrator.types import Candidate, Message, Problem, Score, TokenLogprob
from verifiers.base import Verifier, VerifierConfig

Mode = Literal["correctness", "capability"]

DEFAULT_QUESTIONS: dict[str, str] = {
    "correctness": "Is the answer above correct? Answer Yes or No.",
    "capability": "Would you do better if you started over? Answer Yes or No.",
}
"""The probe question of each mode when ``question`` is not set."""

ANSWER_CUE = "\nAnswer:"
"""Appended after the question in the continued assistant message, so the next token is the
verdict."""

_MARKERS = " \t\n\r\u0120\u2581\u010a"  # whitespace and BPE / SentencePiece word markers
_PUNCT = ".,!:;\"'*"


class SelfEvalConfig(VerifierConfig):
    """``self_eval`` options."""

    backend: str | None = Field(
        None,
        description="backend that runs the probe; None = the run's default backend",
        json_schema_extra=tuning(),
    )
    mode: Mode = Field(
        "correctness",
        description="correctness: score P(Yes); capability: 'would you do better', score P(No)",
        json_schema_extra=tuning(),
    )
    question: str | None = Field(
        None,
        min_length=1,
        description="the Yes/No probe question; None = the mode's default",
        json_schema_extra=tuning(),
    )
    top_logprobs: int = Field(
        20,
        ge=1,
        le=20,
        description="alternatives read at the probe token",
        json_schema_extra=tuning(),
    )
    fallback_score: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="score when neither Yes nor No is in the top k",
        json_schema_extra=tuning(),
    )
    prefix_continuation: bool = Field(
        True,
        description="continue the candidate's assistant message when the backend can "
        "(False: always ask in a new user turn)",
        json_schema_extra=tuning(),
    )

    @property
    def probe_question(self) -> str:
        """The question asked: ``question`` or the mode's default."""
        return self.question or DEFAULT_QUESTIONS[self.mode]


def verdict_word(token: str) -> Literal["yes", "no"] | None:
    """``"yes"`` / ``"no"`` when ``token`` is a case, whitespace or marker variant, else None."""
    word = token.strip(_MARKERS + _PUNCT).lower()
    if word in ("yes", "no"):
        return "yes" if word == "yes" else "no"
    return None


def yes_no_probabilities(position: TokenLogprob) -> tuple[float, float]:
    """``(P(Yes), P(No))`` summed over the variants among the top-k alternatives of a position.

    The sampled token itself counts too when the backend left it out of ``top``.
    """
    top = dict(position.top or {})
    top.setdefault(position.token, position.logprob)
    mass = {"yes": 0.0, "no": 0.0}
    for token, logprob in top.items():
        word = verdict_word(token)
        if word is not None:
            mass[word] += math.exp(logprob)
    return mass["yes"], mass["no"]


@verifiers.register("self_eval")
class SelfEval(Verifier):
    """Self-evaluation by a one-token Yes/No probe (see the module docstring)."""

    Config = SelfEvalConfig

    async def score(
        self, problem: Problem, candidates: list[Candidate], ctx: RunContext
    ) -> list[Score]:
        """Probe every live candidate concurrently; one Score per candidate, in order.

        Raises:
            CapabilityError: the probe backend lacks logprobs or enough top logprobs.
        """
        continued = self._check_backend(ctx)
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self._score_one(problem, c, ctx, continued)) for c in candidates
            ]
        return [t.result() for t in tasks]

    def max_samples(self, candidates: int) -> int:
        """One one-token probe per candidate."""
        return candidates

    def backend_needs(self) -> list[tuple[str | None, Capabilities]]:
        """The probe backend needs logprobs with ``top_logprobs`` alternatives."""
        needed = Capabilities(logprobs=True, top_logprobs=self.config.top_logprobs)
        return [(self.config.backend, needed)]

    def _check_backend(self, ctx: RunContext) -> bool:
        """Raise CapabilityError unless the probe backend fits; True when it can continue."""
        backend = ctx.backend(self.config.backend)
        needed = Capabilities(logprobs=True, top_logprobs=self.config.top_logprobs)
        missing = backend.capabilities.missing(needed)
        if missing:
            raise CapabilityError(
                f"verifier 'self_eval' needs backend capabilities {', '.join(missing)}, which "
                f"backend {backend.name!r} ({type(backend).__name__}) does not offer; set the "
                "verifier's `backend` to one with logprobs, or lower `top_logprobs`"
            )
        return self.config.prefix_continuation and backend.capabilities.prefix_continuation

    def probe_request(
        self, problem: Problem, candidate: Candidate, continued: bool
    ) -> GenerationRequest:
        """The one-token probe for ``candidate`` (a continued assistant message or a new turn)."""
        question = self.config.probe_question
        messages = problem.messages()
        if continued:
            content = f"{candidate.text}\n\n{question}{ANSWER_CUE}"
            messages.append(Message(role="assistant", content=content))
        else:
            messages.append(Message(role="assistant", content=candidate.text))
            messages.append(Message(role="user", content=question))
        return GenerationRequest(
            messages=messages,
            continue_final=continued,
            n=1,
            temperature=0.0,
            max_tokens=1,
            logprobs=True,
            top_logprobs=self.config.top_logprobs,
        )

    async def _score_one(
        self, problem: Problem, candidate: Candidate, ctx: RunContext, continued: bool
    ) -> Score:
        if candidate.failed:
            return self._score(0.0, failed=True)
        request = self.probe_request(problem, candidate, continued)
        try:
            got = await ctx.generate(request, backend=self.config.backend, extract=False)
        except BudgetExhausted:
            return self._score(self.config.fallback_score, fallback=True, budget_exhausted=True)
        except BackendError as exc:
            return self._score(self.config.fallback_score, fallback=True, error=str(exc))
        return self._from_probe(got)

    def _from_probe(self, got: list[Candidate]) -> Score:
        """The score from the probe's first token (fallback without a Yes/No among the top k)."""
        logprobs = got[0].logprobs if got else None
        if not logprobs:
            return self._score(self.config.fallback_score, fallback=True, error="no logprobs")
        p_yes, p_no = yes_no_probabilities(logprobs[0])
        details: dict[str, Any] = {"p_yes": p_yes, "p_no": p_no, "token": logprobs[0].token}
        if p_yes + p_no <= 0.0:
            return self._score(self.config.fallback_score, fallback=True, **details)
        favourable = p_yes if self.config.mode == "correctness" else p_no
        return self._score(favourable / (p_yes + p_no), fallback=False, **details)

    def _score(self, value: float, **details: Any) -> Score:
        details.setdefault("p_yes", None)
        details.setdefault("p_no", None)
        details.setdefault("fallback", False)
        return Score(value=value, verifier=self.name, details={"mode": self.config.mode, **details})

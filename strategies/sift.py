"""``sift``: Stick to the Facts (Zeng et al. 2025, "SIFT: Grounding LLM Reasoning in Contexts
via Stickers"; see ALGORITHMS.md, "SIFT").

The model first writes a *Sticker* (the query's key conditions and exact question as numbered
facts), then answers twice: from the Sticker alone (a2p) and from the question plus the Sticker
(q_a2p). When both answers agree (after extraction and normalisation,
``orchestrator.answers.answers_equivalent``) that answer is returned; otherwise the Sticker is
refined and the pair asked again::

    P_Q = answer(q2p(Q))                                      # fallback only
    S1 = sticker(Q);              agree(a2p(S1), q_a2p(Q, S1)) -> stage 1
    S2 = forward(Q, S1);          agree(a2p(S2), pred = q_a2p(Q, S2)) -> stage 2
    S3 = forward(Q, inverse(pred)); agree(a2p(S3), q_a2p(Q, S3)) -> stage 3
    otherwise P_Q                                             -> "fallback"

At most 11 backend calls, one sample each (greedy by default, as in the paper); the a2p / q_a2p
pair of a stage runs concurrently. ``fallback`` chooses when P_Q is computed:

- ``"lazy"`` (default): only after stage 3 failed to agree, so a problem decided at stage 1
  costs 3 calls instead of 4 (a quarter less); the price is one more sequential call, after
  the ten of the stages, for the problems no stage decides.
- ``"eager"``: P_Q runs in the background from the start, concurrently with the stages, so the
  fallback adds no latency; it is always paid for (a decided run still waits for it), and its
  answer is always reported in ``details``; under a budget it is the first prediction made.

Contract: backend needs chat only (no logprobs or prefix continuation). A step that fails
(backend error or empty output) is skipped: without a Sticker, or without the stage-2 prediction
that inverse generation needs, the strategy goes straight to the fallback. When the budget
refuses a call, no further step starts and the best prediction so far is returned with
``budget_exhausted=True`` (``best_label``): P_Q, else the latest stage's q_a2p, else its a2p.

Trace: a ``step`` span per stage (``stage1``..``stage3``, ``fallback``) with its Sticker and
answers in the attrs, holding a ``step`` span per call (``sticker``, ``forward``, ``inverse``,
``a2p``, ``q_a2p``, ``q2p``) around the backend span. ``Result.details``: ``stage`` that decided
(1, 2, 3, ``"fallback"``, or None when the budget ran out first), ``picked`` (the label of the
returned prediction), ``stickers``, ``answers`` (by label: ``stage1.a2p``, ..., ``fallback``),
``calls`` (backend calls made, i.e. not refused by the budget) and ``fallback_mode``;
``error`` (the first backend error) when a call failed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from orchestrator.answers import answers_equivalent
from orchestrator.context import RunContext
from orchestrator.errors import BackendError, BudgetExhausted
from orchestrator.registry import strategies
from orchestrator.trust import tuning
from orchestrator.types import Candidate, Problem, Result, ScoredCandidate
from strategies import sift_prompts as prompts
from strategies.base import SamplingConfig, Strategy

MAX_CALLS = 11
"""The most backend calls one SIFT run makes: 1 (P_Q) + 3 + 3 + 4 (stages 1, 2, 3)."""

_CONDITIONS_RE = re.compile(r"(?im)^[\W_]*conditions\s*:")


class SiftConfig(SamplingConfig):
    """``sift`` options. Prompt templates: see ``strategies.sift_prompts``."""

    temperature: float = Field(
        0.0, ge=0.0, le=2.0, description="0 = greedy, as in the paper", json_schema_extra=tuning()
    )
    sticker_max_tokens: int | None = Field(
        None,
        ge=1,
        le=32768,
        description="max_tokens of Sticker calls (None = max_tokens)",
        json_schema_extra=tuning(),
    )
    fallback: Literal["eager", "lazy"] = Field(
        "lazy",
        description="compute P_Q up front, in parallel (eager), or only when needed",
        json_schema_extra=tuning(),
    )
    q2p_prompt: str = Field(
        prompts.Q2P, description="q2p template ({question})", json_schema_extra=tuning()
    )
    sticker_prompt: str = Field(
        prompts.STICKER, description="Sticker generation ({question})", json_schema_extra=tuning()
    )
    a2p_prompt: str = Field(
        prompts.A2P, description="a2p template ({sticker})", json_schema_extra=tuning()
    )
    q_a2p_prompt: str = Field(
        prompts.Q_A2P,
        description="q_a2p template ({question}, {sticker})",
        json_schema_extra=tuning(),
    )
    forward_prompt: str = Field(
        prompts.FORWARD, description="forward ({question}, {sticker})", json_schema_extra=tuning()
    )
    inverse_prompt: str = Field(
        prompts.INVERSE, description="inverse ({prediction})", json_schema_extra=tuning()
    )

    @field_validator(*prompts.REQUIRED)
    @classmethod
    def _template_has_its_placeholders(cls, value: str, info: ValidationInfo) -> str:
        needed = prompts.REQUIRED[str(info.field_name)]
        missing = prompts.missing_placeholders(value, needed)
        if missing:
            raise ValueError(
                f"the template must contain {', '.join(missing)} (needs "
                f"{', '.join('{' + n + '}' for n in needed)}; other braces are kept literally)"
            )
        return value


def clean_sticker(text: str) -> str | None:
    """The Sticker in a model's output, or None when nothing is left.

    Drops a reasoning block ending in ``</think>`` and anything before the last line that opens
    with a "Conditions:" header (e.g. "Here is the improved Sticker:"), then strips.
    """
    body = text.rsplit("</think>", 1)[-1]
    heads = list(_CONDITIONS_RE.finditer(body))
    if heads:
        body = body[heads[-1].start() :]
    return body.strip() or None


def agree(a: Candidate | None, b: Candidate | None) -> bool:
    """Whether two predictions reached the same extracted answer (a missing one never agrees)."""
    if a is None or b is None:
        return False
    return answers_equivalent(a.answer, b.answer)


def _rank(label: str) -> tuple[int, int]:
    """Preference of a prediction label: P_Q first, then later stages, q_a2p before a2p."""
    if label == "fallback":
        return (4, 0)
    stage, _, role = label.partition(".")
    return (int(stage.removeprefix("stage")), 1 if role == "q_a2p" else 0)


def best_label(predictions: Mapping[str, Candidate]) -> str | None:
    """The prediction to return when no stage agreed: answered ones first, then ``_rank``."""
    if not predictions:
        return None
    return max(predictions, key=lambda k: (predictions[k].answer is not None, _rank(k)))


@dataclass
class _Run:
    """The state of one run (never kept on the strategy)."""

    problem: Problem
    ctx: RunContext
    stickers: dict[str, str] = field(default_factory=dict)
    answers: dict[str, str | None] = field(default_factory=dict)
    predictions: dict[str, Candidate] = field(default_factory=dict)
    calls: int = 0
    exhausted: bool = False
    error: str | None = None


@strategies.register("sift")
class Sift(Strategy):
    """SIFT: answer from a Sticker and from question + Sticker; refine the Sticker until agreed."""

    Config = SiftConfig

    def max_samples(self) -> int:
        """At most 11 calls of one sample (the module docstring's procedure)."""
        return MAX_CALLS

    async def run(self, problem: Problem, ctx: RunContext) -> Result:
        run = _Run(problem, ctx)
        if self.config.fallback == "eager":
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._fallback(run))
                stage = await self._stages(run)
        else:
            stage = await self._stages(run)
            if stage is None and not run.exhausted:
                await self._fallback(run)
        return self._result(run, stage)

    async def _stages(self, run: _Run) -> int | None:
        """Stages 1-3 in order; the number of the stage whose pair agreed, or None."""
        for stage in (1, 2, 3):
            if run.exhausted:
                return None
            with run.ctx.trace.span(f"stage{stage}", kind="step") as span:
                sticker = await self._stage_sticker(run, stage)
                span.set(sticker=sticker)
                if sticker is None:
                    return None
                run.stickers[f"stage{stage}"] = sticker
                a2p, q_a2p = await self._pair(run, stage, sticker)
                agreed = agree(a2p, q_a2p)
                span.set(
                    a2p=a2p.answer if a2p else None,
                    q_a2p=q_a2p.answer if q_a2p else None,
                    consensus=agreed,
                )
                if agreed:
                    return stage
        return None

    async def _stage_sticker(self, run: _Run, stage: int) -> str | None:
        """S1 from the question; S2 = forward(Q, S1); S3 = forward(Q, inverse(stage-2 q_a2p))."""
        cfg, question = self.config, run.problem.question
        if stage == 1:
            return await self._sticker(run, "sticker", cfg.sticker_prompt, question=question)
        draft = run.stickers["stage1"]
        if stage == 3:
            pred = run.predictions.get("stage2.q_a2p")
            if pred is None:
                return None
            inverse = await self._sticker(run, "inverse", cfg.inverse_prompt, prediction=pred.text)
            if inverse is None or run.exhausted:
                return None
            draft = run.stickers["stage3_inverse"] = inverse
        return await self._sticker(
            run, "forward", cfg.forward_prompt, question=question, sticker=draft
        )

    async def _pair(
        self, run: _Run, stage: int, sticker: str
    ) -> tuple[Candidate | None, Candidate | None]:
        """a2p(S) and q_a2p(Q, S), concurrently."""
        cfg, question = self.config, run.problem.question
        async with asyncio.TaskGroup() as tg:
            a2p = tg.create_task(
                self._predict(run, f"stage{stage}.a2p", "a2p", cfg.a2p_prompt, sticker=sticker)
            )
            q_a2p = tg.create_task(
                self._predict(
                    run,
                    f"stage{stage}.q_a2p",
                    "q_a2p",
                    cfg.q_a2p_prompt,
                    question=question,
                    sticker=sticker,
                )
            )
        return a2p.result(), q_a2p.result()

    async def _fallback(self, run: _Run) -> None:
        """P_Q = q2p(Q), in its own span."""
        with run.ctx.trace.span("fallback", kind="step", mode=self.config.fallback) as span:
            pq = await self._predict(
                run, "fallback", "q2p", self.config.q2p_prompt, question=run.problem.question
            )
            span.set(answer=pq.answer if pq else None)

    async def _sticker(self, run: _Run, role: str, template: str, **fields: str) -> str | None:
        """One Sticker call (generation, forward or inverse); None when it gave no Sticker."""
        with run.ctx.trace.span(role, kind="step") as span:
            cand = await self._call(run, prompts.render(template, **fields), sticker=True)
            sticker = clean_sticker(cand.text) if cand else None
            span.set(sticker=sticker)
        return sticker

    async def _predict(
        self, run: _Run, label: str, role: str, template: str, **fields: str
    ) -> Candidate | None:
        """One prediction call, recorded under ``label``; None when it failed."""
        with run.ctx.trace.span(role, kind="step", label=label) as span:
            cand = await self._call(run, prompts.render(template, **fields), sticker=False)
            span.set(answer=cand.answer if cand else None)
        if cand is not None:
            run.predictions[label] = cand
            run.answers[label] = cand.answer
        return cand

    async def _call(self, run: _Run, content: str, *, sticker: bool) -> Candidate | None:
        """One sample of ``content`` as the user turn; None when refused, failed or empty.

        Exactly one ``ctx.generate`` (no top-up), so a run never exceeds ``MAX_CALLS``. Sticker
        calls skip answer extraction and the ``stop`` sequences.
        """
        cfg = self.config
        request = cfg.request(
            run.problem.model_copy(update={"question": content}),
            n=1,
            max_tokens=(cfg.sticker_max_tokens or cfg.max_tokens) if sticker else cfg.max_tokens,
            stop=None if sticker else cfg.stop,
        )
        try:
            got = await run.ctx.generate(request, cfg.backend, extract=not sticker)
        except BudgetExhausted:
            run.exhausted = True
            return None
        except BackendError as exc:
            run.calls += 1
            run.error = run.error or str(exc)
            return None
        run.calls += 1
        return next((c for c in got if not c.failed), None)

    def _result(self, run: _Run, stage: int | None) -> Result:
        """The decided stage's q_a2p, P_Q, or the best prediction so far."""
        decided: int | str | None = stage
        if stage is not None:
            label: str | None = f"stage{stage}.q_a2p"
        else:
            decided = None if run.exhausted else "fallback"
            label = best_label(run.predictions)
        chosen = run.predictions.get(label) if label else None
        details: dict[str, Any] = {
            "stage": decided,
            "picked": label,
            "stickers": run.stickers,
            "answers": run.answers,
            "calls": run.calls,
            "fallback_mode": self.config.fallback,
        }
        if run.error:
            details["error"] = run.error
        return Result(
            answer=chosen.answer if chosen else None,
            candidate=chosen,
            candidates=[ScoredCandidate(candidate=c) for c in run.predictions.values()],
            budget_exhausted=run.exhausted,
            details=details,
        )

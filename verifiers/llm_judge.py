"""``llm_judge``: a model (any configured backend) grades the candidates.

Two modes:

- ``pointwise``: each candidate alone, with ``pointwise_template`` ({question}, {answer}) asking
  for "Score: N", N in 0..10, parsed by ``parse_score`` ("Score: 7", "7/10", "7 out of 10",
  "**7**", a bare number; out-of-range numbers are rejected); the value is N / 10.
- ``pairwise``: candidates in pairs, with ``pairwise_template`` ({question}, {answer_a},
  {answer_b}) asking which is better; the verdict is parsed by ``parse_verdict``. With
  ``both_orders`` each pair is judged in both positions (against position bias). Up to
  ``max_round_robin`` distinct candidates play a full round robin; more play
  ``comparisons_per_candidate`` rounds of random pairing (the run's seeded RNG). The value is
  wins / decided comparisons; a candidate without any decided comparison gets 0.5 (no evidence).

Shared behaviour:

- Every judge call is ``ctx.generate(..., backend=backend, extract=False)``: charged to the run's
  budget and traced as a backend span inside the verifier span. Calls run concurrently
  (``asyncio.TaskGroup``); ``CancelledError`` always propagates.
- An unparseable reply is retried up to ``retries`` times in the same conversation, with the
  judge's reply and ``retry_prompt`` appended (a judge at temperature 0 would repeat itself on
  an identical prompt). Pointwise, a candidate still unparsed gets ``failure_score`` with
  ``details["parse_failed"] = True`` and the ``raw`` reply; pairwise, the comparison stays
  undecided (``details["undecided"]``), counting for neither side.
- ``reply_prefix`` (e.g. "Score:") prefills the judge's reply on backends with prefix
  continuation, which makes small models answer in the format; other backends ignore it.
- Candidates with the same extracted answer AND the same text are judged once; the copies get
  the first one's score (``details["duplicate_of"]``). Failed candidates score 0 without a call.
- A refused call (``BudgetExhausted``) or a failed one (``BackendError``) is not retried: pointwise
  the candidate gets ``failure_score`` with ``details["budget_exhausted"]`` / ``details["error"]``;
  pairwise the comparison is dropped. The run's meter records the exhaustion, so the Result says
  ``budget_exhausted`` while the strategy still picks among its candidates.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from random import Random
from typing import Any, Literal

from pydantic import Field, model_validator

from orchestrator.backends.base import GenerationRequest
from orchestrator.context import RunContext
from orchestrator.errors import BackendError, BudgetExhausted
from orchestrator.registry import verifiers
from orchestrator.trust import tuning
from orchestrator.types import Candidate, Message, Problem, Score
from verifiers.base import Verifier, VerifierConfig

POINTWISE_TEMPLATE = """\
Please act as an impartial judge and grade the answer to the question below.

[Question]
{question}

[Answer]
{answer}

Rate the correctness of the answer from 0 (completely wrong) to 10 (fully correct). \
Reply in the format "Score: N", where N is an integer from 0 to 10."""

PAIRWISE_TEMPLATE = """\
Please act as an impartial judge and decide which of two answers to the question below is \
better: first more correct, then clearer.

[Question]
{question}

[Answer A]
{answer_a}

[Answer B]
{answer_b}

Reply "Verdict: A" if answer A is better, or "Verdict: B" if answer B is better."""

RETRY_PROMPTS = {
    "pointwise": 'Reply only with "Score: N", where N is an integer from 0 to 10.',
    "pairwise": 'Reply only with "Verdict: A" or "Verdict: B".',
}

_FIELDS = {"pointwise": {"question", "answer"}, "pairwise": {"question", "answer_a", "answer_b"}}

# -- parsing -----------------------------------------------------------------------------------

_SCALE = re.compile(r"\(?\b(?:from\s+|between\s+)?[01]\s*(?:-|–|to|and)\s*10\b\)?", re.I)
_NUM = r"(-?\d+(?:\.\d+)?)"
_SCORE_PATTERNS = (
    re.compile(r"\b(?:score|rating|rate|grade)\b[^0-9\n]{0,30}?" + _NUM, re.I),
    re.compile(_NUM + r"\s*/\s*10\b"),
    re.compile(_NUM + r"\s+out\s+of\s+10\b", re.I),
    re.compile(r"\*\*\s*" + _NUM + r"\s*\*\*"),
    re.compile(r"^\W*?" + _NUM + r"\W*$"),
)
_VERDICT_PATTERNS = (
    re.compile(r"\bverdict\b\W{0,6}(?:answer\s+)?([AB])\b", re.I),
    re.compile(r"^\W*\(?([AB])\)?\W*$"),
    re.compile(
        r"\b(?:answer|response|option)\s*\(?([AB])\)?\s+is\s+(?:the\s+)?"
        r"(?:better|best|more\s+correct|correct)\b",
        re.I,
    ),
    re.compile(
        r"\bbetter\s+(?:answer|response|one|option)\s+is\s*:?\s*"
        r"(?:answer\s+|response\s+)?\(?([AB])\b",
        re.I,
    ),
    re.compile(r"\b([AB])\s+is\s+(?:the\s+)?better\b"),
    re.compile(r"^\W*([AB])(?:$|\s*[.:),\n])"),
)


def parse_score(text: str, low: float = 0.0, high: float = 10.0) -> float | None:
    """The judge's score in ``[low, high]`` from free text, or None when none can be found.

    Scale descriptions ("(0-10)", "from 0 to 10") are ignored; patterns are tried in order
    ("Score: 7" and "rating of 7", then "7/10", "7 out of 10", "**7**", a bare number) and the
    first in-range number wins; out-of-range numbers are rejected.
    """
    cleaned = _SCALE.sub(" ", text).strip()
    for pattern in _SCORE_PATTERNS:
        for match in pattern.finditer(cleaned):
            value = float(match.group(1))
            if low <= value <= high:
                return value
    return None


def parse_verdict(text: str) -> Literal["A", "B"] | None:
    """``"A"`` or ``"B"`` from a pairwise judge's reply, or None when it gives no clear verdict."""
    for pattern in _VERDICT_PATTERNS:
        match = pattern.search(text.strip())
        if match:
            return "A" if match.group(1).upper() == "A" else "B"
    return None


def template_fields(template: str) -> set[str]:
    """The ``{placeholder}`` names a ``str.format`` template uses.

    Raises:
        ValueError: a placeholder with a format spec or a conversion (``{answer:>99999999}``
            would build a huge string, and templates may come from a service client).
    """
    names = set()
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(f"placeholder {{{name}}} may not have a format spec or conversion")
        names.add(name)
    return names


# -- config ------------------------------------------------------------------------------------


class LLMJudgeConfig(VerifierConfig):
    """``llm_judge`` options."""

    mode: Literal["pointwise", "pairwise"] = Field("pointwise", json_schema_extra=tuning())
    backend: str | None = Field(
        None, description="judge backend; None = the run's default", json_schema_extra=tuning()
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0, json_schema_extra=tuning())
    max_tokens: int = Field(
        64, ge=1, le=4096, description="tokens per judge reply", json_schema_extra=tuning()
    )
    retries: int = Field(
        1, ge=0, le=5, description="re-asks after an unparseable reply", json_schema_extra=tuning()
    )
    failure_score: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="pointwise score when no verdict could be had",
        json_schema_extra=tuning(),
    )
    pointwise_template: str = Field(
        POINTWISE_TEMPLATE, description="uses {question}, {answer}", json_schema_extra=tuning()
    )
    pairwise_template: str = Field(
        PAIRWISE_TEMPLATE,
        description="uses {question}, {answer_a}, {answer_b}",
        json_schema_extra=tuning(),
    )
    retry_prompt: str | None = Field(
        None, description="the re-ask; None = the mode's default", json_schema_extra=tuning()
    )
    reply_prefix: str | None = Field(
        None,
        min_length=1,
        description='start of the judge\'s reply, e.g. "Score:" or "Verdict:" (only on backends '
        "with prefix continuation; ignored elsewhere)",
        json_schema_extra=tuning(),
    )
    both_orders: bool = Field(
        True, description="judge each pair as (A, B) and as (B, A)", json_schema_extra=tuning()
    )
    max_round_robin: int = Field(
        8, ge=2, description="full round robin up to this many", json_schema_extra=tuning()
    )
    comparisons_per_candidate: int = Field(
        4,
        ge=1,
        description="random-pairing rounds beyond max_round_robin candidates",
        json_schema_extra=tuning(),
    )

    @model_validator(mode="after")
    def _templates_have_their_fields(self) -> LLMJudgeConfig:
        for mode, want in _FIELDS.items():
            try:
                used = template_fields(getattr(self, f"{mode}_template"))
            except ValueError as exc:
                raise ValueError(f"{mode}_template is not a valid format string: {exc}") from None
            if used != want:
                raise ValueError(
                    f"{mode}_template must use exactly the placeholders "
                    f"{sorted(want)}, got {sorted(used)}"
                )
        return self


# -- the verifier ------------------------------------------------------------------------------


@dataclass
class Reply:
    """The outcome of one judge question (with its retries)."""

    value: Any
    raw: str
    attempts: int
    budget_exhausted: bool = False
    error: str | None = None


@dataclass
class Tally:
    """Pairwise results of one candidate."""

    wins: int = 0
    comparisons: int = 0
    undecided: int = 0


@verifiers.register("llm_judge")
class LLMJudge(Verifier):
    """An LLM grades candidates, pointwise (0-10) or pairwise (see the module docstring)."""

    Config = LLMJudgeConfig

    async def score(
        self, problem: Problem, candidates: list[Candidate], ctx: RunContext
    ) -> list[Score]:
        """One Score per candidate, in order; identical candidates are judged once."""
        ctx.backend(self.config.backend)  # an unknown judge backend fails before any call
        first = representatives(candidates)
        reps = sorted(set(first.values()))
        if self.config.mode == "pointwise":
            by_rep = await self._pointwise(problem, [candidates[i] for i in reps], ctx)
        else:
            by_rep = await self._pairwise(problem, candidates, reps, ctx)
        rep_scores = dict(zip(reps, by_rep, strict=True))
        out = []
        for i, c in enumerate(candidates):
            if c.failed:
                out.append(self._score(0.0, failed=True))
            elif first[i] == i:
                out.append(rep_scores[i])
            else:
                rep = rep_scores[first[i]]
                details = {**rep.details, "duplicate_of": first[i]}
                out.append(rep.model_copy(update={"details": details}))
        return out

    def max_samples(self, candidates: int) -> int:
        """One judge question per candidate (pointwise) or per game (pairwise, see
        ``schedule``), each asked up to ``1 + retries`` times."""
        cfg = self.config
        if cfg.mode == "pointwise":
            questions = candidates
        elif candidates <= cfg.max_round_robin:
            questions = candidates * (candidates - 1) // 2
        else:
            questions = cfg.comparisons_per_candidate * (candidates // 2)
        if cfg.mode == "pairwise" and cfg.both_orders:
            questions *= 2
        return questions * (1 + cfg.retries)

    # -- pointwise -----------------------------------------------------------------------------

    async def _pointwise(
        self, problem: Problem, cands: Sequence[Candidate], ctx: RunContext
    ) -> list[Score]:
        template = self.config.pointwise_template
        prompts = [template.format(question=problem.question, answer=c.text) for c in cands]
        replies = await self.ask_all(ctx, prompts, parse_score)
        return [self._pointwise_score(r) for r in replies]

    def _pointwise_score(self, reply: Reply) -> Score:
        extra: dict[str, Any] = {"raw": reply.raw, "attempts": reply.attempts}
        if reply.budget_exhausted:
            extra["budget_exhausted"] = True
        if reply.error is not None:
            extra["error"] = reply.error
        if reply.value is None:
            if reply.attempts:
                extra["parse_failed"] = True
            return self._score(self.config.failure_score, **extra)
        return self._score(reply.value / 10.0, judge_score=reply.value, **extra)

    # -- pairwise ------------------------------------------------------------------------------

    async def _pairwise(
        self, problem: Problem, candidates: list[Candidate], reps: list[int], ctx: RunContext
    ) -> list[Score]:
        games = schedule(reps, self.config, ctx.rng)
        template = self.config.pairwise_template
        prompts = [
            template.format(
                question=problem.question,
                answer_a=candidates[a].text,
                answer_b=candidates[b].text,
            )
            for a, b in games
        ]
        replies = await self.ask_all(ctx, prompts, parse_verdict)
        tallies = {i: Tally() for i in reps}
        for (a, b), reply in zip(games, replies, strict=True):
            if reply.budget_exhausted or reply.error is not None:
                continue  # not judged: counts for neither
            if reply.value is None:
                tallies[a].undecided += 1
                tallies[b].undecided += 1
                continue
            tallies[a].comparisons += 1
            tallies[b].comparisons += 1
            tallies[a if reply.value == "A" else b].wins += 1
        extra: dict[str, Any] = {}
        if any(r.budget_exhausted for r in replies):
            extra["budget_exhausted"] = True
        if errors := sum(r.error is not None for r in replies):
            extra["errors"] = errors
        return [self._pairwise_score(tallies[i], extra) for i in reps]

    def _pairwise_score(self, t: Tally, extra: dict[str, Any]) -> Score:
        value = t.wins / t.comparisons if t.comparisons else 0.5
        return self._score(
            value, wins=t.wins, comparisons=t.comparisons, undecided=t.undecided, **extra
        )

    # -- judge calls ---------------------------------------------------------------------------

    async def ask_all(
        self, ctx: RunContext, prompts: Sequence[str], parse: Callable[[str], Any]
    ) -> list[Reply]:
        """``ask`` every prompt concurrently; the replies in order."""
        can_prefill = ctx.backend(self.config.backend).capabilities.prefix_continuation
        prefill = self.config.reply_prefix if can_prefill else None
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self.ask(ctx, p, parse, prefill)) for p in prompts]
        return [t.result() for t in tasks]

    async def ask(
        self,
        ctx: RunContext,
        prompt: str,
        parse: Callable[[str], Any],
        prefill: str | None = None,
    ) -> Reply:
        """Ask the judge ``prompt``; re-ask up to ``retries`` times while ``parse`` gives None.

        With ``prefill`` the judge continues an assistant message starting with it, and the
        parsed (and reported) reply includes it. Never raises BudgetExhausted or BackendError:
        they end the question, recorded in the Reply. ``CancelledError`` propagates.
        """
        retry = self.config.retry_prompt or RETRY_PROMPTS[self.config.mode]
        messages = [Message(role="user", content=prompt)]
        raw, attempts = "", 0
        for attempt in range(self.config.retries + 1):
            if attempt:
                messages += [
                    Message(role="assistant", content=raw),
                    Message(role="user", content=retry),
                ]
            turn = [*messages, Message(role="assistant", content=prefill)] if prefill else messages
            request = GenerationRequest(
                messages=turn,
                continue_final=prefill is not None,
                n=1,
                temperature=self.config.temperature,
                max_tokens=self.config.max_tokens,
            )
            try:
                got = await ctx.generate(request, backend=self.config.backend, extract=False)
            except BudgetExhausted:
                return Reply(None, raw, attempts, budget_exhausted=True)
            except BackendError as exc:
                return Reply(None, raw, attempts, error=str(exc))
            attempts += 1
            raw = (prefill or "") + (got[0].text if got else "")
            value = parse(raw)
            if value is not None:
                return Reply(value, raw, attempts)
        return Reply(None, raw, attempts)

    def _score(self, value: float, **details: Any) -> Score:
        return Score(value=value, verifier=self.name, details={"mode": self.config.mode, **details})


def representatives(candidates: Sequence[Candidate]) -> dict[int, int]:
    """For each live candidate's index, the index of the first live one with the same answer
    and the same text (itself when it is the first)."""
    seen: dict[tuple[str | None, str], int] = {}
    out: dict[int, int] = {}
    for i, c in enumerate(candidates):
        if not c.failed:
            out[i] = seen.setdefault((c.answer, c.text), i)
    return out


def schedule(players: list[int], config: LLMJudgeConfig, rng: Random) -> list[tuple[int, int]]:
    """The games to judge as (A, B) index pairs.

    All pairs up to ``max_round_robin`` players, else ``comparisons_per_candidate`` rounds of
    random pairing (pairs already drawn are not repeated). With ``both_orders`` each pair is
    played as (i, j) and (j, i); without, the order alternates from pair to pair.
    """
    if len(players) <= config.max_round_robin:
        pairs = list(itertools.combinations(players, 2))
    else:
        drawn: set[tuple[int, int]] = set()
        pairs = []
        for _ in range(config.comparisons_per_candidate):
            order = rng.sample(players, len(players))
            for a, b in zip(order[::2], order[1::2], strict=False):
                pair = (min(a, b), max(a, b))
                if pair not in drawn:
                    drawn.add(pair)
                    pairs.append(pair)
    if config.both_orders:
        return [game for i, j in pairs for game in ((i, j), (j, i))]
    return [(i, j) if k % 2 == 0 else (j, i) for k, (i, j) in enumerate(pairs)]

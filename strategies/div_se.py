"""``div_se`` and ``idiv_se``: diversity of thought (Naik et al. 2023).

Naik et al., "Diversity of Thought Improves Reasoning Abilities of LLMs" (arXiv:2310.07088).
Both strategies pose the problem with k different *approaches* ("work backwards", "write an
equation", ...), optionally each with a *persona*, and take a majority vote of the k answers
(``strategies.voting.vote``):

- ``div_se`` (DIVerse reasoning path Self-Ensemble): k calls, one per approach
  (``approach_prompt``), at temperature 0, concurrently; a majority vote of the k answers. With
  ``inner``, each approach's prompt is solved by a child strategy instead of one sample.
- ``idiv_se`` (In-call DIV-SE): ONE call listing all k approaches (``combined_prompt``) and asking
  for one solution and answer per approach, in sections "Approach N: ... Answer: X". The k
  answers are parsed (``parse_approach_answers``) and voted. Cheaper than ``div_se``, but an error
  in one approach can carry over to the next.

Approaches: ``approaches`` (a list), else ``approaches_file`` (YAML written by ``ttc approaches``,
see ``strategies.div_se_approaches``), else ``MATH_APPROACHES`` (a module constant, equal to
configs/approaches/math.yaml, so the default does not depend on the working directory). The first
``k`` are used (default 5; the paper keeps 3-5). ``personas`` are paired with the approaches in
turn (approach i gets persona i mod len(personas)). Each prompt ends with an answer instruction
matching the problem's ``answer_format`` (``answer_hint``).

Contract: no backend capability is needed (a child's needs are checked through ``children()``);
failed samples do not vote; when the budget runs out, the answers gathered so far are voted and
the result says ``budget_exhausted``. Trace: ``div_se`` opens one ``step`` span per approach,
named by the approach, with ``index``, ``approach``, ``persona``, then ``answer`` and ``failed``;
``idiv_se`` opens one ``step`` span ``approaches`` with ``k``, then ``parse`` and ``answers``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from orchestrator.answers import extract_answer
from orchestrator.context import RunContext
from orchestrator.registry import strategies
from orchestrator.trust import privileged, tuning
from orchestrator.types import Candidate, Problem, Result, ScoredCandidate
from strategies.base import InnerStrategy, SamplingConfig, Strategy, StrategySpec, runs_of
from strategies.div_se_approaches import MATH_APPROACHES, load_approaches
from strategies.sampling import Collected, base_details, result_candidate, sample
from strategies.voting import vote

Pair = tuple[str, str | None]
ParseMethod = Literal["sections", "answer_lines", "fallback", "none"]

_HINTS = {
    "boxed": "the final answer written as \\boxed{X}",
    "gsm8k": 'a line "#### X", where X is the final answer',
    "choice": 'a line "Answer: X", where X is the letter of the chosen option',
}
_DEFAULT_HINT = 'a line "Answer: X", where X is the final answer'
_HEADER_RE = re.compile(
    r"^[ \t>#*_\-]*(?:approach|method|solution)\s*(?:#|no\.)?\s*(\d{1,2})\b[ \t*_:.)\-]*",
    re.IGNORECASE | re.MULTILINE,
)
_ANSWER_LINE_RE = re.compile(r"\banswer\b\s*(?:is\b|:)|\\boxed|^\s*####", re.IGNORECASE)
_MARKED_FORMATS = ("boxed", "gsm8k", "answer_is")


def answer_hint(fmt: str) -> str:
    """How a prompt asks for the final answer, for a problem's ``answer_format``."""
    return _HINTS.get(fmt, _DEFAULT_HINT)


def pair_approaches(
    approaches: Sequence[str], personas: Sequence[str] | None, k: int
) -> list[Pair]:
    """The first ``k`` approaches, each with persona ``i mod len(personas)`` (or None)."""
    chosen = list(approaches)[:k]
    if not personas:
        return [(a, None) for a in chosen]
    return [(a, personas[i % len(personas)]) for i, a in enumerate(chosen)]


def _persona_clause(persona: str | None) -> str:
    return f" Think as {persona} would." if persona else ""


def approach_prompt(question: str, approach: str, persona: str | None, fmt: str = "auto") -> str:
    """The DIV-SE prompt: the question, then one approach (and persona) to solve it with."""
    return (
        f"{question}\n\nApproach: {approach}.{_persona_clause(persona)}\n"
        f"Solve the problem with this approach, step by step, and end with {answer_hint(fmt)}."
    )


def combined_prompt(question: str, pairs: Sequence[Pair], fmt: str = "auto") -> str:
    """The IDIV-SE prompt: the question, then every approach, one section and answer each."""
    k = len(pairs)
    listed = "\n".join(
        f"Approach {i}: {a}.{_persona_clause(p)}" for i, (a, p) in enumerate(pairs, 1)
    )
    return (
        f"{question}\n\nSolve this problem {k} times, once with each of these approaches:\n"
        f'{listed}\n\nWrite one section per approach. Start each section with "Approach N:" '
        f"(N from 1 to {k}), solve the problem with that approach, and end the section with "
        f"{answer_hint(fmt)}."
    )


@dataclass(frozen=True)
class ParsedAnswers:
    """The per-approach answers found in an IDIV-SE completion.

    Attributes:
        answers: one answer (or None) per approach, in approach order.
        sections: the text read for each approach ("" when missing), same order.
        method: ``sections`` ("Approach N" headers), ``answer_lines`` (no headers: the i-th
            answer line is approach i), ``fallback`` (only the text's last answer) or ``none``.
        fallback: the answer of the whole text when ``method`` is ``fallback``, else None.
    """

    answers: list[str | None]
    sections: list[str]
    method: ParseMethod
    fallback: str | None = None


def _marked_answer(text: str, fmt: str) -> str | None:
    """An answer with an explicit marker (boxed, ####, "Answer:") for ``auto``; else ``fmt``'s."""
    formats = _MARKED_FORMATS if fmt == "auto" else (fmt,)
    return next((a for f in formats if (a := extract_answer(text, f)) is not None), None)


def _by_sections(text: str, k: int, fmt: str) -> tuple[list[str | None], list[str]]:
    """Answers of the "Approach N" sections: per N, the first section with a marked answer,
    else the first with any answer (``fmt``). Sections numbered outside 1..k are ignored."""
    found: dict[int, list[str]] = {}
    heads = list(_HEADER_RE.finditer(text))
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        if 1 <= (n := int(m.group(1))) <= k:
            found.setdefault(n, []).append(text[m.end() : end])
    answers: list[str | None] = []
    sections: list[str] = []
    for n in range(1, k + 1):
        bodies = found.get(n, [])
        picks = [(b, _marked_answer(b, fmt)) for b in bodies]
        picks += [(b, extract_answer(b, fmt)) for b in bodies]
        body, ans = next(
            ((b, a) for b, a in picks if a is not None), (bodies[0] if bodies else "", None)
        )
        answers.append(ans)
        sections.append(body.strip())
    return answers, sections


def parse_approach_answers(text: str, k: int, fmt: str = "auto") -> ParsedAnswers:
    """Find the k per-approach answers of an IDIV-SE completion.

    In order: "Approach N" sections (``_by_sections``; missing sections give None, extra or
    repeated ones are ignored); else two or more lines carrying an answer marker, the i-th for
    approach i (extra lines ignored); else the last answer of the whole text (``extract_answer``).
    """
    answers, sections = _by_sections(text, k, fmt)
    if any(a is not None for a in answers):
        return ParsedAnswers(answers, sections, "sections")
    lines = [line for line in text.splitlines() if _ANSWER_LINE_RE.search(line)]
    marked = [(ln.strip(), a) for ln in lines if (a := _marked_answer(ln, fmt)) is not None][:k]
    if len(marked) >= 2:  # a single answer line is no more than the text's last answer
        pad = k - len(marked)
        found: list[str | None] = [a for _, a in marked]
        return ParsedAnswers(
            found + [None] * pad, [s for s, _ in marked] + [""] * pad, "answer_lines"
        )
    last = extract_answer(text, fmt)
    method: ParseMethod = "fallback" if last is not None else "none"
    return ParsedAnswers([None] * k, [""] * k, method, last)


class DiversityConfig(SamplingConfig):
    """Options shared by ``div_se`` and ``idiv_se``."""

    temperature: float = Field(
        0.0, ge=0.0, le=2.0, description="0 in the paper", json_schema_extra=tuning()
    )
    approaches: list[str] | None = Field(
        None,
        min_length=1,
        description="the approaches (None: approaches_file or the default)",
        json_schema_extra=tuning(),
    )
    approaches_file: str | None = Field(
        None,
        description="YAML from `ttc approaches` ({approaches: [...]}) or a bare list",
        json_schema_extra=privileged("files", "reads a file of the server"),
    )
    k: int = Field(
        5,
        ge=1,
        le=20,
        description="use the first k approaches (all when fewer)",
        json_schema_extra=tuning(),
    )
    personas: list[str] | None = Field(
        None,
        min_length=1,
        description="personas, paired with the approaches in turn",
        json_schema_extra=tuning(),
    )

    @field_validator("approaches", "personas")
    @classmethod
    def _no_blank_items(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any(not item.strip() for item in v):
            raise ValueError("items must be non-empty strings")
        return v

    @model_validator(mode="after")
    def _one_approach_source(self) -> DiversityConfig:
        if self.approaches is not None and self.approaches_file is not None:
            raise ValueError("set either `approaches` or `approaches_file`, not both")
        return self


class DiversityStrategy(Strategy):
    """Base of ``div_se`` and ``idiv_se``: resolves the (approach, persona) pairs once."""

    Config = DiversityConfig

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        cfg = self.config
        source = cfg.approaches or (
            load_approaches(cfg.approaches_file) if cfg.approaches_file else MATH_APPROACHES
        )
        self.pairs: tuple[Pair, ...] = tuple(pair_approaches(source, cfg.personas, cfg.k))

    def info(self) -> dict[str, Any]:
        """Details every run reports: k and the approaches (and personas) used."""
        out: dict[str, Any] = {"k": len(self.pairs), "approaches": [a for a, _ in self.pairs]}
        if self.config.personas:
            out["personas"] = [p for _, p in self.pairs]
        return out


def _first_ok(got: Collected, why: str) -> Candidate:
    """The first live candidate, or a failed placeholder saying why there is none."""
    if got.ok:
        return got.ok[0]
    reason = got.error or ("budget exhausted" if got.budget_exhausted else why)
    return Candidate(text="", finish_reason="error", error=reason)


def _span_name(approach: str) -> str:
    """An approach's span name: the approach, cut to 60 characters."""
    return approach if len(approach) <= 60 else approach[:57] + "..."


def _voted(cands: list[Candidate]) -> tuple[int | None, dict[str, Any]]:
    """Majority vote: the index of the winning group's first member, and the vote details."""
    v = vote(cands)
    best = v.groups[v.winner][0] if v.winner is not None else None
    return best, {"votes": v.table(cands), "confidence": round(v.confidence, 6)}


class DivSEConfig(DiversityConfig):
    """``div_se`` options."""

    inner: StrategySpec | None = Field(
        None,
        description="a child strategy that solves each approach's prompt (None: one sample "
        "with this config's sampling fields, which a child ignores)",
        json_schema_extra=tuning(nested="strategy"),
    )


@strategies.register("div_se")
class DivSE(InnerStrategy, DiversityStrategy):
    """DIV-SE: one call per approach, in parallel, then a majority vote (Naik et al. 2023)."""

    Config = DivSEConfig

    def max_samples(self) -> int | None:
        """One sample (or child run) per approach."""
        return runs_of(len(self.pairs), self.inner)

    async def run(self, problem: Problem, ctx: RunContext) -> Result:
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self._solve(problem, ctx, i, pair))
                for i, pair in enumerate(self.pairs)
            ]
        gots = [t.result() for t in tasks]
        cands = [_first_ok(g, "no candidate returned") for g in gots]
        errors = [g.error for g in gots if g.error]
        merged = Collected(
            cands, any(g.budget_exhausted for g in gots), errors[0] if errors else None
        )
        best, votes = _voted(cands)
        details = {**self.info(), **base_details(merged), **votes}
        details["answers"] = [None if c.failed else c.answer for c in cands]
        return Result(
            answer=cands[best].answer if best is not None else None,
            candidate=cands[best] if best is not None else None,
            candidates=[ScoredCandidate(candidate=c) for c in cands],
            budget_exhausted=merged.budget_exhausted,
            details=details,
        )

    async def _solve(self, problem: Problem, ctx: RunContext, index: int, pair: Pair) -> Collected:
        """Solve ``problem`` with one approach, inside that approach's step span."""
        approach, persona = pair
        prompt = approach_prompt(problem.question, approach, persona, problem.answer_format)
        sub = problem.model_copy(update={"question": prompt})
        attrs: dict[str, Any] = {"index": index + 1, "approach": approach}
        if persona:
            attrs["persona"] = persona
        with ctx.trace.span(_span_name(approach), kind="step", **attrs) as span:
            if self.inner is not None:
                result = await self.inner(sub, ctx)
                error = result.details.get("error")
                got = Collected(
                    [result_candidate(result)],
                    result.budget_exhausted,
                    str(error) if error else None,
                    [result],
                )
            else:
                got = await sample(ctx, self.config.request(sub, n=1), self.config.backend)
            live = got.ok[0] if got.ok else None
            span.set(answer=live.answer if live else None, failed=live is None)
        return got


class IDivSEConfig(DiversityConfig):
    """``idiv_se`` options: one completion holds k solutions, hence the longer default."""

    max_tokens: int = Field(1024, ge=1, le=32768, json_schema_extra=tuning())


@strategies.register("idiv_se")
class IDivSE(DiversityStrategy):
    """IDIV-SE: one call solving with all k approaches; parse k answers and vote."""

    Config = IDivSEConfig

    def max_samples(self) -> int:
        """One completion holding every approach's solution."""
        return 1

    async def run(self, problem: Problem, ctx: RunContext) -> Result:
        fmt = problem.answer_format
        prompt = combined_prompt(problem.question, self.pairs, fmt)
        sub = problem.model_copy(update={"question": prompt})
        with ctx.trace.span("approaches", kind="step", k=len(self.pairs)) as span:
            got = await sample(ctx, self.config.request(sub, n=1), self.config.backend)
            whole = got.ok[0] if got.ok else None
            parsed = parse_approach_answers(whole.text, len(self.pairs), fmt) if whole else None
            if parsed is not None:
                span.set(parse=parsed.method, answers=parsed.answers)
        details = {**self.info(), **base_details(got)}
        if whole is None or parsed is None:
            return Result(
                answer=None,
                candidates=[ScoredCandidate(candidate=c) for c in got.candidates],
                budget_exhausted=got.budget_exhausted,
                details={**details, "votes": {}, "confidence": 0.0},
            )
        views = approach_views(whole, parsed)
        best, votes = _voted(views)
        details.update(votes, answers=parsed.answers, parse=parsed.method)
        if parsed.fallback is not None:
            details["fallback_answer"] = parsed.fallback
        answer = views[best].answer if best is not None else None
        return Result(
            answer=answer,
            candidate=whole.model_copy(update={"answer": answer}) if best is not None else None,
            candidates=[ScoredCandidate(candidate=c) for c in views],
            budget_exhausted=got.budget_exhausted,
            details=details,
        )


def approach_views(whole: Candidate, parsed: ParsedAnswers) -> list[Candidate]:
    """One voting candidate per approach: its section and answer (tokens 0: the completion's
    tokens are counted once, in the usage). Without sections: the whole completion, once."""
    if parsed.method in ("fallback", "none"):
        return [whole.model_copy(update={"answer": parsed.fallback})]
    return [
        whole.model_copy(update={"text": s, "answer": a, "tokens": 0, "logprobs": None})
        for s, a in zip(parsed.sections, parsed.answers, strict=True)
    ]

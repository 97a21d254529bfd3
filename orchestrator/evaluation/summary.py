"""The summary of one evaluation: accuracy with its uncertainty, coverage, and resources spent.

``summarize`` turns the ``ProblemRecord`` list of one strategy into a ``Summary``: accuracy with
a Wilson 95% interval, pass@k and majority@k curves when the strategy sampled several
candidates per problem (with the exponentiated power-law fit of pass@k), and token, call, cost
and time totals and means. It is deterministic: the Monte Carlo part of majority@k is seeded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from orchestrator.answers import answer_key
from orchestrator.evaluation.records import ProblemRecord, read_records
from orchestrator.stats import (
    PowerLawFit,
    coverage_ks,
    fit_power_law,
    majority_at_k,
    pass_at_k,
    wilson_interval,
)

SUMMARY_FILE = "summary.json"
RECORDS_FILE = "records.jsonl"
MAJORITY_SEED = 0
MAJORITY_SAMPLES = 200


class Summary(BaseModel):
    """The aggregate outcome of one strategy over a dataset.

    Attributes:
        label: the strategy label.
        problems: number of problems; correct: how many were answered correctly.
        accuracy: ``correct / problems`` (0.0 without problems).
        ci_low, ci_high: the Wilson 95% interval of the accuracy.
        answered: problems with a final answer (not None).
        pass_at_k: mean unbiased pass@k over problems, for k = 1, 2, 4, ... n_min (the fewest
            candidates of a problem with any); empty unless n_min >= 2. A problem without any
            candidate counts 0.
        majority_at_k: mean expected majority-vote accuracy over k candidates, same ks and
            same convention.
        power_law: the fit ``exp(a * k^b)`` of the pass@k curve, when it has 3 usable points.
        completion_tokens_total/_mean, prompt_tokens_total/_mean: tokens, summed and per problem.
        cached_tokens_total: completion tokens served by the completion cache.
        calls_total/_mean, cost_usd_total/_mean: backend calls and money, summed and per problem.
        budget_exhausted: problems where the budget stopped the strategy early.
        seconds_mean: mean wall time per problem (problems may run concurrently).
        wall_seconds: the evaluation's wall time, when known.
        tokens_per_second: freshly generated (not cached) completion tokens per wall second,
            when ``wall_seconds`` is known and positive.
        spec: the evaluation's settings as given by the caller (dataset, model, strategy...).
    """

    label: str
    problems: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    answered: int
    pass_at_k: dict[int, float] = Field(default_factory=dict)
    majority_at_k: dict[int, float] = Field(default_factory=dict)
    power_law: PowerLawFit | None = None
    completion_tokens_total: int = 0
    completion_tokens_mean: float = 0.0
    prompt_tokens_total: int = 0
    prompt_tokens_mean: float = 0.0
    cached_tokens_total: int = 0
    calls_total: int = 0
    calls_mean: float = 0.0
    cost_usd_total: float = 0.0
    cost_usd_mean: float = 0.0
    budget_exhausted: int = 0
    seconds_mean: float = 0.0
    wall_seconds: float | None = None
    tokens_per_second: float | None = None
    spec: dict[str, Any] | None = None

    @property
    def max_k(self) -> int | None:
        """The largest k of the pass@k curve, or None without one."""
        return max(self.pass_at_k) if self.pass_at_k else None


def canonical_answers(answers: Sequence[str | None]) -> list[str | None]:
    """One vote key per answer (``orchestrator.answers.answer_key``), None kept.

    Answers with equal normalised forms or equal numeric values share a key, so plain string
    equality on the result is what ``majority_at_k`` groups by. Unlike a strategy's own vote,
    no symbolic (math_verify) comparison is made: summarising 64 samples of 500 problems must
    take seconds, and math_verify can take seconds per pair on malformed model output.
    """
    return [answer_key(a) for a in answers]


def _check_candidates(rec: ProblemRecord) -> None:
    if len(rec.candidates) != len(rec.candidates_correct):
        raise ValueError(
            f"record {rec.id!r}: {len(rec.candidates)} candidates but "
            f"{len(rec.candidates_correct)} correctness flags"
        )


def _sampling_curves(
    records: Sequence[ProblemRecord],
) -> tuple[dict[int, float], dict[int, float]]:
    """Mean pass@k and majority@k over records, or two empty dicts when n_min < 2."""
    sizes = [len(r.candidates) for r in records if r.candidates]
    if not sizes or min(sizes) < 2:
        return {}, {}
    ks = coverage_ks(min(sizes))
    pass_sum = dict.fromkeys(ks, 0.0)
    major_sum = dict.fromkeys(ks, 0.0)
    for rec in records:
        n = len(rec.candidates)
        if n == 0:
            continue
        c = sum(rec.candidates_correct)
        keys = canonical_answers(rec.candidates)
        for k in ks:
            pass_sum[k] += pass_at_k(n, c, k)
            major_sum[k] += majority_at_k(
                keys, rec.candidates_correct, k, seed=MAJORITY_SEED, samples=MAJORITY_SAMPLES
            )
    total = len(records)
    return (
        {k: v / total for k, v in pass_sum.items()},
        {k: v / total for k, v in major_sum.items()},
    )


def summarize(
    records: Sequence[ProblemRecord],
    *,
    label: str,
    wall_seconds: float | None = None,
    spec: dict[str, Any] | None = None,
) -> Summary:
    """Aggregate the records of one strategy into a ``Summary`` (see its attributes).

    Every mean is per problem over all records. Candidates are compared for majority@k after
    grouping equivalent answers (``canonical_answers``). The result depends only on the
    arguments (the majority@k Monte Carlo uses a fixed seed).

    Raises:
        ValueError: when a record's ``candidates`` and ``candidates_correct`` differ in length.
    """
    for rec in records:
        _check_candidates(rec)
    problems = len(records)
    correct = sum(r.correct for r in records)
    low, high = wilson_interval(correct, problems)
    pass_curve, majority_curve = _sampling_curves(records)
    fit = fit_power_law(list(pass_curve), list(pass_curve.values())) if pass_curve else None

    def mean(total: float) -> float:
        return total / problems if problems else 0.0

    completion = sum(r.usage.completion_tokens for r in records)
    prompt = sum(r.usage.prompt_tokens for r in records)
    cached = sum(r.usage.cached_tokens for r in records)
    calls = sum(r.usage.calls for r in records)
    cost = sum(r.usage.cost_usd for r in records)
    rate = None
    if wall_seconds is not None and wall_seconds > 0:
        rate = (completion - cached) / wall_seconds
    return Summary(
        label=label,
        problems=problems,
        correct=correct,
        accuracy=mean(correct),
        ci_low=low,
        ci_high=high,
        answered=sum(r.answer is not None for r in records),
        pass_at_k=pass_curve,
        majority_at_k=majority_curve,
        power_law=fit,
        completion_tokens_total=completion,
        completion_tokens_mean=mean(completion),
        prompt_tokens_total=prompt,
        prompt_tokens_mean=mean(prompt),
        cached_tokens_total=cached,
        calls_total=calls,
        calls_mean=mean(calls),
        cost_usd_total=cost,
        cost_usd_mean=mean(cost),
        budget_exhausted=sum(r.budget_exhausted for r in records),
        seconds_mean=mean(sum(r.seconds for r in records)),
        wall_seconds=wall_seconds,
        tokens_per_second=rate,
        spec=spec,
    )


def load_summary_dir(path: Path) -> tuple[Summary, list[ProblemRecord]]:
    """The summary and records of one evaluation directory.

    Reads ``summary.json`` when present; otherwise recomputes the summary from
    ``records.jsonl``, labelled with the records' strategy when they all share one, else with
    the directory name (no wall time or spec is known then). The records are those of
    ``records.jsonl`` (an empty list when only ``summary.json`` exists).

    Raises:
        ValueError: when the directory holds neither file, or a file is damaged.
    """
    summary_file = path / SUMMARY_FILE
    records_file = path / RECORDS_FILE
    if not summary_file.is_file() and not records_file.is_file():
        raise ValueError(f"{path}: expected a directory holding {SUMMARY_FILE} or {RECORDS_FILE}")
    records = read_records(records_file)
    if summary_file.is_file():
        try:
            return Summary.model_validate_json(summary_file.read_bytes()), records
        except ValueError as exc:
            raise ValueError(f"{summary_file}: not a valid summary: {exc}") from None
    strategies = {r.strategy for r in records}
    label = strategies.pop() if len(strategies) == 1 else path.resolve().name
    return summarize(records, label=label), records

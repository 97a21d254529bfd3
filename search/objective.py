"""The search objective: one trial = one composition evaluated on the dev split, in rungs.

``Objective.__call__(trial)`` runs in Optuna's thread; the evaluation itself (the orchestrator,
its backends and the completion cache) lives on an asyncio loop in another thread and is reached
with ``asyncio.run_coroutine_threadsafe``. Per trial:

1. the composition is chosen define-by-run (``Space.compose``) and recorded (user attrs
   ``spec`` and ``composition``);
2. it is checked against its backends and its cost is estimated by a dry run on probe backends
   (``search.estimate``); a composition that does not fit the space's budget is *rejected*:
   pruned with the reason in ``rejected``, before any backend call;
3. it is evaluated by ``EvalRunner`` on growing prefixes of the dev split (the rungs, e.g. 10%,
   30%, 100%), resuming its own records, so each rung pays only for its new problems and the
   completion cache serves any sample seen before. After each rung but the last the pruner may
   stop it (``search.pruning``);
4. it returns ``(accuracy, cost)`` (multi mode) or ``accuracy - lambda * cost`` (single mode)
   and records ``constraints`` for the samplers' ``constraints_func``: the share of queries the
   budget cut short, and the largest mean-spend / limit ratio minus one (<= 0 is feasible).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import socket
import statistics
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import optuna

from orchestrator.errors import CapabilityError, ConfigError, RegistryError
from orchestrator.evaluation.harness import EvalRunner, EvalTarget
from orchestrator.evaluation.summary import Summary
from orchestrator.runner import Orchestrator
from orchestrator.types import Problem
from search.estimate import CostEstimate, estimate_cost, over_budget, spend_ratio
from search.pruning import stop_multi
from search.space import Space

__all__ = ["Objective", "SearchInterrupted", "one_line", "rung_order", "summary_cost"]

T = TypeVar("T")

RESET_ATTRS = (
    "interrupted",
    "rejected",
    "pruned_at",
    "accuracy",
    "cost",
    "problems",
    "rungs",
    "usage",
    "constraints",
    "estimate",
    "tokens_per_sample",
)
"""Trial attrs cleared when a trial starts: a retried trial inherits its original's attrs."""


class SearchInterrupted(Exception):
    """The search was interrupted (Ctrl-C, SIGTERM) during this trial; it is queued again."""


class TrialFailed(Exception):
    """Problems of this trial failed (backend errors); the trial is marked failed."""


def one_line(spec: dict[str, Any]) -> str:
    """A composition in one line: ``best_of_n(n=8, verifier=self_eval, inner=single(...))``."""
    parts = []
    for key, value in spec.items():
        if key == "strategy":
            continue
        if isinstance(value, dict) and "strategy" in value:
            value = one_line(value)
        elif isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in value.items())
        parts.append(f"{key}={value}")
    return f"{spec.get('strategy')}({', '.join(parts)})"


def summary_cost(s: Summary, measure: str) -> float:
    """Mean cost per query of an evaluation in the study's measure (``completion_tokens``,
    ``total_tokens``, ``usd`` or ``calls``)."""
    if measure == "completion_tokens":
        return s.completion_tokens_mean
    if measure == "total_tokens":
        return s.completion_tokens_mean + s.prompt_tokens_mean
    if measure == "usd":
        return s.cost_usd_mean
    return s.calls_mean


def rung_order(problems: list[Problem], seed: int) -> list[Problem]:
    """The dev problems in a seeded, stable pseudo-random order: rung k is its first share."""
    return sorted(problems, key=lambda p: hashlib.sha256(f"{seed}:{p.id}".encode()).digest())


def rung_sizes(total: int, rungs: list[float]) -> list[int]:
    """Problems per rung (increasing, distinct, the last = all)."""
    sizes: list[int] = []
    for share in rungs:
        k = min(total, max(1, math.ceil(share * total)))
        if not sizes or k > sizes[-1]:
            sizes.append(k)
    return sizes


@dataclass
class Objective:
    """Evaluates one trial. Built once per worker; called by ``study.optimize`` per trial.

    Args:
        space: the search space.
        orch: the started orchestrator (backends, completion cache) living on ``loop``.
        loop: the event loop the orchestrator lives on (in another thread).
        problems: the dev split.
        out_dir: where per-trial evaluation records go (``OUT/trial-N/``).
        concurrency: problems in flight per trial.
        seed: the evaluation seed (problem seeds and rung order).
        pruner_on: whether rungs may stop a trial early.
        say: prints one progress line.
    """

    space: Space
    orch: Orchestrator
    loop: asyncio.AbstractEventLoop
    problems: list[Problem]
    out_dir: Path
    concurrency: int = 8
    seed: int = 0
    pruner_on: bool = True
    say: Callable[[str], None] = print
    stopping: bool = False

    def __post_init__(self) -> None:
        self.ordered = rung_order(self.problems, self.seed)
        self.sizes = rung_sizes(len(self.ordered), self.space.file.rungs)
        self.mode = self.space.file.objective.mode
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._pending: Any = None

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the orchestrator's loop and wait; an interruption cancels it."""
        if self.stopping:
            coro.close()
            raise SearchInterrupted("the search is stopping")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        self._pending = fut
        try:
            return fut.result()
        except BaseException as exc:
            if self.stopping or isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
                fut.cancel()
                raise SearchInterrupted("interrupted") from None
            raise
        finally:
            self._pending = None

    def interrupt(self) -> None:
        """Stop: cancel the evaluation in flight (called from the loop's thread)."""
        self.stopping = True
        if self._pending is not None:
            self._pending.cancel()

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        spec = self.space.compose(trial)
        for key in RESET_ATTRS:
            trial.set_user_attr(key, None)  # a retried trial inherits its original's attrs
        trial.set_user_attr("spec", spec)
        trial.set_user_attr("composition", one_line(spec))
        trial.set_user_attr("worker", self.worker)
        try:
            est = self._estimate(trial, spec)
            self._evaluate(trial, spec, est)
        except SearchInterrupted:
            trial.set_user_attr("interrupted", True)
            trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            trial.study.stop()
            self.say(f"trial {trial.number}: interrupted; queued again for the next run")
            raise
        attrs = trial.user_attrs
        constrain(trial, attrs["constraints"])
        if self.mode == "multi":
            return attrs["accuracy"], attrs["cost"]
        return float(attrs["accuracy"] - self.space.file.objective.lam * attrs["cost"])

    def _tokens_per_sample(self, study: optuna.Study) -> int:
        seen = [
            t.user_attrs["tokens_per_sample"]
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("tokens_per_sample")
        ]
        if seen:
            return max(1, round(statistics.median(seen)))
        return self.space.file.estimate.tokens_per_sample

    def _reject(self, trial: optuna.Trial, reason: str, constraints: list[float]) -> None:
        trial.set_user_attr("rejected", reason)
        constrain(trial, constraints)
        self.say(f"trial {trial.number}: rejected before any call: {reason}")
        raise optuna.TrialPruned(reason)

    def _estimate(self, trial: optuna.Trial, spec: dict[str, Any]) -> CostEstimate | None:
        """Dry-run the composition; reject it (TrialPruned) when it is invalid for its backends
        or its estimate does not fit the budget. None when the dry run timed out."""
        probe = self.ordered[: self.space.file.estimate.problems]
        tps = self._tokens_per_sample(trial.study)
        try:
            est = self.call(estimate_cost(spec, self.orch, probe, tps))
        except (ConfigError, RegistryError, CapabilityError) as exc:
            self._reject(trial, f"invalid composition: {exc}", [1.0, 1.0])
            raise  # unreachable: _reject raises TrialPruned
        except TimeoutError:
            self.say(f"trial {trial.number}: no cost estimate (the dry run timed out)")
            return None
        trial.set_user_attr("estimate", est.as_dict())
        reason = over_budget(est, self.space.budget)
        if reason:
            ratio = spend_ratio(est.as_dict(), self.space.budget)
            self._reject(trial, reason, [1.0, ratio - 1.0])
        return est

    def _evaluate(
        self, trial: optuna.Trial, spec: dict[str, Any], est: CostEstimate | None
    ) -> None:
        label = f"trial-{trial.number}"
        rungs: list[dict[str, Any]] = []
        summary: Summary | None = None
        for i, k in enumerate(self.sizes):
            runner = EvalRunner(
                self.orch,
                self.ordered[:k],
                [EvalTarget(label, spec)],
                self.out_dir,
                budget=self.space.budget,
                concurrency=self.concurrency,
                resume=True,
                seed=self.seed,
                progress=False,
                report=False,
            )
            summary = self.call(runner.run())[0]
            if runner.failed:
                raise TrialFailed(f"{runner.failed} problem(s) failed (backend errors); see log")
            rung = {"problems": k, "accuracy": summary.accuracy, "cost": self._cost(summary)}
            rungs.append(rung)
            self._record(trial, summary, est, rungs)
            last = i == len(self.sizes) - 1
            if not last:
                self.say(
                    f"trial {trial.number}: rung {i + 1}/{len(self.sizes)}: {k} problems, "
                    f"accuracy {summary.accuracy:.3f}, {rung['cost']:,.4g} per query"
                )
            if not last and self.pruner_on and self._should_prune(trial, i, rung):
                trial.set_user_attr("pruned_at", i)
                constrain(trial, trial.user_attrs["constraints"])
                self.say(
                    f"trial {trial.number}: pruned after {k} problems at accuracy "
                    f"{summary.accuracy:.3f}, {rung['cost']:,.4g} per query"
                )
                raise optuna.TrialPruned(f"rung {i}")

    def _should_prune(self, trial: optuna.Trial, i: int, rung: dict[str, Any]) -> bool:
        if self.mode == "single":
            score = rung["accuracy"] - self.space.file.objective.lam * rung["cost"]
            trial.report(score, step=rung["problems"])
            return trial.should_prune()
        return stop_multi(trial.study, trial.number, i, rung["accuracy"], rung["cost"])

    def _cost(self, s: Summary) -> float:
        return summary_cost(s, self.space.file.objective.cost)

    def _record(
        self, trial: optuna.Trial, s: Summary, est: CostEstimate | None, rungs: list[dict[str, Any]]
    ) -> None:
        usage = {
            "completion_tokens": s.completion_tokens_mean,
            "prompt_tokens": s.prompt_tokens_mean,
            "calls": s.calls_mean,
            "usd": s.cost_usd_mean,
        }
        exhausted = s.budget_exhausted / s.problems if s.problems else 0.0
        constraints = [exhausted, spend_ratio(usage, self.space.budget) - 1.0]
        attrs: dict[str, Any] = {
            "accuracy": s.accuracy,
            "cost": self._cost(s),
            "problems": s.problems,
            "rungs": rungs,
            "usage": usage,
            "constraints": constraints,
        }
        if est is not None and est.completion_tokens > 0:
            measured = s.completion_tokens_mean / est.completion_tokens * est.tokens_per_sample
            attrs["tokens_per_sample"] = round(measured, 2)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)


CONSTRAINTS = ("budget_exhausted_share", "spend_over_limit")
"""The trial constraints the samplers see (<= 0 feasible): the share of queries the budget cut
short, and the largest mean spend / limit ratio minus one."""


def constrain(trial: optuna.Trial, values: list[float]) -> None:
    """Set the trial's constraints once, when its outcome is final (Optuna keeps the first)."""
    trial.set_user_attr("constraints", list(values))
    for key, value in zip(CONSTRAINTS, values, strict=True):
        trial.set_constraint(key, float(value))

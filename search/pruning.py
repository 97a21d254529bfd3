"""Pruning for the search: Optuna pruners (single objective) and a Pareto-aware median rule.

Optuna's pruners read ``trial.report`` values, which Optuna does not support for multi-objective
studies. So a multi-objective trial records each rung in its ``rungs`` user attribute and
``stop_multi`` decides: after rung ``i``, a trial stops when at least ``min_peers`` other trials
that reached rung ``i`` cost no more per query at that rung, and its accuracy there is below
their median. A composition is only stopped by cheaper-or-equal ones that do better, so a cheap
composition that might belong on the Pareto front is kept.
"""

from __future__ import annotations

import statistics
from typing import Literal

import optuna
from optuna.trial import TrialState

__all__ = ["PRUNERS", "make_pruner", "stop_multi"]

PRUNERS = ("median", "hyperband", "sha", "none")
PrunerName = Literal["median", "hyperband", "sha", "none"]


def make_pruner(name: str, min_resource: int, max_resource: int) -> optuna.pruners.BasePruner:
    """The Optuna pruner for single-objective studies. Steps are dev problems evaluated.

    Args:
        name: ``median`` (stop below the median of earlier trials at the same rung, after 4
            trials), ``hyperband`` / ``sha`` (successive halving, reduction factor 3), ``none``.
        min_resource: problems of the first rung; max_resource: of the last.
    """
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=min_resource, max_resource=max_resource, reduction_factor=3
        )
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")


def stop_multi(
    study: optuna.Study,
    number: int,
    rung: int,
    accuracy: float,
    cost: float,
    *,
    min_peers: int = 4,
) -> bool:
    """Whether trial ``number`` should stop after ``rung`` (multi-objective rule above)."""
    peers: list[float] = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        rungs = t.user_attrs.get("rungs") or []
        if t.number == number or len(rungs) <= rung:
            continue
        if rungs[rung]["cost"] <= cost:
            peers.append(float(rungs[rung]["accuracy"]))
    if len(peers) < min_peers:
        return False
    return accuracy < statistics.median(peers)

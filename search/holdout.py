"""Held-out evaluation of a study's front: ``ttc search test`` (dev vs test accuracy and cost).

The front's compositions run through ``EvalRunner`` on the split the search never saw (by default
the complement of the study's dev split), with the study's per-query budget and seed; records go
under ``OUT/trial-N/`` and a rerun resumes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from orchestrator.budget import Budget
from orchestrator.datasets import FIELD_MAPPING_KEYS, load_dataset
from orchestrator.errors import ConfigError
from orchestrator.evaluation.harness import EvalRunner, EvalTarget
from orchestrator.runner import Orchestrator
from orchestrator.types import Problem
from search.objective import summary_cost
from search.results import (
    _accuracy,
    _cell,
    _composition,
    _cost,
    _fmt_cost,
    _overlap,
    cost_unit,
    front,
    held_out_split,
    study_overview,
)

__all__ = ["dev_test_table", "test_front"]


async def test_front(
    study: optuna.Study,
    orch: Orchestrator,
    *,
    split: str | None = None,
    limit: int | None = None,
    out_dir: Path,
    concurrency: int = 4,
    progress: bool = True,
    trials: Sequence[FrozenTrial] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate the front's compositions (or ``trials``) on the held-out split.

    The dataset is the study's (its source and field mapping); ``split`` defaults to the
    complement of the study's dev split. One ``EvalRunner`` target per trial, labelled
    ``trial-N``, under the study's per-query budget and seed, with ``resume=True``: records in
    ``out_dir`` are kept and a rerun only runs what is missing. The caller owns ``orch``.

    Returns:
        One row per trial: ``trial``, ``composition``, ``dev_accuracy``, ``dev_problems``,
        ``dev_cost``, ``test_accuracy``, ``test_ci``, ``test_problems``, ``test_cost``,
        ``cost_unit``, ``failed`` (test problems without a record).

    Raises:
        ConfigError: no trials to test, no held-out split, an empty split, or the dev split.
    """
    chosen = list(trials) if trials is not None else front(study)
    if not chosen:
        raise ConfigError(f"nothing to test: {study_overview(study)}")
    problems, dataset = _held_out_problems(study, split, limit)
    budget = (study.user_attrs.get("space") or {}).get("budget")
    targets = [EvalTarget(f"trial-{t.number}", dict(t.user_attrs["spec"])) for t in chosen]
    runner = EvalRunner(
        orch,
        problems,
        targets,
        Path(out_dir),
        budget=Budget(**budget) if budget else None,
        concurrency=concurrency,
        resume=True,
        seed=int(study.user_attrs.get("seed", 0)),
        progress=progress,
        dataset=dataset,
    )
    summaries = await runner.run()
    unit = cost_unit(study)
    return [
        {
            "trial": t.number,
            "composition": _composition(t),
            "dev_accuracy": _accuracy(t),
            "dev_problems": t.user_attrs.get("problems"),
            "dev_cost": _cost(t),
            "test_accuracy": s.accuracy,
            "test_ci": [s.ci_low, s.ci_high],
            "test_problems": s.problems,
            "test_cost": summary_cost(s, unit),
            "cost_unit": unit,
            "failed": len(run.failed),
        }
        for t, s, run in zip(chosen, summaries, runner.runs, strict=True)
    ]


test_front.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite its name


def _held_out_problems(
    study: optuna.Study, split: str | None, limit: int | None
) -> tuple[list[Problem], dict[str, Any]]:
    """The study's dataset on ``split`` (default: the held-out one) and its description."""
    ds = study.user_attrs.get("dataset") or {}
    if not ds.get("source"):
        raise ConfigError(f"study {study.study_name!r} records no dataset (user attr 'dataset')")
    split = split or held_out_split(ds.get("split"))
    if ds.get("split") and _overlap(split, ds["split"]):
        raise ConfigError(
            f"--split {split} overlaps the dev split {ds['split']} the search tuned on; the "
            f"held-out split is {held_out_split(ds['split'])}"
        )
    mapping = {k: ds[k] for k in FIELD_MAPPING_KEYS if ds.get(k) is not None}
    problems = load_dataset(
        ds["source"], format=ds.get("format"), limit=limit, split=split, **mapping
    )
    if not problems:
        raise ConfigError(f"{ds['source']} split {split}: no problems (check --split, --limit)")
    described = {**ds, "split": split, "limit": limit, "problems": len(problems)}
    return problems, {**described, "study": study.study_name}


def dev_test_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`test_front` rows: dev vs test accuracy and cost per query."""
    unit = rows[0]["cost_unit"] if rows else "cost"
    lines = [
        f"| Trial | Dev accuracy | Test accuracy [95% CI] | Dev cost ({unit}) | "
        f"Test cost ({unit}) | Composition |",
        "|---:|---:|---:|---:|---:|:---|",
    ]
    for r in rows:
        dev = (
            "-" if r["dev_accuracy"] is None else f"{r['dev_accuracy']:.3f} (n={r['dev_problems']})"
        )
        lo, hi = r["test_ci"]
        test = f"{r['test_accuracy']:.3f} [{lo:.2f}, {hi:.2f}] (n={r['test_problems']})"
        lines.append(
            f"| {r['trial']} | {dev} | {test} | {_fmt_cost(r['dev_cost'], unit)} | "
            f"{_fmt_cost(r['test_cost'], unit)} | {_cell(r['composition'])} |"
        )
    return "\n".join(lines) + "\n"

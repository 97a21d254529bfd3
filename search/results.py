"""Reading a finished (or running) search: the front, exports, held-out tests.

These are the library functions behind ``ttc search best|export|test`` (``ttc search report``
is :func:`search.plots.write_report`). They only read the study, except :func:`test_front`,
which evaluates the front's compositions on the held-out split.

What counts:

- *feasible*: every recorded constraint is <= 0 (the trial's user attr ``constraints`` and any
  constraints Optuna stored itself; see ``search.objective``);
- the *front*: in multi mode (directions maximise accuracy, minimise cost) the feasible
  COMPLETE trials that no other feasible COMPLETE trial dominates, by cost ascending; in single
  mode the ``top`` feasible COMPLETE trials by score (accuracy - lambda * cost).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.datasets import parse_split
from orchestrator.errors import ConfigError
from orchestrator.store.db import mask_url, normalize_url
from search.objective import one_line

__all__ = [
    "cost_unit",
    "export_trial",
    "feasible",
    "front",
    "front_json",
    "front_table",
    "held_out_split",
    "load_study",
    "storage_url",
    "study_overview",
    "usable_trial",
]

TOP_SINGLE = 10
"""How many trials ``front`` lists in single mode."""


def storage_url(value: str | Path) -> str:
    """An Optuna storage URL from what a user wrote.

    A path without ``://`` becomes ``sqlite:///<absolute path>``; ``postgresql://`` becomes
    ``postgresql+psycopg://`` (the installed driver); any other URL is returned unchanged.
    """
    return normalize_url(value)


def load_study(study: str, storage: str | Path) -> optuna.Study:
    """Open an existing study (never creates one, nor a SQLite file).

    Raises:
        ConfigError: the storage URL is malformed or unreachable, the SQLite file does not
            exist, or it holds no study called ``study`` (the message lists those it holds).
    """
    url = storage_url(storage)
    shown = mask_url(url)
    if url.startswith("sqlite:///") and ":memory:" not in url:
        path = Path(url.removeprefix("sqlite:///").split("?")[0])
        if not path.is_file():
            raise ConfigError(
                f"--storage: no study database at {path}; run `ttc search run` "
                "first, or point --storage at the file it wrote"
            )
    try:
        rdb = optuna.storages.RDBStorage(url)
        names = optuna.study.get_all_study_names(rdb)
    except (SQLAlchemyError, ImportError, ValueError, RuntimeError) as exc:
        raise ConfigError(
            f"--storage {shown}: cannot open it ({exc}); expected a file path, "
            "sqlite:///PATH or postgresql://USER@HOST/DB"
        ) from None
    if study not in names:
        known = ", ".join(sorted(names)) or "none"
        raise ConfigError(f"--study: no study {study!r} in {shown}; studies there: {known}")
    return optuna.load_study(study_name=study, storage=rdb)


def feasible(trial: FrozenTrial) -> bool:
    """Whether every constraint of the trial (user attr and Optuna's own) is <= 0."""
    values = [*(trial.user_attrs.get("constraints") or []), *trial.constraints.values()]
    return all(v <= 0.0 for v in values if v is not None and not math.isnan(v))


def _multi(study: optuna.Study) -> bool:
    return len(study.directions) == 2


def _accuracy(trial: FrozenTrial) -> float | None:
    value = trial.user_attrs.get("accuracy")
    if value is None and trial.values and len(trial.values) == 2:
        value = trial.values[0]
    return None if value is None else float(value)


def _cost(trial: FrozenTrial) -> float | None:
    value = trial.user_attrs.get("cost")
    if value is None and trial.values and len(trial.values) == 2:
        value = trial.values[1]
    return None if value is None else float(value)


def _dominates(a: FrozenTrial, b: FrozenTrial) -> bool:
    """``a`` is at least as accurate and as cheap as ``b``, and strictly better in one."""
    (acc_a, cost_a), (acc_b, cost_b) = a.values, b.values
    return acc_a >= acc_b and cost_a <= cost_b and (acc_a > acc_b or cost_a < cost_b)


def front(study: optuna.Study, top: int = TOP_SINGLE) -> list[FrozenTrial]:
    """The trials worth using (see the module docstring), best first.

    Multi mode: the feasible Pareto-optimal COMPLETE trials, by cost ascending (ties: higher
    accuracy, then lower number). Single mode: the ``top`` feasible COMPLETE trials by score.
    """
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values and feasible(t)
    ]
    if not _multi(study):
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        return sorted(done, key=lambda t: (sign * t.values[0], t.number))[:top]
    kept = [t for t in done if not any(_dominates(o, t) for o in done)]
    return sorted(kept, key=lambda t: (t.values[1], -t.values[0], t.number))


def cost_unit(study: optuna.Study) -> str:
    """The study's cost measure: ``completion_tokens``, ``total_tokens``, ``usd`` or ``calls``."""
    return str(study.user_attrs.get("cost", "completion_tokens"))


def _fmt_cost(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return (
        f"{value:.5f}" if unit == "usd" else f"{value:.2f}" if unit == "calls" else f"{value:.1f}"
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _composition(trial: FrozenTrial) -> str:
    text = trial.user_attrs.get("composition")
    if text:
        return str(text)
    spec = trial.user_attrs.get("spec")
    return one_line(spec) if isinstance(spec, dict) else "?"


def _dev_accuracy(trial: FrozenTrial) -> str:
    acc = _accuracy(trial)
    problems = trial.user_attrs.get("problems")
    if acc is None:
        return "-"
    return f"{acc:.3f} (n={problems})" if problems is not None else f"{acc:.3f}"


def front_json(study: optuna.Study, trials: Sequence[FrozenTrial]) -> list[dict[str, Any]]:
    """The trials as JSON-ready dicts (``ttc search best --json``), in the given order."""
    return [
        {
            "trial": t.number,
            "accuracy": _accuracy(t),
            "problems": t.user_attrs.get("problems"),
            "cost": _cost(t),
            "cost_unit": cost_unit(study),
            "score": None if _multi(study) else t.values[0],
            "composition": _composition(t),
            "spec": t.user_attrs.get("spec"),
            "params": t.params,
        }
        for t in trials
    ]


def front_table(study: optuna.Study, trials: Sequence[FrozenTrial]) -> str:
    """A Markdown table of ``trials`` (usually ``front(study)``), one row each, in order.

    Columns: trial number, dev accuracy (with the number of dev problems), cost per query in the
    study's unit, the score (single mode only) and the composition in one line. Without trials,
    one sentence saying why the table is empty.
    """
    if not trials:
        return (
            f"No feasible COMPLETE trials in study {study.study_name!r} yet "
            f"({_state_counts(study)}).\n"
        )
    multi, unit = _multi(study), cost_unit(study)
    header = ["Trial", "Dev accuracy", f"Cost/query ({unit})"]
    header += [] if multi else ["Score"]
    lines = [
        "| " + " | ".join([*header, "Composition"]) + " |",
        "|" + "|".join(["---:"] * len(header) + [":---"]) + "|",
    ]
    for t in trials:
        row = [str(t.number), _dev_accuracy(t), _fmt_cost(_cost(t), unit)]
        row += [] if multi else [f"{t.values[0]:.4f}"]
        lines.append("| " + " | ".join([*row, _cell(_composition(t))]) + " |")
    return "\n".join(lines) + "\n"


def _state_counts(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    infeasible = sum(1 for t in trials if t.state == TrialState.COMPLETE and not feasible(t))
    parts = [f"{n} {state}" for state, n in sorted(counts.items())]
    if infeasible:
        parts.append(f"{infeasible} of the complete ones infeasible")
    return f"{len(trials)} trials: {', '.join(parts)}" if trials else "no trials"


def study_overview(study: optuna.Study) -> str:
    """One line about the study: mode, cost measure, dataset and trial counts by state."""
    ds = study.user_attrs.get("dataset") or {}
    goal = (
        f"accuracy up, {cost_unit(study)}/query down"
        if _multi(study)
        else f"accuracy - {study.user_attrs.get('lambda', 0.0)} * {cost_unit(study)}"
    )
    where = f"{ds.get('source', '?')} {ds.get('split') or ''}".strip()
    return (
        f"study {study.study_name!r} ({goal}) on {where} "
        f"({ds.get('problems', '?')} dev problems): {_state_counts(study)}"
    )


def usable_trial(study: optuna.Study, number: int) -> FrozenTrial:
    """Trial ``number`` if it is COMPLETE with a recorded spec (what export and test need).

    Raises:
        ConfigError: an unknown number (the valid range is named), a trial in another state
            (named, with the rejection reason if any), or a trial without a spec.
    """
    trials = study.get_trials(deepcopy=False)
    match = [t for t in trials if t.number == number]
    if not match:
        valid = f"0..{len(trials) - 1}" if trials else "none: the study has no trials yet"
        raise ConfigError(
            f"--trial {number}: study {study.study_name!r} has no such trial; "
            f"trial numbers: {valid}"
        )
    trial = match[0]
    if trial.state != TrialState.COMPLETE:
        why = trial.user_attrs.get("rejected")
        reason = f" (rejected: {why})" if why else ""
        raise ConfigError(
            f"--trial {number}: trial {number} of study {study.study_name!r} is "
            f"{trial.state.name}{reason}; only COMPLETE trials can be exported or tested. "
            f"`ttc search best --study {study.study_name}` lists the usable ones"
        )
    if not isinstance(trial.user_attrs.get("spec"), dict):
        raise ConfigError(
            f"--trial {number}: trial {number} recorded no strategy spec "
            "(user attr 'spec'); was it written by `ttc search run`?"
        )
    return trial


def export_trial(study: optuna.Study, number: int, out: Path, *, force: bool = False) -> Path:
    """Write trial ``number``'s strategy spec to ``out`` as YAML for ``ttc solve/eval --config``.

    The file is the spec mapping (``strategy: ...`` and its settings) under a comment header
    naming the study, the trial, its dev accuracy and cost, and the dates.

    Raises:
        ConfigError: an unknown trial number (the valid range is named), a trial that is not
            COMPLETE, or an existing ``out`` without ``force``.
    """
    trial = usable_trial(study, number)
    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(
            f"--out {out} already exists; pass --force to overwrite it or choose another path"
        )
    ds = study.user_attrs.get("dataset") or {}
    unit = cost_unit(study)
    finished = (
        trial.datetime_complete.isoformat(timespec="seconds") if trial.datetime_complete else "?"
    )
    header = [
        f"ttc search export: study {study.study_name!r}, trial {trial.number}",
        f"composition: {_composition(trial)}",
        f"dev accuracy {_dev_accuracy(trial)} on {ds.get('source', '?')} "
        f"{ds.get('split') or '(no split)'}",
        f"cost {_fmt_cost(_cost(trial), unit)} {unit} per query",
        f"trial finished {finished}; exported {datetime.now(UTC).isoformat(timespec='seconds')}",
    ]
    if not feasible(trial):
        header.append(f"WARNING: infeasible (constraints {trial.user_attrs.get('constraints')})")
    header.append(f"use: ttc solve --config {out.name} QUESTION")
    if ds.get("source"):
        held_out = f" --split {held_out_split(ds['split'])}" if ds.get("split") else ""
        header.append(f"     ttc eval --config {out.name} --dataset '{ds['source']}'{held_out}")
    body = yaml.safe_dump(trial.user_attrs["spec"], sort_keys=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w" if force else "x") as f:
        f.write("".join(f"# {line}\n" for line in header) + body)
    return out


def held_out_split(dev_split: str | None) -> str:
    """The complement of the study's dev split: ``dev:0.2`` -> ``test:0.2`` (and back).

    Raises:
        ConfigError: the study used the whole dataset (no split), so nothing is held out.
    """
    if not dev_split:
        raise ConfigError(
            "the study ran on the whole dataset (no dev split), so nothing is held out; give "
            "--split explicitly (e.g. test:0.2), knowing that the search saw those problems"
        )
    parsed = parse_split(dev_split)
    return f"{'test' if parsed.name == 'dev' else 'dev'}:{parsed.fraction:g}"


def _overlap(a: str, b: str) -> bool:
    """Whether two splits share problems: ``dev:F`` is the interval [0, F), ``test:F`` [F, 1)."""
    (lo_a, hi_a), (lo_b, hi_b) = (
        (0.0, p.fraction) if p.takes_low else (p.fraction, 1.0) for p in map(parse_split, (a, b))
    )
    return max(lo_a, lo_b) < min(hi_a, hi_b)

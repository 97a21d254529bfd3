"""``ttc search report``: plots of a study and a Markdown (or HTML) page around them.

Plots use Optuna's matplotlib visualisations (plotly is not a dependency) with the
non-interactive Agg backend; every figure is closed after it is saved. Files written into the
output directory:

- ``pareto_front.png`` (multi mode): dev accuracy vs cost per query, infeasible trials marked;
- ``optimization_history.png``: dev accuracy (multi mode) or the score (single mode) by trial;
- ``param_importances.png``: how much each parameter explains dev accuracy (needs at least two
  COMPLETE trials; skipped with a note when Optuna cannot compute importances);
- ``front.md``: the study overview, the front table, the notes and the images;
- ``report.html`` (``fmt="html"``): the same as a self-contained page (images by relative path).
"""

from __future__ import annotations

import html
import math
import sys
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal, TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

from orchestrator.errors import ConfigError
from orchestrator.evaluation.report import pyplot
from search.results import cost_unit, feasible, front, front_json, front_table, study_overview

__all__ = ["HISTORY_PLOT", "IMPORTANCE_PLOT", "PARETO_PLOT", "write_report"]

PARETO_PLOT = "pareto_front.png"
HISTORY_PLOT = "optimization_history.png"
IMPORTANCE_PLOT = "param_importances.png"
_DPI = 120


def _save(draw: Callable[[], Any], path: Path) -> Path:
    """Call ``draw`` (an Optuna matplotlib plot returning Axes), save its figure, close it."""
    plt = pyplot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", "PedAnovaImportanceEvaluator computes the importances")
        try:
            ax = draw()
            fig = ax.figure
            fig.set_size_inches(7, 4.5)
            fig.tight_layout()
            fig.savefig(path, dpi=_DPI)
        finally:
            plt.close("all")
    return path


def _accuracy(trial: FrozenTrial) -> float:
    value = trial.user_attrs.get("accuracy")
    if value is None and trial.values:
        value = trial.values[0]
    return float("nan") if value is None else float(value)


def _neg_accuracy(trial: FrozenTrial) -> float:
    """Importance evaluators rank parameters by how they lower the target: negate accuracy."""
    return -_accuracy(trial)


def _with_feasibility(study: optuna.Study) -> optuna.Study:
    """An in-memory copy whose Optuna constraints say what ``feasible`` says (the objective
    records its constraints as a user attr, which the plots do not read). Trial numbers are
    kept: every trial is copied, those not COMPLETE as FAIL (the plots skip them alike)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        copy = optuna.create_study(directions=study.directions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    for t in study.get_trials(deepcopy=False):
        if t.state != TrialState.COMPLETE:
            copy.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
            continue
        system = {k: v for k, v in t.system_attrs.items() if not k.startswith("constraints")}
        system["constraints"] = [0.0 if feasible(t) else 1.0]
        copy.add_trial(
            optuna.trial.create_trial(
                values=t.values,
                params=t.params,
                distributions=t.distributions,
                user_attrs=t.user_attrs,
                system_attrs=system,
            )
        )
    return copy


def _plots(study: optuna.Study, out_dir: Path, notes: list[str]) -> list[Path]:
    """Draw the plots the study supports; what cannot be drawn becomes a note."""
    # Optuna's matplotlib plots import matplotlib (heavy): only `ttc search report` needs them.
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        notes.append("no COMPLETE trials yet: no plots")
        return []
    marked = _with_feasibility(study)
    paths = []
    if len(study.directions) == 2:
        names = ["dev accuracy", f"cost per query ({cost_unit(study)})"]
        pareto = partial(ovm.plot_pareto_front, marked, target_names=names)
        paths.append(_save(pareto, out_dir / PARETO_PLOT))
        history = partial(
            ovm.plot_optimization_history, marked, target=_accuracy, target_name="dev accuracy"
        )
    else:
        history = partial(ovm.plot_optimization_history, marked)
    paths.append(_save(history, out_dir / HISTORY_PLOT))
    measured = [t for t in complete if not math.isnan(_accuracy(t))]
    if len(measured) < 2:
        notes.append(
            f"parameter importances need at least 2 COMPLETE trials, the study has "
            f"{len(measured)}: skipped"
        )
        return paths
    importances = partial(
        ovm.plot_param_importances, study, target=_neg_accuracy, target_name="dev accuracy"
    )
    try:
        paths.append(_save(importances, out_dir / IMPORTANCE_PLOT))
    except Exception as exc:  # Optuna refuses some studies (e.g. a single shared parameter)
        notes.append(f"parameter importances skipped: {type(exc).__name__}: {exc}")
    return paths


def _markdown(study: optuna.Study, images: list[Path], notes: list[str]) -> str:
    parts = [
        f"# Search report: {study.study_name}\n",
        study_overview(study) + "\n",
        "## Front\n",
        front_table(study, front(study)),
    ]
    parts += [f"- note: {n}" for n in notes] + ([""] if notes else [])
    parts += [f"![{p.stem}]({p.name})\n" for p in images]
    return "\n".join(parts)


def _html_table(study: optuna.Study) -> str:
    rows = front_json(study, front(study))
    if not rows:
        return f"<p>{html.escape(front_table(study, []).strip())}</p>"
    unit = cost_unit(study)
    head = ["Trial", "Dev accuracy", "Problems", f"Cost/query ({unit})", "Composition"]
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        cost = "-" if r["cost"] is None else f"{r['cost']:.4g}"
        cells = [str(r["trial"]), acc, str(r["problems"]), cost, r["composition"]]
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return "\n".join([*out, "</table>"])


def _html(study: optuna.Study, images: list[Path], notes: list[str]) -> str:
    title = html.escape(f"Search report: {study.study_name}")
    body = [
        f"<h1>{title}</h1>",
        f"<p>{html.escape(study_overview(study))}</p>",
        "<h2>Front</h2>",
        _html_table(study),
    ]
    if notes:
        body.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    body += [
        f'<p><img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}"></p>' for p in images
    ]
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:last-child{text-align:left;font-family:monospace}"
    )
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(
    study: optuna.Study,
    out_dir: Path,
    fmt: Literal["png", "html"] = "png",
    *,
    stream: TextIO | None = None,
) -> list[Path]:
    """Write the plots and ``front.md`` (and ``report.html`` for ``fmt="html"``) into ``out_dir``.

    A plot that cannot be drawn (no COMPLETE trials, fewer than two for importances, Optuna
    refusing the importances) is skipped; the reason is printed to ``stream`` (default stderr)
    and written into the report.

    Returns:
        The files written: ``front.md``, then ``report.html`` (html), then the PNGs.
    """
    if fmt not in ("png", "html"):
        raise ConfigError(f"--format: expected png or html, got {fmt!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    images = _plots(study, out_dir, notes)
    for note in notes:
        print(f"ttc search report: {note}", file=stream or sys.stderr)
    written = [out_dir / "front.md"]
    written[0].write_text(_markdown(study, images, notes))
    if fmt == "html":
        written.append(out_dir / "report.html")
        written[1].write_text(_html(study, images, notes))
    return [*written, *images]

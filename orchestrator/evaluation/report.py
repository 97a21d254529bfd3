"""Side-by-side reports of evaluations: a Markdown table and two plots.

``write_report`` writes ``report.md`` (the comparison table, the coverage numbers and links to
the images), ``accuracy_vs_tokens.png`` and, when a strategy sampled several candidates per
problem, ``coverage.png``. Plots use matplotlib with the non-interactive Agg backend, selected
before pyplot is first imported here (this switches the process's backend to Agg).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.evaluation.summary import RECORDS_FILE, SUMMARY_FILE, Summary

REPORT_FILE = "report.md"
ACCURACY_PLOT = "accuracy_vs_tokens.png"
COVERAGE_PLOT = "coverage.png"
_DPI = 120


def pyplot() -> Any:
    """matplotlib.pyplot, with the Agg backend selected before its import."""
    # matplotlib is heavy (about a second); only the commands that draw plots import it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # only after use("Agg"), hence here too

    return plt


def _cell(text: str) -> str:
    """Escape a value for a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def format_accuracy(s: Summary) -> str:
    """Accuracy with its interval, e.g. ``0.350 [0.18, 0.57]``."""
    return f"{s.accuracy:.3f} [{s.ci_low:.2f}, {s.ci_high:.2f}]"


def comparison_table(summaries: Sequence[Summary]) -> str:
    """A Markdown table comparing the summaries side by side, one row each, in the given order.

    Columns: strategy, problems, accuracy with its 95% interval, pass@k at the largest k (``-``
    for a single-sample strategy), mean completion tokens, calls and seconds per problem, total
    cost in USD, total cached completion tokens, and the budget-exhausted count.
    """
    header = [
        "Strategy",
        "Problems",
        "Accuracy [95% CI]",
        "pass@k (max k)",
        "Tokens/problem",
        "Calls/problem",
        "Cost (USD)",
        "Cached tokens",
        "Seconds/problem",
        "Budget exhausted",
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for s in summaries:
        k = s.max_k
        pass_cell = f"{s.pass_at_k[k]:.3f} (k={k})" if k is not None else "-"
        row = [
            _cell(s.label),
            str(s.problems),
            format_accuracy(s),
            pass_cell,
            f"{s.completion_tokens_mean:.1f}",
            f"{s.calls_mean:.2f}",
            f"{s.cost_usd_total:.4f}",
            str(s.cached_tokens_total),
            f"{s.seconds_mean:.2f}",
            str(s.budget_exhausted),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def coverage_table(summaries: Sequence[Summary]) -> str:
    """A Markdown table of pass@k and majority@k per k, for the summaries that have them."""
    sampled = [s for s in summaries if s.pass_at_k]
    if not sampled:
        return ""
    lines = ["| Strategy | k | pass@k | majority@k |", "|:---|---:|---:|---:|"]
    for s in sampled:
        for k in sorted(s.pass_at_k):
            major = s.majority_at_k.get(k)
            major_cell = f"{major:.3f}" if major is not None else "-"
            lines.append(f"| {_cell(s.label)} | {k} | {s.pass_at_k[k]:.3f} | {major_cell} |")
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_tokens(summaries: Sequence[Summary], path: Path) -> Path:
    """Scatter accuracy (with Wilson 95% error bars) against mean completion tokens per problem.

    Each point is labelled with its strategy. The x axis is logarithmic when every strategy
    spent tokens (a point at 0 tokens cannot sit on a log axis; the axis is linear then).
    Returns ``path``.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    try:
        xs = [s.completion_tokens_mean for s in summaries]
        for i, s in enumerate(summaries):
            yerr = [[s.accuracy - s.ci_low], [s.ci_high - s.accuracy]]
            ax.errorbar(
                [s.completion_tokens_mean],
                [s.accuracy],
                yerr=yerr,
                fmt="o",
                capsize=4,
                color=f"C{i % 10}",
            )
            ax.annotate(
                s.label,
                (s.completion_tokens_mean, s.accuracy),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize=9,
            )
        if xs and min(xs) > 0:
            ax.set_xscale("log")
        ax.margins(x=0.15)  # room for the labels of the outermost points
        ax.set_ylim(0.0, 1.05)
        ax.set_xlabel("mean completion tokens per problem")
        ax.set_ylabel("accuracy (95% Wilson interval)")
        ax.set_title("Accuracy vs tokens")
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=_DPI)
    finally:
        plt.close(fig)
    return path


def plot_coverage(summaries: Sequence[Summary], path: Path) -> Path:
    """Plot pass@k against k (log2 x axis) for every summary that has a pass@k curve.

    Each strategy gets one colour: pass@k solid, majority@k dashed, and the fitted power law
    dotted when there is one, its ``a`` and ``b`` in the legend. A strategy has the colour of
    its position in ``summaries``, as in ``plot_accuracy_vs_tokens``. Returns ``path``.

    Raises:
        ValueError: when no summary has a pass@k curve.
    """
    if not any(s.pass_at_k for s in summaries):
        raise ValueError("plot_coverage: no summary has pass@k (no strategy sampled >= 2)")
    plt = pyplot()
    # matplotlib is heavy (about a second); only the commands that draw plots import it.
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(7, 5))
    try:
        for i, s in enumerate(summaries):  # colours indexed as in the accuracy plot
            if not s.pass_at_k:
                continue
            color = f"C{i % 10}"
            ks = sorted(s.pass_at_k)
            ax.plot(ks, [s.pass_at_k[k] for k in ks], "-o", color=color, label=f"{s.label} pass@k")
            mks = sorted(s.majority_at_k)
            if mks:
                ax.plot(
                    mks,
                    [s.majority_at_k[k] for k in mks],
                    "--s",
                    color=color,
                    markersize=4,
                    label=f"{s.label} majority@k",
                )
            fit = s.power_law
            if fit is not None:
                dense = np.geomspace(1, max(ks), 100)
                ax.plot(
                    dense,
                    [fit.predict(float(k)) for k in dense],
                    ":",
                    color=color,
                    label=f"{s.label} fit exp(a·k^b): a={fit.a:.3f}, b={fit.b:.3f}",
                )
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.set_ylim(0.0, 1.05)
        ax.set_xlabel("k (samples)")
        ax.set_ylabel("pass@k / majority@k")
        ax.set_title("Coverage")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=_DPI)
    finally:
        plt.close(fig)
    return path


def write_report(summaries: Sequence[Summary], out_dir: Path) -> list[Path]:
    """Write ``report.md`` and its plots into ``out_dir`` (created when missing).

    The coverage plot (and the coverage section) is left out when no summary has pass@k.

    Returns:
        The files written: ``report.md`` first, then the PNGs.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    images = [plot_accuracy_vs_tokens(summaries, out_dir / ACCURACY_PLOT)]
    parts = [
        "# Evaluation report\n",
        comparison_table(summaries),
        f"![Accuracy vs mean completion tokens per problem]({ACCURACY_PLOT})\n",
    ]
    if any(s.pass_at_k for s in summaries):
        images.append(plot_coverage(summaries, out_dir / COVERAGE_PLOT))
        parts += [
            "## Coverage\n",
            coverage_table(summaries),
            f"![pass@k and majority@k vs k]({COVERAGE_PLOT})\n",
        ]
    report = out_dir / REPORT_FILE
    report.write_text("\n".join(parts))
    return [report, *images]


def find_eval_dirs(paths: Iterable[Path | str]) -> list[Path]:
    """Every directory under the given ones (themselves included) that holds an evaluation.

    An evaluation directory holds ``records.jsonl`` or ``summary.json``.

    Returns:
        The evaluation directories, sorted and without duplicates.

    Raises:
        ValueError: naming the path, when a path is not a directory or has no evaluation
            directory in or under it.
    """
    found: set[Path] = set()
    for raw in paths:
        root = Path(raw)
        expected = (
            f"expected an evaluation directory (holding {RECORDS_FILE} or {SUMMARY_FILE}) "
            "or a directory containing some"
        )
        if not root.is_dir():
            raise ValueError(f"{root}: not a directory; {expected}")
        hits = {
            f.parent
            for name in (RECORDS_FILE, SUMMARY_FILE)
            for f in root.rglob(name)
            if f.is_file()
        }
        if not hits:
            raise ValueError(
                f"{root}: no {RECORDS_FILE} or {SUMMARY_FILE} in or under it; {expected}"
            )
        found |= hits
    return sorted(found)

"""Progress lines of a search worker: one per finished trial, plus the objective's notes."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.study import evaluated

__all__ = ["TrialPrinter"]


class TrialPrinter:
    """Prints ``[w1] trial 7 done 5/20: COMPLETE acc 0.350 (20 problems), 412 tok/query ...``.

    ``on_trial`` is the study callback (Optuna's thread); ``say`` prints a free-form note.
    """

    def __init__(self, trials: int, prefix: str = "", stream: TextIO | None = None) -> None:
        self.trials = trials
        self.prefix = prefix
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def say(self, msg: str) -> None:
        """Print one line, prefixed with the worker label."""
        with self._lock:
            print(f"{self.prefix}{msg}", file=self.stream, flush=True)

    def on_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Describe a finished trial and the study's progress."""
        done = sum(evaluated(t) for t in study.get_trials(deepcopy=False))
        a = trial.user_attrs
        what = a.get("composition", trial.params)
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        if trial.state == TrialState.PRUNED and a.get("rejected"):
            outcome = "rejected (no calls)"
        elif a.get("accuracy") is not None:
            unit = study.user_attrs.get("cost", "cost")
            outcome = (
                f"{trial.state.name.lower()} acc {a['accuracy']:.3f} ({a.get('problems')} "
                f"problems), {a.get('cost', 0):,.4g} {unit}/query"
            )
        else:
            outcome = trial.state.name.lower()
        elapsed = time.monotonic() - self.started
        self.say(
            f"trial {trial.number} [{done}/{self.trials} evaluated, {elapsed:,.0f} s]: {outcome}, "
            f"{seconds:.1f} s: {what}"
        )

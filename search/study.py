"""Studies: storage, samplers, and the worker loop that runs trials until the study is done.

Storage is Optuna's RDB storage by SQLAlchemy URL (SQLite by default; PostgreSQL for several
workers or machines), with heartbeats: a worker that dies mid-trial stops beating, and after the
grace period the next worker to start a trial marks it failed and queues it again
(``RetryHeartbeatStaleTrialCallback``), so no trial is lost and none is counted twice.

A worker runs ``study.optimize`` in a thread while its asyncio loop (the orchestrator, its
backends, the completion cache) runs in the main thread, so Ctrl-C and SIGTERM reach the loop:
the trial in flight is cancelled, its finished problems stay recorded, and its composition is
queued again for the next run. The study is done when ``trials`` trials are finished (complete
or pruned after evaluation; compositions rejected before any call do not count) and no trial is
waiting; a worker that finds others' trials still running waits for them to finish or to go
stale, so the last worker standing also runs the retries of a dead one.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from orchestrator.errors import ConfigError
from search.objective import Objective, SearchInterrupted, TrialFailed
from search.results import storage_url

__all__ = ["SAMPLERS", "StudyPlan", "evaluated", "make_sampler", "make_storage", "open_study"]

SAMPLERS = ("tpe", "nsga2", "random", "grid")
DEFAULT_STORAGE = "sqlite:///runs/search/studies.db"


def quiet_optuna() -> None:
    """Our progress lines replace Optuna's per-trial INFO logs; its experimental-feature and
    deprecation warnings are for library authors, not for ``ttc`` users."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


def make_storage(url: str, heartbeat: int = 10, max_retry: int = 2) -> RDBStorage:
    """RDB storage with heartbeats every ``heartbeat`` s, stale after 3 beats, failed trials
    retried up to ``max_retry`` times. SQLite files get their directory created."""
    url = storage_url(url)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    try:
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat,
            grace_period=3 * heartbeat,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
        )
    except Exception as exc:  # sqlalchemy / driver errors: name the URL and the fix
        raise ConfigError(f"cannot open study storage {url!r}: {exc}") from None


def make_sampler(name: str, seed: int | None, trials: int) -> optuna.samplers.BaseSampler:
    """The sampler for ``--sampler``. TPE and NSGA-II read the trials' budget constraints
    (``Trial.set_constraint``) and prefer feasible compositions."""
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=max(3, min(10, trials // 4)),
            multivariate=True,
            group=True,  # define-by-run: parameters of different strategies form groups
        )
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(
            seed=seed, population_size=max(4, min(50, trials // 2))
        )
    if name in ("random", "grid"):  # grid trials are queued; random fills in after them
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"--sampler {name!r}: choose one of {', '.join(SAMPLERS)}")


def open_study(
    name: str,
    storage: RDBStorage,
    directions: list[str],
    attrs: dict[str, Any],
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Create study ``name`` with ``attrs``, or join it when it exists with the same ones.

    Raises ConfigError when an existing study was made with another space, dataset or
    objective (its results would not be comparable).
    """
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=directions,  # type: ignore[arg-type]
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    if [d.name.lower() for d in study.directions] != directions:
        raise ConfigError(
            f"study {name!r} exists with directions {study.directions}; this "
            f"space needs {directions}: use another --study"
        )
    have = study.user_attrs
    if not have:
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        study.set_user_attr(READY, True)  # last: joiners wait for it, never see half the attrs
        return study
    have = _wait_ready(study, name, set(attrs))
    for key in ("space", "dataset", "seed"):
        if have.get(key) != attrs.get(key):
            raise ConfigError(
                f"study {name!r} exists with another {key} ({have.get(key)!r}, now "
                f"{attrs.get(key)!r}); use another --study, or the same --{key} to continue it"
            )
    return study


READY = "ready"
"""The study attr its creator sets after all the others."""


def _wait_ready(
    study: optuna.Study, name: str, keys: set[str], timeout: float = 30.0
) -> dict[str, Any]:
    """The study's attrs once its creator has written them all (``READY``, or every key)."""
    deadline = time.monotonic() + timeout
    while True:
        have = study.user_attrs
        if have.get(READY) or keys <= set(have):
            return have
        if time.monotonic() > deadline:
            raise ConfigError(
                f"study {name!r} exists but its creator never finished writing its settings; "
                "delete it (optuna delete-study) or use another --study"
            )
        time.sleep(0.2)


def evaluated(trial: FrozenTrial) -> bool:
    """Finished and evaluated: complete, or pruned after a rung (not rejected before calls)."""
    if trial.state == TrialState.COMPLETE:
        return True
    return trial.state == TrialState.PRUNED and not trial.user_attrs.get("rejected")


@dataclass
class StudyPlan:
    """What one worker does: finish ``trials`` trials within ``timeout`` seconds."""

    trials: int
    timeout: float | None = None
    max_rejections: int = 200
    max_failures: int = 5


def _counts(study: optuna.Study) -> tuple[int, int, int, int]:
    """(evaluated, rejected, running, waiting) trials of the study."""
    trials = study.get_trials(deepcopy=False)
    done = sum(evaluated(t) for t in trials)
    rejected = sum(
        t.state == TrialState.PRUNED and bool(t.user_attrs.get("rejected")) for t in trials
    )
    running = sum(t.state == TrialState.RUNNING for t in trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    return done, rejected, running, waiting


def study_finished(study: optuna.Study, trials: int) -> bool:
    """``trials`` trials evaluated and none running or waiting."""
    done, _, running, waiting = _counts(study)
    return done >= trials and not running and not waiting


def optimize_loop(
    study: optuna.Study,
    objective: Objective,
    plan: StudyPlan,
    on_trial: Callable[[optuna.Study, FrozenTrial], None],
) -> str:
    """Run trials until the study is done, the time is up, or the objective is interrupted.

    Returns why it stopped: ``done``, ``timeout``, ``interrupted``, ``rejections`` (too many
    compositions rejected by the budget) or ``failures`` (``max_failures`` of this worker's
    trials failed in a row: the backend is down).
    """
    started = time.monotonic()

    def left() -> float | None:
        return None if plan.timeout is None else plan.timeout - (time.monotonic() - started)

    failures = 0  # this worker's trials failed in a row (not interrupted): a dead backend

    def stop_when_done(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal failures
        on_trial(study, trial)
        failed = trial.state == TrialState.FAIL and not trial.user_attrs.get("interrupted")
        failures = failures + 1 if failed else 0
        done, rejected, _, waiting = _counts(study)
        if (done >= plan.trials and not waiting) or rejected >= plan.max_rejections:
            study.stop()
        if failures >= plan.max_failures:
            study.stop()

    while True:
        done, rejected, running, waiting = _counts(study)
        if objective.stopping:
            return "interrupted"
        if failures >= plan.max_failures:
            return "failures"
        if rejected >= plan.max_rejections:
            return "rejections"
        remaining = left()
        if remaining is not None and remaining <= 0:
            return "timeout"
        if done < plan.trials or waiting:
            study.optimize(
                objective,
                timeout=remaining,
                callbacks=[stop_when_done],
                catch=(TrialFailed, SearchInterrupted),
            )
            continue
        if not running:
            return "done"
        # Others' trials are running: wait for them to finish, or to go stale and be retried.
        time.sleep(min(2.0, (study._storage.get_heartbeat_interval() or 2)))  # type: ignore[attr-defined]
        fail_stale_trials(study)


async def run_in_thread(
    study: optuna.Study,
    objective: Objective,
    plan: StudyPlan,
    on_trial: Callable[[optuna.Study, FrozenTrial], None],
) -> str:
    """``optimize_loop`` in a thread; on cancellation (Ctrl-C) interrupt the trial in flight,
    wait for the thread to record it, then re-raise."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["why"] = optimize_loop(study, objective, plan, on_trial)
        except BaseException as exc:  # re-raised in the loop's thread below
            result["error"] = exc

    thread = threading.Thread(target=target, name="ttc-search-optimize", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            await asyncio.sleep(0.05)
    except asyncio.CancelledError:
        objective.interrupt()
        while thread.is_alive():
            await asyncio.sleep(0.05)
        raise
    if "error" in result:
        raise result["error"]
    return str(result["why"])

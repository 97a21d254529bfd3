"""Search worker processes: one worker's run (``run_worker``) and W local workers
(``spawn_workers``).

A worker loads the study, keeps its orchestrator, backends and completion cache on the asyncio
loop of its main thread, and runs trials through ``search.study.run_in_thread``. ``--workers W``
starts W copies of the same ``ttc search run`` command with ``--worker-index 1..W``; a worker
started separately (another machine, a rerun) joins with index 0 and reseeds its sampler.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna

from orchestrator.runner import Orchestrator
from orchestrator.store.cache import CompletionCache
from orchestrator.types import Problem
from search.objective import Objective, rung_sizes
from search.progress import TrialPrinter
from search.pruning import make_pruner
from search.space import Space
from search.study import (
    StudyPlan,
    make_sampler,
    make_storage,
    run_in_thread,
    study_finished,
)

__all__ = ["joiner_seed", "run_worker", "spawn_workers", "study_parts", "worker_argv"]

DEFAULT_OUT = Path("runs/search")


def study_parts(
    args: argparse.Namespace, space: Space, trials: int, n_dev: int
) -> tuple[optuna.storages.RDBStorage, optuna.samplers.BaseSampler, optuna.pruners.BasePruner]:
    """The study's storage, this worker's sampler and the pruner, from the command line."""
    storage = make_storage(args.storage, heartbeat=args.heartbeat)
    sampler = make_sampler(args.sampler, args.seed + args.worker_index, trials)
    sizes = rung_sizes(n_dev, space.file.rungs)
    return storage, sampler, make_pruner(args.pruner, sizes[0], sizes[-1])


def run_worker(
    args: argparse.Namespace,
    study: optuna.Study,
    space: Space,
    problems: list[Problem],
    trials: int,
) -> int:
    """Run trials of ``study`` (opened by ``ttc search run``) in this process until it is done;
    the exit code (0 done or timed out, 3 interrupted or given up)."""
    why = asyncio.run(_worker(args, study, space, problems, trials))
    print(f"ttc search: worker {args.worker_index} stopped: {why}", file=sys.stderr)
    if why == "failures":
        print(
            "ttc search: trials keep failing (see the errors above: is the backend up?); "
            "fix that and rerun the same command to continue the study",
            file=sys.stderr,
        )
    if why == "rejections":
        print(
            "ttc search: too many compositions were rejected by the budget before any call; "
            "loosen the space's `budget:` or narrow its ranges (e.g. smaller n or max_tokens)",
            file=sys.stderr,
        )
    return 0 if why in ("done", "timeout") else 3


async def _worker(
    args: argparse.Namespace,
    study: optuna.Study,
    space: Space,
    problems: list[Problem],
    trials: int,
) -> str:
    if study_finished(study, trials):
        return "done"  # nothing to run: do not start the backends (a vLLM engine takes ~40 s)
    existing = len(study.get_trials(deepcopy=False))
    if args.worker_index == 0 and existing:
        # Joining a study that has trials (another machine, or a rerun adding trials): a
        # sampler seeded like the first worker's would replay its compositions.
        study.sampler = make_sampler(args.sampler, joiner_seed(args.seed, existing), trials)
    cache = None if args.no_cache else CompletionCache(args.cache)
    prefix = f"[w{args.worker_index}] " if args.workers > 1 or args.worker_index else ""
    printer = TrialPrinter(trials, prefix=prefix)
    try:
        orch = Orchestrator.from_config(
            args.backends, default_backend=args.backend, model=args.model, cache=cache
        )
        async with orch:
            objective = Objective(
                space,
                orch,
                asyncio.get_running_loop(),
                problems,
                args.out or DEFAULT_OUT / args.study,
                concurrency=args.concurrency,
                seed=args.seed,
                pruner_on=args.pruner != "none",
                say=printer.say,
            )
            plan = StudyPlan(trials=trials, timeout=args.timeout)
            return await run_in_thread(study, objective, plan, printer.on_trial)
    finally:
        if cache is not None:
            await cache.aclose()


def joiner_seed(seed: int, trials: int) -> int:
    """A sampler seed for a worker joining a study: differs by host, process and study size."""
    key = f"{seed}:{socket.gethostname()}:{os.getpid()}:{trials}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)


def worker_argv(argv: list[str], index: int) -> list[str]:
    """The argv of worker ``index``: the parent's, with ``--workers`` kept (for the count) and
    ``--worker-index`` set."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--worker-index":
            skip = True
            continue
        if a.startswith("--worker-index="):
            continue
        out.append(a)
    return [*out, "--worker-index", str(index)]


def spawn_workers(args: argparse.Namespace, study: optuna.Study, trials: int) -> int:
    """Start W workers (indices 1..W) as ``ttc`` subprocesses; wait; forward SIGTERM."""
    argv = worker_argv(list(args.argv), 0)[:-2]
    procs = [
        subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *worker_argv(argv, i)])
        for i in range(1, args.workers + 1)
    ]
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(0.2)
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
        raise
    codes = [p.returncode for p in procs]
    print(f"ttc search: workers exited with {codes}", file=sys.stderr)
    if all(c == 0 for c in codes):
        return 0
    if study_finished(study, trials):  # a worker died, but the others finished its work
        print(
            "ttc search: a worker failed, but the study finished without it (its trial was "
            "retried)",
            file=sys.stderr,
        )
        return 0
    return 3

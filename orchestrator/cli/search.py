"""``ttc search``: run an architecture search, and read its results.

Subcommands: ``run`` (create or join a study and run trials, optionally in W worker
processes), ``best`` (the Pareto front), ``export`` (a trial as a strategy config), ``test``
(the front on the held-out split) and ``report`` (plots). The space, the dataset and the study
are checked before any worker or backend starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import optuna

from orchestrator.cli.common import (
    add_dataset_args,
    dataset_info,
    load_problems,
    orchestrator_from,
    stdout_to_stderr,
)
from orchestrator.errors import ConfigError
from orchestrator.store.cache import CompletionCache
from search import holdout, results
from search.plots import write_report
from search.pruning import PRUNERS
from search.space import Space, load_space
from search.study import DEFAULT_STORAGE, SAMPLERS, open_study, quiet_optuna
from search.workers import DEFAULT_OUT, run_worker, spawn_workers, study_parts


def register(sub: Any) -> None:
    """Add ``search`` and its subcommands to the ``ttc`` subparsers."""
    s = sub.add_parser(
        "search",
        help="architecture search over strategy compositions (Optuna)",
        description="Tune strategy compositions on a dataset under a per-query "
        "budget: multi-objective (accuracy, cost) or accuracy - lambda * cost.",
    )
    ssub = s.add_subparsers(dest="search_command", required=True)

    def study_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--study", required=True, help="study name")
        p.add_argument(
            "--storage",
            default=DEFAULT_STORAGE,
            help=f"SQLAlchemy URL or SQLite file (default {DEFAULT_STORAGE})",
        )

    r = ssub.add_parser("run", help="create or join a study and run trials")
    r.add_argument("--space", required=True, type=Path, help="search space YAML (configs/search)")
    add_dataset_args(r, required=True, split="dev:0.2")
    r.add_argument("--system", help="system prompt")
    study_args(r)
    r.add_argument("--trials", type=int, help="evaluated trials to finish (default 20; grid: all)")
    r.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    r.add_argument("--timeout", type=float, help="stop starting trials after S seconds")
    r.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="default tpe")
    r.add_argument(
        "--pruner",
        choices=PRUNERS,
        default="median",
        help="single mode: Optuna pruner; multi mode: median = the Pareto-aware "
        "median rule, none = no pruning",
    )
    r.add_argument("--seed", type=int, default=0, help="sampler and evaluation seed")
    r.add_argument("--concurrency", type=int, default=8, help="problems in flight per trial")
    r.add_argument("--heartbeat", type=int, default=10, help="heartbeat interval, s (stale: 3x)")
    r.add_argument("--out", type=Path, help=f"trial records (default {DEFAULT_OUT}/STUDY)")
    r.add_argument("--backend", help="backend name from the backends file")
    r.add_argument("--backends", help="backends file")
    r.add_argument("--model", help="override the backend's model")
    r.add_argument("--no-cache", action="store_true", help="bypass the completion cache")
    r.add_argument("--cache", help="completion cache URL or SQLite path")
    r.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)

    b = ssub.add_parser("best", help="print the Pareto front (or the best trials)")
    study_args(b)
    b.add_argument("--json", action="store_true")
    e = ssub.add_parser("export", help="write a trial's composition as a strategy config")
    study_args(e)
    e.add_argument("--trial", type=int, required=True, help="trial number (see `best`)")
    e.add_argument("--out", type=Path, required=True, help="e.g. configs/strategies/NAME.yaml")
    e.add_argument("--force", action="store_true", help="overwrite an existing file")
    t = ssub.add_parser("test", help="evaluate the front on the held-out split: dev vs test")
    study_args(t)
    t.add_argument("--split", help="default: the complement of the study's dev split")
    t.add_argument("--limit", type=int)
    t.add_argument("--concurrency", type=int, default=8)
    t.add_argument("--out", type=Path, help=f"records (default {DEFAULT_OUT}/STUDY/test)")
    t.add_argument("--backend")
    t.add_argument("--backends")
    t.add_argument("--model")
    t.add_argument("--no-cache", action="store_true")
    t.add_argument("--cache")
    t.add_argument("--quiet", action="store_true")
    p = ssub.add_parser("report", help="plots: Pareto front, history, parameter importances")
    study_args(p)
    p.add_argument("--out", type=Path, help=f"default {DEFAULT_OUT}/STUDY/report")
    p.add_argument("--html", action="store_true", help="also write report.html")
    s.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    """Dispatch ``ttc search SUBCOMMAND``."""
    quiet_optuna()
    if args.search_command == "run":
        return cmd_run(args)
    study = results.load_study(args.study, args.storage)
    if args.search_command == "best":
        trials = results.front(study)
        if args.json:
            print(json.dumps(results.front_json(study, trials), indent=2))
        else:
            print(results.front_table(study, trials))
        return 0
    if args.search_command == "export":
        path = results.export_trial(study, args.trial, args.out, force=args.force)
        print(
            f"wrote {path}; run it with: ttc eval --config {path} ... or "
            f"ttc solve --config {path} QUESTION",
            file=sys.stderr,
        )
        return 0
    if args.search_command == "test":
        return _cmd_test(args, study)
    out = args.out or DEFAULT_OUT / args.study / "report"
    for path in write_report(study, out, "html" if args.html else "png"):
        print(f"wrote {path}", file=sys.stderr)
    print(
        f"interactive: pip install optuna-dashboard && optuna-dashboard {args.storage}",
        file=sys.stderr,
    )
    return 0


def _cmd_test(args: argparse.Namespace, study: optuna.Study) -> int:
    async def go() -> list[dict[str, Any]]:
        cache = None if args.no_cache else CompletionCache(args.cache)
        try:
            _defaults_from_study(args, study.user_attrs)
            async with orchestrator_from(args, cache) as orch:
                return await holdout.test_front(
                    study,
                    orch,
                    split=args.split,
                    limit=args.limit,
                    out_dir=args.out or DEFAULT_OUT / args.study / "test",
                    concurrency=args.concurrency,
                    progress=not args.quiet,
                )
        finally:
            if cache is not None:
                await cache.aclose()

    with stdout_to_stderr():
        rows = asyncio.run(go())
    print(holdout.dev_test_table(rows))
    failed = sum(int(r.get("failed") or 0) for r in rows)
    if failed:
        print(
            f"ttc search test: {failed} problem(s) failed (backend errors) and have no record; "
            "rerun the same command to retry them",
            file=sys.stderr,
        )
        return 3
    return 0


def _defaults_from_study(args: argparse.Namespace, attrs: dict[str, Any]) -> None:
    """Use the study's backends file, backend and model unless the command line says."""
    for key in ("backends", "backend", "model"):
        if getattr(args, key, None) is None:
            setattr(args, key, attrs.get(key))


def _study_attrs(args: argparse.Namespace, space: Space, problems: int) -> dict[str, Any]:
    obj = space.file.objective
    return {
        "space": space.file.model_dump(mode="json", by_alias=True),
        "space_path": str(args.space),
        "mode": obj.mode,
        "cost": obj.cost,
        "lambda": obj.lam,
        "dataset": dataset_info(args, problems),
        "seed": args.seed,
        "backends": args.backends,
        "backend": args.backend,
        "model": args.model,
    }


def _validate(args: argparse.Namespace) -> None:
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {args.trials}")
    if args.concurrency < 1:
        raise ConfigError(f"--concurrency must be >= 1, got {args.concurrency}")
    if args.heartbeat < 1:
        raise ConfigError(f"--heartbeat must be >= 1 second, got {args.heartbeat}")


def cmd_run(args: argparse.Namespace) -> int:
    """``ttc search run``: prepare the study, then run one worker here or W subprocesses."""
    _validate(args)
    space = load_space(args.space)
    problems = load_problems(args)
    grid = space.grid() if args.sampler == "grid" else None
    trials = args.trials or (len(grid) if grid is not None else 20)
    multi = space.file.objective.mode == "multi"
    storage, sampler, pruner = study_parts(args, space, trials, len(problems))
    study = open_study(
        args.study,
        storage,
        ["maximize", "minimize"] if multi else ["maximize"],
        _study_attrs(args, space, len(problems)),
        sampler,
        pruner,
    )
    out = args.out or DEFAULT_OUT / args.study
    stale = sorted(out.glob("trial-*")) if out.is_dir() else []
    if args.worker_index == 0 and stale and not study.get_trials(deepcopy=False):
        raise ConfigError(
            f"{out} holds trial records ({stale[0].name}, ...) but study {args.study!r} in "
            f"{args.storage} has no trials: they belong to another study of that name. Remove "
            "them, or choose another --out or --study"
        )
    if grid is not None and not study.user_attrs.get("grid_queued"):
        for params in grid:
            study.enqueue_trial(params, skip_if_exists=True)
        study.set_user_attr("grid_queued", len(grid))
    if args.worker_index == 0:
        print(
            f"ttc search: study {args.study!r} in {args.storage}: {len(problems)} dev problems, "
            f"{trials} trials, sampler {args.sampler}, {args.workers} worker(s)",
            file=sys.stderr,
        )
    if args.workers > 1 and args.worker_index == 0:
        code = spawn_workers(args, study, trials)
    else:
        with stdout_to_stderr():
            code = run_worker(args, study, space, problems, trials)
    if args.worker_index == 0:
        print(results.front_table(study, results.front(study)))
    return code

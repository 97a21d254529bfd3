"""``ttc eval``: evaluate strategies on a dataset; ``ttc eval report``: compare evaluations.

Targets come from ``--strategy NAME`` (repeatable) and ``--config FILE`` (a spec, or a YAML list
of specs each with an optional ``label``). ``--n``/``--temperature``/``--max-tokens``/
``--verifier`` apply, by the one override rule (``orchestrator.specs``), to the targets whose
strategy has that setting; a flag that no target has is an error. Every target is checked before
any backend starts (see ``EvalRunner.run``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

from orchestrator.cli.common import (
    add_dataset_args,
    add_run_args,
    budget_from,
    dataset_info,
    flag,
    load_problems,
    orchestrator_from,
    overrides_from,
    stdout_to_stderr,
)
from orchestrator.config import load_yaml
from orchestrator.errors import ConfigError
from orchestrator.evaluation.harness import EvalRunner, EvalTarget
from orchestrator.evaluation.report import comparison_table, find_eval_dirs, write_report
from orchestrator.evaluation.summary import Summary, load_summary_dir
from orchestrator.specs import Catalog, apply_overrides, resolve_spec
from orchestrator.store.cache import CompletionCache

DEFAULT_OUT = Path("runs/eval")


def register(sub: Any) -> None:
    """Add ``eval`` (and its ``report`` subcommand) to the ``ttc`` subparsers."""
    e = sub.add_parser(
        "eval",
        help="evaluate strategies on a dataset (or: ttc eval report DIR...)",
        description="Run strategies on every problem of a dataset; write per-problem records, "
        "summaries, a comparison table and plots. `ttc eval report DIR...` re-renders reports.",
    )
    rsub = e.add_subparsers(dest="eval_command")
    r = rsub.add_parser("report", help="print the comparison table and write plots for DIRs")
    r.add_argument("dirs", nargs="+", type=Path, help="evaluation directories")
    r.add_argument("--out", type=Path, help="where to write report.md and PNGs (default: DIR)")
    add_dataset_args(e)
    e.add_argument("--strategy", action="append", default=[], help="strategy name (repeatable)")
    e.add_argument(
        "--config", action="append", default=[], type=Path,
        help="strategy spec YAML: a mapping, or a list of specs (repeatable)",
    )  # fmt: skip
    add_run_args(e)
    e.add_argument("--concurrency", type=int, default=4, help="problems in flight (default 4)")
    e.add_argument("--out", type=Path, help=f"output directory (default {DEFAULT_OUT}/DATASET)")
    e.add_argument("--resume", action="store_true", help="continue an interrupted evaluation")
    e.add_argument("--no-cache", action="store_true", help="bypass the completion cache")
    e.add_argument("--cache", help="completion cache URL or SQLite path (default: $TTC_STORE_URL "
                   "or ~/.cache/ttc/ttc.db)")  # fmt: skip
    e.add_argument("--seed", type=int, default=0, help="evaluation seed (default 0)")
    e.add_argument("--json", action="store_true", help="print the summaries as JSON")
    e.add_argument("--quiet", action="store_true", help="no progress line")
    e.set_defaults(func=cmd_eval)


def _labelled_specs(args: argparse.Namespace, catalog: Catalog) -> list[tuple[str, dict[str, Any]]]:
    """(label, spec) from --strategy and --config, in that order."""
    pairs = [(name, catalog.named_spec(name)) for name in args.strategy]
    for path in args.config:
        data = load_yaml(path)
        items = data if isinstance(data, list) else [data]
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ConfigError(f"{path}: item {i} is not a mapping with a 'strategy' field")
            item = dict(item)
            default = path.stem if len(items) == 1 else str(item.get("strategy", path.stem))
            label = str(item.pop("label", default))
            pairs.append((label, resolve_spec(item, catalog=catalog)))
    if not pairs:
        raise ConfigError("give at least one --strategy NAME or --config FILE")
    return pairs


def eval_targets(args: argparse.Namespace) -> list[EvalTarget]:
    """The targets, labels made unique, the override flags applied (see the module doc)."""
    overrides = overrides_from(args)
    used: set[str] = set()
    seen: dict[str, int] = {}
    targets: list[EvalTarget] = []
    for label, spec in _labelled_specs(args, Catalog()):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label}-{seen[label]}"
        spec, unused = apply_overrides(spec, overrides)
        used.update(set(overrides) - set(unused))
        targets.append(EvalTarget(label, spec))
    for field in overrides:  # an override no strategy takes is a mistake, not something to ignore
        if field not in used:
            raise ConfigError(f"{flag(field)}: none of the strategies "
                              f"{[t.label for t in targets]} has a `{field}` setting")  # fmt: skip
    return targets


def dataset_name(source: str) -> str:
    """A directory-friendly name for a dataset source."""
    if source.startswith("builtin:"):
        return re.sub(r"[^A-Za-z0-9_.-]", "_", source.removeprefix("builtin:"))
    return Path(source).stem


def cmd_eval(args: argparse.Namespace) -> int:
    """Run ``ttc eval`` (or ``ttc eval report``): 0 done, 3 some problems failed."""
    if args.eval_command == "report":
        return cmd_report(args)
    if not args.dataset:
        raise ConfigError("ttc eval needs --dataset FILE or --dataset builtin:NAME")
    problems = load_problems(args)
    targets = eval_targets(args)
    out = args.out or DEFAULT_OUT / dataset_name(args.dataset)
    with stdout_to_stderr():
        summaries, runner_failed = asyncio.run(_eval(args, problems, targets, out))
    if args.json:
        print(json.dumps([s.model_dump(mode="json") for s in summaries], indent=2))
    else:
        print(comparison_table(summaries))
    print(f"ttc eval: results in {out}", file=sys.stderr)
    if runner_failed:
        print(
            f"ttc eval: {runner_failed} problem(s) failed and have no record; "
            "rerun the same command with --resume to retry them",
            file=sys.stderr,
        )
        return 3
    return 0


async def _eval(
    args: argparse.Namespace, problems: list[Any], targets: list[EvalTarget], out: Path
) -> tuple[list[Summary], int]:
    cache = None if args.no_cache else CompletionCache(args.cache)
    try:
        async with orchestrator_from(args, cache) as orch:
            runner = EvalRunner(
                orch,
                problems,
                targets,
                out,
                budget=budget_from(args),
                concurrency=args.concurrency,
                resume=args.resume,
                seed=args.seed,
                dataset=dataset_info(args, len(problems)),
                progress=not args.quiet,
            )
            if not runner.pending:
                print("ttc eval: every problem already has a record; nothing to run",
                      file=sys.stderr)  # fmt: skip
            summaries = await runner.run()
            return summaries, runner.failed
    finally:
        if cache is not None:
            await cache.aclose()


def cmd_report(args: argparse.Namespace) -> int:
    """``ttc eval report DIR...``: print the comparison table, write report.md and plots."""
    try:
        dirs = find_eval_dirs(args.dirs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not dirs:
        raise ConfigError(f"no evaluation results (records.jsonl) under {args.dirs}")
    summaries = [load_summary_dir(d)[0] for d in dirs]
    out = args.out or (args.dirs[0] if len(args.dirs) == 1 else Path("."))
    paths = write_report(summaries, out)
    print(comparison_table(summaries))
    for p in paths:
        print(f"wrote {p}", file=sys.stderr)
    return 0

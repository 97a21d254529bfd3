"""``ttc eval``: evaluate strategies on a dataset; ``ttc eval report``: compare evaluations.

Heavy imports (the runner, vLLM through the backends, matplotlib) happen inside the commands,
so building the ``ttc`` parser stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError

DEFAULT_OUT = Path("runs/eval")


def add_eval_parser(sub: Any) -> None:
    """Add ``eval`` (and its ``report`` subcommand) to the ``ttc`` subparsers."""
    from orchestrator.cli import add_run_args

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


def add_dataset_args(
    p: argparse.ArgumentParser, *, required: bool = False, split: str | None = None
) -> None:
    """The dataset options ``ttc eval`` and ``ttc search run`` share (read by load_problems)."""
    p.add_argument("--dataset", required=required,
                   help="a JSONL file, or builtin:NAME[?key=value&...]")  # fmt: skip
    p.add_argument("--format", help="dataset format: gsm8k, math, aime, qa (default: detect)")
    p.add_argument("--question-field", help="JSONL field holding the question")
    p.add_argument("--answer-field", help="JSONL field holding the reference answer")
    p.add_argument("--id-field", help="JSONL field holding a stable problem id")
    p.add_argument(
        "--answer-format", help="how to extract the model's answer (auto, boxed, number, ...)"
    )
    p.add_argument("--split", default=split,
                   help="deterministic split, e.g. dev:0.2 or test:0.2"
                   + (f" (default {split})" if split else ""))  # fmt: skip
    p.add_argument("--limit", type=int, help="use only the first N problems (after the split)")


def dataset_mapping(args: argparse.Namespace) -> dict[str, str]:
    """The ``load_dataset`` field mapping given on the command line (``--system`` included)."""
    mapping = {
        "question_field": args.question_field,
        "answer_field": args.answer_field,
        "id_field": args.id_field,
        "answer_format": args.answer_format,
        "system_prompt": args.system,
    }
    return {k: v for k, v in mapping.items() if v is not None}


def load_problems(args: argparse.Namespace) -> list[Any]:
    """The problems the dataset options select; ConfigError when there are none."""
    from orchestrator.datasets import load_dataset

    problems = load_dataset(
        args.dataset, format=args.format, limit=args.limit, split=args.split,
        **dataset_mapping(args),
    )  # fmt: skip
    if not problems:
        raise ConfigError(f"{args.dataset}: no problems selected (check --split and --limit)")
    return problems


def eval_targets(args: argparse.Namespace) -> list[Any]:
    """The (label, spec) targets from --strategy and --config, in that order."""
    from orchestrator.cli import named_spec
    from orchestrator.config import load_yaml
    from orchestrator.evaluation.runner import EvalTarget

    pairs: list[tuple[str, dict[str, Any]]] = []
    for name in args.strategy:
        pairs.append((name, named_spec(name)))
    for path in args.config:
        data = load_yaml(path)
        items = data if isinstance(data, list) else [data]
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ConfigError(f"{path}: item {i} is not a mapping with a 'strategy' field")
            item = dict(item)
            default = path.stem if len(items) == 1 else str(item.get("strategy", f"{path.stem}"))
            pairs.append((str(item.pop("label", default)), item))
    if not pairs:
        raise ConfigError("give at least one --strategy NAME or --config FILE")
    targets: list[EvalTarget] = []
    seen: dict[str, int] = {}
    for label, spec in pairs:
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label}-{seen[label]}"
        targets.append(EvalTarget(label, _overrides_for(spec, args)))
    given = [f for f in OVERRIDES if getattr(args, f, None) is not None]
    for f in given:  # an override no strategy takes is a mistake, not something to ignore
        if all(t.spec.get(f) != getattr(args, f) for t in targets):
            flag = "--" + f.replace("_", "-")
            raise ConfigError(f"{flag}: none of the strategies {[t.label for t in targets]} "
                              f"has a `{f}` setting")  # fmt: skip
    return targets


OVERRIDES = ("n", "temperature", "max_tokens", "verifier")


def _overrides_for(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``spec`` with the --n/--temperature/... flags that its strategy's config accepts.

    With several strategies, ``--n 8`` applies to those that sample ``n`` (not to ``single``).
    """
    from orchestrator.registry import strategies

    fields: set[str] = set()
    name = spec.get("strategy")
    if isinstance(name, str) and name in strategies:
        fields = set(strategies.get(name).Config.model_fields)
    out = dict(spec)
    for f in OVERRIDES:
        value = getattr(args, f, None)
        if value is not None and f in fields:
            out[f] = value
    return out


def dataset_name(source: str) -> str:
    """A directory-friendly name for a dataset source."""
    if source.startswith("builtin:"):
        return re.sub(r"[^A-Za-z0-9_.-]", "_", source.removeprefix("builtin:"))
    return Path(source).stem


def cmd_eval(args: argparse.Namespace) -> int:
    """Run ``ttc eval`` (or ``ttc eval report``)."""
    if args.eval_command == "report":
        return cmd_report(args)
    if not args.dataset:
        raise ConfigError("ttc eval needs --dataset FILE or --dataset builtin:NAME")
    from orchestrator.cli import stdout_to_stderr

    with stdout_to_stderr():
        summaries, runner_failed, out = asyncio.run(_eval(args))
    from orchestrator.evaluation.report import comparison_table

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


async def _eval(args: argparse.Namespace) -> tuple[list[Any], int, Path]:
    from orchestrator.cli import budget_from, build_orchestrator
    from orchestrator.evaluation.runner import EvalRunner

    mapping = dataset_mapping(args)
    problems = load_problems(args)
    targets = eval_targets(args)
    out = args.out or DEFAULT_OUT / dataset_name(args.dataset)
    cache = None
    if not args.no_cache:
        from orchestrator.store import CompletionCache

        cache = CompletionCache(args.cache)
    dataset = {
        "source": args.dataset,
        "format": args.format,
        "split": args.split,
        "limit": args.limit,
        "problems": len(problems),
        **mapping,
    }
    try:
        orch = build_orchestrator(args, cache)
        async with orch:
            runner = EvalRunner(
                orch,
                problems,
                targets,
                out,
                budget=budget_from(args),
                concurrency=args.concurrency,
                resume=args.resume,
                seed=args.seed,
                dataset=dataset,
                progress=not args.quiet,
            )
            if not runner.pending:
                print("ttc eval: every problem already has a record; nothing to run",
                      file=sys.stderr)  # fmt: skip
            summaries = await runner.run()
            return summaries, runner.failed, out
    finally:
        if cache is not None:
            await cache.aclose()


def cmd_report(args: argparse.Namespace) -> int:
    """``ttc eval report DIR...``: print the comparison table, write report.md and plots."""
    from orchestrator.evaluation.report import comparison_table, find_eval_dirs, write_report
    from orchestrator.evaluation.summary import load_summary_dir

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

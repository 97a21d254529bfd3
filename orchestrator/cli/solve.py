"""``ttc solve QUESTION``: answer one question with a strategy, for people or as one JSON object.

The spec comes from ``--strategy NAME`` (a registered strategy or a named config) or ``--config
FILE``, with ``--n``/``--temperature``/``--max-tokens``/``--verifier`` applied by the one override
rule (``orchestrator.specs``): a flag the strategy has no setting for is an error. The spec and
its backends are checked before any backend starts, so a bad name or field exits 2 at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from orchestrator.cli.common import (
    add_run_args,
    budget_from,
    err,
    flag,
    orchestrator_from,
    overrides_from,
    stdout_to_stderr,
)
from orchestrator.errors import ConfigError
from orchestrator.specs import Catalog, apply_overrides, result_json
from orchestrator.types import Problem, Result


def register(sub: Any) -> None:
    """Add ``solve`` to the ``ttc`` subparsers."""
    s = sub.add_parser("solve", help="answer one question with a strategy")
    s.add_argument("question")
    g = s.add_mutually_exclusive_group()
    g.add_argument(
        "--strategy", default="single", help="registered name or configs/strategies/NAME.yaml"
    )
    g.add_argument("--config", help="a strategy spec YAML file")
    add_run_args(s)
    s.add_argument("--reference", help="reference answer (enables pass@k reporting)")
    s.add_argument("--format", default="auto", help="answer format: auto, boxed, gsm8k, ...")
    s.add_argument("--seed", type=int)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--trace", action="store_true", help="print the trace tree")
    s.add_argument("--logprobs", action="store_true", help="keep token logprobs in --json output")
    s.set_defaults(func=cmd_solve)


def solve_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The strategy spec from --strategy / --config plus the override flags (see module doc)."""
    catalog = Catalog()
    spec = catalog.spec_file(args.config) if args.config else catalog.named_spec(args.strategy)
    spec, unused = apply_overrides(spec, overrides_from(args))
    if unused:
        raise ConfigError(
            f"{flag(unused[0])}: strategy {spec['strategy']!r} has no `{unused[0]}` setting"
        )
    return spec


async def _solve(args: argparse.Namespace, spec: dict[str, Any]) -> Result:
    problem = Problem(
        question=args.question,
        system_prompt=args.system,
        reference=args.reference,
        answer_format=args.format,
    )
    async with orchestrator_from(args) as orch:
        return await orch.run(problem, spec, budget_from(args), seed=args.seed)


def cmd_solve(args: argparse.Namespace) -> int:
    """Run ``ttc solve``: 0 answered, 1 no answer (every sample failed)."""
    spec = solve_spec(args)
    with stdout_to_stderr():
        result = asyncio.run(_solve(args, spec))
    if args.json:
        print(json.dumps(result_json(result, args.logprobs)))
    else:
        print_human(result, args.trace)
    if result.candidate is None and not result.budget_exhausted:
        err(f"no answer: {result.details.get('error', 'every sample failed')}")
        return 1
    return 0


def print_human(result: Result, show_trace: bool) -> None:
    """Answer, votes or scores, and usage, for people."""
    print(f"answer: {result.answer if result.answer is not None else '(none)'}")
    votes = result.details.get("votes")
    if votes:
        parts = ", ".join(f"{a} x{w:g}" for a, w in sorted(votes.items(), key=lambda kv: -kv[1]))
        print(f"votes: {parts} (confidence {result.details.get('confidence', 0):.2f})")
    elif result.candidates and result.candidates[0].scores:
        scores = ", ".join(f"{sc.score:.3f}" for sc in result.candidates)
        print(f"scores: {scores}")
    if "pass_at_k" in result.details:
        print(f"pass@k: {result.details['pass_at_k']}")
    u = result.usage
    print(
        f"usage: {u.calls} calls, {u.prompt_tokens} prompt + {u.completion_tokens} completion "
        f"tokens, ${u.cost_usd:.4f}, {u.seconds:.2f} s"
        + ("  [budget exhausted]" if result.budget_exhausted else "")
    )
    if result.details.get("error"):
        print(f"error: {result.details['error']}")
    if show_trace and result.trace:
        _print_span(result.trace, 0)


def _print_span(span: dict[str, Any], depth: int) -> None:
    extra = ""
    if span["kind"] == "backend":
        extra = f" {span['prompt_tokens']}+{span['completion_tokens']} tok"
    print(f"{'  ' * depth}{span['kind']}:{span['name']} {span['seconds'] * 1000:.1f} ms{extra}")
    for child in span.get("children", []):
        _print_span(child, depth + 1)

"""``ttc approaches QUESTION-TYPE``: ask a model for DIV-SE approaches and write them as YAML.

``generate_approaches(orch, question_type, k)`` is one ``single`` run through an Orchestrator (so
the budget, the trace and the backend's capabilities apply) with ``approaches_prompt``; the
completion is parsed by ``parse_numbered_list`` and the first k are kept. The model is asked for
``k + ASK_EXTRA`` items so that duplicates and junk lines still leave k. Picking the best k on a
dev set is left to ``ttc eval`` over strategy configs with different ``approaches_file`` values.

``ttc approaches "QUESTION-TYPE" --k 5 [--out FILE] [--force]``: generate, write (default
``configs/approaches/<slug>.yaml`` under the working directory; an existing file is never
overwritten without ``--force``, checked before any model call) and print the approaches. Exit
codes: 0 written, 1 the model gave no usable list, 2 bad input (existing file, bad config),
3 backend failure.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.budget import Budget
from orchestrator.cli.common import (
    add_backend_args,
    add_budget_args,
    budget_from,
    err,
    orchestrator_from,
    stdout_to_stderr,
)
from orchestrator.errors import ConfigError
from orchestrator.runner import Orchestrator
from orchestrator.types import Problem, Usage
from strategies.div_se_approaches import (
    approaches_prompt,
    parse_numbered_list,
    write_approaches,
)

APPROACHES_DIR = Path("configs/approaches")
"""Where ``ttc approaches`` writes by default (relative to the working directory)."""

ASK_EXTRA = 2
"""How many more items than k the model is asked for (duplicates and junk still leave k)."""


def slugify(text: str) -> str:
    """A file-name slug: lowercase words joined by ``-`` (``approaches`` when nothing is left)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60].rstrip("-")
    return slug or "approaches"


def default_path(question_type: str) -> Path:
    """``configs/approaches/<slug>.yaml`` for a question type."""
    return APPROACHES_DIR / f"{slugify(question_type)}.yaml"


@dataclass
class Proposal:
    """What ``generate_approaches`` got from the model.

    Attributes:
        question_type: the question type asked about.
        approaches: the parsed, deduplicated approaches (at most k; possibly fewer, or none).
        text: the model's completion ("" when there was none).
        usage: tokens and calls spent.
        error: why there is no completion (backend failure, budget), else None.
    """

    question_type: str
    approaches: list[str]
    text: str = ""
    usage: Usage = field(default_factory=Usage)
    error: str | None = None


async def generate_approaches(
    orch: Orchestrator,
    question_type: str,
    k: int = 5,
    *,
    temperature: float = 0.0,
    max_tokens: int = 256,
    budget: Budget | None = None,
    backend: str | None = None,
    seed: int | None = None,
) -> Proposal:
    """Ask the model for approaches to ``question_type`` and keep the first ``k`` distinct ones.

    One ``single`` run through ``orch`` (budget and trace apply). The last line of a completion
    cut at ``max_tokens`` is not read (its item may be cut short). Never raises for an unusable
    answer: the Proposal then has fewer approaches (or none) and, without a completion, an error.
    """
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    problem = Problem(
        question=approaches_prompt(question_type, k + ASK_EXTRA), answer_format="text"
    )
    spec = {"strategy": "single", "temperature": temperature, "max_tokens": max_tokens}
    result = await orch.run(problem, spec, budget, backend=backend, seed=seed)
    if result.candidate is None:
        error = str(result.details.get("error") or "no completion (budget exhausted?)")
        return Proposal(question_type, [], usage=result.usage, error=error)
    text = result.candidate.text
    complete = text if result.candidate.finish_reason != "length" else text.rpartition("\n")[0]
    return Proposal(question_type, parse_numbered_list(complete)[:k], text, result.usage)


def register(sub: Any) -> None:
    """Add ``approaches`` to the ``ttc`` subparsers."""
    a = sub.add_parser(
        "approaches",
        help="ask the model for DIV-SE approaches to a question type and write them as YAML",
        description="Ask the model for approaches suited to QUESTION_TYPE, keep k distinct ones, "
        "write them to a YAML file for div_se / idiv_se (approaches_file) and print them.",
    )
    a.add_argument("question_type", help='e.g. "math word problems"')
    a.add_argument("--k", type=int, default=5, help="approaches to keep (default 5)")
    a.add_argument("--out", type=Path, help=f"output file (default {APPROACHES_DIR}/<slug>.yaml)")
    a.add_argument("--force", action="store_true", help="overwrite an existing output file")
    add_backend_args(a)
    a.add_argument("--temperature", type=float, default=0.0, help="default 0")
    a.add_argument("--max-tokens", type=int, default=256, help="default 256")
    add_budget_args(a)
    a.add_argument("--seed", type=int)
    a.set_defaults(func=cmd_approaches)


def cmd_approaches(args: argparse.Namespace) -> int:
    """Run ``ttc approaches``; see the module docstring for the exit codes."""
    if args.k < 1:
        raise ConfigError(f"--k must be at least 1, got {args.k}")
    out = args.out or default_path(args.question_type)
    if out.exists() and not args.force:
        err(f"{out} exists; pass --force to overwrite it")
        return 2

    async def ask() -> Proposal:
        async with orchestrator_from(args) as orch:
            return await generate_approaches(
                orch,
                args.question_type,
                args.k,
                temperature=args.temperature,
                max_tokens=args.max_tokens,
                budget=budget_from(args),
                seed=args.seed,
            )

    with stdout_to_stderr():
        proposal = asyncio.run(ask())
    if not proposal.approaches:
        why = proposal.error or f"no numbered list in the model's answer: {proposal.text[:200]!r}"
        err(f"no approaches: {why}")
        return 1
    if len(proposal.approaches) < args.k:
        print(f"ttc: warning: only {len(proposal.approaches)} distinct approaches", file=sys.stderr)
    write_approaches(out, args.question_type, proposal.approaches, force=args.force)
    for i, approach in enumerate(proposal.approaches, 1):
        print(f"{i}. {approach}")
    print(f"wrote {out}", file=sys.stderr)
    return 0

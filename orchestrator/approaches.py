"""Approach lists for DIV-SE / IDIV-SE, and the ``ttc approaches`` command.

Naik et al. 2023 ("Diversity of Thought Improves Reasoning Abilities of LLMs", arXiv:2310.07088)
build their prompts offline, once per task: the model is asked for approaches suited to the
problem type ("work backwards", "write an equation", ...), and the best k (3-5) are kept. This
module does the asking and the bookkeeping:

- ``generate_approaches(orch, question_type, k)``: one ``single`` run through an Orchestrator (so
  the budget, the trace and the backend's capabilities apply) with ``approaches_prompt``; the
  completion is parsed by ``parse_numbered_list`` (numbered items, else bullets; markdown
  stripped; duplicates dropped) and the first k are kept. The model is asked for ``k + ASK_EXTRA``
  items so that duplicates and junk lines still leave k. Picking the best k on a dev set is left
  to ``ttc eval`` over strategy configs with different ``approaches_file`` values.
- ``write_approaches`` / ``load_approaches``: the YAML file ``{question_type: ..., approaches:
  [...]}`` that the strategies read through ``approaches_file`` (a bare list is accepted too).
- ``ttc approaches "QUESTION-TYPE" --k 5 [--out FILE] [--force]``: generate, write (default
  ``configs/approaches/<slug>.yaml``; an existing file is never overwritten without ``--force``,
  checked before any model call) and print the approaches. Exit codes: 0 written, 1 the model gave
  no usable list, 2 bad input (existing file, bad config), 3 backend failure (via ``ttc``'s main).

``MATH_APPROACHES`` is the strategies' default list (the same as ``configs/approaches/math.yaml``).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from orchestrator.config import load_yaml
from orchestrator.errors import ConfigError
from orchestrator.types import Problem, Usage

if TYPE_CHECKING:
    from orchestrator.budget import Budget
    from orchestrator.runner import Orchestrator

APPROACHES_DIR = Path("configs/approaches")
"""Where ``ttc approaches`` writes by default (relative to the working directory)."""

MATH_APPROACHES: tuple[str, ...] = (
    "Break the problem into small steps and compute each one in order",
    "Work backwards from the quantity the question asks for to the given facts",
    "Translate the problem into an equation and solve it with algebra",
    "Organise the known quantities in a table and fill it in step by step",
    "Estimate the answer first, then compute it exactly and check it against the estimate",
)
"""Default approaches for arithmetic and math word problems (configs/approaches/math.yaml)."""

ASK_EXTRA = 2
"""How many more items than k the model is asked for (duplicates and junk still leave k)."""

MAX_APPROACH_CHARS = 200
"""Longer items are cut at a word boundary: an approach is a phrase, not a solution."""

PROMPT = (
    "List {m} different approaches to solving questions of this type: {question_type}.\n"
    "Each approach is one short instruction (at most 15 words) naming a distinct method, for "
    'example "Work backwards from the quantity the question asks for".\n'
    'Write them as a numbered list, one per line ("1. ...", "2. ..."), and nothing else.'
)

FILE_HEADER = "# Approaches for div_se / idiv_se (their approaches_file), by `ttc approaches`.\n"

_NUMBERED_RE = re.compile(r"^\s*[*_#>]*\s*\(?(\d{1,2})(?:[.):]|\s+-)\s*(.+)$")
_BULLET_RE = re.compile(r"^\s*[-*\u2022+]\s+(.+)$")
_MARKUP_RE = re.compile(r"\*\*|__|`")


def approaches_prompt(question_type: str, m: int) -> str:
    """The request for ``m`` approaches to questions of ``question_type``."""
    return PROMPT.format(m=m, question_type=question_type.strip())


def clean_item(item: str) -> str:
    """An item without markdown, quotes, surrounding space or a trailing period, length-capped."""
    text = " ".join(_MARKUP_RE.sub("", item).split())
    text = text.strip(" \"'").rstrip(".;:,").strip(" \"'")
    if len(text) > MAX_APPROACH_CHARS:
        text = text[:MAX_APPROACH_CHARS].rsplit(" ", 1)[0]
    return text


def _key(item: str) -> str:
    return "".join(ch for ch in item.lower() if ch.isalnum())


def dedup(items: list[str]) -> list[str]:
    """``items`` without repeats (case, spacing and punctuation ignored), first kept."""
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        key = _key(item)
        if key and key not in seen:
            seen.add(key)
            out.append(item)
    return out


def parse_numbered_list(text: str) -> list[str]:
    """The items of the numbered list in ``text`` (``1.``, ``2)``, ``(3)``, ``4:``, ``5 -``).

    Lines that are not items (a preamble, continuation lines, a closing remark) are ignored.
    Without any numbered item, bullet items (``-``, ``*``, ``•``) are taken instead. Items are
    cleaned (``clean_item``), items shorter than 3 characters dropped, duplicates removed.
    """
    lines = text.splitlines()
    items = [m.group(2) for line in lines if (m := _NUMBERED_RE.match(line))]
    if not items:
        items = [m.group(1) for line in lines if (m := _BULLET_RE.match(line))]
    return dedup([c for c in map(clean_item, items) if len(c) >= 3])


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


def load_approaches(path: str | Path) -> list[str]:
    """The approaches of a YAML file: ``{approaches: [...], ...}`` or a bare list of strings.

    Raises:
        ConfigError: unreadable file, invalid YAML, wrong shape, or an empty list.
    """
    data = load_yaml(path)
    items = data.get("approaches") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ConfigError(
            f"{path}: expected a non-empty list of approaches, as a list or under `approaches:`"
        )
    bad = [i for i, a in enumerate(items) if not isinstance(a, str) or not a.strip()]
    if bad:
        raise ConfigError(f"{path}: approach {bad[0] + 1} is not a non-empty string")
    return [a.strip() for a in items]


def write_approaches(
    path: str | Path, question_type: str, approaches: list[str], *, force: bool = False
) -> Path:
    """Write ``{question_type, approaches}`` as YAML (creating directories); return the path.

    Raises:
        FileExistsError: ``path`` exists and ``force`` is False.
    """
    p = Path(path)
    if p.exists() and not force:
        raise FileExistsError(f"{p} exists; pass --force to overwrite it")
    p.parent.mkdir(parents=True, exist_ok=True)
    data = {"question_type": question_type, "approaches": list(approaches)}
    p.write_text(FILE_HEADER + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100))
    return p


def add_approaches_parser(sub: Any) -> None:
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
    a.add_argument("--backend", help="backend name from the backends file")
    a.add_argument("--model", help="override the backend's model")
    a.add_argument(
        "--backends", help="backends file (default: $TTC_BACKENDS_FILE or configs/backends.yaml)"
    )
    a.add_argument("--temperature", type=float, default=0.0, help="default 0")
    a.add_argument("--max-tokens", type=int, default=256, help="default 256")
    a.add_argument("--budget-tokens", type=int, help="max completion tokens")
    a.add_argument("--budget-calls", type=int, help="max backend calls")
    a.add_argument("--budget-usd", type=float, help="max dollars")
    a.add_argument("--budget-seconds", type=float, help="max seconds")
    a.add_argument("--seed", type=int)


def cmd_approaches(args: argparse.Namespace) -> int:
    """Run ``ttc approaches``; see the module docstring for the exit codes."""
    from orchestrator import cli

    if args.k < 1:
        raise ConfigError(f"--k must be at least 1, got {args.k}")
    out = args.out or default_path(args.question_type)
    if out.exists() and not args.force:
        print(f"ttc: error: {out} exists; pass --force to overwrite it", file=sys.stderr)
        return 2

    async def ask() -> Proposal:
        orch = cli.build_orchestrator(args)
        async with orch:
            await orch.start()
            return await generate_approaches(
                orch,
                args.question_type,
                args.k,
                temperature=args.temperature,
                max_tokens=args.max_tokens,
                budget=cli.budget_from(args),
                seed=args.seed,
            )

    with cli.stdout_to_stderr():
        proposal = asyncio.run(ask())
    if not proposal.approaches:
        why = proposal.error or f"no numbered list in the model's answer: {proposal.text[:200]!r}"
        print(f"ttc: error: no approaches: {why}", file=sys.stderr)
        return 1
    if len(proposal.approaches) < args.k:
        print(f"ttc: warning: only {len(proposal.approaches)} distinct approaches", file=sys.stderr)
    write_approaches(out, args.question_type, proposal.approaches, force=args.force)
    for i, approach in enumerate(proposal.approaches, 1):
        print(f"{i}. {approach}")
    print(f"wrote {out}", file=sys.stderr)
    return 0

"""What the ``ttc`` subcommands share: flags declared once, and turning them into values.

Flags: ``add_backend_args`` (``--backend``, ``--model``, ``--backends``), ``add_budget_args``
(``--budget-*``), ``add_run_args`` (both, plus the strategy overrides ``--n``,
``--temperature``, ``--max-tokens``, ``--verifier`` and ``--system``) and ``add_dataset_args``
(``--dataset`` and its field mapping, ``--split``, ``--limit``). Values: ``budget_from``,
``overrides_from``, ``orchestrator_from`` (``Orchestrator.from_config`` with those flags),
``load_problems``. Process helpers: ``stdout_to_stderr`` (keep ``--json`` stdout clean of vLLM's
prints) and ``sigterm_as_interrupt``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from orchestrator.budget import Budget
from orchestrator.datasets import load_dataset
from orchestrator.errors import ConfigError
from orchestrator.runner import Orchestrator
from orchestrator.specs import OVERRIDE_FIELDS
from orchestrator.store.cache import CompletionCache
from orchestrator.types import Problem


def err(msg: str) -> None:
    """Print ``ttc: error: msg`` on stderr."""
    print(f"ttc: error: {msg}", file=sys.stderr, flush=True)


def say(msg: str) -> None:
    """Print ``ttc: msg`` on stderr (progress and notes; stdout is for results)."""
    print(f"ttc: {msg}", file=sys.stderr, flush=True)


def status(msg: str) -> None:
    """Print a progress line of a long step (the embedded model's conversion) on stderr."""
    print(msg, file=sys.stderr, flush=True)


# -- flags -------------------------------------------------------------------------------------


def add_backend_args(p: argparse.ArgumentParser) -> None:
    """``--backend``, ``--model``, ``--backends``."""
    p.add_argument("--backend", help="backend name from the backends file")
    p.add_argument("--model", help="override the backend's model")
    p.add_argument(
        "--backends", help="backends file (default: $TTC_BACKENDS_FILE or configs/backends.yaml)"
    )


def add_budget_args(p: argparse.ArgumentParser) -> None:
    """``--budget-tokens``, ``--budget-calls``, ``--budget-usd``, ``--budget-seconds``."""
    p.add_argument("--budget-tokens", type=int, help="max completion tokens per run")
    p.add_argument("--budget-calls", type=int, help="max backend calls per run")
    p.add_argument("--budget-usd", type=float, help="max dollars per run")
    p.add_argument("--budget-seconds", type=float, help="max seconds per run")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The options ``solve`` and ``eval`` share: overrides, backend, budget, system prompt."""
    p.add_argument("--n", type=int, help="samples (for strategies with `n`)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--verifier", help="verifier name (for strategies with `verifier`)")
    add_backend_args(p)
    add_budget_args(p)
    p.add_argument("--system", help="system prompt")


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


# -- values ------------------------------------------------------------------------------------


def budget_from(args: argparse.Namespace) -> Budget | None:
    """The per-run Budget from the --budget-* flags (None when no flag is given)."""
    fields = {
        "max_completion_tokens": args.budget_tokens,
        "max_calls": args.budget_calls,
        "max_usd": args.budget_usd,
        "max_seconds": args.budget_seconds,
    }
    given = {k: v for k, v in fields.items() if v is not None}
    return Budget(**given) if given else None


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """The strategy overrides given on the command line (``--n 8`` -> ``{"n": 8}``)."""
    return {f: getattr(args, f) for f in OVERRIDE_FIELDS if getattr(args, f, None) is not None}


def flag(field: str) -> str:
    """The command-line flag of a config field (``max_tokens`` -> ``--max-tokens``)."""
    return "--" + field.replace("_", "-")


def orchestrator_from(
    args: argparse.Namespace, cache: CompletionCache | None = None
) -> Orchestrator:
    """``Orchestrator.from_config`` with ``--backends``, ``--backend`` and ``--model``; nothing
    is built or started until a run needs it."""
    return Orchestrator.from_config(
        args.backends,
        default_backend=args.backend,
        model=args.model,
        progress=status,
        cache=cache,
    )


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


def load_problems(args: argparse.Namespace) -> list[Problem]:
    """The problems the dataset options select; ConfigError when there are none."""
    problems = load_dataset(
        args.dataset, format=args.format, limit=args.limit, split=args.split,
        **dataset_mapping(args),
    )  # fmt: skip
    if not problems:
        raise ConfigError(f"{args.dataset}: no problems selected (check --split and --limit)")
    return problems


def dataset_info(args: argparse.Namespace, problems: int) -> dict[str, Any]:
    """How the problems were selected, for ``meta.json`` and study attributes."""
    return {
        "source": args.dataset,
        "format": args.format,
        "split": args.split,
        "limit": args.limit,
        "problems": problems,
        **dataset_mapping(args),
    }


# -- process -----------------------------------------------------------------------------------


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to file descriptor 1 (by us, vLLM or its worker processes) to
    stderr for the duration, so that ``--json`` output on stdout stays one clean object."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def sigterm_as_interrupt() -> None:
    """Treat SIGTERM like Ctrl-C: unwind normally, so that backends close (a vLLM engine's
    worker processes would otherwise outlive a killed ``ttc``, holding their memory) and an
    evaluation writes its summary. ``ttc serve`` leaves signals to uvicorn."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)

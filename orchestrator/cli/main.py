"""``ttc``: the entry point, the only module that knows every subcommand.

Subcommands: ``solve`` (answer one question with a strategy), ``eval`` (evaluate strategies on a
dataset), ``search`` (architecture search), ``approaches`` (ask a model for DIV-SE approaches),
``serve`` and ``keys`` (the REST service and its API keys), ``strategies`` / ``verifiers`` /
``backends`` (list what is registered or configured) and ``model prepare`` (convert the embedded
model once).

Exit codes: 0 answered, 1 no answer (every sample failed), 2 bad input (unknown name, bad
config, missing capability: always before any backend starts), 3 backend failure,
130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from orchestrator.cli import approaches, info, keys, search, serve, solve
from orchestrator.cli import eval as eval_cmd
from orchestrator.cli.common import err, sigterm_as_interrupt
from orchestrator.errors import BackendError, CapabilityError, ConfigError, RegistryError

SUBCOMMANDS = (solve, eval_cmd, search, approaches, serve, keys, info)
"""Modules with a ``register(subparsers)``, in the order ``ttc --help`` lists them."""

INTERRUPTED = {
    "eval": "interrupted; finished problems are saved: rerun the command with --resume",
    "search": "interrupted; finished trials are saved and the trial in flight is queued "
    "again: rerun the same command to continue the study",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``ttc`` argument parser with every subcommand."""
    p = argparse.ArgumentParser(prog="ttc", description="Test-time compute for LLM reasoning.")
    sub = p.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ttc`` console script."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "own_signals", False):
        sigterm_as_interrupt()
    try:
        code: int = args.func(args)
        return code
    except (ConfigError, RegistryError, CapabilityError) as exc:
        err(str(exc))
        return 2
    except BackendError as exc:
        err(f"backend failed: {exc}")
        return 3
    except KeyboardInterrupt:
        err(INTERRUPTED.get(args.command, "interrupted"))
        return 130


if __name__ == "__main__":
    sys.exit(main())

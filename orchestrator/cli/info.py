"""``ttc strategies``, ``ttc verifiers``, ``ttc backends`` (what is registered or configured) and
``ttc model prepare`` (convert the embedded model once and print its directory)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from orchestrator.backends.config import load_backends
from orchestrator.backends.embedded import ensure_embedded_model
from orchestrator.cli.common import status
from orchestrator.registry import Registry, strategies, verifiers


def register(sub: Any) -> None:
    """Add the listing commands and ``model prepare`` to the ``ttc`` subparsers."""
    sub.add_parser("strategies", help="list registered strategies").set_defaults(
        func=lambda args: list_registry(strategies)
    )
    sub.add_parser("verifiers", help="list registered verifiers").set_defaults(
        func=lambda args: list_registry(verifiers)
    )
    b = sub.add_parser("backends", help="list configured backends (* = default)")
    b.add_argument("--backends", help="backends file")
    b.set_defaults(func=cmd_backends)
    m = sub.add_parser("model", help="embedded model management")
    msub = m.add_subparsers(dest="model_command", required=True)
    mp = msub.add_parser("prepare", help="convert the embedded model (once) and print its path")
    mp.add_argument("--cache-dir")
    mp.set_defaults(func=cmd_model_prepare)


def list_registry(registry: Registry[Any]) -> int:
    """One line per registered name: the name and its docstring's first line."""
    for name, cls in registry.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        print(f"{name:20s} {doc[0] if doc else ''}")
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    """The declared backends, the default marked ``*`` (nothing is built)."""
    cfg = load_backends(args.backends)
    for name, b in cfg.backends.items():
        mark = "*" if name == cfg.default else " "
        where = b.base_url or b.model or ""
        print(f"{mark} {name:16s} {b.kind:9s} {where}")
    return 0


def cmd_model_prepare(args: argparse.Namespace) -> int:
    """Convert the embedded model if needed and print its directory."""
    path = ensure_embedded_model(Path(args.cache_dir) if args.cache_dir else None, progress=status)
    print(path)
    return 0

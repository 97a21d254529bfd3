"""The ``ttc`` command.

Subcommands: ``solve`` (answer one question with a strategy), ``eval`` (evaluate strategies on a
dataset; see ``orchestrator.evaluation.cli``), ``search`` (architecture search; see
``search.cli``), ``approaches`` (ask a model for DIV-SE approaches;
see ``orchestrator.approaches``), ``serve`` and ``keys`` (the REST service and its API keys;
see ``orchestrator.api.cli``), ``strategies`` / ``verifiers`` / ``backends`` (list what is
registered or configured) and ``model prepare`` (convert the embedded model once).
Exit codes: 0 answered, 1 no answer (every sample failed), 2 bad input (unknown name, bad
config, missing capability), 3 backend failure, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from orchestrator.budget import Budget
from orchestrator.config import load_backends, load_yaml
from orchestrator.errors import BackendError, CapabilityError, ConfigError, RegistryError
from orchestrator.registry import strategies, verifiers
from orchestrator.types import Problem, Result

if TYPE_CHECKING:
    from orchestrator.store.cache import CompletionCache

STRATEGY_DIR = Path("configs/strategies")


def _err(msg: str) -> None:
    print(f"ttc: error: {msg}", file=sys.stderr)


def named_spec(name: str) -> dict[str, Any]:
    """The spec of a registered strategy name or of ``configs/strategies/NAME.yaml``."""
    if name in strategies:
        return {"strategy": name}
    if (STRATEGY_DIR / f"{name}.yaml").is_file():
        data = load_yaml(STRATEGY_DIR / f"{name}.yaml")
        if not isinstance(data, dict):
            raise ConfigError(f"{STRATEGY_DIR / f'{name}.yaml'}: expected a mapping")
        return dict(data)
    named = sorted(p.stem for p in STRATEGY_DIR.glob("*.yaml"))
    raise RegistryError(
        f"unknown strategy {name!r}; registered: {', '.join(strategies.names())}"
        + (f"; named configs in {STRATEGY_DIR}: {', '.join(named)}" if named else "")
    )


def apply_overrides(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """``spec`` with the --n/--temperature/--max-tokens/--verifier flags that were given."""
    spec = dict(spec)
    for field in ("n", "temperature", "max_tokens", "verifier"):
        value = getattr(args, field, None)
        if value is not None:
            spec[field] = value
    return spec


def strategy_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The strategy spec from --strategy / --config plus the --n/--verifier/... overrides."""
    if args.config:
        data = load_yaml(args.config)
        if not isinstance(data, dict):
            raise ConfigError(f"{args.config}: expected a mapping with a 'strategy' field")
        return apply_overrides(data, args)
    return apply_overrides(named_spec(args.strategy), args)


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


def _status(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_orchestrator(args: argparse.Namespace, cache: CompletionCache | None = None) -> Any:
    """The Orchestrator over the backend chosen by --backends / --backend / --model."""
    from orchestrator.backends.kinds import create_backend
    from orchestrator.runner import Orchestrator

    cfg = load_backends(args.backends)
    name = args.backend or cfg.default
    if name not in cfg.backends:
        raise ConfigError(
            f"unknown backend {name!r}; configured: {', '.join(sorted(cfg.backends))}"
        )
    if args.model:
        cfg.backends[name] = cfg.backends[name].model_copy(update={"model": args.model})
    if cfg.backends[name].kind == "embedded":
        cfg.backends[name].options.setdefault("progress", _status)
    return Orchestrator({name: create_backend(name, cfg.backends[name])}, name, cache=cache)


async def _solve(args: argparse.Namespace) -> Result:
    orch = build_orchestrator(args)
    problem = Problem(
        question=args.question,
        system_prompt=args.system,
        reference=args.reference,
        answer_format=args.format,
    )
    async with orch:
        await orch.start()
        result: Result = await orch.run(
            problem, strategy_spec(args), budget_from(args), seed=args.seed
        )
        return result


def result_json(result: Result, with_logprobs: bool = False) -> dict[str, Any]:
    """The ``--json`` object: the Result, candidates without logprobs unless asked."""
    data = result.model_dump(mode="json")
    if not with_logprobs:
        for sc in data["candidates"]:
            sc["candidate"].pop("logprobs", None)
        if data.get("candidate"):
            data["candidate"].pop("logprobs", None)
    return data


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


def cmd_solve(args: argparse.Namespace) -> int:
    with stdout_to_stderr():
        result = asyncio.run(_solve(args))
    if args.json:
        print(json.dumps(result_json(result, args.logprobs)))
    else:
        print_human(result, args.trace)
    if result.candidate is None and not result.budget_exhausted:
        _err(f"no answer: {result.details.get('error', 'every sample failed')}")
        return 1
    return 0


def cmd_list(kind: str) -> int:
    registry = strategies if kind == "strategies" else verifiers
    for name, cls in registry.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        print(f"{name:20s} {doc[0] if doc else ''}")
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    cfg = load_backends(args.backends)
    for name, b in cfg.backends.items():
        mark = "*" if name == cfg.default else " "
        where = b.base_url or b.model or ""
        print(f"{mark} {name:16s} {b.kind:9s} {where}")
    return 0


def cmd_model_prepare(args: argparse.Namespace) -> int:
    from orchestrator.backends.embedded import ensure_embedded_model

    path = ensure_embedded_model(Path(args.cache_dir) if args.cache_dir else None, progress=_status)
    print(path)
    return 0


def add_run_args(s: argparse.ArgumentParser) -> None:
    """The options ``solve`` and ``eval`` share: overrides, backend, budget, prompt, seed."""
    s.add_argument("--n", type=int, help="samples (for strategies with `n`)")
    s.add_argument("--temperature", type=float)
    s.add_argument("--max-tokens", type=int)
    s.add_argument("--verifier", help="verifier name (for strategies with `verifier`)")
    s.add_argument("--backend", help="backend name from the backends file")
    s.add_argument("--model", help="override the backend's model")
    s.add_argument(
        "--backends", help="backends file (default: $TTC_BACKENDS_FILE or configs/backends.yaml)"
    )
    s.add_argument("--budget-tokens", type=int, help="max completion tokens per run")
    s.add_argument("--budget-calls", type=int, help="max backend calls per run")
    s.add_argument("--budget-usd", type=float, help="max dollars per run")
    s.add_argument("--budget-seconds", type=float, help="max seconds per run")
    s.add_argument("--system", help="system prompt")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ttc", description="Test-time compute for LLM reasoning.")
    sub = p.add_subparsers(dest="command", required=True)
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
    from orchestrator.evaluation.cli import add_eval_parser

    add_eval_parser(sub)
    from orchestrator.approaches import add_approaches_parser

    add_approaches_parser(sub)
    from orchestrator.api.cli import add_service_parsers
    from search.cli import add_search_parser

    add_search_parser(sub)

    add_service_parsers(sub)
    sub.add_parser("strategies", help="list registered strategies")
    sub.add_parser("verifiers", help="list registered verifiers")
    b = sub.add_parser("backends", help="list configured backends (* = default)")
    b.add_argument("--backends", help="backends file")
    m = sub.add_parser("model", help="embedded model management")
    msub = m.add_subparsers(dest="model_command", required=True)
    mp = msub.add_parser("prepare", help="convert the embedded model (once) and print its path")
    mp.add_argument("--cache-dir")
    return p


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def sigterm_as_interrupt() -> None:
    """Treat SIGTERM like Ctrl-C: unwind normally, so that backends close (a vLLM engine's
    worker processes would otherwise outlive a killed ``ttc``, holding their memory) and an
    evaluation writes its summary. ``ttc serve`` leaves signals to uvicorn."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ttc`` console script."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command != "serve":
        sigterm_as_interrupt()
    try:
        if args.command == "solve":
            return cmd_solve(args)
        if args.command == "eval":
            from orchestrator.evaluation.cli import cmd_eval

            return cmd_eval(args)
        if args.command == "approaches":
            from orchestrator.approaches import cmd_approaches

            return cmd_approaches(args)
        if args.command == "search":
            from search.cli import cmd_search

            return cmd_search(args)
        if args.command in ("strategies", "verifiers"):
            return cmd_list(args.command)
        if args.command == "backends":
            return cmd_backends(args)
        if args.command in ("serve", "keys"):
            from orchestrator.api.cli import cmd_keys, cmd_serve

            return cmd_serve(args) if args.command == "serve" else cmd_keys(args)
        return cmd_model_prepare(args)
    except (ConfigError, RegistryError, CapabilityError) as exc:
        _err(str(exc))
        return 2
    except BackendError as exc:
        _err(f"backend failed: {exc}")
        return 3
    except KeyboardInterrupt:
        if args.command == "eval":
            _err("interrupted; finished problems are saved: rerun the command with --resume")
        elif args.command == "search":
            _err("interrupted; finished trials are saved and the trial in flight is queued "
                 "again: rerun the same command to continue the study")
        else:
            _err("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

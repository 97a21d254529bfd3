"""Large Language Monkeys on the embedded model: coverage (pass@k) keeps rising, majority plateaus.

Runs ``repeated_sampling`` with ``--n`` samples per problem through the evaluation harness
(``EvalRunner``: completion cache, durable records, resume) on

- ``--addition`` two-digit addition problems (``builtin:addition``, seed 0), and
- the first ``--gsm8k`` problems of ``../shared/data/gsm8k_test_dev500.jsonl``,

then reports pass@k (unbiased estimator) and majority@k for k = 1, 2, 4, ... n, with the fitted
exponentiated power law ``c(k) = exp(a * k^b)`` (Brown et al. 2024).

Usage: ``python -m benchmarks.coverage [--n 64] [--addition 100] [--gsm8k 50]`` (a module, like
the other benchmarks). Interrupted runs continue where they stopped (records and the completion
cache live in ``--work``). Prints a Markdown table and writes ``benchmarks/results/coverage.json``,
``docs/coverage.md`` and ``docs/coverage.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from orchestrator.datasets import load_dataset
from orchestrator.evaluation.harness import EvalRunner, EvalTarget
from orchestrator.evaluation.report import coverage_table, plot_coverage
from orchestrator.evaluation.summary import Summary
from orchestrator.runner import Orchestrator
from orchestrator.store import CompletionCache

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "coverage.json"
DOCS = ROOT / "docs"
GSM8K_DEV = ROOT.parent / "shared" / "data" / "gsm8k_test_dev500.jsonl"


def datasets(args: argparse.Namespace) -> dict[str, tuple[str, dict[str, Any], int]]:
    """label -> (dataset source, load options, max_tokens)."""
    out: dict[str, tuple[str, dict[str, Any], int]] = {}
    if args.addition:
        out["addition-2d"] = (f"builtin:addition?n={args.addition}&digits=2", {}, args.max_tokens)
    if args.gsm8k:
        out["gsm8k-dev"] = (
            str(GSM8K_DEV),
            {"format": "gsm8k", "limit": args.gsm8k},
            args.gsm8k_max_tokens,
        )
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from orchestrator.backends.vllm_engine import embedded_backend

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.kv_cache_gib))
    work = Path(args.work)
    cache = CompletionCache(f"sqlite:///{work / 'cache.db'}")
    backend = embedded_backend(name="local")
    summaries: dict[str, Summary] = {}
    out: dict[str, Any] = {
        "command": "python -m benchmarks.coverage " + " ".join(args.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
        "model": backend.model,
        "n": args.n,
        "datasets": {},
    }
    try:
        async with Orchestrator([backend], cache=cache) as orch:
            for label, (source, opts, max_tokens) in datasets(args).items():
                problems = load_dataset(source, **opts)
                spec = {"strategy": "repeated_sampling", "n": args.n, "max_tokens": max_tokens}
                t0 = time.perf_counter()
                runner = EvalRunner(
                    orch, problems, [EvalTarget(label, spec)], work,
                    resume=True, concurrency=args.concurrency,
                    dataset={"source": source, **opts},
                )  # fmt: skip
                (summary,) = await runner.run()
                summaries[label] = summary
                out["datasets"][label] = {
                    "source": source,
                    "problems": summary.problems,
                    "max_tokens": max_tokens,
                    "pass_at_k": summary.pass_at_k,
                    "majority_at_k": summary.majority_at_k,
                    "power_law": summary.power_law.model_dump() if summary.power_law else None,
                    "completion_tokens_mean": summary.completion_tokens_mean,
                    "wall_seconds": summary.wall_seconds,
                    "wall_seconds_this_run": round(time.perf_counter() - t0, 1),
                    "tokens_per_second": summary.tokens_per_second,
                }
                save(out)
    finally:
        await cache.aclose()
    DOCS.mkdir(exist_ok=True)
    plot_coverage(list(summaries.values()), DOCS / "coverage.png")
    table = coverage_table(list(summaries.values()))
    (DOCS / "coverage.md").write_text(
        "# Coverage on the embedded model (Large Language Monkeys)\n\n"
        f"Produced by `{out['command']}` on {out['machine']} ({out['model']}, "
        f"{args.n} samples per problem, repeated_sampling).\n\n"
        "pass@k is the unbiased estimator over the samples; majority@k the expected accuracy of "
        "a majority vote over k of them.\n\n" + table + "\n\n![coverage](coverage.png)\n"
    )
    print(table)
    return out


def save(out: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=64, help="samples per problem (max k)")
    p.add_argument("--addition", type=int, default=100, help="two-digit addition problems")
    p.add_argument("--gsm8k", type=int, default=50, help="GSM8K dev problems (0 = skip)")
    p.add_argument("--max-tokens", type=int, default=96, help="max tokens, addition")
    p.add_argument("--gsm8k-max-tokens", type=int, default=256, help="max tokens, GSM8K")
    p.add_argument("--concurrency", type=int, default=2, help="problems in flight")
    p.add_argument("--kv-cache-gib", type=int, default=4, help="vLLM CPU KV cache (GiB)")
    p.add_argument("--work", default="runs/bench-coverage", help="records + cache (resumable)")
    args = p.parse_args(argv)
    import sys

    args.argv = sys.argv[1:] if argv is None else argv
    return args


if __name__ == "__main__":
    from orchestrator.cli import sigterm_as_interrupt

    sigterm_as_interrupt()  # a killed benchmark still shuts its vLLM engine down
    args = parse()
    if args.gsm8k and not GSM8K_DEV.is_file():
        raise SystemExit(f"{GSM8K_DEV} not found: run with --gsm8k 0 or put ../shared beside it")
    result = asyncio.run(run(args))
    save(result)
    print(f"wrote {RESULTS}, {DOCS / 'coverage.md'}, {DOCS / 'coverage.png'}")

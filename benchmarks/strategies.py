"""The strategy library side by side on the embedded model, through the evaluation harness.

On ``--addition`` two-digit addition problems (``builtin:addition``, seed 0) and the first
``--gsm8k`` problems of ``../shared/data/gsm8k_test_dev500.jsonl``, one ``EvalRunner`` (what
``ttc eval`` runs) per dataset evaluates: single, self_consistency (n = 16, 8, 4), rpc (n = 16,
8, 4), early_stopping_sc, adaptive_self_eval, best_of_n with self_eval, sift and div_se. The
n = 16 runs go first, so that n = 8 and n = 4 find their samples in the completion cache (the
first k samples of the same request), as ``ttc eval`` does for any strategies sharing samples.
Token counts include cached samples (the cost a strategy would pay alone).

Usage: ``python -m benchmarks.strategies [--addition 100] [--gsm8k 50] [--concurrency 8]``.
Resumable (records and cache in ``--work``). Prints Markdown tables and writes
``benchmarks/results/strategies.json``, ``docs/strategies.md`` and one accuracy-versus-tokens
plot per dataset in ``docs/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "strategies.json"
DOCS = ROOT / "docs"
GSM8K_DEV = ROOT.parent / "shared" / "data" / "gsm8k_test_dev500.jsonl"


def targets(max_tokens: int) -> list[tuple[str, dict[str, Any]]]:
    """(label, spec) in run order: n = 16 before 8 and 4 so the smaller ones reuse samples."""
    m = {"max_tokens": max_tokens}
    out: list[tuple[str, dict[str, Any]]] = [("single", {"strategy": "single", **m})]
    for name in ("self_consistency", "rpc"):
        short = "sc" if name == "self_consistency" else "rpc"
        out += [(f"{short}-n{n}", {"strategy": name, "n": n, **m}) for n in (16, 8, 4)]
    out += [
        ("early_stopping_sc", {"strategy": "early_stopping_sc", "n_max": 16, **m}),
        ("adaptive_self_eval", {"strategy": "adaptive_self_eval", "n_max": 16, **m}),
        ("best_of_n-self_eval-n8", {"strategy": "best_of_n", "n": 8, "verifier": "self_eval", **m}),
        ("sift", {"strategy": "sift", "sticker_max_tokens": 128, **m}),
        ("div_se", {"strategy": "div_se", **m}),
    ]
    return out


def row(s: Any) -> dict[str, Any]:
    return {
        "label": s.label,
        "accuracy": round(s.accuracy, 4),
        "ci_95": [round(s.ci_low, 4), round(s.ci_high, 4)],
        "completion_tokens_per_problem": round(s.completion_tokens_mean, 1),
        "calls_per_problem": round(s.calls_mean, 2),
        "seconds_per_problem": round(s.seconds_mean, 2),
        "cached_tokens_total": s.cached_tokens_total,
        "budget_exhausted": s.budget_exhausted,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| strategy | accuracy [95% CI] | completion tokens / problem | calls / problem "
        "| seconds / problem |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lo, hi = r["ci_95"]
        lines.append(
            f"| {r['label']} | {r['accuracy']:.2f} [{lo:.2f}, {hi:.2f}] "
            f"| {r['completion_tokens_per_problem']:,.0f} | {r['calls_per_problem']:.2f} "
            f"| {r['seconds_per_problem']:.1f} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from orchestrator.backends.vllm_engine import embedded_backend
    from orchestrator.datasets import load_dataset
    from orchestrator.evaluation.harness import EvalRunner, EvalTarget
    from orchestrator.evaluation.report import plot_accuracy_vs_tokens
    from orchestrator.runner import Orchestrator
    from orchestrator.store import CompletionCache

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.kv_cache_gib))
    work = Path(args.work)
    cache = CompletionCache(f"sqlite:///{work / 'cache.db'}")
    backend = embedded_backend(name="local")
    sets: dict[str, tuple[str, dict[str, Any], int]] = {}
    if args.addition:
        sets["addition-2d"] = (f"builtin:addition?n={args.addition}", {}, args.max_tokens)
    if args.gsm8k:
        sets["gsm8k-dev"] = (
            str(GSM8K_DEV),
            {"format": "gsm8k", "limit": args.gsm8k},
            args.gsm8k_max_tokens,
        )
    out: dict[str, Any] = {
        "command": "python -m benchmarks.strategies " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
        "model": backend.model,
        "datasets": {},
    }
    try:
        async with Orchestrator([backend], cache=cache) as orch:
            for name, (source, opts, max_tokens) in sets.items():
                problems = load_dataset(source, **opts)
                evals = [EvalTarget(label, spec) for label, spec in targets(max_tokens)]
                t0 = time.perf_counter()
                summaries = await EvalRunner(
                    orch, problems, evals, work / name, resume=True,
                    concurrency=args.concurrency, dataset={"source": source, **opts},
                ).run()  # fmt: skip
                rows = [row(s) for s in summaries]
                out["datasets"][name] = {
                    "source": source,
                    "problems": len(problems),
                    "max_tokens": max_tokens,
                    "wall_seconds_this_run": round(time.perf_counter() - t0, 1),
                    "rows": rows,
                }
                DOCS.mkdir(exist_ok=True)
                plot_accuracy_vs_tokens(summaries, DOCS / f"strategies_{name}.png")
                print(f"\n{name} ({len(problems)} problems)\n\n{table(rows)}\n", flush=True)
                save(out)
    finally:
        await cache.aclose()
    write_doc(out)
    return out


def write_doc(out: dict[str, Any]) -> None:
    parts = [
        "# Strategies on the embedded model\n",
        f"Produced by `{out['command']}` on {out['machine']} ({out['model']} on the in-process "
        "vLLM engine). Same problems for every strategy; self_consistency and rpc at n = 8 and 4 "
        "reuse the first samples of n = 16 through the completion cache (tokens still count "
        "them). Seconds per problem is the latency of one problem while the run keeps "
        "several problems in flight (near 0 for rows served from the cache).\n",
    ]
    for name, d in out["datasets"].items():
        parts.append(
            f"## {name}: {d['problems']} problems, max_tokens {d['max_tokens']}, "
            f"{d['wall_seconds_this_run'] / 60:.1f} min wall\n\n{table(d['rows'])}\n\n"
            f"![accuracy vs tokens](strategies_{name}.png)\n"
        )
    (DOCS / "strategies.md").write_text("\n".join(parts))


def save(out: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--addition", type=int, default=100, help="two-digit addition problems")
    p.add_argument("--gsm8k", type=int, default=50, help="GSM8K dev problems (0 = skip)")
    p.add_argument("--max-tokens", type=int, default=96, help="max tokens per sample, addition")
    p.add_argument("--gsm8k-max-tokens", type=int, default=192, help="max tokens, GSM8K")
    p.add_argument("--concurrency", type=int, default=8, help="problems in flight")
    p.add_argument("--kv-cache-gib", type=int, default=4, help="vLLM CPU KV cache (GiB)")
    p.add_argument("--work", default="runs/bench-strategies", help="records + cache (resumable)")
    return p.parse_args()


if __name__ == "__main__":
    from orchestrator.cli import sigterm_as_interrupt

    sigterm_as_interrupt()  # a killed benchmark still shuts its vLLM engine down
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the RPC fit: 10 ms instead of 200
    arguments = parse()
    if arguments.gsm8k and not GSM8K_DEV.is_file():
        raise SystemExit(f"{GSM8K_DEV} not found: run with --gsm8k 0 or put ../shared beside it")
    result = asyncio.run(run(arguments))
    save(result)
    print(f"wrote {RESULTS}, {DOCS / 'strategies.md'}")

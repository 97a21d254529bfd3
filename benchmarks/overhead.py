"""Orchestrator overhead benchmark.

(a) FakeBackend at zero latency: backend calls per second that the orchestrator sustains through
    ``self_consistency`` (n=16) with 64 concurrent runs, and the added latency per call (time in
    ``RunContext.generate`` minus time inside the backend), p50 and p99.
(b) Embedded vLLM engine: wall time of ``self_consistency`` n=16 over 20 two-digit addition
    questions through the orchestrator, versus the same sampling submitted directly to the same
    vLLM engine in the same process. Target ratio <= 1.05. Order alternates over ``--repeats``
    rounds; the ratio uses wall time per generated token, since sampled lengths differ run to run.

Usage: ``python benchmarks/overhead.py [--skip-vllm] [--runs 2000] [--repeats 2] [--out FILE]``.
Prints a table and writes ``benchmarks/results/overhead.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

from orchestrator.backends.base import Generation, GenerationRequest
from orchestrator.context import RunContext
from orchestrator.runner import Orchestrator
from orchestrator.testing import FakeBackend

RESULTS = Path(__file__).parent / "results" / "overhead.json"


class TimedFake(FakeBackend):
    """FakeBackend that records the time spent inside ``generate``."""

    inner: list[float]

    async def generate(self, request: GenerationRequest) -> Generation:
        t0 = time.perf_counter()
        try:
            return await super().generate(request)
        finally:
            self.inner.append(time.perf_counter() - t0)


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def bench_fake(runs: int, concurrency: int = 64) -> dict[str, Any]:
    """Part (a)."""
    backend = TimedFake(seed=0)
    backend.inner = []
    outer: list[float] = []
    original = RunContext.generate

    async def timed(self: RunContext, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await original(self, *args, **kwargs)
        finally:
            outer.append(time.perf_counter() - t0)

    RunContext.generate = timed  # type: ignore[method-assign]
    try:
        orch = Orchestrator([backend])
        spec = {"strategy": "self_consistency", "n": 16, "max_tokens": 64}
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await orch.run(f"What is {i} + {i}?", spec)

        await one(-1)  # warm up imports and caches
        outer.clear()
        backend.inner.clear()
        t0 = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for i in range(runs):
                tg.create_task(one(i))
        wall = time.perf_counter() - t0
    finally:
        RunContext.generate = original  # type: ignore[method-assign]
    added = [o - i for o, i in zip(outer, backend.inner, strict=True)]
    return {
        "runs": runs,
        "concurrency": concurrency,
        "backend_calls": len(outer),
        "seconds": round(wall, 3),
        "runs_per_second": round(runs / wall, 1),
        "calls_per_second": round(len(outer) / wall, 1),
        "added_latency_p50_ms": round(_percentile(added, 0.5) * 1e3, 4),
        "added_latency_p99_ms": round(_percentile(added, 0.99) * 1e3, 4),
    }


def addition_questions(k: int = 20, seed: int = 0) -> list[str]:
    """``k`` two-digit addition questions, deterministic by seed."""
    rng = random.Random(seed)
    return [f"What is {rng.randint(10, 99)} + {rng.randint(10, 99)}?" for _ in range(k)]


async def bench_vllm(repeats: int, max_tokens: int) -> dict[str, Any]:
    """Part (b): orchestrator versus direct engine calls, same engine, same process."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from orchestrator.backends.vllm_engine import embedded_backend

    backend = embedded_backend(name="local")
    t_start = time.perf_counter()
    await backend.start()
    startup = time.perf_counter() - t_start
    questions = addition_questions()
    orch = Orchestrator([backend])
    spec = {"strategy": "self_consistency", "n": 16, "max_tokens": max_tokens, "temperature": 0.7}
    params = SamplingParams(
        n=16, temperature=0.7, max_tokens=max_tokens, output_kind=RequestOutputKind.FINAL_ONLY
    )
    tokenizer = backend.engine.get_tokenizer()
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in questions
    ]

    async def direct_one(i: int, prompt: str, rnd: int) -> int:
        final = None
        # backend.engine, not a local: no reference may outlive aclose() (AsyncLLM.__del__)
        async for out in backend.engine.generate(prompt, params, request_id=f"direct-{rnd}-{i}"):
            final = out
        assert final is not None
        return sum(len(c.token_ids) for c in final.outputs)

    async def direct(rnd: int) -> int:
        return sum(await asyncio.gather(*(direct_one(i, p, rnd) for i, p in enumerate(prompts))))

    async def through_orchestrator() -> int:
        results = await asyncio.gather(*(orch.run(q, spec) for q in questions))
        return sum(r.usage.completion_tokens for r in results)

    rows: list[dict[str, Any]] = []
    await direct(-1)  # warm-up
    for rnd in range(repeats):
        order = ["direct", "orchestrator"] if rnd % 2 == 0 else ["orchestrator", "direct"]
        for which in order:
            t0 = time.perf_counter()
            toks = await (direct(rnd) if which == "direct" else through_orchestrator())
            rows.append(
                {"path": which, "round": rnd, "seconds": time.perf_counter() - t0, "tokens": toks}
            )
    await backend.aclose()

    def total(path: str, key: str) -> float:
        return sum(r[key] for r in rows if r["path"] == path)

    d_s, o_s = total("direct", "seconds"), total("orchestrator", "seconds")
    d_t, o_t = total("direct", "tokens"), total("orchestrator", "tokens")
    return {
        "questions": len(questions),
        "n": 16,
        "max_tokens": max_tokens,
        "repeats": repeats,
        "engine_startup_seconds": round(startup, 1),
        "direct_seconds": round(d_s, 2),
        "orchestrator_seconds": round(o_s, 2),
        "direct_tokens": int(d_t),
        "orchestrator_tokens": int(o_t),
        "wall_ratio": round(o_s / d_s, 3),
        "seconds_per_token_ratio": round((o_s / o_t) / (d_s / d_t), 3),
        "direct_tokens_per_second": round(d_t / d_s, 1),
        "rounds": rows,
    }


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


async def main(args: argparse.Namespace) -> None:
    out: dict[str, Any] = {"machine": machine(), "fake": await bench_fake(args.runs)}
    f = out["fake"]
    print("(a) FakeBackend, zero latency, self_consistency n=16, 64 concurrent runs")
    print(f"  runs={f['runs']}  calls/s={f['calls_per_second']}  runs/s={f['runs_per_second']}")
    print(
        f"  added latency per call: p50={f['added_latency_p50_ms']} ms"
        f"  p99={f['added_latency_p99_ms']} ms"
    )
    if not args.skip_vllm:
        v = out["vllm"] = await bench_vllm(args.repeats, args.max_tokens)
        print("(b) embedded vLLM engine, self_consistency n=16, 20 two-digit additions")
        print(f"  {'path':14s} {'seconds':>9s} {'tokens':>8s}")
        print(f"  {'direct':14s} {v['direct_seconds']:9.2f} {v['direct_tokens']:8d}")
        print(
            f"  {'orchestrator':14s} {v['orchestrator_seconds']:9.2f} {v['orchestrator_tokens']:8d}"
        )
        print(
            f"  wall ratio={v['wall_ratio']}  seconds-per-token ratio="
            f"{v['seconds_per_token_ratio']} (target <= 1.05)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--skip-vllm", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS, help="results file")
    asyncio.run(main(p.parse_args()))

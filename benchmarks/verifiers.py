"""Selection accuracy of verifiers on the embedded model.

For each of ``--problems`` two-digit addition questions (deterministic by seed), sample ``--n``
candidates once from the embedded SmolLM2-135M model on the in-process vLLM engine, then let each
verifier pick one (best-of-N with that verifier: the best-scored candidate with an extracted
answer wins) from the SAME candidates. Reference rows:

- ``random``: the expected accuracy of a uniformly random pick (mean share of correct samples);
- ``majority_vote``: self-consistency;
- ``oracle``: pass@N, whether any candidate is correct (the ceiling for any selector).

Usage: ``python -m benchmarks.verifiers [--problems 100] [--n 8] [--max-tokens 96]`` (as a module:
run as a script, this file would shadow the ``verifiers`` package).
Prints a Markdown table and writes ``benchmarks/results/verifiers.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from orchestrator.answers import answers_equivalent
from orchestrator.budget import BudgetMeter
from orchestrator.context import RunContext
from orchestrator.datasets import synthetic_problems
from orchestrator.runner import Orchestrator
from orchestrator.trace import Trace
from orchestrator.types import Candidate, Problem
from strategies.sampling import Collected, score_and_pick
from verifiers.base import build_verifier

RESULTS = Path(__file__).parent / "results" / "verifiers.json"

VERIFIERS: dict[str, dict[str, Any]] = {
    "majority_vote": {"verifier": "majority_vote"},
    "mean_logprob": {"verifier": "mean_logprob"},
    "self_eval": {"verifier": "self_eval"},
    "self_eval (capability)": {"verifier": "self_eval", "mode": "capability"},
    # The policy model judges itself; "Score:" / "Verdict:" pre-fill the judge's reply (without
    # it SmolLM2 answers the question instead of grading) and keep the judgements short.
    "llm_judge (pointwise)": {
        "verifier": "llm_judge",
        "mode": "pointwise",
        "reply_prefix": "Score:",
        "max_tokens": 8,
    },
    "llm_judge (pairwise)": {
        "verifier": "llm_judge",
        "mode": "pairwise",
        "reply_prefix": "Verdict:",
        "max_tokens": 8,
    },
    "format (integer answer)": {"verifier": "format", "regex": r"-?\d+"},
}


def addition_problems(k: int, seed: int = 0) -> list[Problem]:
    """``k`` two-digit addition problems ("What is A + B?"), deterministic by seed.

    ``builtin:addition`` of ``orchestrator.datasets``, with the answers extracted as ``auto``
    (the generator's default is ``number``), as in the published results.
    """
    problems = synthetic_problems(n=k, ops=1, digits=2, operators="+", style="plain", seed=seed)
    return [p.model_copy(update={"answer_format": "auto"}) for p in problems]


async def sample_all(
    orch: Orchestrator, problems: list[Problem], n: int, max_tokens: int
) -> list[list[Candidate]]:
    """N candidates (with logprobs) per problem, all problems concurrently."""
    spec = {
        "strategy": "repeated_sampling",
        "n": n,
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "verifier": "mean_logprob",  # makes the samples carry logprobs
    }
    results = await asyncio.gather(*(orch.run(p, spec) for p in problems))
    return [[sc.candidate for sc in r.candidates] for r in results]


async def select_with(
    orch: Orchestrator, spec: dict[str, Any], problem: Problem, cands: list[Candidate]
) -> tuple[bool, int, int]:
    """(picked a correct answer, backend calls spent, completion tokens spent) for one problem."""
    meter = BudgetMeter()
    ctx = RunContext(problem, orch.backends, orch.default_backend, meter, Trace())
    _, best = await score_and_pick(build_verifier(spec), problem, Collected(cands), ctx)
    correct = best is not None and answers_equivalent(cands[best].answer, problem.reference)
    return correct, meter.usage.calls, meter.usage.completion_tokens


async def main(args: argparse.Namespace) -> None:
    from orchestrator.backends.vllm_engine import embedded_backend

    backend = embedded_backend(name="local")
    await backend.start()
    orch = Orchestrator([backend])
    problems = addition_problems(args.problems)
    t0 = time.perf_counter()
    samples = await sample_all(orch, problems, args.n, args.max_tokens)
    sampling_seconds = time.perf_counter() - t0
    correct = [
        sum(answers_equivalent(c.answer, p.reference) for c in cands)
        for p, cands in zip(problems, samples, strict=True)
    ]
    k = len(problems)
    rows: list[dict[str, Any]] = []
    out = {
        "problems": k,
        "n": args.n,
        "max_tokens": args.max_tokens,
        "sampling_seconds": round(sampling_seconds, 1),
        "mean_correct_samples": sum(correct) / k,
        "rows": rows,
    }
    rows += [
        {"selector": "random (expected)", "accuracy": sum(c / args.n for c in correct) / k},
        {"selector": f"oracle (pass@{args.n})", "accuracy": sum(c > 0 for c in correct) / k},
    ]
    for label, spec in VERIFIERS.items():
        t1 = time.perf_counter()
        outcomes = await asyncio.gather(
            *(select_with(orch, spec, p, c) for p, c in zip(problems, samples, strict=True))
        )
        rows.append(
            {
                "selector": label,
                "accuracy": sum(o[0] for o in outcomes) / len(problems),
                "verifier_calls_per_problem": sum(o[1] for o in outcomes) / len(problems),
                "verifier_tokens_per_problem": sum(o[2] for o in outcomes) / len(problems),
                "seconds": round(time.perf_counter() - t1, 1),
            }
        )
        print(f"  {label}: {rows[-1]['accuracy']:.3f}", flush=True)
        save(args.out, out)  # after every row: an interrupted run keeps what it measured
    await backend.aclose()
    print("\n| selector | accuracy | verifier calls / problem | verifier tokens / problem |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        calls = r.get("verifier_calls_per_problem", "")
        toks = r.get("verifier_tokens_per_problem", "")
        print(f"| {r['selector']} | {r['accuracy']:.2f} | {calls} | {toks} |")
    save(args.out, out)
    print(f"wrote {args.out}")


def save(path: Path, out: dict[str, Any]) -> None:
    """Write the results JSON (atomically: a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", type=int, default=100)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--out", type=Path, default=RESULTS)
    asyncio.run(main(p.parse_args()))

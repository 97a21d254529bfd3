"""Fault matrix benchmark of the ttc service: every strategy family under injected backend faults.

For each cell of the matrix (one fault kind alone, then every kind mixed), a fresh
``FakeOpenAIServer`` (in this process, a thread) fails ``--rate`` of its answers with that kind
(429 with ``Retry-After``, 500, 503, timeouts, connections dropped mid-answer, truncated JSON,
fewer choices than ``n``), and a fresh ``ttc serve`` process (auth off, loopback, a fresh
SQLite store) serves ``--clients`` concurrent clients, each sending ``--requests`` requests over
every strategy family, alternating the native and the OpenAI API and a generous and a binding
budget (``orchestrator.testing.fault_matrix``, the same harness as
``tests/api/test_fault_matrix.py``).

Reported per cell: requests; answered with a result (``ok``); failed with the standard error
body (``clean``, by status); anything else (``bad``: a 500, a malformed body, a client-side
timeout); HTTP 500s; runs whose usage exceeded their budget (read back from the store); p50 /
p99 / max client latency; faults injected by the fake server and counted by the service's
``ttc_backend_faults_total``.

Usage: ``python -m benchmarks.service_faults [--rate 0.2] [--clients 32] [--requests 4]
[--cells all|KIND,...] [--out FILE]``. Prints a Markdown table and writes
``benchmarks/results/service_faults.json`` (command line, machine, settings, one row per cell).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.testing.fake_openai_server import FAULT_KINDS, FakeOpenAIServer
from orchestrator.testing.fault_matrix import (
    BUDGET,
    FAMILIES,
    FAULT_METRIC,
    TIGHT,
    budget_violations,
    counted_faults,
    drive,
    serve,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "service_faults.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) of ``values``, nearest rank; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def cell(kinds: Sequence[str], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One matrix cell: a fresh fake server and service, the clients, the checks."""
    fake = FakeOpenAIServer(
        latency=args.latency_ms / 1000, vllm=True, record=False, fault_rate=args.rate,
        fault_kinds=kinds, timeout_seconds=2.5, retry_after="0.2", seed=args.seed,
    )  # fmt: skip
    t0 = time.monotonic()
    with fake, serve(workdir, fake.base_url, port=free_port(), cwd=ROOT) as url:
        out = asyncio.run(drive(url, clients=args.clients, requests=args.requests, seed=args.seed))
        seconds = time.monotonic() - t0
        counted = counted_faults(url)
        violations = budget_violations(url, out.run_ids)
    clean_statuses = {str(k): v for k, v in sorted(out.statuses.items()) if k != 200}
    return {
        "cell": "all kinds" if len(kinds) > 1 else kinds[0],
        "requests": out.total,
        "ok": out.ok,
        "clean_errors": out.clean,
        "error_statuses": clean_statuses,
        "bad": len(out.bad),
        "bad_examples": out.bad[:5],
        "http_500": out.statuses.get(500, 0),
        "runs_checked": len(out.run_ids),
        "budget_violations": len(violations),
        "latency_p50_s": percentile(out.latencies, 0.5),
        "latency_p99_s": percentile(out.latencies, 0.99),
        "latency_max_s": max(out.latencies, default=None),
        "seconds": round(seconds, 1),
        "faults_injected": dict(fake.injected),
        "faults_counted": {k: counted.get(FAULT_METRIC[k], 0) for k in kinds},
        "by_family": {f: dict(c) for f, c in sorted(out.by_family.items())},
    }


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    packages = {}
    for dist in ("fastapi", "uvicorn", "httpx", "openai"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            packages[dist] = importlib.metadata.version(dist)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "packages": packages,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    head = ("cell", "requests", "ok", "clean errors", "bad", "HTTP 500", "budget violations",
            "p50 s", "p99 s", "faults injected / counted")  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        injected = sum(r["faults_injected"].values())
        counted = sum(r["faults_counted"].values())
        statuses = ", ".join(f"{k}: {v}" for k, v in r["error_statuses"].items()) or "-"
        values = (r["cell"], r["requests"], r["ok"], f"{r['clean_errors']} ({statuses})",
                  r["bad"], r["http_500"], r["budget_violations"],
                  f"{r['latency_p50_s']:.2f}", f"{r['latency_p99_s']:.2f}",
                  f"{injected} / {counted:g}")  # fmt: skip
        lines.append("| " + " | ".join(str(v) for v in values) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=0.2, help="share of faulty answers")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=4, help="requests per client per cell")
    parser.add_argument("--latency-ms", type=float, default=10.0, help="fake server latency")
    parser.add_argument("--cells", default="each,all", help="'each' (one per kind), 'all', "
                        "or comma-separated kinds")  # fmt: skip
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file")
    args = parser.parse_args(argv)
    cells: list[list[str]] = []
    for part in args.cells.split(","):
        if part == "each":
            cells += [[k] for k in FAULT_KINDS]
        elif part == "all":
            cells.append(list(FAULT_KINDS))
        else:
            cells.append([part])
    rows = []
    for kinds in cells:
        with tempfile.TemporaryDirectory(prefix="ttc-service-faults-") as tmp:
            rows.append(cell(kinds, args, Path(tmp)))
        print(json.dumps({k: rows[-1][k] for k in ("cell", "requests", "ok", "clean_errors",
                                                   "bad", "http_500")}), flush=True)  # fmt: skip
    out = {
        "command": " ".join(["python -m benchmarks.service_faults", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "settings": {
            "rate": args.rate,
            "clients": args.clients,
            "requests": args.requests,
            "latency_ms": args.latency_ms,
            "families": list(FAMILIES),
            "budgets": [BUDGET, TIGHT],
            "seed": args.seed,
        },
        "results": rows,
    }
    print(f"\nfault matrix: {args.rate:.0%} faults, {args.clients} clients x {args.requests} "
          f"requests per cell, {len(FAMILIES)} strategy families\n")  # fmt: skip
    print(markdown(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

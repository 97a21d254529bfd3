"""The fault matrix: every strategy family through a real ``ttc serve`` while its OpenAI-compatible
backend fails on purpose (the test ``tests/api/test_fault_matrix.py`` and the benchmark
``benchmarks/service_faults.py`` both drive it).

The backend is a ``FakeOpenAIServer`` that injects a random fault into ``fault_rate`` of its
answers (429 with ``Retry-After``, 500, 503, timeouts, connections dropped mid-answer,
truncated JSON, fewer choices than ``n``); the service's backend ``mock`` points at it with a
short timeout and a few fast retries. :func:`drive` runs ``clients`` concurrent clients, each
sending ``requests`` requests in turn over ``FAMILIES`` (every strategy family, with verifiers
that call the model), alternating the native API (``POST /v1/reason``) and the OpenAI one
(``POST /v1/chat/completions``), every other one with ``BUDGET`` or the binding ``TIGHT``.
Every answer is classified:

* ``ok``: 200 with a well-formed body (a run id and a result; or a ``chat.completion``);
* ``clean``: an error status with the standard error body (``{"error": {message, type,
  param, code}}``), never 500;
* ``bad``: anything else (a 500, a malformed body, a client-side timeout past the deadline).

:func:`budget_violations` reads every stored run back (``GET /v1/runs/{id}``) and reports a run
whose usage is above its budget (completion tokens: never; prompt tokens: at most one call
over) or that lasted longer than its ``max_seconds`` plus one backend timeout.
:func:`counted_faults` reads ``ttc_backend_faults_total`` from ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "BUDGET",
    "FAMILIES",
    "FAULT_METRIC",
    "TIGHT",
    "Outcome",
    "backends_file",
    "budget_violations",
    "counted_faults",
    "drive",
    "serve",
]

BUDGET: dict[str, Any] = {
    "max_completion_tokens": 400,
    "max_prompt_tokens": 3000,
    "max_calls": 40,
    "max_seconds": 15,
}
TIGHT: dict[str, Any] = {"max_completion_tokens": 12, "max_calls": 3, "max_seconds": 4}
"""Every other request's budget: small enough to bind most strategies."""
SC = {"strategy": "self_consistency", "n": 4}
FAMILIES: dict[str, dict[str, Any]] = {
    "single": {"strategy": "single"},
    "self_consistency": SC,
    "self_consistency/inner": {"strategy": "self_consistency", "n": 2,
                               "inner": {"strategy": "best_of_n", "n": 2}},
    "best_of_n/mean_logprob": {"strategy": "best_of_n", "n": 3},
    "best_of_n/llm_judge": {"strategy": "best_of_n", "n": 2, "verifier": "llm_judge"},
    "repeated_sampling": {"strategy": "repeated_sampling", "n": 4},
    "rpc": {"strategy": "rpc", "n": 4},
    "early_stopping_sc": {"strategy": "early_stopping_sc", "n_max": 8, "batch_size": 2},
    "adaptive_self_eval": {"strategy": "adaptive_self_eval", "n_max": 4},
    "adaptive_self_eval/prune": {"strategy": "adaptive_self_eval", "mode": "prune", "n": 4,
                                 "prefix_tokens": 2},
    "sift": {"strategy": "sift"},
    "div_se": {"strategy": "div_se", "k": 3},
    "idiv_se": {"strategy": "idiv_se", "k": 3},
    "cascade": {"strategy": "cascade", "rule": "mean_logprob"},
    "verified_resampling": {"strategy": "verified_resampling", "k": 3, "verifier": "self_eval"},
}  # fmt: skip
"""One spec per strategy family (and the verifiers that call the model)."""
FAULT_METRIC = {
    "rate_limited": "rate_limited",
    "server_error": "server_error",
    "unavailable": "unavailable",
    "timeout": "timeout",
    "reset": "connection",
    "truncated": "invalid_response",
    "short_n": "short_n",
}
"""The fake server's fault kinds -> the ``kind`` label the service counts them under."""
BACKEND_TIMEOUT = 1.0
_METRIC_LINE = re.compile(r'^ttc_backend_faults_total\{backend="([^"]+)",kind="([^"]+)"\} (\S+)$')


def backends_file(base_url: str) -> str:
    """The backends file of the service under test: ``mock`` at the fake server (vLLM-like,
    so prefix continuation works), a short timeout and fast retries."""
    return (
        "default: mock\nbackends:\n  mock:\n    kind: openai\n    model: fake-model\n"
        f"    base_url: {base_url}\n    server: vllm\n    max_concurrency: 256\n"
        f"    timeout: {BACKEND_TIMEOUT}\n    max_retries: 3\n"
        "    options: {backoff_base: 0.05, backoff_max: 0.4, retry_after_max: 1.0}\n"
    )


@contextmanager
def serve(workdir: Path, base_url: str, *, port: int, cwd: Path) -> Iterator[str]:
    """``ttc serve`` (auth off, loopback) over ``backends_file(base_url)`` on a fresh store in
    ``workdir``, until the block ends; yields its URL. Its log is ``workdir/service.log``."""
    (workdir / "backends.yaml").write_text(backends_file(base_url))
    (workdir / "service.yaml").write_text(
        "auth: 'off'\nmax_concurrent_runs: 64\nmax_queued_runs: 512\nmax_runs_per_key: 512\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTC_")}
    command = [sys.executable, "-m", "orchestrator.cli", "serve", "--port", str(port),
               "--config", str(workdir / "service.yaml"),
               "--backends", str(workdir / "backends.yaml"),
               "--store", f"sqlite:///{workdir / 'ttc.db'}", "--log-level", "warning"]  # fmt: skip
    with open(workdir / "service.log", "wb") as log:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url, workdir / "service.log")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"ttc serve exited with {proc.returncode}: {log.read_text()[-2000:]}"
            )
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"ttc serve not ready within {timeout} s")


@dataclass
class Outcome:
    """What the clients saw (see the module docstring)."""

    ok: int = 0
    clean: int = 0
    bad: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    by_family: dict[str, Counter[str]] = field(default_factory=dict)
    run_ids: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.ok + self.clean + len(self.bad)

    def note(self, family: str, verdict: str) -> None:
        self.by_family.setdefault(family, Counter())[verdict] += 1


def _is_error_body(body: Any) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)


def _classify(api: str, response: httpx.Response, out: Outcome) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code}: not JSON: {response.text[:200]!r}"
    if response.status_code == 200:
        if api == "native" and isinstance(body.get("run_id"), str) and "result" in body:
            out.run_ids.append(body["run_id"])
            return "ok"
        if api == "openai" and body.get("object") == "chat.completion" and body.get("choices"):
            out.run_ids.extend(body.get("ttc", {}).get("run_ids", []))
            return "ok"
        return f"200 with a malformed body: {response.text[:200]!r}"
    if response.status_code != 500 and _is_error_body(body):
        return "clean"
    return f"{response.status_code}: {response.text[:200]!r}"


async def _one(
    http: httpx.AsyncClient, family: str, api: str, budget: dict[str, Any], out: Outcome
) -> None:
    spec, question = FAMILIES[family], f"What is {random.randint(2, 99)} + 1?"
    if api == "native":
        request = http.post("/v1/reason", json={"problem": question, "strategy": spec,
                                                "budget": budget})  # fmt: skip
    else:
        body = {"model": "mock", "messages": [{"role": "user", "content": question}],
                "ttc": {"strategy": spec, "budget": budget}}  # fmt: skip
        request = http.post("/v1/chat/completions", json=body)
    t0 = time.monotonic()
    try:
        response = await request
    except httpx.HTTPError as exc:
        out.bad.append(f"{family} {api}: {type(exc).__name__}: {exc}")
        out.note(family, "bad")
        return
    out.latencies.append(time.monotonic() - t0)
    out.statuses[response.status_code] += 1
    verdict = _classify(api, response, out)
    if verdict in ("ok", "clean"):
        setattr(out, verdict, getattr(out, verdict) + 1)
        out.note(family, verdict)
    else:
        out.bad.append(f"{family} {api}: {verdict}")
        out.note(family, "bad")


async def drive(url: str, *, clients: int = 32, requests: int = 4, seed: int = 0) -> Outcome:
    """``clients`` concurrent clients, ``requests`` each (see the module docstring)."""
    rng = random.Random(seed)
    names = list(FAMILIES)
    out = Outcome()
    deadline = float(BUDGET["max_seconds"]) + 30  # a client waits this long for an answer

    async def client(index: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=deadline) as http:
            for k in range(requests):
                family = names[(index * requests + k + rng.randrange(len(names))) % len(names)]
                api = "native" if (index + k) % 2 else "openai"
                await _one(http, family, api, BUDGET if k % 2 else TIGHT, out)

    await asyncio.gather(*(client(i) for i in range(clients)))
    return out


def budget_violations(url: str, run_ids: list[str]) -> list[str]:
    """Runs whose usage exceeds their budget (see the module docstring)."""
    found = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for run_id in run_ids:
            record = http.get(f"/v1/runs/{run_id}").json()
            usage, budget = record.get("usage") or {}, record["request"]["budget"] or {}
            calls = _backend_spans((record.get("result") or {}).get("trace") or {})
            one_call = max((s.get("prompt_tokens", 0) for s in calls), default=0)
            limits = (
                ("completion_tokens", budget.get("max_completion_tokens"), 0),
                ("prompt_tokens", budget.get("max_prompt_tokens"), one_call),
                ("seconds", budget.get("max_seconds"), BACKEND_TIMEOUT + 1.0),
            )
            for name, limit, slack in limits:
                if limit is not None and usage.get(name, 0) > limit + slack:
                    found.append(f"run {run_id}: {name} {usage.get(name)} > {limit} + {slack}")
    return found


def _backend_spans(span: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    own = [span] if span.get("kind") == "backend" else []
    return own + [s for c in span.get("children", ()) for s in _backend_spans(c)]


def counted_faults(url: str) -> dict[str, float]:
    """``ttc_backend_faults_total`` of backend ``mock`` by kind, from ``GET /metrics``."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if match and match.group(1) == "mock":
            counts[match.group(2)] = float(match.group(3))
    return counts


def summary(out: Outcome, injected: Mapping[str, int], counted: Mapping[str, float]) -> str:
    """A JSON line of the figures (for logs)."""
    return json.dumps(
        {
            "requests": out.total,
            "ok": out.ok,
            "clean_errors": out.clean,
            "bad": len(out.bad),
            "statuses": dict(out.statuses),
            "injected": dict(injected),
            "counted": dict(counted),
        }
    )

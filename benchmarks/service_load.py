"""Load benchmark of the ttc REST service: ``POST /v1/chat/completions`` under C concurrent clients.

Three processes, so that each one's CPU can be measured on its own:

1. the mock backend: ``python -m orchestrator.testing.fake_openai_server --latency S``, an
   OpenAI-compatible server answering every call after ``--latency-ms`` (honouring ``n`` natively,
   five tokens per choice);
2. the service: ``python -m uvicorn orchestrator.api.app:create_app --factory`` (or
   ``python -m orchestrator.cli serve`` with ``--via cli``) on a free loopback port, configured
   through ``TTC_SERVICE__*`` variables: one backend ``mock`` of kind ``openai`` pointing at (1)
   (``max_concurrency`` 1024, no retries, no rate limit, so the backend limit is never the
   bottleneck), ``max_concurrent_runs`` ``--max-concurrent-runs`` (default 1024, so no run waits
   in the queue), a fresh SQLite store in a temporary directory, no API keys (auth off). Every
   ``TTC_*`` variable of the calling environment is dropped so that nothing else leaks in;
3. this process, the load generator: for each C in ``--levels``, C workers on one
   ``httpx.AsyncClient`` each send one request, wait for its response, and repeat (a closed
   loop), first for ``--warmup`` seconds (not recorded), then for ``--duration`` seconds. Requests
   started before the deadline are waited for and counted; the window ends when the last returns.

Each request is a non-streaming chat completion with model ``self_consistency:mock`` and
``ttc: {"n": --n}`` (one strategy run of n samples: one backend call with ``n`` choices), on a
different question each time. A request succeeds when it answers 200 with one choice and a usage
object; anything else (a status, a malformed body, a client-side timeout or connection error) is
an error, counted by kind. Reported per C: successful requests per second (over the window),
p50/p99 latency of the successful requests (client-side, send to full response), errors, and
the service's CPU time per completed request (user + system CPU of the service process and its
children over the window, from psutil, divided by the requests completed in it) with the number
of cores that amounts to; the JSON adds the mock's and the load generator's CPU per request (all
three share the machine), the service's RSS and the load average before each level.

Usage: ``python -m benchmarks.service_load [--levels 1,8,32,128] [--duration 20] [--warmup 2]
[--latency-ms 50] [--n 8] [--out FILE]``. Prints a Markdown table and writes
``benchmarks/results/service_load.json`` (the command line, the machine, the settings and one row
per C).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "service_load.json"
BACKEND = "mock"
BACKEND_MAX_CONCURRENCY = 1024
CHAT = "/v1/chat/completions"


# -- the two server processes ------------------------------------------------------------------


@dataclass
class Server:
    """A child process we started, with its log file; ``stop()`` ends it (SIGTERM, then kill)."""

    name: str
    proc: subprocess.Popen[str]
    log: Path
    url: str = ""

    def tail(self, lines: int = 40) -> str:
        """The end of the process's log, for error messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise RuntimeError with the log's end if the process has exited."""
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"the {self.name} exited with code {self.proc.returncode}:\n{self.tail()}"
            )

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without ``TTC_*`` variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTC_")}
    env.update(extra)
    return env


def start_mock(workdir: Path, latency_ms: float, timeout: float = 30.0) -> Server:
    """The fake OpenAI server as a separate process; its first stdout line is its base URL."""
    log = workdir / "mock.log"
    cmd = [sys.executable, "-m", "orchestrator.testing.fake_openai_server"]
    cmd += ["--latency", str(latency_ms / 1000)]
    with log.open("w") as err:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=err, text=True
        )
    server = Server("mock backend", proc, log)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().strip() if ready else ""
    if not line.startswith("http://"):
        server.stop()
        raise RuntimeError(f"the mock backend did not start:\n{server.tail()}")
    server.url = line
    return server


def free_port() -> int:
    """A loopback port that was free a moment ago (the service binds it itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def backends_yaml(base_url: str) -> str:
    """The service's backends file: the mock as an ``openai`` backend, no limits in the way."""
    return (
        f"default: {BACKEND}\n"
        "backends:\n"
        f"  {BACKEND}:\n"
        "    kind: openai\n"
        "    server: generic\n"
        f"    base_url: {base_url}\n"
        "    model: fake-model\n"
        f"    max_concurrency: {BACKEND_MAX_CONCURRENCY}\n"
        "    max_retries: 0\n"
        "    timeout: 60\n"
    )


def service_command(via: str, port: int | str) -> list[str]:
    """How the service is started: uvicorn on the app factory, or ``ttc serve``."""
    if via == "cli":
        return [sys.executable, "-m", "orchestrator.cli", "serve", "--port", str(port)]
    return [
        sys.executable, "-m", "uvicorn", "orchestrator.api.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning", "--no-access-log", "--timeout-graceful-shutdown", "5",
    ]  # fmt: skip


def start_service(workdir: Path, mock_url: str, via: str, max_runs: int) -> Server:
    """The ttc service as a separate process on a fresh SQLite store (see the module doc)."""
    backends = workdir / "backends.yaml"
    backends.write_text(backends_yaml(mock_url))
    port = free_port()
    env = clean_env(
        TTC_SERVICE__HOST="127.0.0.1",
        TTC_SERVICE__PORT=str(port),
        TTC_SERVICE__BACKENDS_FILE=str(backends),
        TTC_SERVICE__STORE_URL=f"sqlite:///{workdir / 'runs.db'}",
        TTC_SERVICE__MAX_CONCURRENT_RUNS=str(max_runs),
        TTC_SERVICE__SHUTDOWN_GRACE_SECONDS="5",
        TTC_SERVICE__AUTH="off",  # loopback, load generator only
        TTC_SERVICE__MAX_QUEUED_RUNS="4096",  # the closed loop never queues more than C
    )
    log = workdir / "service.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            service_command(via, port), cwd=ROOT, env=env, stdout=out, stderr=out, text=True
        )
    return Server("service", proc, log, url=f"http://127.0.0.1:{port}")


async def wait_ready(client: httpx.AsyncClient, service: Server, timeout: float = 60.0) -> None:
    """Wait for ``GET /healthz`` to answer 200 (the lifespan has run); raise if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        service.check_alive()
        with contextlib.suppress(httpx.TransportError):
            if (await client.get("/healthz", timeout=2.0)).status_code == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the service did not become healthy in {timeout:g} s:\n{service.tail()}")


# -- CPU accounting ----------------------------------------------------------------------------


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """User + system CPU seconds of process ``pid`` and (``children``) of its reaped and live
    descendants."""
    proc = psutil.Process(pid)
    t = proc.cpu_times()
    if not children:
        return t.user + t.system
    total = t.user + t.system + t.children_user + t.children_system
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            c = child.cpu_times()
            total += c.user + c.system
    return total


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds by process name; the load generator (this process) without its children,
    which are the two servers."""
    return {name: cpu_seconds(pid, children=name != "loadgen") for name, pid in pids.items()}


# -- the load ----------------------------------------------------------------------------------


def request_body(i: int, n: int) -> dict[str, Any]:
    """The ``i``-th request: self_consistency with ``n`` samples on a fresh question."""
    return {
        "model": f"self_consistency:{BACKEND}",
        "messages": [{"role": "user", "content": f"What is {i} + {i % 97}?"}],
        "max_tokens": 16,
        "ttc": {"n": n},
    }


def outcome(response: httpx.Response) -> tuple[str | None, dict[str, Any]]:
    """(None, body) for a well-formed success, else (error kind, {})."""
    if response.status_code != 200:
        try:
            kind = response.json()["error"]["type"]
        except (ValueError, KeyError, TypeError):
            kind = "unparsed"
        return f"HTTP {response.status_code} {kind}", {}
    try:
        body = response.json()
        ok = len(body["choices"]) == 1 and body["usage"]["completion_tokens"] > 0
    except (ValueError, KeyError, TypeError):
        ok = False
    return (None, body) if ok else ("malformed response", {})


@dataclass
class Sample:
    """What one closed-loop phase observed."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    completion_tokens: int = 0
    backend_calls: int = 0
    seconds: float = 0.0

    @property
    def completed(self) -> int:
        return len(self.latencies) + sum(self.errors.values())


async def closed_loop(
    client: httpx.AsyncClient, concurrency: int, seconds: float, n: int, counter: Iterator[int]
) -> Sample:
    """``concurrency`` workers send requests back to back until ``seconds`` have passed; the
    requests in flight at the deadline are waited for. ``Sample.seconds`` spans the whole."""
    sample = Sample()
    start = time.perf_counter()
    deadline = start + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            body = request_body(next(counter), n)
            t0 = time.perf_counter()
            try:
                error, answer = outcome(await client.post(CHAT, json=body))
            except httpx.HTTPError as exc:
                error, answer = type(exc).__name__, {}
            elapsed = time.perf_counter() - t0
            if error is not None:
                sample.errors[error] += 1
                continue
            sample.latencies.append(elapsed)
            sample.completion_tokens += answer["usage"]["completion_tokens"]
            runs = (answer.get("ttc") or {}).get("runs") or []
            sample.backend_calls += sum((r.get("usage") or {}).get("calls", 0) for r in runs)

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    sample.seconds = time.perf_counter() - start
    return sample


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-quantile (0 < q <= 1) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summarize(
    concurrency: int,
    sample: Sample,
    cpu: dict[str, float],
    rss: int,
    loadavg: float,
) -> dict[str, Any]:
    """One result row (times in ms, rates per second)."""
    ok, done = len(sample.latencies), sample.completed

    def ms(x: float) -> float | None:
        return None if math.isnan(x) else round(x * 1e3, 1)

    def per_request(seconds: float) -> float | None:
        return round(seconds / done * 1e3, 2) if done else None

    return {
        "concurrency": concurrency,
        "seconds": round(sample.seconds, 2),
        "completed": done,
        "ok": ok,
        "errors": done - ok,
        "error_kinds": dict(sample.errors),
        "requests_per_second": round(ok / sample.seconds, 1),
        "latency_ms": {
            "p50": ms(percentile(sample.latencies, 0.5)),
            "p90": ms(percentile(sample.latencies, 0.9)),
            "p99": ms(percentile(sample.latencies, 0.99)),
            "mean": ms(sum(sample.latencies) / ok) if ok else None,
            "max": ms(max(sample.latencies, default=math.nan)),
        },
        "service_cpu_seconds": round(cpu["service"], 3),
        "service_cpu_ms_per_request": per_request(cpu["service"]),
        "service_cpu_cores": round(cpu["service"] / sample.seconds, 2),
        "mock_cpu_ms_per_request": per_request(cpu["mock"]),
        "loadgen_cpu_ms_per_request": per_request(cpu["loadgen"]),
        "backend_calls_per_request": round(sample.backend_calls / ok, 2) if ok else None,
        "completion_tokens_per_request": round(sample.completion_tokens / ok, 1) if ok else None,
        "service_rss_mb": round(rss / 2**20, 1),
        "loadavg_1m_before": round(loadavg, 2),
    }


async def run_level(
    client: httpx.AsyncClient,
    concurrency: int,
    args: argparse.Namespace,
    pids: dict[str, int],
    counter: Iterator[int],
) -> dict[str, Any]:
    """Warm up, then measure one concurrency level."""
    if args.warmup > 0:
        await closed_loop(client, concurrency, args.warmup, args.n, counter)
    loadavg = os.getloadavg()[0]
    before = cpu_snapshot(pids)
    sample = await closed_loop(client, concurrency, args.duration, args.n, counter)
    after = cpu_snapshot(pids)
    cpu = {name: after[name] - before[name] for name in pids}
    rss = psutil.Process(pids["service"]).memory_info().rss
    return summarize(concurrency, sample, cpu, rss, loadavg)


# -- report ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "packages": {d: version(d) for d in ("uvicorn", "uvloop", "httptools", "fastapi", "httpx")},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The results as a Markdown table."""

    def cell(x: Any) -> str:
        return "-" if x is None else str(x)

    head = (
        "| C | requests | req/s | p50 ms | p99 ms | errors | service CPU ms/req "
        "| service CPU cores |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        lat = r["latency_ms"]
        cells = [
            r["concurrency"], r["completed"], r["requests_per_second"], lat["p50"], lat["p99"],
            r["errors"], r["service_cpu_ms_per_request"], r["service_cpu_cores"],
        ]  # fmt: skip
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    return "\n".join(lines)


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas: {text!r}"
        ) from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers: {text!r}")
    return levels


async def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start the two servers, run every level, stop the servers."""
    mock = start_mock(workdir, args.latency_ms)
    service: Server | None = None
    try:
        service = start_service(workdir, mock.url, args.via, args.max_concurrent_runs)
        biggest = max(args.levels)
        limits = httpx.Limits(max_connections=biggest, max_keepalive_connections=biggest)
        async with httpx.AsyncClient(
            base_url=service.url, limits=limits, timeout=args.timeout
        ) as client:
            await wait_ready(client, service)
            error, _ = outcome(await client.post(CHAT, json=request_body(0, args.n)))
            if error is not None:
                raise RuntimeError(f"the first request failed ({error}):\n{service.tail()}")
            pids = {"service": service.proc.pid, "mock": mock.proc.pid, "loadgen": os.getpid()}
            counter = iter(range(1, sys.maxsize))
            rows = []
            for level in args.levels:
                row = await run_level(client, level, args, pids, counter)
                print(
                    f"C={level}: {row['requests_per_second']} req/s, "
                    f"p50 {row['latency_ms']['p50']} ms, p99 {row['latency_ms']['p99']} ms, "
                    f"{row['errors']} errors",
                    flush=True,
                )
                rows.append(row)
            service.check_alive()
    finally:
        if service is not None:
            service.stop()
        mock.stop()
    return {
        "command": " ".join(["python", "-m", "benchmarks.service_load", *sys.argv[1:]]),
        "machine": machine(),
        "settings": {
            "levels": args.levels,
            "duration_seconds": args.duration,
            "warmup_seconds": args.warmup,
            "mock_latency_ms": args.latency_ms,
            "n": args.n,
            "model": f"self_consistency:{BACKEND}",
            "stream": False,
            "service": " ".join(["python", *service_command(args.via, "PORT")[1:]]),
            "store": "SQLite file in a temporary directory",
            "max_concurrent_runs": args.max_concurrent_runs,
            "backend": {
                "kind": "openai",
                "server": "generic",
                "max_concurrency": BACKEND_MAX_CONCURRENCY,
                "max_retries": 0,
                "requests_per_second": None,
            },
            "client": {"library": "httpx", "max_connections": biggest, "timeout": args.timeout},
        },
        "results": rows,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--levels", type=parse_levels, default=[1, 8, 32, 128], help="C values")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured per C")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per C")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="mock latency per call")
    parser.add_argument("--n", type=int, default=8, help="self_consistency samples per request")
    parser.add_argument(
        "--max-concurrent-runs", type=int, default=1024, help="the service's run slots"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout, seconds")
    parser.add_argument(
        "--via", choices=("uvicorn", "cli"), default="uvicorn", help="how to start the service"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ttc-service-load-") as tmp:
        try:
            out = asyncio.run(bench(args, Path(tmp)))
        except RuntimeError as exc:  # a server that did not start or died: its log says why
            sys.exit(f"service_load: error: {exc}")
    settings = out["settings"]
    print(
        f"\nttc service, {settings['model']} n={args.n}, mock latency {args.latency_ms:g} ms, "
        f"{args.duration:g} s per level, {out['machine']['cpus']} CPUs\n"
    )
    print(markdown(out["results"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

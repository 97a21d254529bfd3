"""A real ``ttc serve`` process for tests, and the ``ttc`` command line as a subprocess.

``ttc_serve(tmp_path, *args)`` starts ``python -m orchestrator.cli serve --port <free> *args``
from the repository root, waits until ``GET /healthz`` answers, yields a ``ServerProcess`` and
stops it at exit (SIGTERM, then SIGKILL of its process group if it hangs). The server's output
goes to a log file in ``tmp_path``, shown when it fails to start. The environment is the test's
minus the ``TTC_*`` variables that would change what the server or the CLI use (service
settings, store, backends, API key), so only the given flags count.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
TTC = (sys.executable, "-m", "orchestrator.cli")
_SCRUBBED_PREFIXES = ("TTC_SERVICE", "TTC_BACKEND", "TTC_DEFAULT_BACKEND", "TTC_STORE_URL")
_SCRUBBED = ("TTC_API_KEY", "TTC_BASE_URL")


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the ttc settings variables, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_SCRUBBED_PREFIXES) and k not in _SCRUBBED
    }
    env.update(extra or {})
    return env


def ttc(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``ttc *args`` (``python -m orchestrator.cli``) and capture its output."""
    return subprocess.run(
        [*TTC, *args],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def tail(path: Path, lines: int = 60) -> str:
    """The last ``lines`` lines of a log file."""
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class ServerProcess:
    """A ``ttc serve`` subprocess listening on 127.0.0.1:``port``."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        """The service root, e.g. ``http://127.0.0.1:8123``."""
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float) -> None:
        """Wait until ``/healthz`` answers 200; fail the test (with the log) otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"ttc serve exited with {self.proc.returncode}:\n{tail(self.log_path)}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"ttc serve not ready within {timeout} s:\n{tail(self.log_path)}")

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM (graceful shutdown) and wait for the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the server's process group (no shutdown at all) and reap it."""
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@contextmanager
def ttc_serve(
    tmp_path: Path,
    *args: str,
    name: str = "server",
    ready_timeout: float = 60,
    env: Mapping[str, str] | None = None,
    stop_timeout: float = 60,
) -> Iterator[ServerProcess]:
    """Run ``ttc serve --port <free> *args`` until the block exits (see the module doc)."""
    port = free_port()
    log_path = tmp_path / f"{name}-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*TTC, "serve", "--port", str(port), *args],
            cwd=REPO,
            env=clean_env(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() reaches engine workers too
        )
    server = ServerProcess(proc, port, log_path)
    try:
        server.wait_ready(ready_timeout)
        yield server
    finally:
        if proc.poll() is None:
            try:
                server.terminate(stop_timeout)
            except subprocess.TimeoutExpired:
                server.kill()


def backend_spans(span: dict[str, Any]) -> list[dict[str, Any]]:
    """The backend spans of a trace (as JSON), depth first."""
    own = [span] if span["kind"] == "backend" else []
    return own + [s for child in span.get("children", []) for s in backend_spans(child)]


def trace_tokens(trace: dict[str, Any] | None) -> tuple[int, int]:
    """(prompt, completion) tokens summed over the backend spans of ``trace``."""
    assert trace is not None, "the run has no trace"
    spans = backend_spans(trace)
    assert spans, "the trace has no backend span"
    return sum(s["prompt_tokens"] for s in spans), sum(s["completion_tokens"] for s in spans)

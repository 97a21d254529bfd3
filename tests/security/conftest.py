"""The attack suite's world: real ``ttc serve`` processes, a listener that must hear nothing,
and a server secret that must never come back.

``TREE`` is the checkout the servers run (default: this one). ``TTC_SECURITY_TREE=/work/main``
runs the same attacks against another tree, e.g. the code before the trust boundary, to see
each attack test fail there (``OLD``: settings that tree does not know are left out, keys are
made with its own ``ttc keys create``, and the attacks that would hurt the machine itself, such
as ``/dev/zero`` or a 1024^3 bomb, are skipped).

* ``listener``: a TCP server on a free loopback port recording every connection; the attacks
  point URLs at it and assert ``listener.hits == []``.
* ``SECRET``: the value of ``SECRET_TOKEN`` in every server's environment; ``Client`` records
  every response, and ``assert_clean`` checks none holds the secret, the listener's address
  or a given file's contents.
* ``start(directory, settings)``: ``ttc serve`` on ``directory``'s store with the backends of
  ``BACKENDS`` (``local``: a FakeBackend answering 42; ``slow``: 5 s per call; ``remote``: an
  OpenAI-compatible backend at a closed port; ``coder``: a FakeBackend answering with code).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.api.server_process import REPO, ServerProcess, clean_env, free_port, tail

TREE = Path(os.environ.get("TTC_SECURITY_TREE") or REPO).resolve()
OLD = REPO.resolve() != TREE
SECRET = "s3cret-" + uuid.uuid4().hex
OLD_SETTINGS = {
    "host", "port", "backends_file", "default_backend", "default_strategy", "store_url",
    "shutdown_grace_seconds", "max_concurrent_runs", "default_budget", "max_request_n",
}  # fmt: skip


REMOTE_PORT = free_port()
"""The port of the ``remote`` backend, where nobody listens: it must never reach a client."""

BACKENDS = f"""\
default: local
backends:
  local:
    kind: fake
    options: {{latency: 0.02, answers: ["42"]}}
  slow:
    kind: fake
    options: {{latency: 5, answers: ["42"]}}
  remote:
    kind: openai
    model: m
    base_url: http://127.0.0.1:{REMOTE_PORT}/v1
    server: generic
    max_retries: 0
    timeout: 2
"""
CODER = """  coder:
    kind: fake
    options: {texts: ["```python\\nprint(42)\\n```"]}
"""
"""A backend answering with runnable code (``unit_tests`` then runs the client's tests);
only for this tree: older FakeBackends have no ``texts``."""


class Listener:
    """A TCP server that records who connected (and the first bytes they sent)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.hits: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/score"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(1)
                try:
                    self.hits.append(conn.recv(4096) or b"(connected)")
                except OSError:
                    self.hits.append(b"(connected)")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="session")
def listener() -> Iterator[Listener]:
    server = Listener()
    try:
        yield server
    finally:
        server.close()


def ttc_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``ttc *args`` from ``TREE``."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=TREE, env=clean_env(), capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def store_of(directory: Path) -> str:
    return f"sqlite:///{directory / 'ttc.db'}"


def create_key(directory: Path, name: str, *flags: str) -> str:
    """A key made by ``ttc keys create`` (``--scope`` flags dropped for an ``OLD`` tree)."""
    if OLD:
        kept, skip = [], False
        for flag in flags:
            if skip:
                skip = False
            elif flag == "--scope":
                skip = True
            else:
                kept.append(flag)
        flags = tuple(kept)
    made = ttc_cli("keys", "create", name, *flags, "--store", store_of(directory))
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


@contextmanager
def start(
    directory: Path,
    settings: Mapping[str, Any] | None = None,
    *,
    name: str = "server",
    backends: str | None = None,
) -> Iterator[ServerProcess]:
    """``ttc serve`` from ``TREE`` on ``directory``'s store (see the module docstring), with
    ``backends`` (a backends file's text) instead of ``BACKENDS`` when given."""
    directory.mkdir(parents=True, exist_ok=True)
    default = BACKENDS + ("" if OLD else CODER)
    (directory / "backends.yaml").write_text(backends if backends is not None else default)
    chosen = dict(settings or {})
    if OLD:
        chosen = {k: v for k, v in chosen.items() if k in OLD_SETTINGS}
    config = directory / f"{name}.yaml"
    config.write_text(yaml.safe_dump(chosen))
    port = free_port()
    log_path = directory / f"{name}-{port}.log"
    command = [sys.executable, "-m", "orchestrator.cli", "serve", "--port", str(port),
               "--config", str(config), "--backends", str(directory / "backends.yaml"),
               "--store", store_of(directory)]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command, cwd=TREE, env=clean_env({"SECRET_TOKEN": SECRET}), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = ServerProcess(proc, port, log_path)
    try:
        server.wait_ready(60)
        yield server
    finally:
        if proc.poll() is None:
            try:
                server.terminate(30)
            except subprocess.TimeoutExpired:
                server.kill()
        if proc.returncode not in (0, -15, None):
            print(tail(log_path))


@dataclass
class Client:
    """An HTTP client on a server that keeps every response for ``assert_clean``."""

    base_url: str
    key: str | None = None
    responses: list[httpx.Response] = field(default_factory=list)

    def request(
        self, method: str, path: str, key: str | None = "", **kwargs: Any
    ) -> httpx.Response:
        token = self.key if key == "" else key
        headers = dict(kwargs.pop("headers", {}) or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        kwargs.setdefault("timeout", 60)
        response = httpx.request(method, self.base_url + path, headers=headers, **kwargs)
        self.responses.append(response)
        return response

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def assert_clean(self, *forbidden: str) -> None:
        """No response (body or headers) holds the server's secret or a ``forbidden`` text."""
        for response in self.responses:
            text = response.text + " ".join(f"{k}: {v}" for k, v in response.headers.items())
            for secret in (SECRET, *forbidden):
                assert secret not in text, f"{secret[:40]!r} leaked in {response.request.url}"


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The standard error body's ``error`` object (fails when the body is not one)."""
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), response.text
    error: dict[str, Any] = body["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    return error

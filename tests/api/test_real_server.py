"""The service as users run it: ``ttc serve`` in its own process, on a free loopback port.

The backends file declares FakeBackends: ``local`` (the default: answers 42 after 50 ms),
``slow`` (2.5 s per call) and ``stuck`` (120 s per call); the store is a SQLite file in
tmp_path. Clients are the official ``openai`` package (sync and async), the ttc SDK and plain
httpx; API keys are managed with the ``ttc keys`` command line on the same store. The restart
and shutdown tests kill or stop the process mid-run and check what the store then says.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from orchestrator import Client
from orchestrator.api.app import INTERRUPTED
from orchestrator.api.runs import SHUTDOWN
from orchestrator.cli.serve import is_loopback
from orchestrator.sdk import RunInfo
from orchestrator.store.run_store import RunRecord, RunStore
from tests.api.server_process import ServerProcess, trace_tokens, ttc, ttc_serve

pytestmark = [pytest.mark.slow]

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is 6 times 7?"}]
SC2 = {"strategy": "self_consistency", "n": 2}
AUTH_OFF = {"TTC_SERVICE__AUTH": "off"}
BACKENDS = """\
default: local
backends:
  local:
    kind: fake
    options: {latency: 0.05, answers: ["42"]}
  slow:
    kind: fake
    options: {latency: 2.5, answers: ["42"]}
  stuck:
    kind: fake
    options: {latency: 120, answers: ["42"]}
"""


def write_backends(directory: Path) -> str:
    path = directory / "backends.yaml"
    path.write_text(BACKENDS)
    return str(path)


def serve_args(directory: Path) -> list[str]:
    """``--backends`` and ``--store`` flags for a server on ``directory``'s store."""
    return ["--backends", write_backends(directory), "--store", store_url(directory)]


def store_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'ttc.db'}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server shared by the client tests of this module (auth off)."""
    directory = tmp_path_factory.mktemp("real-server")
    with ttc_serve(directory, *serve_args(directory), env=AUTH_OFF) as proc:
        yield proc


@pytest.fixture
def sdk(server: ServerProcess) -> Iterator[Client]:
    with Client(server.url, api_key="", max_retries=0) as client:
        yield client


def wait_until(check: Any, timeout: float = 20, what: str = "condition") -> Any:
    """Poll ``check()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def running(client: Client, run_id: str) -> RunInfo:
    info: RunInfo = wait_until(
        lambda: (i := client.get_run(run_id)).status == "running" and i, what=f"{run_id} running"
    )
    return info


def extra(obj: Any) -> dict[str, Any]:
    """The ``ttc`` object of a response or chunk of the openai client."""
    ttc_object: dict[str, Any] = (obj.model_extra or {})["ttc"]
    return ttc_object


def stored(url: str, run_id: str) -> RunRecord:
    """The run as the store has it (read in this process, without any server)."""

    async def read() -> RunRecord | None:
        async with RunStore(url) as store:
            return await store.get(run_id)

    record = asyncio.run(read())
    assert record is not None, f"run {run_id} is not in the store"
    return record


# -- the official openai client ----------------------------------------------------------------


def test_openai_sync_client_usage_is_the_runs_trace_total(
    server: ServerProcess, sdk: Client
) -> None:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as oai:
        resp = oai.chat.completions.create(
            model="self_consistency:local",
            messages=[{"role": "system", "content": "Answer briefly."}, *QUESTION],
            extra_body={"ttc": {"n": 4}},
        )
    assert resp.object == "chat.completion" and resp.model == "self_consistency:local"
    (choice,) = resp.choices
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    ttc_extra = extra(resp)
    assert ttc_extra["strategy"] == "self_consistency" and ttc_extra["answer"] == "42"
    assert ttc_extra["votes"] == {"42": 4}
    (run_id,) = ttc_extra["run_ids"]
    assert resp.id == f"chatcmpl-{run_id}"

    info = sdk.get_run(run_id)  # the stored run, through the native API
    assert info.status == "succeeded" and info.result is not None
    assert len(info.result.candidates) == 4
    assert info.result.candidate is not None
    assert choice.message.content == info.result.candidate.text
    prompt, completion = trace_tokens(info.result.trace)
    assert resp.usage is not None and completion > 0
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (prompt, completion)
    assert resp.usage.total_tokens == prompt + completion
    assert info.usage is not None and info.usage.completion_tokens == completion


async def test_openai_async_client_with_n_choices(server: ServerProcess) -> None:
    async with (
        openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as oai,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        resp = await oai.chat.completions.create(
            model="self_consistency:local",
            messages=QUESTION,
            n=2,
            extra_body={"ttc": {"n": 4}},
        )
        assert [c.index for c in resp.choices] == [0, 1]
        run_ids = extra(resp)["run_ids"]
        assert len(run_ids) == 2
        prompt = completion = 0
        for choice, run_id in zip(resp.choices, run_ids, strict=True):
            record = (await http.get(f"/v1/runs/{run_id}")).json()
            assert record["status"] == "succeeded"
            assert choice.message.content == record["result"]["candidate"]["text"]
            p, c = trace_tokens(record["result"]["trace"])
            prompt, completion = prompt + p, completion + c
        assert resp.usage is not None
        assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (prompt, completion)
        models = [m.id async for m in oai.models.list()]
        assert "local" in models and "self_consistency:local" in models


def test_openai_streaming(server: ServerProcess, sdk: Client) -> None:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as oai:
        stream = oai.chat.completions.create(
            model="self_consistency:local",
            messages=QUESTION,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ttc": {"n": 4}},
        )
        chunks = list(stream)
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    info = sdk.get_run(extra(last)["run_ids"][0])
    assert info.result is not None and info.result.candidate is not None
    assert content == info.result.candidate.text and "42" in content
    prompt, completion = trace_tokens(info.result.trace)
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (prompt, completion)


def test_stream_wire_format_over_tcp(server: ServerProcess) -> None:
    """Progress comments while the run is in flight, content, then ``data: [DONE]``."""
    body = {"model": "self_consistency:local", "messages": QUESTION, "stream": True}
    with (
        httpx.Client(base_url=server.url, timeout=30) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    progress = [json.loads(x.removeprefix(": progress ")) for x in lines if x.startswith(": ")]
    assert any(p.get("kind") == "backend" for p in progress)
    data = [x.removeprefix("data: ") for x in lines if x.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert any(c["choices"] and c["choices"][0]["delta"].get("content") for c in chunks)


# -- the SDK -----------------------------------------------------------------------------------


def test_sdk_reason_and_events(sdk: Client) -> None:
    run = sdk.reason("What is 6*7?", {"strategy": "self_consistency", "n": 4}, seed=3)
    assert run.status == "succeeded" and run.answer == "42"
    assert run.result.strategy == "self_consistency" and len(run.result.candidates) == 4
    assert run.usage.completion_tokens == trace_tokens(run.result.trace)[1] > 0
    assert sdk.health()["status"] == "ok"
    assert "self_consistency" in [s.name for s in sdk.strategies()]

    run_id = sdk.create_run("What is 6*7?", SC2, backend="slow")
    events = list(sdk.events(run_id))
    types = [e.type for e in events]
    assert types[0] == "status" and types[-1] == "result"
    assert [e.data["status"] for e in events if e.type == "status"] == ["queued", "running"]
    assert any(e.type == "progress" and e.data.get("kind") == "backend" for e in events)
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    final = sdk.wait(run_id, timeout=30)
    assert final.status == "succeeded" and final.answer == "42"
    assert final.id in [r.id for r in sdk.list_runs(limit=20)]


# -- auth, with keys made by the ttc command line ----------------------------------------------


def test_auth_with_keys_from_the_command_line(tmp_path: Path) -> None:
    store = store_url(tmp_path)
    with (
        ttc_serve(tmp_path, *serve_args(tmp_path)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        assert "auth: required, but NO active API key" in server.log()
        closed = http.get("/v1/models")  # no key configured: closed, not open
        assert closed.status_code == 401 and closed.json()["error"]["code"] == "no_api_keys"

        created = ttc("keys", "create", "ci", "--store", store)
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip()
        assert key.startswith("ttc-") and "\n" not in key
        assert "cannot be shown again" in created.stderr and key not in created.stderr

        def no_key_refused() -> httpx.Response | None:
            r = http.get("/v1/models")
            return r if r.json()["error"]["code"] == "missing_api_key" else None

        refused = wait_until(no_key_refused, what="the key to be seen")  # cached up to ~5 s
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
        assert refused.headers["www-authenticate"] == "Bearer"
        assert http.get("/healthz").status_code == 200  # health needs no key
        bad = http.get("/v1/models", headers={"Authorization": "Bearer ttc-wrong"})
        assert bad.status_code == 401

        with openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0) as oai:
            resp = oai.chat.completions.create(
                model="self_consistency:local", messages=QUESTION, extra_body={"ttc": {"n": 4}}
            )
            assert extra(resp)["answer"] == "42"
        with (
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as oai,
            pytest.raises(openai.AuthenticationError),
        ):
            oai.chat.completions.create(model="self_consistency:local", messages=QUESTION)
        with Client(server.url, api_key=key, max_retries=0) as sdk:
            assert sdk.reason("What is 6*7?", SC2).answer == "42"

        listed = ttc("keys", "list", "--store", store)
        assert listed.returncode == 0 and "ci" in listed.stdout and "active" in listed.stdout
        assert key[:12] in listed.stdout and key not in listed.stdout
        for path in tmp_path.glob("ttc.db*"):  # the database file and its WAL
            assert key.encode() not in path.read_bytes(), f"plaintext key in {path.name}"

        limited = ttc("keys", "create", "tight", "--rpm", "2", "--store", store)
        tight = {"Authorization": f"Bearer {limited.stdout.strip()}"}
        codes = [http.get("/v1/models", headers=tight).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        over = http.get("/v1/models", headers=tight)
        assert over.json()["error"]["type"] == "rate_limit_error"
        assert int(over.headers["retry-after"]) >= 1

        revoked = ttc("keys", "revoke", "ci", "--store", store)
        assert revoked.returncode == 0, revoked.stderr
        headers = {"Authorization": f"Bearer {key}"}
        wait_until(
            lambda: http.get("/v1/models", headers=headers).status_code == 401,
            what="the revoked key to be refused",
        )
        assert ttc("keys", "revoke", "ci", "--store", store).returncode == 1
        assert "revoked" in ttc("keys", "list", "--store", store).stdout


# -- restart and shutdown ----------------------------------------------------------------------


def test_a_restart_keeps_finished_runs_and_fails_interrupted_ones(tmp_path: Path) -> None:
    args = serve_args(tmp_path)
    with ttc_serve(tmp_path, *args, name="first", env=AUTH_OFF) as first:
        with Client(first.url, api_key="", max_retries=0) as sdk:
            done = sdk.reason("What is 6*7?", SC2, seed=1)
            assert done.answer == "42"
            interrupted_id = sdk.create_run("What is 6*7?", SC2, backend="stuck")
            running(sdk, interrupted_id)
        first.kill()  # SIGKILL: no shutdown, the run stays "running" in the store
        assert first.proc.returncode == -signal.SIGKILL
    assert stored(store_url(tmp_path), interrupted_id).status == "running"

    with (
        ttc_serve(tmp_path, *args, name="second", env=AUTH_OFF) as second,
        Client(second.url, api_key="", max_retries=0) as sdk,
    ):
        before = sdk.get_run(done.run_id)
        assert before.status == "succeeded" and before.answer == "42"
        assert before.result is not None and before.result.trace is not None
        assert before.usage == done.usage
        assert before.result.candidates == done.result.candidates

        lost = sdk.get_run(interrupted_id)
        assert lost.status == "failed" and lost.finished_at is not None
        assert lost.error is not None and lost.error.type == "interrupted"
        assert "restarted" in lost.error.message and lost.error.message == INTERRUPTED
        (event,) = list(sdk.events(interrupted_id))
        assert event.type == "error" and event.data["status"] == "failed"
        assert interrupted_id in [r.id for r in sdk.list_runs(status="failed")]
        assert "1 run(s) interrupted by the previous shutdown marked failed" in second.log()


def test_sigterm_finishes_or_cancels_in_flight_runs_within_the_grace(tmp_path: Path) -> None:
    grace = 4
    config = tmp_path / "service.yaml"
    config.write_text(f"shutdown_grace_seconds: {grace}\n")
    url = store_url(tmp_path)
    with (
        ttc_serve(tmp_path, *serve_args(tmp_path), "--config", str(config), env=AUTH_OFF) as server,
        Client(server.url, api_key="", max_retries=0) as sdk,
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as oai,
        ThreadPoolExecutor(1) as pool,
    ):
        finishing = sdk.create_run("What is 6*7?", SC2, backend="slow")  # 2.5 s < grace
        stuck = sdk.create_run("What is 6*7?", SC2, backend="stuck")  # 120 s > grace
        chat = pool.submit(  # an open request when the signal comes
            lambda: oai.chat.completions.create(
                model="self_consistency:slow", messages=QUESTION, extra_body={"ttc": {"n": 2}}
            )
        )
        wait_until(lambda: len(sdk.list_runs(status="running")) == 3, what="3 running runs")
        started = time.monotonic()
        code = server.terminate(timeout=30)
        elapsed = time.monotonic() - started
        resp = chat.result(timeout=10)
    # uvicorn re-raises the signal after a clean shutdown: the exit says "stopped by SIGTERM"
    assert code == -signal.SIGTERM and "Application shutdown complete" in server.log()
    # uvicorn gives open requests the grace, then the lifespan gives runs the grace again
    assert elapsed < 2 * grace + 5, f"shutdown took {elapsed:.1f} s"
    assert resp.choices[0].message.content and extra(resp)["answer"] == "42"

    assert stored(url, extra(resp)["run_ids"][0]).status == "succeeded"
    done = stored(url, finishing)
    assert done.status == "succeeded" and done.result is not None
    assert done.result["answer"] == "42"
    cancelled = stored(url, stuck)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert cancelled.error is not None and cancelled.error["message"] == SHUTDOWN
    assert "ttc service stopping" in server.log()


# -- the command line's checks -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_bad_input_exits_before_serving(tmp_path: Path) -> None:
    config = tmp_path / "service.yaml"
    config.write_text("default_strategy: {strategy: no_such_strategy}\n")
    bad_default = ttc("serve", "--config", str(config), *serve_args(tmp_path))
    assert bad_default.returncode == 2
    assert "unknown strategy 'no_such_strategy'" in bad_default.stderr
    assert "Traceback" not in bad_default.stderr and "serving on" not in bad_default.stderr

    backends = tmp_path / "keyless.yaml"
    backends.write_text(
        "default: remote\nbackends:\n  remote:\n    kind: openai\n    base_url: http://x/v1\n"
        "    model: m\n    api_key_env: TTC_TEST_UNSET_KEY\n"
    )
    no_key = ttc("serve", "--backends", str(backends), "--store", store_url(tmp_path))
    assert no_key.returncode == 2 and "TTC_TEST_UNSET_KEY" in no_key.stderr

    store = store_url(tmp_path)
    assert ttc("keys", "create", "k", "--rpm", "0", "--store", store).returncode == 2
    assert ttc("keys", "revoke", "nobody", "--store", store).returncode == 1
    unreachable = ttc("keys", "list", "--store", "postgresql://ttc:hunter2@127.0.0.1:1/ttc")
    assert unreachable.returncode == 3
    assert "127.0.0.1" in unreachable.stderr and "hunter2" not in unreachable.stderr

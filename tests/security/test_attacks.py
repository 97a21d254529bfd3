"""Each attack of issue 14 against a real ``ttc serve`` process (see conftest.py).

One hardened server (``auth: required``, the default caps, a small queue) is shared by the
module; it runs on a store where a run was created first by the same service with ``auth: off``.
Keys: ``alice`` and ``bob`` (nothing granted), ``coder`` (``--scope client_code --scope
resources``), ``budget`` (200 tokens a day), ``q1``..``q3`` (queue filling) and ``temp``
(revoked by a test). Every test checks that the listener heard nothing and that no response
holds the server's secret (the value of its ``SECRET_TOKEN``) or a file's contents.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.server_process import ServerProcess
from tests.security.conftest import (
    OLD,
    REMOTE_PORT,
    SECRET,
    TREE,
    Client,
    Listener,
    create_key,
    error_of,
    start,
    store_of,
    ttc_cli,
)

pytestmark = [pytest.mark.slow]

QUESTION = "What is 6 times 7?"
HARDENED = {"max_concurrent_runs": 4, "max_queued_runs": 4, "max_runs_per_key": 3}
KEYS: dict[str, tuple[str, ...]] = {
    "alice": (), "bob": (), "coder": ("--scope", "client_code", "--scope", "resources"),
    "budget": ("--daily-tokens", "200"), "q1": (), "q2": (), "q3": (), "temp": (),
}  # fmt: skip


@dataclass
class World:
    server: ServerProcess
    directory: Path
    keys: dict[str, str]
    open_run: str

    def client(self, key: str | None = "alice") -> Client:
        return Client(self.server.url, self.keys[key] if key else None)


def wait_finished(client: Client, run_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record: dict[str, Any] = client.get(f"/v1/runs/{run_id}").json()
        if record.get("status") in ("succeeded", "failed", "cancelled"):
            return record
        time.sleep(0.1)
    pytest.fail(f"run {run_id} did not finish")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("hardened")
    with start(directory, {"auth": "off"}, name="open") as server:  # a run nobody owns
        anonymous = Client(server.url)
        run_id = anonymous.post("/v1/runs", json={"problem": QUESTION}).json()["run_id"]
        wait_finished(anonymous, run_id)
    keys = {name: create_key(directory, name, *flags) for name, flags in KEYS.items()}
    with start(directory, HARDENED, name="hardened") as server:
        yield World(server, directory, keys, run_id)


def assert_refused(response: httpx.Response, status: int, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = error_of(response)
    if param is not None:
        assert error["param"] == param, error
    assert response.headers.get("x-should-retry") == "false"


# -- a verifier that sends the server's secrets to the client's URL ----------------------------


def reward_spec(listener: Listener) -> dict[str, Any]:
    return {
        "strategy": "best_of_n",
        "n": 2,
        "verifier": {
            "verifier": "reward_model", "kind": "generic", "url": listener.url,
            "api_key_env": "SECRET_TOKEN", "score_path": "score",
            "request_template": {"q": "{question}"},
        },
    }  # fmt: skip


def test_reward_model_url_and_api_key_env_are_privileged(world: World, listener: Listener) -> None:
    c = world.client()
    native = c.post("/v1/reason", json={"problem": QUESTION, "strategy": reward_spec(listener)})
    chat = c.post(
        "/v1/chat/completions",
        json={"model": "best_of_n:local", "messages": [{"role": "user", "content": QUESTION}],
              "ttc": {"verifier": reward_spec(listener)["verifier"]}},
    )  # fmt: skip
    assert_refused(native, 403, "strategy.verifier.url")
    assert "allow: [verifier.reward_model.url]" in error_of(native)["message"]
    assert_refused(chat, 403, "ttc.verifier.url")
    time.sleep(0.5)  # anything sent would have arrived
    assert listener.hits == [], listener.hits
    c.assert_clean()


# -- a verifier that imports and runs any function of the server -------------------------------


def test_python_verifier_function_is_privileged(world: World) -> None:
    c = world.client()
    spec = {"strategy": "best_of_n", "n": 2,
            "verifier": {"verifier": "python", "function": "os:getcwd"}}  # fmt: skip
    answer = c.post("/v1/reason", json={"problem": QUESTION, "strategy": spec})
    assert_refused(answer, 403, "strategy.verifier.function")
    c.assert_clean(str(TREE))


# -- a strategy that reads the server's files --------------------------------------------------


def test_div_se_approaches_file_is_privileged(world: World) -> None:
    secret_file = world.directory / "operator-notes.yaml"
    secret_file.write_text('- "OPERATOR-ONLY approach 1"\n- "OPERATOR-ONLY approach 2"\n')
    c = world.client()
    for path in (str(secret_file), "/etc/passwd", str(world.directory / "missing.yaml")):
        spec = {"strategy": "div_se", "k": 2, "approaches_file": path}
        answer = c.post("/v1/reason", json={"problem": QUESTION, "strategy": spec})
        assert_refused(answer, 403, "strategy.approaches_file")
        assert "exist" not in error_of(answer)["message"]  # nothing said about the file
    c.assert_clean("OPERATOR-ONLY", "root:x:0:0")


@pytest.mark.skipif(OLD, reason="/dev/zero blocks the old service and eats the machine's memory")
def test_div_se_cannot_block_on_dev_zero(world: World) -> None:
    c = world.client()
    t0 = time.monotonic()
    spec = {"strategy": "idiv_se", "approaches_file": "/dev/zero"}
    answer = c.post("/v1/reason", json={"problem": QUESTION, "strategy": spec}, timeout=10)
    assert_refused(answer, 403, "strategy.approaches_file")
    assert time.monotonic() - t0 < 5 and c.get("/healthz").status_code == 200


# -- client code and its resource limits -------------------------------------------------------


def unit_tests_spec(tests: list[str], **limits: int) -> dict[str, Any]:
    verifier: dict[str, Any] = {"verifier": "unit_tests", "tests": tests}
    if limits:
        verifier["limits"] = limits
    return {"strategy": "best_of_n", "n": 1, "verifier": verifier}


def test_client_tests_are_privileged_and_their_limits_capped(world: World) -> None:
    huge = unit_tests_spec(["assert True"], memory_bytes=1 << 40, disk_bytes=1 << 40)
    plain = world.client("alice").post("/v1/reason", json={"problem": QUESTION, "strategy": huge})
    assert_refused(plain, 403, "strategy.verifier.tests")
    metadata = world.client("alice").post(
        "/v1/reason",
        json={"problem": {"question": QUESTION, "metadata": {"tests": ["import os"]}},
              "strategy": {"strategy": "best_of_n", "n": 1, "verifier": "unit_tests"}},
    )  # fmt: skip
    assert_refused(metadata, 403, "problem.metadata.tests")
    granted = world.client("coder").post("/v1/reason", json={"problem": QUESTION, "strategy": huge})
    assert_refused(granted, 400, "strategy.verifier.limits.memory_bytes")
    assert "resource_caps.memory_bytes" in error_of(granted)["message"]


@pytest.mark.skipif(OLD, reason="needs this tree's `coder` backend and key scopes")
def test_granted_client_code_cannot_read_the_service(world: World) -> None:
    pid, store = world.server.proc.pid, world.directory / "ttc.db"
    tests = [
        f"raise Exception(open('/proc/{pid}/environ').read())",
        f"raise Exception(open({str(store)!r}, 'rb').read(64).decode('latin-1'))",
        "import socket; socket.create_connection(('127.0.0.1', 1), timeout=1)",
    ]
    tests.append("assert True")  # the code ran, and so did the tests
    c = world.client("coder")
    spec = {**unit_tests_spec(tests), "backend": "coder"}
    answer = c.post("/v1/reason", json={"problem": QUESTION, "strategy": spec})
    assert answer.status_code == 200, answer.text
    (scored,) = answer.json()["result"]["candidates"]
    score = scored["scores"][-1]
    assert score["details"]["passed"] == 1 and score["details"]["total"] == 4, score
    failure = score["details"]["failure"]  # the first probe's: it could not read the file
    assert "PermissionError" in failure or "FileNotFoundError" in failure, failure
    assert score["details"]["sandbox"]["filesystem_isolated"] is True
    c.assert_clean("SQLite format")


# -- compute: nested-n bombs, budgets, the queue, daily tokens ---------------------------------


def bomb(n: int, depth: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"strategy": "single"}
    for _ in range(depth):
        spec = {"strategy": "self_consistency", "n": n, "inner": spec}
    return spec


def test_nested_n_bombs_are_refused_before_any_call(world: World) -> None:
    c = world.client()
    before = len(c.get("/v1/runs", params={"limit": 500}).json()["data"])
    cases = [(64, 2)] if OLD else [(64, 2), (1024, 3), (2, 40)]
    for n, depth in cases:
        t0 = time.monotonic()
        answer = c.post("/v1/reason", json={"problem": QUESTION, "strategy": bomb(n, depth)})
        assert_refused(answer, 400)
        assert error_of(answer)["code"] == "limit_exceeded"
        assert time.monotonic() - t0 < 5
    wide_spec = {"strategy": "best_of_n", "n": 1024}
    wide = c.post("/v1/reason", json={"problem": QUESTION, "strategy": wide_spec})
    assert_refused(wide, 400)
    assert "max_samples_per_run" in error_of(wide)["message"]
    after = len(c.get("/v1/runs", params={"limit": 500}).json()["data"])
    assert after == before  # nothing was even stored


def test_a_client_budget_is_capped_and_a_default_applies(world: World) -> None:
    c = world.client()
    greedy = {"max_calls": 10**9, "max_completion_tokens": 10**12, "max_seconds": 10**7}
    big = c.post("/v1/runs", json={"problem": QUESTION, "budget": greedy}).json()["run_id"]
    none = c.post("/v1/runs", json={"problem": QUESTION}).json()["run_id"]
    capped = wait_finished(c, big)["request"]["budget"]
    default = wait_finished(c, none)["request"]["budget"]
    assert capped["max_calls"] == 2048 and capped["max_completion_tokens"] == 131072
    assert capped["max_seconds"] == 1800 and capped["max_prompt_tokens"] == 524288
    assert default is not None and default["max_completion_tokens"] == 16384


def test_the_run_queue_is_bounded(world: World) -> None:
    slow = {"problem": QUESTION, "strategy": "single", "backend": "slow"}
    created: list[tuple[Client, str]] = []
    answers = []
    try:
        for key in ("q1", "q2", "q3"):
            c = world.client(key)
            for _ in range(3):
                answer = c.post("/v1/runs", json=slow)
                answers.append(answer)
                if answer.status_code == 202:
                    created.append((c, answer.json()["run_id"]))
        mine = world.client("alice")
        per_key = [mine.post("/v1/runs", json=slow) for _ in range(4)]
        created += [(mine, a.json()["run_id"]) for a in per_key if a.status_code == 202]
    finally:
        for c, run_id in created:
            c.request("DELETE", f"/v1/runs/{run_id}")
    assert [a.status_code for a in answers] == [202] * 8 + [429]
    full = answers[-1]
    assert error_of(full)["code"] == "queue_full" and int(full.headers["retry-after"]) >= 1
    assert full.headers["x-should-retry"] == "true"
    assert [a.status_code for a in per_key][-1] == 429


def test_the_daily_token_limit_holds_for_concurrent_runs(world: World) -> None:
    c = world.client("budget")
    answers: list[httpx.Response] = []

    def one() -> None:
        body = {"problem": QUESTION, "strategy": {"strategy": "self_consistency", "n": 4}}
        answers.append(c.post("/v1/reason", json=body))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [a.json() for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    listed = json.loads(ttc_cli("keys", "list", "--json", "--store", store_of(world.directory))
                        .stdout)  # fmt: skip
    (row,) = [k for k in listed if k["name"] == "budget"]
    prompt = max(r["usage"]["prompt_tokens"] for r in ok)  # a call's prompt may overshoot
    assert row["tokens_today"] <= 200 + len(ok) * prompt, row
    assert ok and refused and len(ok) + len(refused) == 8
    codes = {error_of(r)["code"] for r in refused}  # 3 runs per key at most, too
    assert "daily_token_limit_exceeded" in codes and codes <= {
        "daily_token_limit_exceeded", "too_many_runs",
    }  # fmt: skip


# -- auth --------------------------------------------------------------------------------------


def test_auth_fails_closed_on_a_fresh_store(tmp_path: Path) -> None:
    with start(tmp_path) as server:
        c = Client(server.url)
        for method, path in (
            ("GET", "/v1/models"),
            ("POST", "/v1/reason"),
            ("GET", "/openapi.json"),
            ("GET", "/docs"),
            ("GET", "/metrics"),
        ):
            refused = c.request(method, path, json={"problem": QUESTION})
            assert refused.status_code == 401, (path, refused.text)
            assert error_of(refused)["code"] == "no_api_keys"
        ready = c.get("/readyz")
        assert set(ready.json()) <= {"status", "error"}  # no per-backend details without a key
        assert "NO active API key" in server.log()
        key = create_key(tmp_path, "only")
        keyed = Client(server.url, key)
        wait_for(lambda: keyed.get("/v1/models").status_code == 200, "the new key")
        assert ttc_cli("keys", "revoke", "only", "--store", store_of(tmp_path)).returncode == 0
        wait_for(lambda: keyed.get("/v1/models").status_code == 401, "the revoked key")
        assert c.get("/v1/models").status_code == 401  # the last key gone: still closed
    c.assert_clean()
    keyed.assert_clean(str(server.port))


def wait_for(check: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.skipif(OLD, reason="auth: off and --insecure do not exist before issue 14")
def test_auth_off_on_a_public_interface_needs_insecure(tmp_path: Path) -> None:
    (tmp_path / "off.yaml").write_text("auth: off\nhost: 0.0.0.0\n")
    refused = ttc_cli("serve", "--config", str(tmp_path / "off.yaml"), "--port", "1",
                      "--store", store_of(tmp_path))  # fmt: skip
    assert refused.returncode == 2 and "--insecure" in refused.stderr


def test_keys_see_only_their_own_runs(world: World) -> None:
    alice, bob = world.client("alice"), world.client("bob")
    mine = alice.post("/v1/runs", json={"problem": QUESTION}).json()["run_id"]
    wait_finished(alice, mine)
    for client, run_id in ((bob, mine), (alice, world.open_run), (bob, world.open_run)):
        for method, path in (("GET", f"/v1/runs/{run_id}"), ("GET", f"/v1/runs/{run_id}/events"),
                             ("DELETE", f"/v1/runs/{run_id}")):  # fmt: skip
            answer = client.request(method, path)
            assert answer.status_code == 404, (method, path, answer.text)
    listed_bob = {r["id"] for r in bob.get("/v1/runs", params={"limit": 500}).json()["data"]}
    listed_alice = {r["id"] for r in alice.get("/v1/runs", params={"limit": 500}).json()["data"]}
    assert mine not in listed_bob and world.open_run not in listed_bob | listed_alice
    assert mine in listed_alice


def test_a_revoked_key_is_refused(world: World) -> None:
    c = world.client("temp")
    assert c.get("/v1/models").status_code == 200
    assert ttc_cli("keys", "revoke", "temp", "--store", store_of(world.directory)).returncode == 0
    wait_for(lambda: c.get("/v1/models").status_code == 401, "the revoked key")
    assert error_of(c.get("/v1/models"))["code"] == "invalid_api_key"


# -- bodies, errors ----------------------------------------------------------------------------


def test_oversized_and_deep_bodies_are_4xx(world: World) -> None:
    c = world.client()
    big = {"problem": "x" * (2 << 20)}
    assert_refused(c.post("/v1/reason", json=big), 413)

    def chunks() -> Iterator[bytes]:
        yield b'{"problem": "'
        for _ in range(2048):
            yield b"x" * 1024
        yield b'"}'

    streamed = c.post("/v1/reason", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413, streamed.text
    deep = c.post(
        "/v1/reason", content=b"[" * 100_000, headers={"content-type": "application/json"}
    )
    assert 400 <= deep.status_code < 500, deep.text


def test_errors_name_no_url_and_carry_an_error_id(world: World) -> None:
    c = world.client()
    answer = c.post("/v1/reason", json={"problem": QUESTION, "strategy": "single",
                                        "backend": "remote"})  # fmt: skip
    assert answer.status_code in (502, 503, 504), answer.text
    error = error_of(answer)
    assert "error id" in error["message"] and answer.headers["x-should-retry"] == "false"
    error_id = error["message"].split("error id ")[1].split(")")[0]
    assert error_id in world.server.log()  # the details are in the server log
    ready = c.get("/readyz").json()
    assert ready["backends"]["remote"]["ready"] is False
    c.assert_clean(f"127.0.0.1:{REMOTE_PORT}", str(world.directory))
    assert SECRET not in world.server.log()


@pytest.mark.skipif(OLD, reason="--scope does not exist before issue 14")
def test_keys_create_refuses_an_unknown_scope(tmp_path: Path) -> None:
    made = ttc_cli("keys", "create", "x", "--scope", "root", "--store", store_of(tmp_path))
    assert made.returncode == 2 and "unknown grant 'root'" in made.stderr
    listed = ttc_cli("keys", "list", "--json", "--store", store_of(tmp_path))
    assert json.loads(listed.stdout) == []  # nothing was created

"""The service's trust boundary in process: privileged fields (403), grants (settings and key
scopes), caps (400 / 413), budget capping, queue and per-key limits (429), x-should-retry.

The attacks themselves, against a real ``ttc serve`` process, are in tests/security/."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.api import policy as policy_module
from orchestrator.testing.fake_backend import FakeBackend
from tests.api.native_app import Service, serve

PYTHON = {"verifier": "python", "function": "os:getcwd"}
BOMB: dict[str, Any] = {"strategy": "single"}
for _ in range(3):
    BOMB = {"strategy": "self_consistency", "n": 16, "inner": BOMB}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


async def reason(svc: Service, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    return await svc.client.post("/v1/reason", json=body, headers=bearer(key) if key else None)


async def test_a_privileged_field_is_refused_with_the_field_and_the_grant(tmp_path: Path) -> None:
    spec = {"strategy": "best_of_n", "n": 2, "verifier": PYTHON}
    async with serve(tmp_path) as svc:
        refused = await reason(svc, {"problem": "q", "strategy": spec})
        chat = await svc.client.post(
            "/v1/chat/completions",
            json={
                "model": "best_of_n:local",
                "messages": [{"role": "user", "content": "q"}],
                "ttc": {"verifier": PYTHON},
            },
        )
        config = await svc.client.post(
            "/v1/chat/completions",
            json={
                "model": "best_of_n",
                "messages": [{"role": "user", "content": "q"}],
                "ttc": {"config": {"verifier": PYTHON}},
            },
        )
        runs = await svc.state.run_store.list()
    assert refused.status_code == 403 and refused.headers["x-should-retry"] == "false"
    body = error(refused)
    assert (body["type"], body["code"]) == ("permission_error", "privileged_field")
    assert body["param"] == "strategy.verifier.function"
    assert (
        "--scope code" in body["message"]
        and "allow: [verifier.python.function]" in (body["message"])
    )
    assert chat.status_code == 403 and error(chat)["param"] == "ttc.verifier.function"
    assert config.status_code == 403 and error(config)["param"] == "ttc.config.verifier.function"
    assert runs == []  # nothing was stored, nothing ran


async def test_settings_allow_grants_a_privilege_to_every_client(tmp_path: Path) -> None:
    spec = {"strategy": "best_of_n", "n": 2, "verifier": PYTHON}
    async with serve(tmp_path, allow=["verifier.python.function"]) as svc:
        answer = await reason(svc, {"problem": "q", "strategy": spec})
    assert answer.status_code == 200, answer.text


async def test_key_scopes_grant_a_privilege_to_one_key(tmp_path: Path) -> None:
    spec = {"strategy": "best_of_n", "n": 2, "verifier": PYTHON}
    async with serve(tmp_path, auth="required") as svc:
        _, granted = await svc.state.key_store.create("granted", scopes=["code"])
        _, plain = await svc.state.key_store.create("plain")
        ok = await reason(svc, {"problem": "q", "strategy": spec}, granted)
        refused = await reason(svc, {"problem": "q", "strategy": spec}, plain)
    assert ok.status_code == 200, ok.text
    assert refused.status_code == 403 and error(refused)["code"] == "privileged_field"


async def test_named_configs_and_tuning_fields_pass(tmp_path: Path) -> None:
    body = {"problem": "q", "strategy": {"strategy": "best_of_n", "n": 3, "temperature": 0.2}}
    async with serve(tmp_path) as svc:
        answer = await reason(svc, body)
    assert answer.status_code == 200, answer.text


async def test_nesting_and_sample_caps(tmp_path: Path) -> None:
    wide = {"strategy": "self_consistency", "n": 1024}
    async with serve(tmp_path) as svc:
        deep = await reason(svc, {"problem": "q", "strategy": BOMB})
        many = await reason(svc, {"problem": "q", "strategy": wide})
        fits = await reason(svc, {"problem": "q", "strategy": {**wide, "n": 64}})
    assert deep.status_code == 400 and error(deep)["code"] == "limit_exceeded"
    assert "max_depth" in error(deep)["message"] and "4 levels" in error(deep)["message"]
    assert many.status_code == 400 and "max_samples_per_run" in error(many)["message"]
    assert "1024" in error(many)["message"]
    assert fits.status_code == 200, fits.text


async def test_text_message_and_body_caps(tmp_path: Path) -> None:
    async with serve(tmp_path, max_chars=100, max_messages=3, max_body_bytes=4096) as svc:
        long = await reason(svc, {"problem": "x" * 101})
        messages = [{"role": "user", "content": "q"}] * 4
        chat = await svc.client.post(
            "/v1/chat/completions", json={"model": "local", "messages": messages}
        )
        large = await svc.client.post("/v1/reason", content=b'{"problem": "' + b"x" * 5000 + b'"}')

        async def chunks() -> Any:
            for _ in range(10):
                yield b" " * 1000

        streamed = await svc.client.post("/v1/reason", content=chunks())
    assert long.status_code == 400 and error(long)["param"] == "problem"
    assert "max_chars" in error(long)["message"]
    assert chat.status_code == 400 and "max_messages" in error(chat)["message"]
    assert large.status_code == 413 and error(large)["code"] == "body_too_large"
    assert streamed.status_code == 413 and error(streamed)["code"] == "body_too_large"


async def test_resource_fields_are_capped_even_when_granted(tmp_path: Path) -> None:
    tests = {"verifier": "unit_tests", "tests": ["assert True"], "limits": {}}
    async with serve(tmp_path, allow=["client_code", "resources"]) as svc:
        over = {**tests, "limits": {"memory_bytes": 64 << 30}}
        refused = await reason(
            svc, {"problem": "q", "strategy": {"strategy": "best_of_n", "verifier": over}}
        )
    assert refused.status_code == 400 and error(refused)["code"] == "limit_exceeded"
    assert error(refused)["param"] == "strategy.verifier.limits.memory_bytes"
    assert "resource_caps.memory_bytes" in error(refused)["message"]


async def test_client_code_is_refused_where_it_cannot_be_isolated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(policy_module, "sandbox_isolation", lambda: (False, "no bubblewrap"))
    tests = {"verifier": "unit_tests", "tests": ["assert True"]}
    spec = {"strategy": "best_of_n", "n": 1, "verifier": tests}
    async with serve(tmp_path, allow=["client_code"]) as svc:
        refused = await reason(svc, {"problem": "q", "strategy": spec})
        metadata = await reason(
            svc, {"problem": {"question": "q", "metadata": {"tests": ["assert 1"]}}}
        )
    assert refused.status_code == 403 and error(refused)["code"] == "client_code_refused"
    assert "no bubblewrap" in error(refused)["message"]
    assert metadata.status_code == 403 and error(metadata)["param"] == "problem.metadata.tests"


async def test_tests_in_the_problem_metadata_are_client_code(tmp_path: Path) -> None:
    body = {"problem": {"question": "q", "metadata": {"tests": ["import os"]}}}
    async with serve(tmp_path) as svc:
        refused = await reason(svc, body)
    assert refused.status_code == 403 and error(refused)["param"] == "problem.metadata.tests"


async def test_budgets_are_capped_and_defaulted(tmp_path: Path) -> None:
    cap = {"max_calls": 5, "max_completion_tokens": 1000, "max_prompt_tokens": 1000}
    default = {"max_calls": 2, "max_completion_tokens": 100, "max_prompt_tokens": 100}
    async with serve(tmp_path, max_budget=cap, default_budget=default) as svc:
        big = await reason(
            svc, {"problem": "q", "budget": {"max_calls": 99, "max_usd": 3.0}, "strategy": "single"}
        )
        none = await reason(svc, {"problem": "q", "strategy": "single"})
        stored_big = await svc.state.run_store.get(big.json()["run_id"])
        stored_none = await svc.state.run_store.get(none.json()["run_id"])
    assert stored_big.request["budget"] == {
        "max_calls": 5, "max_completion_tokens": 1000, "max_prompt_tokens": 1000,
        "max_usd": 3.0, "max_seconds": None,
    }  # fmt: skip
    assert stored_none.request["budget"] == {**default, "max_usd": None, "max_seconds": None}


async def test_the_queue_and_per_key_runs_are_bounded(tmp_path: Path) -> None:
    slow = FakeBackend(name="local", latency=5)
    body = {"problem": "q", "strategy": "single"}
    async with serve(tmp_path, slow, max_concurrent_runs=1, max_queued_runs=1) as svc:
        first = await svc.client.post("/v1/runs", json=body)
        second = await svc.client.post("/v1/runs", json=body)
        full = await svc.client.post("/v1/runs", json=body)
        for r in (first, second):
            await svc.client.delete(f"/v1/runs/{r.json()['run_id']}")
    assert first.status_code == second.status_code == 202
    assert full.status_code == 429 and error(full)["code"] == "queue_full"
    assert int(full.headers["retry-after"]) >= 1 and full.headers["x-should-retry"] == "true"
    async with serve(tmp_path / "k", slow, auth="required", max_runs_per_key=2) as svc:
        _, key = await svc.state.key_store.create("busy")
        _, other = await svc.state.key_store.create("other")
        answers = [await svc.client.post("/v1/runs", json=body, headers=bearer(key))
                   for _ in range(3)]  # fmt: skip
        theirs = await svc.client.post("/v1/runs", json=body, headers=bearer(other))
        for r in [*answers[:2], theirs]:
            await svc.client.delete(f"/v1/runs/{r.json()['run_id']}", headers=bearer(key))
            await svc.client.delete(f"/v1/runs/{r.json()['run_id']}", headers=bearer(other))
    assert [a.status_code for a in answers] == [202, 202, 429]
    assert error(answers[2])["code"] == "too_many_runs" and theirs.status_code == 202


async def test_concurrent_submits_cannot_overfill_the_queue(tmp_path: Path) -> None:
    slow = FakeBackend(name="local", latency=5)
    body = {"problem": "q", "strategy": "single"}
    async with serve(tmp_path, slow, max_concurrent_runs=2, max_queued_runs=3) as svc:
        answers = await asyncio.gather(*(svc.client.post("/v1/runs", json=body)
                                         for _ in range(12)))  # fmt: skip
        for a in answers:
            if a.status_code == 202:
                await svc.client.delete(f"/v1/runs/{a.json()['run_id']}")
    codes = sorted(a.status_code for a in answers)
    assert codes == [202] * 5 + [429] * 7


async def test_errors_say_whether_a_retry_can_help(tmp_path: Path) -> None:
    async with serve(tmp_path, FakeBackend(name="local", fail_rate=1.0)) as svc:
        failed = await reason(svc, {"problem": "q", "strategy": "single"})
        unknown = await reason(svc, {"problem": "q", "strategy": "nope"})
    assert failed.status_code == 503 and failed.headers["x-should-retry"] == "false"
    assert "error id" in error(failed)["message"]
    assert unknown.status_code == 400 and unknown.headers["x-should-retry"] == "false"


def always_one(problem: Any, candidate: Any) -> float:
    """A scoring function for the operator's named config below."""
    return 1.0


async def test_the_operators_named_configs_keep_full_power_and_stay_private(
    tmp_path: Path,
) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    function = f"{__name__}:always_one"
    (configs / "scored.yaml").write_text(
        f"strategy: best_of_n\nn: 2\nverifier: {{verifier: python, function: '{function}'}}\n"
    )
    async with serve(tmp_path, strategy_dir=str(configs)) as svc:
        named = await reason(svc, {"problem": "q", "strategy": "scored"})
        tuned = await reason(svc, {"problem": "q", "strategy": {"strategy": "scored", "n": 3}})
        swapped = await reason(
            svc, {"problem": "q", "strategy": {"strategy": "scored", "verifier": PYTHON}}
        )
        chat = await svc.client.post(
            "/v1/chat/completions",
            json={"model": "scored:local", "messages": [{"role": "user", "content": "q"}]},
        )
        record = await svc.client.get(f"/v1/runs/{named.json()['run_id']}")
        listing = await svc.client.get("/v1/strategies")
    assert named.status_code == 200 and tuned.status_code == 200, named.text + tuned.text
    assert named.json()["result"]["candidates"][0]["scores"][-1]["value"] == 1.0
    assert swapped.status_code == 403  # the client's own privileged field is still refused
    assert chat.status_code == 200, chat.text
    assert chat.json()["ttc"]["spec"]["verifier"]["function"] == "<privileged>"
    assert record.json()["request"]["strategy"]["verifier"]["function"] == "<privileged>"
    (entry,) = [e for e in listing.json()["data"] if e["name"] == "scored"]
    assert entry["spec"]["verifier"]["function"] == "<privileged>"
    for response in (chat, record, listing):
        assert function not in response.text  # the operator's code path stays on the server


async def test_readyz_probes_are_cached(tmp_path: Path) -> None:
    class Pinged(FakeBackend):
        pings = 0

        async def ping(self, timeout: float) -> None:
            type(self).pings += 1

    async with serve(tmp_path, Pinged(name="local"), readyz_cache_seconds=60) as svc:
        answers = [await svc.client.get("/readyz") for _ in range(5)]
    assert all(a.status_code == 200 for a in answers)
    assert Pinged.pings == 1  # five answers, one probe: /readyz cannot hammer the backends

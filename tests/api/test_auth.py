"""API keys: ``auth: off`` serves everyone; ``auth: required`` fails closed (401 for missing,
wrong and revoked keys, and for every request while no key is active); 429 for limits."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
from fastapi.routing import APIRoute

from orchestrator.api.admission import seconds_to_utc_midnight
from orchestrator.api.auth import AuthState, auth_state, bearer_token
from orchestrator.store.keys import KeyStore
from tests.api.native_app import serve


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(response: httpx.Response, status: int, type: str, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {
        "error": {"message": response.json()["error"]["message"], "type": type, "param": None,
                  "code": code},
    }  # fmt: skip
    assert response.json()["error"]["message"]


async def test_auth_off_serves_every_endpoint(tmp_path: Path) -> None:
    async with serve(tmp_path, auth="off") as svc:
        answers = [
            await svc.client.get("/v1/strategies"),
            await svc.client.get("/metrics"),
            await svc.client.get("/openapi.json"),
            await svc.client.get("/docs"),
            await svc.client.post("/v1/reason", json={"problem": "q", "strategy": "single"}),
        ]
        assert all(r.status_code == 200 for r in answers)
        record = (await svc.client.get(f"/v1/runs/{answers[-1].json()['run_id']}")).json()
        ready = (await svc.client.get("/readyz")).json()
    assert record["key_id"] is None
    assert ready["status"] == "ready" and "backends" in ready  # details: auth is off


async def test_required_without_any_key_refuses_every_protected_request(tmp_path: Path) -> None:
    async with serve(tmp_path, auth="required") as svc:
        strategies = await svc.client.get("/v1/strategies")
        reason = await svc.client.post("/v1/reason", json={"problem": "q"})
        schema = await svc.client.get("/openapi.json")
        health = await svc.client.get("/healthz")
        ready = await svc.client.get("/readyz")
    for refused in (strategies, reason, schema):
        assert_error(refused, 401, "authentication_error", "no_api_keys")
        assert "ttc keys create" in refused.json()["error"]["message"]
        assert refused.headers["x-should-retry"] == "false"
    assert health.status_code == 200
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}  # no details


async def test_with_a_key_the_bearer_header_is_required(tmp_path: Path) -> None:
    async with serve(tmp_path, auth="required") as svc:
        key = await svc.create_key("alice")
        missing = await svc.client.get("/v1/strategies")
        basic = await svc.client.get("/v1/strategies", headers={"Authorization": f"Basic {key}"})
        wrong = await svc.client.get("/v1/strategies", headers=bearer(key + "x"))
        valid = await svc.client.get("/v1/strategies", headers=bearer(key))
        lower = await svc.client.get("/v1/strategies", headers={"authorization": f"bearer {key}"})
        metrics = await svc.client.get("/metrics")
        open_health = await svc.client.get("/healthz")
        open_ready = await svc.client.get("/readyz")
        keyed_ready = await svc.client.get("/readyz", headers=bearer(key))
    assert_error(missing, 401, "authentication_error", "missing_api_key")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_error(basic, 401, "authentication_error", "missing_api_key")
    assert_error(wrong, 401, "authentication_error", "invalid_api_key")
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert key not in wrong.text
    assert valid.status_code == 200 and lower.status_code == 200
    assert_error(metrics, 401, "authentication_error", "missing_api_key")
    assert open_health.status_code == 200 and open_ready.status_code == 200
    assert open_ready.json() == {"status": "ready"}
    assert keyed_ready.json()["backends"]["local"]["ready"] is True


async def test_every_api_route_but_health_needs_the_key(tmp_path: Path) -> None:
    async with serve(tmp_path, auth="required") as svc:
        await svc.create_key("k")
        checked = []
        for route in svc.app.routes:
            if not isinstance(route, APIRoute) or route.path in ("/healthz", "/readyz"):
                continue
            for method in route.methods:
                path = route.path.replace("{run_id}", "x").replace("{model}", "m")
                response = await svc.client.request(method, path, json={})
                assert response.status_code == 401, (method, route.path, response.text)
                checked.append(f"{method} {route.path}")
    assert {"POST /v1/chat/completions", "GET /v1/models", "POST /v1/reason"} <= set(checked)
    assert {"GET /metrics", "GET /v1/runs/{run_id}/events", "DELETE /v1/runs/{run_id}"} <= set(
        checked
    )
    assert {"GET /openapi.json", "GET /docs"} <= set(checked)


async def test_a_revoked_key_is_refused(tmp_path: Path) -> None:
    async with serve(tmp_path, auth="required") as svc:
        keep = await svc.create_key("keep")
        gone = await svc.create_key("gone")
        assert (await svc.client.get("/v1/verifiers", headers=bearer(gone))).status_code == 200
        assert await svc.state.key_store.revoke("gone")
        auth_state(svc.state).invalidate()
        revoked = await svc.client.get("/v1/verifiers", headers=bearer(gone))
        kept = await svc.client.get("/v1/verifiers", headers=bearer(keep))
        await svc.state.key_store.revoke("keep")  # no active key left: still closed
        auth_state(svc.state).invalidate()
        closed = await svc.client.get("/v1/verifiers")
        closed_with_old_key = await svc.client.get("/v1/verifiers", headers=bearer(keep))
    assert_error(revoked, 401, "authentication_error", "invalid_api_key")
    assert kept.status_code == 200
    assert_error(closed, 401, "authentication_error", "no_api_keys")
    assert_error(closed_with_old_key, 401, "authentication_error", "no_api_keys")


async def test_rpm_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    async with serve(tmp_path, auth="required") as svc:
        now = [1000.0]
        auth_state(svc.state).clock = lambda: now[0]
        key = await svc.create_key("rpm", rpm_limit=2)
        other = await svc.create_key("other", rpm_limit=2)
        first = await svc.client.get("/v1/strategies", headers=bearer(key))
        now[0] += 10
        second = await svc.client.get("/v1/strategies", headers=bearer(key))
        limited = await svc.client.get("/v1/strategies", headers=bearer(key))
        unaffected = await svc.client.get("/v1/strategies", headers=bearer(other))
        now[0] += 50.5  # the first request left the window
        again = await svc.client.get("/v1/strategies", headers=bearer(key))
        limited_again = await svc.client.get("/v1/strategies", headers=bearer(key))
    assert first.status_code == second.status_code == 200
    assert_error(limited, 429, "rate_limit_error", "rate_limit_exceeded")
    assert limited.headers["retry-after"] == "50"  # 1000 + 60 - 1010
    assert limited.headers["x-ratelimit-limit-requests"] == "2"
    assert unaffected.status_code == 200
    assert again.status_code == 200
    assert limited_again.status_code == 429
    assert limited_again.headers["retry-after"] == "10"  # the second request leaves at 1070


async def test_daily_token_limit_is_reserved_at_admission(tmp_path: Path) -> None:
    async with serve(tmp_path, auth="required") as svc:
        key = await svc.create_key("budget", daily_token_limit=50)
        key_id = (await svc.state.key_store.list())[0].id
        body = {"problem": "q", "strategy": {"strategy": "self_consistency", "n": 4}}
        runs, refused = [], None
        for _ in range(20):  # each run gets what is left of the 50, until nothing is
            answer = await svc.client.post("/v1/reason", json=body, headers=bearer(key))
            if answer.status_code == 429:
                refused = answer
                break
            assert answer.status_code == 200, answer.text
            runs.append(answer.json())
        charged = await svc.state.key_store.tokens_today(key_id)
        held = await svc.state.key_store.reserved_today(key_id)
        background = await svc.client.post("/v1/runs", json=body, headers=bearer(key))
        read = await svc.client.get(f"/v1/runs/{runs[0]['run_id']}", headers=bearer(key))
    spent = [r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"] for r in runs]
    assert runs and refused is not None
    assert charged == sum(spent) and held == 0  # settled: nothing stays reserved
    first_call_prompt = runs[0]["result"]["trace"]["children"][0]["children"][0]["prompt_tokens"]
    assert sum(spent) <= 50 + len(runs) * first_call_prompt  # only a call's prompt overshoots
    assert_error(refused, 429, "rate_limit_error", "daily_token_limit_exceeded")
    assert 1 <= int(refused.headers["retry-after"]) <= 86400
    assert refused.headers["x-should-retry"] == "false"
    assert "50" in refused.json()["error"]["message"]
    assert background.status_code == 429  # no new run until 00:00 UTC
    assert read.status_code == 200  # but what was paid for can be read


async def test_runs_belong_to_the_key_that_created_them(tmp_path: Path) -> None:
    async with serve(tmp_path, auth="required") as svc:
        alice, bob = await svc.create_key("alice"), await svc.create_key("bob")
        body = {"problem": "q", "strategy": "single"}
        run_id = (await svc.client.post("/v1/runs", json=body, headers=bearer(alice))).json()[
            "run_id"
        ]
        mine = await svc.client.get(f"/v1/runs/{run_id}", headers=bearer(alice))
        theirs = await svc.client.get(f"/v1/runs/{run_id}", headers=bearer(bob))
        cancel = await svc.client.delete(f"/v1/runs/{run_id}", headers=bearer(bob))
        events = await svc.client.get(f"/v1/runs/{run_id}/events", headers=bearer(bob))
        listed_bob = (await svc.client.get("/v1/runs", headers=bearer(bob))).json()["data"]
        listed_alice = (await svc.client.get("/v1/runs", headers=bearer(alice))).json()["data"]
    assert mine.status_code == 200 and mine.json()["key_id"] is not None
    assert theirs.status_code == cancel.status_code == events.status_code == 404
    assert listed_bob == [] and [r["id"] for r in listed_alice] == [run_id]


async def test_auth_state_caches_positive_lookups_for_its_ttl(tmp_path: Path) -> None:
    now = [0.0]
    state = AuthState(cache_seconds=5, clock=lambda: now[0])
    async with KeyStore(tmp_path / "keys.db") as store:
        assert await state.enabled(store) is False
        _, plaintext = await store.create("k")
        assert await state.enabled(store) is False  # cached
        now[0] = 5.1
        assert await state.enabled(store) is True
        assert (await state.verify(store, plaintext)) is not None
        assert await state.verify(store, "ttc-unknown") is None
        await store.revoke("k")
        assert (await state.verify(store, plaintext)) is not None  # still cached
        now[0] = 10.3
        assert await state.verify(store, plaintext) is None
    assert plaintext not in repr(state.__dict__)  # the cache keys are hashes


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc  ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


def test_seconds_to_utc_midnight() -> None:
    assert seconds_to_utc_midnight(datetime(2025, 1, 1, 23, 59, 30, tzinfo=UTC)) == 30
    assert seconds_to_utc_midnight(datetime(2025, 1, 1, 0, 0, tzinfo=UTC)) == 86400

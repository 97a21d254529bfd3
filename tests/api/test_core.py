"""ServiceSettings sources and precedence; the error mapping of the service."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.api.errors import api_error_from, error_dict, status_for_error
from orchestrator.api.protocol import ReasonRequest
from orchestrator.api.settings import DEFAULT_BUDGET, MAX_BUDGET, ServiceSettings
from orchestrator.budget import Budget
from orchestrator.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    CapabilityError,
    ConfigError,
    RegistryError,
    StoreError,
)
from orchestrator.specs import resolve_spec


def test_settings_defaults() -> None:
    s = ServiceSettings.from_env(environ={})
    assert (s.host, s.port, s.max_request_n, s.max_concurrent_runs) == ("127.0.0.1", 8000, 16, 64)
    assert s.default_strategy == {"strategy": "self_consistency", "n": 4}
    assert s.shutdown_grace_seconds == 10 and s.store_url is None
    assert s.auth == "required" and s.allow == []  # fail closed, nothing privileged granted
    assert s.default_budget == DEFAULT_BUDGET and s.max_budget == MAX_BUDGET  # capped by default
    assert s.default_budget.max_completion_tokens <= s.max_budget.max_completion_tokens
    assert (s.max_samples_per_run, s.max_depth, s.max_body_bytes) == (256, 3, 1 << 20)


def test_settings_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "service.yaml"
    path.write_text("port: 9000\nhost: 0.0.0.0\ndefault_budget: {max_calls: 3, max_seconds: 5}\n")
    env = {
        "TTC_SERVICE__PORT": "9100",
        "TTC_SERVICE__DEFAULT_BUDGET__MAX_CALLS": "7",
        "TTC_SERVICE__DEFAULT_STRATEGY": "{strategy: sc8}",
        "UNRELATED": "x",
    }
    s = ServiceSettings.from_env(path, environ=env, host="127.0.0.2", port=None)
    assert (s.host, s.port) == ("127.0.0.2", 9100)  # override wins; None overrides are ignored
    assert s.default_budget == Budget(max_calls=7, max_seconds=5)  # nested merge
    assert s.default_strategy == {"strategy": "sc8"}
    via_env = ServiceSettings.from_env(environ={"TTC_SERVICE_CONFIG": str(path)})
    assert via_env.port == 9000


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"TTC_SERVICE__PROT": "1"}, "prot"),
        ({"TTC_SERVICE__PORT": "-1"}, "port"),
        ({"TTC_SERVICE__DEFAULT_BUDGET__MAX_CALLZ": "1"}, "max_callz"),
        ({"TTC_SERVICE__": "1"}, "TTC_SERVICE__"),
        ({"TTC_SERVICE__PORT": "[1"}, "invalid YAML"),
    ],
)
def test_settings_errors_name_the_field(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ServiceSettings.from_env(environ=env)


def test_settings_file_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "service.yaml"
    path.write_text("- a\n")
    with pytest.raises(ConfigError, match="mapping"):
        ServiceSettings.from_env(path, environ={})


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (BackendTimeout("t", backend="b"), 504, "backend_timeout"),
        (BackendUnavailable("u", backend="b"), 503, "backend_unavailable"),
        (BackendError("e", backend="b"), 502, "backend_error"),
        (ConfigError("bad"), 400, "invalid_config"),
        (RegistryError("unknown"), 400, "unknown_name"),
        (CapabilityError("needs logprobs"), 400, "missing_capability"),
        (StoreError("down"), 503, "store_unavailable"),
        (RuntimeError("secret"), 500, "internal_error"),
    ],
)
def test_error_mapping(exc: Exception, status: int, code: str) -> None:
    err = error_dict(exc)
    assert err["code"] == code and status_for_error(err) == status
    api = api_error_from(err)
    assert api.status == status and set(api.body()["error"]) == {"message", "type", "param", "code"}
    if status == 500:
        assert "secret" not in err["message"]


def test_client_messages_carry_no_hosts_urls_or_upstream_bodies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = StoreError(
        "could not connect to the store 'postgresql+psycopg://ttc:***@db.internal:5432/ttc'"
    )
    backend = BackendUnavailable(
        "POST http://10.1.2.3:8001/v1/chat/completions (model 'm'): HTTP 503: upstream says "
        "secret-body; gave up after 5 attempt(s)",
        backend="vllm",
    )
    capability = CapabilityError(
        "backend 'x' (vllm server at http://10.1.2.3:8001/v1) lacks logprobs"
    )
    with caplog.at_level("WARNING", logger="orchestrator.api.errors"):
        messages = [error_dict(e)["message"] for e in (store, backend, capability)]
    for message in messages:
        for leak in ("db.internal", "10.1.2.3", "secret-body", "psycopg"):
            assert leak not in message, message
    assert messages[1].startswith("[vllm] unavailable (HTTP 503) (error id ")
    assert "error id" in messages[0] and "db.internal" in caplog.text  # the log has it all
    assert "<url>" in messages[2]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        ({"type": "cancelled", "code": "cancelled"}, 409),
        ({"type": "interrupted", "code": None}, 503),
        ({"type": "service_unavailable", "code": "shutting_down"}, 503),
        ({"type": "something_new"}, 500),
    ],
)
def test_status_of_stored_errors(error: dict[str, str | None], status: int) -> None:
    assert status_for_error(error) == status


def test_resolve_spec() -> None:
    default = {"strategy": "self_consistency", "n": 4}
    assert resolve_spec(None, default) == default
    assert resolve_spec("best_of_n", default) == {"strategy": "best_of_n"}
    sc8 = resolve_spec({"strategy": "sc8", "n": 2}, default)
    assert (sc8["strategy"], sc8["n"]) == ("self_consistency", 2)
    with pytest.raises(RegistryError, match="sc8"):  # the message lists the named configs
        resolve_spec("nope", default)
    with pytest.raises(ConfigError, match="'strategy' name field"):
        resolve_spec({"n": 2}, default)
    for sneaky in ("../backends", "../../configs/backends", "/etc/passwd"):  # never read
        with pytest.raises(RegistryError, match="unknown strategy"):
            resolve_spec(sneaky, default)
        with pytest.raises(RegistryError, match="unknown strategy"):
            resolve_spec({"strategy": sneaky}, default)


def test_reason_request() -> None:
    assert ReasonRequest(problem="q").as_problem().question == "q"
    with pytest.raises(ValueError, match="empty"):
        ReasonRequest(problem="  ")
    with pytest.raises(ValueError, match="extra"):
        ReasonRequest.model_validate({"problem": "q", "strategey": "x"})

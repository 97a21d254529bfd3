"""The trust classification of config fields (orchestrator.trust): every registered strategy,
verifier and backend config declares each field, and the client-spec walker finds privileged
fields, follows nested specs, honours grants and caps, and bounds nesting."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, Field

from orchestrator.backends.config import BackendConfig
from orchestrator.registry import strategies, verifiers
from orchestrator.trust import (
    check_fields,
    check_grant,
    check_overrides,
    field_trust,
    privileged,
    tuning,
    unclassified,
)
from strategies.base import Strategy, StrategyConfig

HOW = (
    "declare it in the field's json_schema_extra: tuning() (tuning(nested='strategy'|'verifier') "
    "for a child spec) or privileged('<privilege>', '<what it does>'), from orchestrator.trust"
)


def classification_report() -> list[str]:
    """One line per undeclared field of a registered config: who, which field, how to fix.
    Names starting with ``_`` are test modules' private registrations, not served: skipped."""
    lines = []
    for kind, registry in (("strategy", strategies), ("verifier", verifiers)):
        for name, cls in registry.items():
            if name.startswith("_"):
                continue
            for field in unclassified(cls.Config):
                lines.append(f"{kind} {name!r}: field {field!r} is unclassified; {HOW}")
    for field in unclassified(BackendConfig):
        lines.append(f"backend config: field {field!r} is unclassified; {HOW}")
    return lines


def test_every_registered_config_field_is_classified() -> None:
    report = classification_report()
    assert not report, "\n".join(report)


def test_the_report_names_a_new_unclassified_field(monkeypatch: pytest.MonkeyPatch) -> None:
    class LeakyConfig(StrategyConfig):
        n: int = Field(2, json_schema_extra=tuning())
        secret_path: str = "/etc/passwd"

    class Leaky(Strategy):
        name = "leaky"
        Config = LeakyConfig

        async def run(self, problem: Any, ctx: Any) -> Any:
            raise NotImplementedError

    strategies.names()  # load the built-ins first
    monkeypatch.setitem(strategies._items, "leaky", Leaky)
    (line,) = classification_report()
    assert "strategy 'leaky'" in line and "'secret_path'" in line and "tuning()" in line


def test_search_hint_implies_tuning() -> None:
    trust = field_trust(strategies.get("self_consistency").Config, "n")
    assert trust is not None and trust.level == "tuning"


def test_known_privileged_fields() -> None:
    cases = {
        ("verifier", "reward_model", "url"): "network",
        ("verifier", "reward_model", "base_url"): "network",
        ("verifier", "reward_model", "api_key_env"): "environment",
        ("verifier", "python", "function"): "code",
        ("verifier", "unit_tests", "tests"): "client_code",
        ("verifier", "unit_tests", "limits"): "resources",
        ("strategy", "div_se", "approaches_file"): "files",
        ("strategy", "idiv_se", "approaches_file"): "files",
    }
    for (kind, name, field), privilege in cases.items():
        registry = strategies if kind == "strategy" else verifiers
        trust = field_trust(registry.get(name).Config, field)
        assert trust is not None and trust.privilege == privilege, (kind, name, field)
    assert field_trust(BackendConfig, "api_key_env").privilege == "environment"  # type: ignore[union-attr]


def test_privileged_rejects_an_unknown_privilege() -> None:
    with pytest.raises(ValueError, match="unknown privilege"):
        privileged("root", "x")  # type: ignore[arg-type]


def test_check_grant() -> None:
    assert check_grant("network") == "network"
    assert check_grant("verifier.unit_tests.tests") == "verifier.unit_tests.tests"
    for bad in ("root", "verifier.unit_tests", "model.x.y"):
        with pytest.raises(ValueError, match="unknown grant"):
            check_grant(bad)


# -- the walker ---------------------------------------------------------------------------------


def lookup(kind: str, name: str) -> type[BaseModel] | None:
    registry = strategies if kind == "strategy" else verifiers
    return registry.get(name).Config if name in registry else None


REWARD = {"verifier": "reward_model", "kind": "generic", "url": "http://x", "api_key_env": "K"}


def test_nested_privileged_fields_are_found_with_their_path() -> None:
    spec = {
        "strategy": "self_consistency",
        "n": 2,
        "inner": {"strategy": "best_of_n", "n": 2, "verifier": REWARD},
    }
    found = check_fields("strategy", spec, "strategy", lookup=lookup)
    params = [(v.param, v.privilege, v.grant) for v in found.violations]
    assert params == [
        ("strategy.inner.verifier.url", "network", "verifier.reward_model.url"),
        ("strategy.inner.verifier.api_key_env", "environment", "verifier.reward_model.api_key_env"),
    ]
    assert found.depth == 2


def test_tuning_fields_and_names_pass() -> None:
    spec = {"strategy": "best_of_n", "n": 4, "temperature": 0.3, "verifier": "reward_model"}
    assert not check_fields("strategy", spec, "strategy", lookup=lookup).violations
    assert not check_fields("strategy", "self_consistency", "strategy", lookup=lookup).violations


def test_combinator_children_and_weighted_children_are_followed() -> None:
    spec = {
        "strategy": "best_of_n",
        "verifier": {
            "verifier": "weighted_sum",
            "verifiers": [{"verifier": {"verifier": "python", "function": "os:getcwd"}}],
        },
    }
    (v,) = check_fields("strategy", spec, "strategy", lookup=lookup).violations
    assert v.param == "strategy.verifier.verifiers.0.verifier.function" and v.privilege == "code"


def test_grants_by_privilege_by_field_and_by_parent_field() -> None:
    spec = {"strategy": "best_of_n", "verifier": REWARD}
    by_privilege = check_fields(
        "strategy", spec, "s", lookup=lookup, grants={"network", "environment"}
    )
    assert not by_privilege.violations
    one = check_fields("strategy", spec, "s", lookup=lookup, grants={"verifier.reward_model.url"})
    assert [v.param for v in one.violations] == ["s.verifier.api_key_env"]
    tests = {"verifier": "unit_tests", "limits": {"memory_bytes": 10**10, "wall_seconds": 1}}
    limits = {"strategy": "best_of_n", "verifier": tests}
    parent = check_fields(
        "strategy", limits, "s", lookup=lookup, grants={"verifier.unit_tests.limits"},
        caps={"memory_bytes": 2**30},
    )  # fmt: skip
    assert not parent.violations
    assert [(o.param, o.value, o.cap) for o in parent.over_caps] == [
        ("s.verifier.limits.memory_bytes", 1e10, 2**30)
    ]


def test_granted_client_code_is_reported() -> None:
    spec = {"strategy": "best_of_n", "verifier": {"verifier": "unit_tests", "tests": ["x"]}}
    denied = check_fields("strategy", spec, "s", lookup=lookup)
    assert [v.privilege for v in denied.violations] == ["client_code"]
    granted = check_fields("strategy", spec, "s", lookup=lookup, grants={"client_code"})
    assert granted.granted_client_code == ["s.verifier.tests"] and not granted.violations


def test_nesting_is_bounded_before_it_is_walked() -> None:
    spec: dict[str, Any] = {"strategy": "single"}
    for _ in range(5000):  # deeper than Python's recursion limit: never walked that far
        spec = {"strategy": "self_consistency", "n": 2, "inner": spec}
    found = check_fields("strategy", spec, "strategy", lookup=lookup, max_depth=3)
    assert found.depth == 4


def test_overrides_are_checked_against_the_resolved_strategy() -> None:
    fields = {"n": 3, "verifier": {"verifier": "python", "function": "os:getcwd"}}
    found = check_overrides("strategy", "best_of_n", fields, "ttc", lookup=lookup)
    assert [v.param for v in found.violations] == ["ttc.verifier.function"]
    assert check_overrides("strategy", "best_of_n", {"n": 3}, "ttc", lookup=lookup).depth == 1

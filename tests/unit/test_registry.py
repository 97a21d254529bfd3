"""Tests for orchestrator.registry: registration, lookup and entry-point plugins."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pytest

from orchestrator import registry as registry_module
from orchestrator.errors import RegistryError
from orchestrator.registry import Registry


class Thing:
    name = ""


@dataclass
class FakeEntryPoint:
    name: str
    value: str
    target: Any

    def load(self) -> Any:
        if isinstance(self.target, BaseException):
            raise self.target
        return self.target


def patch_entry_points(
    monkeypatch: pytest.MonkeyPatch, by_group: dict[str, list[Any]]
) -> list[str]:
    asked: list[str] = []

    def fake_entry_points(*, group: str) -> list[Any]:
        asked.append(group)
        return by_group.get(group, [])

    monkeypatch.setattr(registry_module, "entry_points", fake_entry_points)
    return asked


def test_register_and_get(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_entry_points(monkeypatch, {})
    reg: Registry[Thing] = Registry("thing", "ttc.test-things")

    @reg.register("alpha")
    class Alpha(Thing):
        pass

    assert Alpha.name == "alpha"
    assert reg.get("alpha") is Alpha
    assert "alpha" in reg and "beta" not in reg
    assert reg.names() == ["alpha"]
    assert list(reg.items()) == [("alpha", Alpha)]


def test_unknown_name_lists_known_names(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_entry_points(monkeypatch, {})
    reg: Registry[Thing] = Registry("gizmo", "ttc.test-gizmos")
    reg.register("b")(type("B", (Thing,), {}))
    reg.register("a")(type("A", (Thing,), {}))
    with pytest.raises(RegistryError) as info:
        reg.get("zzz")
    assert str(info.value) == "unknown gizmo 'zzz'; known: a, b"
    assert isinstance(info.value, KeyError)  # RegistryError is also a KeyError


def test_unknown_name_in_empty_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_entry_points(monkeypatch, {})
    reg: Registry[Thing] = Registry("gizmo", "ttc.test-gizmos")
    with pytest.raises(RegistryError, match=r"known: \(none\)"):
        reg.get("x")


def test_duplicate_name_is_an_error_but_reregistering_is_idempotent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    patch_entry_points(monkeypatch, {})
    reg: Registry[Thing] = Registry("thing", "ttc.test-things")
    first = reg.register("dup")(type("First", (Thing,), {}))
    assert reg.register("dup")(first) is first
    with pytest.raises(RegistryError, match="'dup' is already registered"):
        reg.register("dup")(type("Second", (Thing,), {}))
    assert reg.get("dup") is first


def test_sorted_names_and_items(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_entry_points(monkeypatch, {})
    reg: Registry[Thing] = Registry("thing", "ttc.test-things")
    for name in ("c", "a", "b"):
        reg.register(name)(type(name.upper(), (Thing,), {}))
    assert reg.names() == ["a", "b", "c"]
    assert [n for n, _ in reg.items()] == ["a", "b", "c"]


def test_entry_point_plugins_load_and_broken_ones_are_skipped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class Good(Thing):
        pass

    asked = patch_entry_points(
        monkeypatch,
        {
            "ttc.test-plugins": [
                FakeEntryPoint(
                    "broken", "missing_pkg:Broken", ImportError("no module missing_pkg")
                ),
                FakeEntryPoint("good", "good_pkg:Good", Good),
            ],
            "ttc.other": [FakeEntryPoint("elsewhere", "x:Y", Good)],
        },
    )
    reg: Registry[Thing] = Registry("plugin thing", "ttc.test-plugins")
    with caplog.at_level(logging.WARNING, logger="orchestrator.registry"):
        assert reg.names() == ["good"]
    assert reg.get("good") is Good and Good.name == "good"
    assert "broken" not in reg
    assert asked == ["ttc.test-plugins"]  # loaded once, from its own group only
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "broken" in m and "missing_pkg:Broken" in m and "no module missing_pkg" in m
        for m in messages
    ), messages


def test_plugin_clashing_with_a_builtin_is_skipped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class Builtin(Thing):
        pass

    class Impostor(Thing):
        pass

    patch_entry_points(monkeypatch, {"ttc.clash": [FakeEntryPoint("x", "p:Impostor", Impostor)]})
    reg: Registry[Thing] = Registry("thing", "ttc.clash")
    reg.register("x")(Builtin)
    with caplog.at_level(logging.WARNING, logger="orchestrator.registry"):
        assert reg.get("x") is Builtin
    assert any("already registered" in r.getMessage() for r in caplog.records)


def test_builtin_modules_are_imported_on_first_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_entry_points(monkeypatch, {})
    imported: list[str] = []
    monkeypatch.setattr(registry_module.importlib, "import_module", imported.append)
    reg: Registry[Thing] = Registry("thing", "ttc.test-things", ("pkg.one", "pkg.two"))
    assert imported == []
    assert reg.names() == []
    assert "x" not in reg
    assert imported == ["pkg.one", "pkg.two"]  # once


def test_global_registries_hold_the_builtins() -> None:
    assert {"single", "repeated_sampling", "best_of_n", "self_consistency"} <= set(
        registry_module.strategies.names()
    )
    assert {"reference_match", "majority_vote", "mean_logprob"} <= set(
        registry_module.verifiers.names()
    )
    assert {"openai", "vllm", "embedded", "fake"} <= set(registry_module.backends.names())

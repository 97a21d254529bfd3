"""Tests for orchestrator.specs: the named-config catalog, spec resolution, the override rule,
run budgets and result JSON."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.budget import Budget
from orchestrator.errors import ConfigError, RegistryError
from orchestrator.specs import (
    STRATEGY_DIR_ENV,
    Catalog,
    apply_overrides,
    default_strategy_dir,
    resolve_spec,
    result_json,
    run_budget,
)
from orchestrator.types import Candidate, Result, ScoredCandidate, TokenLogprob

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    (tmp_path / "mine.yaml").write_text("strategy: self_consistency\nn: 3\n")
    (tmp_path / "broken.yaml").write_text("n: 3\n")
    return Catalog(tmp_path)


def test_the_default_directory_is_the_projects_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(STRATEGY_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_strategy_dir() == REPO / "configs" / "strategies"
    assert {"sc8", "best_of_sc"} <= set(Catalog().names())
    monkeypatch.setenv(STRATEGY_DIR_ENV, str(tmp_path))
    assert Catalog().directory == tmp_path and Catalog().names() == []


def test_named_spec_and_messages(catalog: Catalog) -> None:
    assert catalog.named_spec("single") == {"strategy": "single"}
    assert catalog.named_spec("mine") == {"strategy": "self_consistency", "n": 3}
    with pytest.raises(RegistryError) as info:
        catalog.named_spec("nope")
    msg = str(info.value)
    assert "unknown strategy 'nope'" in msg and "best_of_n" in msg and "mine" in msg
    with pytest.raises(ConfigError, match=r"broken\.yaml: expected a mapping with a 'strategy'"):
        catalog.named_spec("broken")
    assert catalog.available()[-2:] == ["broken", "mine"]


def test_a_name_cannot_reach_another_file(catalog: Catalog, tmp_path: Path) -> None:
    (tmp_path.parent / "outside.yaml").write_text("strategy: single\n")
    for sneaky in ("../outside", "/etc/passwd", "mine.yaml", "mine/.."):
        with pytest.raises(RegistryError):
            catalog.named_spec(sneaky)


def test_resolve_spec(catalog: Catalog) -> None:
    default = {"strategy": "single"}
    assert resolve_spec(None, default, catalog=catalog) == default
    assert resolve_spec("mine", default, catalog=catalog)["n"] == 3
    merged = resolve_spec({"strategy": "mine", "n": 5, "max_tokens": 9}, catalog=catalog)
    assert merged == {"strategy": "self_consistency", "n": 5, "max_tokens": 9}
    with pytest.raises(ConfigError, match="'strategy' name field"):
        resolve_spec({"n": 2}, default, catalog=catalog)
    with pytest.raises(ConfigError, match="no strategy given"):
        resolve_spec(None, None, catalog=catalog)


def test_spec_file_resolves_a_named_config(catalog: Catalog, tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("strategy: mine\ntemperature: 0.2\n")
    assert catalog.spec_file(path) == {"strategy": "self_consistency", "n": 3, "temperature": 0.2}
    path.write_text("- a\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        catalog.spec_file(path)


def test_apply_overrides_sets_only_fields_the_strategy_has() -> None:
    spec, unused = apply_overrides(
        {"strategy": "single"}, {"n": 8, "temperature": 0.3, "max_tokens": None}
    )
    assert spec == {"strategy": "single", "temperature": 0.3} and unused == ["n"]
    spec, unused = apply_overrides({"strategy": "best_of_n", "n": 2}, {"n": 4, "verifier": "x"})
    assert spec == {"strategy": "best_of_n", "n": 4, "verifier": "x"} and unused == []


def test_run_budget_caps_every_limit() -> None:
    cap = Budget(max_completion_tokens=1000, max_calls=10)
    assert run_budget(None) is None
    assert run_budget(None, Budget(max_calls=3)) == Budget(max_calls=3)
    assert run_budget(Budget(max_calls=50), cap=cap) == Budget(
        max_calls=10, max_completion_tokens=1000
    )
    assert run_budget(Budget(max_usd=1.0, max_completion_tokens=10), None, cap) == Budget(
        max_usd=1.0, max_completion_tokens=10, max_calls=10
    )
    assert run_budget(None, None, cap) == cap


def test_result_json_drops_logprobs_unless_asked() -> None:
    cand = Candidate(text="x", logprobs=[TokenLogprob(token="x", logprob=-0.1)])
    result = Result(answer="x", candidate=cand, candidates=[ScoredCandidate(candidate=cand)])
    data = result_json(result)
    assert data["candidate"]["logprobs"] is None
    assert data["candidates"][0]["candidate"]["logprobs"] is None
    assert result_json(result, keep_logprobs=True)["candidate"]["logprobs"][0]["token"] == "x"

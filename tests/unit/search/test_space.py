"""Tests for search.space: space files, define-by-run composition, replay, grid and errors."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import RandomSampler
from optuna.trial import Trial

from orchestrator.errors import ConfigError
from search.space import Param, Replay, Space, SpaceError, build_space, load_space
from strategies.base import build_strategy

REPO = Path(__file__).resolve().parents[3]
ADDITION = REPO / "configs" / "search" / "addition.yaml"
GRID_SMALL = REPO / "configs" / "search" / "grid_small.yaml"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(seed: int = 0) -> optuna.Study:
    return optuna.create_study(
        directions=["maximize", "minimize"], sampler=RandomSampler(seed=seed)
    )


def _trials(space: Space, count: int, seed: int = 0) -> list[tuple[Trial, dict[str, Any]]]:
    """``count`` asked trials with the spec each composed (told back, so the study is real)."""
    study, out = _study(seed), []
    for _ in range(count):
        trial = study.ask()
        spec = space.compose(trial)
        study.tell(trial, [0.5, 1.0])
        out.append((trial, spec))
    return out


def _space(strategies: dict[str, Any], **top: Any) -> Space:
    return build_space({"strategies": strategies, **top}, "space.yaml")


def _error(data: Any) -> str:
    """The SpaceError message ``build_space(data)`` raises (asserting it is a ConfigError)."""
    with pytest.raises(SpaceError) as info:
        build_space(data, "space.yaml")
    assert isinstance(info.value, ConfigError)
    return str(info.value)


# --- the shipped space files ------------------------------------------------------------------


def test_addition_space_loads_with_its_budget_and_objective() -> None:
    space = load_space(ADDITION)
    assert list(space.strategies) == ["single", "self_consistency", "best_of_n", "rpc"]
    assert space.budget.max_calls == 40
    assert space.budget.max_completion_tokens == 640
    assert space.file.objective.mode == "multi"
    assert space.file.rungs == [0.1, 0.3, 1.0]
    assert space.source == str(ADDITION)


def test_grid_small_has_exactly_the_45_compositions_of_its_comment() -> None:
    space = load_space(GRID_SMALL)
    grid = space.grid()
    assert len(grid) == 45
    seen = {
        (p["strategy"], p[f"{p['strategy']}.n"], p[f"{p['strategy']}.temperature"]) for p in grid
    }
    expected = set(
        itertools.product(
            ["self_consistency", "best_of_n", "rpc"], [1, 2, 4, 8, 16], [0.4, 0.8, 1.2]
        )
    )
    assert seen == expected


def test_every_grid_small_composition_replays_into_a_buildable_spec() -> None:
    space = load_space(GRID_SMALL)
    for params in space.grid():
        spec = space.compose(Replay(params))
        name = params["strategy"]
        assert spec["strategy"] == name
        assert spec["n"] == params[f"{name}.n"]
        assert spec["temperature"] == params[f"{name}.temperature"]
        assert spec["max_tokens"] == 128
        if name == "best_of_n":
            assert spec["verifier"] == "mean_logprob"
        strategy = build_strategy(spec)
        assert strategy.config.n == spec["n"]
        assert strategy.config.temperature == spec["temperature"]


def test_addition_compose_with_optuna_trials_stays_in_the_declared_ranges() -> None:
    space = load_space(ADDITION)
    for _trial, spec in _trials(space, 40):
        if spec["strategy"] != "single":
            assert isinstance(spec["n"], int)
            assert 1 <= spec["n"] <= 16
        t = spec["temperature"]
        assert 0.2 - 1e-9 <= t <= 1.2 + 1e-9
        steps = (t - 0.2) / 0.1
        assert math.isclose(steps, round(steps), abs_tol=1e-6), t
        assert spec["max_tokens"] == 128
        build_strategy(spec)


def test_parameters_are_conditional_on_the_chosen_strategy() -> None:
    space = load_space(ADDITION)
    chosen = set()
    for trial, spec in _trials(space, 60, seed=7):
        name = trial.params["strategy"]
        chosen.add(name)
        assert spec["strategy"] == name
        assert ("best_of_n.verifier" in trial.params) == (name == "best_of_n")
        assert "single.n" not in trial.params
        assert all(k == "strategy" or k.startswith(f"{name}.") for k in trial.params)
        assert not any(k.endswith(".max_tokens") for k in trial.params)  # a constant
        if name == "best_of_n":
            assert spec["verifier"] == trial.params["best_of_n.verifier"]
            assert spec["verifier"] in {"self_eval", "mean_logprob"}
    assert chosen == {"single", "self_consistency", "best_of_n", "rpc"}


def test_replaying_trial_params_rebuilds_the_same_spec() -> None:
    space = load_space(ADDITION)
    for trial, spec in _trials(space, 20, seed=3):
        assert space.compose(Replay(dict(trial.params))) == spec


def test_replay_without_a_needed_parameter_names_it() -> None:
    space = load_space(ADDITION)
    with pytest.raises(SpaceError, match=r"'best_of_n\.n'"):
        space.compose(Replay({"strategy": "best_of_n", "best_of_n.temperature": 0.5}))


# --- hints, constants, `search` ----------------------------------------------------------------


def test_a_strategy_listed_empty_searches_its_hinted_fields() -> None:
    space = _space({"self_consistency": {}})
    trial = _study().ask()
    spec = space.compose(trial)
    assert trial.distributions["self_consistency.n"] == IntDistribution(1, 32, log=True)
    assert trial.distributions["self_consistency.temperature"] == FloatDistribution(
        0.0, 1.2, step=0.1
    )
    assert set(trial.params) == {"strategy", "self_consistency.n", "self_consistency.temperature"}
    assert spec["n"] == trial.params["self_consistency.n"]


def test_a_constant_field_is_fixed_not_searched() -> None:
    space = _space({"self_consistency": {"n": 4, "temperature": 0.5}})
    trial = _study().ask()
    spec = space.compose(trial)
    assert set(trial.params) == {"strategy"}
    assert spec == {"strategy": "self_consistency", "n": 4, "temperature": 0.5}


def test_search_string_uses_the_strategy_hint() -> None:
    space = _space({"single": {"temperature": "search"}, "best_of_n": {"n": "search"}})
    p = space.strategies["best_of_n"].params
    n = next(x for x in p if x.key == "n")
    assert (n.kind, n.low, n.high, n.log) == ("int", 1, 32, True)
    t = next(x for x in space.strategies["single"].params if x.key == "temperature")
    assert (t.kind, t.low, t.high, t.step) == ("float", 0.0, 1.2, 0.1)


def test_search_on_a_field_without_a_hint_is_an_error() -> None:
    msg = _error({"strategies": {"single": {"max_tokens": "search"}}})
    assert "strategies.single.max_tokens" in msg
    assert "declares no search range" in msg


# --- common ------------------------------------------------------------------------------------


def test_common_applies_to_every_listed_strategy_with_the_field() -> None:
    space = _space(
        {"single": {}, "self_consistency": {"n": 2}},
        common={"temperature": {"low": 0.3, "high": 0.9, "step": 0.3}, "max_tokens": 64, "n": 5},
    )
    for name in ("single", "self_consistency"):
        spec = space.compose(Replay({"strategy": name, f"{name}.temperature": 0.6}))
        assert spec["max_tokens"] == 64
        assert spec["temperature"] == 0.6
        params = {p.key: p for p in space.strategies[name].params}
        assert (params["temperature"].low, params["temperature"].high) == (0.3, 0.9)
        assert params["temperature"].step == 0.3
    assert "n" not in {p.key for p in space.strategies["single"].params}
    # the strategy's own entry wins over common
    assert (
        space.compose(
            Replay({"strategy": "self_consistency", "self_consistency.temperature": 0.3})
        )["n"]
        == 2
    )


def test_common_key_that_no_listed_strategy_has_is_an_error() -> None:
    msg = _error({"common": {"n": 4}, "strategies": {"single": {}}})
    assert "common.n" in msg
    assert "no listed strategy" in msg


def test_common_key_that_no_strategy_at_all_has_is_an_error() -> None:
    msg = _error({"common": {"colour": "red"}, "strategies": {"single": {}}})
    assert "common.colour" in msg


# --- nesting -----------------------------------------------------------------------------------

NESTED = {
    "max_depth": 1,
    "inner": ["self_consistency"],
    "common": {"max_tokens": 64},
    "strategies": {
        "best_of_n": {"n": {"choices": [2, 4]}, "verifier": "mean_logprob"},
        "self_consistency": {"n": {"choices": [3, 5]}, "temperature": {"choices": [0.5, 0.9]}},
    },
}


def test_nested_inner_choices_are_none_or_the_allowed_children() -> None:
    space = build_space(NESTED, "nested.yaml")
    study = _study()
    study.enqueue_trial({"strategy": "best_of_n"})
    trial = study.ask()
    space.compose(trial)
    assert trial.params["strategy"] == "best_of_n"
    assert trial.distributions["best_of_n.inner"] == CategoricalDistribution(
        ["none", "self_consistency"]
    )


def test_a_chosen_inner_strategy_becomes_a_child_spec_and_the_parent_stops_sampling() -> None:
    space = build_space(NESTED, "nested.yaml")
    params = {
        "strategy": "best_of_n",
        "best_of_n.inner": "self_consistency",
        "best_of_n.n": 4,
        "best_of_n.inner.self_consistency.n": 3,
        "best_of_n.inner.self_consistency.temperature": 0.9,
    }
    spec = space.compose(Replay(params))  # Replay fails on any parameter not recorded here
    assert spec == {
        "strategy": "best_of_n",
        "inner": {"strategy": "self_consistency", "n": 3, "temperature": 0.9, "max_tokens": 64},
        "n": 4,
        "verifier": "mean_logprob",
    }
    strategy = build_strategy(spec)
    (child,) = strategy.children()
    assert child.config.n == 3
    assert child.children() == []  # depth 1: the child does not nest again


def test_without_inner_the_parent_samples_with_its_own_settings() -> None:
    space = build_space(NESTED, "nested.yaml")
    spec = space.compose(
        Replay(
            {
                "strategy": "best_of_n",
                "best_of_n.inner": "none",
                "best_of_n.n": 2,
                "best_of_n.temperature": 0.7,
            }
        )
    )
    assert "inner" not in spec
    assert spec["temperature"] == 0.7
    assert spec["max_tokens"] == 64


def test_nested_trials_build_and_drop_parent_sampling_fields() -> None:
    space = build_space(NESTED, "nested.yaml")
    nested = 0
    for trial, spec in _trials(space, 40, seed=1):
        build_strategy(spec)
        name = spec["strategy"]
        if trial.params.get(f"{name}.inner", "none") != "none":
            nested += 1
            assert spec["inner"]["strategy"] == "self_consistency"
            assert "temperature" not in spec and "max_tokens" not in spec
            assert f"{name}.temperature" not in trial.params
            assert not any(k.endswith(".inner.self_consistency.inner") for k in trial.params)
    assert nested > 0


def test_nested_grid_enumerates_both_branches() -> None:
    space = build_space(NESTED, "nested.yaml")
    grid = space.grid()
    # best_of_n: inner none (2 n x 13 hinted temperatures) + inner sc (2 n x 2 child n x 2 t)
    # self_consistency: inner none (2 n x 2 t) + inner sc (2 n x 2 child n x 2 t)
    assert len(grid) == (2 * 13 + 2 * 2 * 2) + (2 * 2 + 2 * 2 * 2)
    for params in grid:
        build_strategy(space.compose(Replay(params)))


def test_max_depth_zero_has_no_inner_parameter() -> None:
    space = build_space({**NESTED, "max_depth": 0}, "flat.yaml")
    for trial, spec in _trials(space, 30):
        assert not any(k.endswith(".inner") for k in trial.params)
        assert "inner" not in spec
    assert all(not any(k.endswith(".inner") for k in p) for p in space.grid())


def test_param_finds_a_nested_parameter_and_rejects_unknown_ones() -> None:
    space = build_space(NESTED, "nested.yaml")
    p = space.param("best_of_n.inner.self_consistency.n")
    assert (p.kind, p.choices) == ("categorical", (3, 5))
    with pytest.raises(KeyError):
        space.param("best_of_n.top_p")


# --- backends ----------------------------------------------------------------------------------


def test_several_backends_add_a_backend_choice_per_strategy() -> None:
    space = _space({"single": {"temperature": 0.0}}, backends=["a", "b"])
    seen = set()
    for trial, spec in _trials(space, 20):
        assert trial.distributions["single.backend"] == CategoricalDistribution(["a", "b"])
        assert spec["backend"] == trial.params["single.backend"]
        seen.add(spec["backend"])
    assert seen == {"a", "b"}
    assert len(space.grid()) == 2


def test_one_backend_is_fixed_into_the_spec() -> None:
    space = _space({"single": {"temperature": 0.0}}, backends=["only"])
    trial = _study().ask()
    assert space.compose(trial) == {"strategy": "single", "backend": "only", "temperature": 0.0}
    assert set(trial.params) == {"strategy"}


def test_a_nested_composition_puts_the_backend_on_the_sampling_child() -> None:
    space = build_space({**NESTED, "backends": ["x"]}, "nested.yaml")
    spec = space.compose(
        Replay(
            {
                "strategy": "best_of_n",
                "best_of_n.inner": "self_consistency",
                "best_of_n.n": 2,
                "best_of_n.inner.self_consistency.n": 3,
                "best_of_n.inner.self_consistency.temperature": 0.5,
            }
        )
    )
    assert "backend" not in spec
    assert spec["inner"]["backend"] == "x"


def test_backends_skip_strategies_without_a_backend_setting() -> None:
    space = _space({"cascade": {}, "single": {"temperature": 0.0}}, backends=["a"])
    for params in space.grid():
        build_strategy(space.compose(Replay(params)))


# --- invalid files -----------------------------------------------------------------------------


def test_unknown_strategy_lists_the_registered_ones() -> None:
    msg = _error({"strategies": {"nope": {}}})
    assert "strategies.nope" in msg and "'nope'" in msg
    assert "best_of_n" in msg and "self_consistency" in msg and "single" in msg


def test_unknown_field_lists_the_strategy_settings() -> None:
    msg = _error({"strategies": {"single": {"colour": 3}}})
    assert "strategies.single.colour" in msg
    assert "'colour'" in msg
    assert "temperature" in msg and "max_tokens" in msg


@pytest.mark.parametrize(
    ("entry", "field", "value", "needle"),
    [
        ({"n": {"low": 1, "high": 2000}}, "n", "2000", "1024"),
        ({"temperature": {"low": -0.5, "high": 1.0}}, "temperature", "-0.5", "greater than"),
        ({"temperature": -1.0}, "temperature", "-1.0", "greater than"),
        ({"n": {"low": 8, "high": 2}}, "n", "8", "above high 2"),
        ({"n": {"low": 1.5, "high": 4}}, "n", "1.5", "integer"),
        ({"verifier": {"low": 1, "high": 2}}, "verifier", "verifier", "not a number"),
        ({"verifier": {"choices": ["self_eval", "oracle"]}}, "verifier", "'oracle'", "oracle"),
        ({"n": {"low": 0, "high": 8, "log": True}}, "n", "0", "log range"),
        ({"n": {"low": 1, "high": 8, "typo": 1}}, "n", "typo", "a range is"),
        ({"n": {"choices": []}}, "n", "[]", "non-empty"),
        ({"temperature": {"low": "cold", "high": 1.0}}, "temperature", "'cold'", "numbers"),
    ],
)
def test_invalid_parameter_names_the_field_and_value(
    entry: dict[str, Any], field: str, value: str, needle: str
) -> None:
    msg = _error({"strategies": {"best_of_n": entry}})
    assert f"strategies.best_of_n.{field}" in msg
    assert value in msg
    assert needle in msg


def test_a_bad_constant_is_reported_under_its_own_field() -> None:
    msg = _error({"strategies": {"best_of_n": {"n": 4096}}})
    assert "strategies.best_of_n.n" in msg and "4096" in msg and "1024" in msg
    assert "strategies.best_of_n.temperature" not in msg


@pytest.mark.parametrize(
    ("rungs", "needle"),
    [
        ([0.3, 0.1, 1.0], "increasing"),
        ([0.1, 0.5], "last rung must be 1.0"),
        ([0.0, 1.0], "(0, 1]"),
    ],
)
def test_bad_rungs_are_rejected(rungs: list[float], needle: str) -> None:
    msg = _error({"rungs": rungs, "strategies": {"single": {}}})
    assert "rungs" in msg and needle in msg


def test_unknown_top_level_key_is_named() -> None:
    msg = _error({"strategy": "single", "strategies": {"single": {}}})
    assert "space.yaml" in msg
    assert "strategy:" in msg and "Extra inputs" in msg
    assert "strategies" in msg  # the known fields are listed


def test_inner_naming_an_unlisted_strategy_is_an_error() -> None:
    msg = _error({"max_depth": 1, "inner": ["rpc"], "strategies": {"best_of_n": {}}})
    assert "inner" in msg and "'rpc'" in msg and "best_of_n" in msg


@pytest.mark.parametrize("key", ["inner", "backend", "strategy"])
def test_space_level_settings_cannot_be_set_per_strategy(key: str) -> None:
    msg = _error({"strategies": {"best_of_n": {key: "single"}}})
    assert f"strategies.best_of_n.{key}" in msg
    assert "set by the space itself" in msg


@pytest.mark.parametrize("data", [["single"], "single", None, 3])
def test_a_file_that_is_not_a_mapping_is_an_error(data: Any) -> None:
    msg = _error(data)
    assert "space.yaml" in msg and "mapping" in msg and repr(data) in msg


@pytest.mark.parametrize("strategies", [{}, None])
def test_empty_strategies_is_an_error(strategies: Any) -> None:
    msg = _error({"strategies": strategies})
    assert "strategies" in msg and repr(strategies) in msg


def test_missing_strategies_is_an_error() -> None:
    msg = _error({"max_depth": 1})
    assert "strategies" in msg and "Field required" in msg


def test_objective_lambda_alias_and_bounds() -> None:
    space = _space({"single": {}}, objective={"mode": "single", "lambda": 0.001})
    assert space.file.objective.lam == 0.001
    msg = _error({"objective": {"mode": "single", "lambda": -1}, "strategies": {"single": {}}})
    assert "lambda" in msg and "-1" in msg


def test_a_range_on_an_optional_numeric_field_is_accepted() -> None:
    space = _space({"verified_resampling": {"k": {"low": 1, "high": 4}}})
    p = next(p for p in space.strategies["verified_resampling"].params if p.key == "k")
    assert (p.kind, p.low, p.high) == ("int", 1, 4)


@pytest.mark.parametrize(
    ("field", "rng"),
    [
        ("temperature", {"low": 0.0, "high": 1.0, "step": 0}),
        ("temperature", {"low": 0.0, "high": 1.0, "step": -0.1}),
        ("n", {"low": 1, "high": 4, "step": 0.5}),
    ],
)
def test_a_bad_step_is_an_error(field: str, rng: dict[str, Any]) -> None:
    msg = _error({"strategies": {"self_consistency": {field: rng}}})
    assert f"strategies.self_consistency.{field}" in msg and "step" in msg


def test_a_boolean_bound_is_an_error() -> None:
    _error({"strategies": {"single": {"temperature": {"low": True, "high": 1.0}}}})


@pytest.mark.parametrize("key", ["backend", "inner"])
def test_space_level_settings_in_common_say_who_sets_them(key: str) -> None:
    msg = _error({"common": {key: "x"}, "strategies": {"self_consistency": {}}})
    assert f"common.{key}" in msg and "set by the space itself" in msg


# --- grid --------------------------------------------------------------------------------------


def test_grid_of_a_float_range_without_step_asks_for_a_step() -> None:
    space = _space({"single": {"temperature": {"low": 0.1, "high": 0.9}}})
    with pytest.raises(SpaceError, match="step") as info:
        space.grid()
    assert "single.temperature" in str(info.value)
    assert space.compose(Replay({"strategy": "single", "single.temperature": 0.5}))  # tpe is fine


def test_grid_limit_is_enforced() -> None:
    space = load_space(GRID_SMALL)
    assert len(space.grid(limit=45)) == 45
    with pytest.raises(SpaceError, match="more than 44") as info:
        space.grid(limit=44)
    assert str(GRID_SMALL) in str(info.value)


def test_grid_of_an_int_range_honours_step() -> None:
    space = _space(
        {"self_consistency": {"n": {"low": 1, "high": 8, "step": 2}, "temperature": 0.5}}
    )
    assert [p["self_consistency.n"] for p in space.grid()] == [1, 3, 5, 7]


def test_param_grid_values() -> None:
    assert Param("t", "float", low=0.2, high=1.2, step=0.1).grid("x") == [
        0.2,
        0.3,
        0.4,
        0.5,
        0.6,
        0.7,
        0.8,
        0.9,
        1.0,
        1.1,
        1.2,
    ]
    assert Param("v", "categorical", choices=("a", "b")).grid("x") == ["a", "b"]


def test_float_grid_never_exceeds_high() -> None:
    values = Param("t", "float", low=0.0, high=2.0, step=0.3).grid("x")
    assert max(values) <= 2.0
    space = _space({"single": {"temperature": {"low": 0.0, "high": 2.0, "step": 0.3}}})
    for params in space.grid():
        build_strategy(space.compose(Replay(params)))


def test_mapping_choices_are_labelled_and_replayed_to_their_value() -> None:
    spec = {"verifier": "self_eval"}
    space = _space(
        {"best_of_n": {"n": 2, "temperature": 0.5, "verifier": {"choices": [spec, "mean_logprob"]}}}
    )
    grid = space.grid()
    assert len(grid) == 2
    labels = [p["best_of_n.verifier"] for p in grid]
    assert all(isinstance(label, str) for label in labels)
    built = [space.compose(Replay(p))["verifier"] for p in grid]
    assert built == [spec, "mean_logprob"]


# --- loading files -----------------------------------------------------------------------------


def test_load_space_with_a_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("strategies:\n  single: {temperature: [0.1, \n")
    with pytest.raises(ConfigError, match="invalid YAML") as info:
        load_space(path)
    assert str(path) in str(info.value)


def test_load_space_of_a_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_space(path)
    assert str(path) in str(info.value)


def test_load_space_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("strategies:\n  single:\n    temperature: {low: 1.0, high: 0.5}\n")
    with pytest.raises(SpaceError) as info:
        load_space(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: strategies.single.temperature")
    assert "low 1.0 is above high 0.5" in msg

"""search.objective and search.pruning: trials on a FakeBackend in in-memory Optuna studies.

An Objective is built as ``search.workers._worker`` builds it: an Orchestrator over a FakeBackend
living on an asyncio loop in a background thread, and a Space from ``build_space``; trials run
through ``study.optimize`` in the test's thread.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from orchestrator.backends.base import GenerationRequest
from orchestrator.datasets import load_dataset
from orchestrator.evaluation.records import read_records
from orchestrator.runner import Orchestrator
from orchestrator.testing.fake_backend import FakeBackend
from orchestrator.types import Problem
from search import results
from search.objective import (
    Objective,
    SearchInterrupted,
    one_line,
    rung_order,
    rung_sizes,
)
from search.pruning import make_pruner, stop_multi
from search.space import build_space
from search.study import StudyPlan, evaluated, run_in_thread

optuna.logging.set_verbosity(optuna.logging.WARNING)

PROBLEMS = load_dataset("builtin:addition?n=20&digits=2")
MULTI: list[Literal["maximize", "minimize"]] = ["maximize", "minimize"]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a background thread (the orchestrator's home)."""
    lp = asyncio.new_event_loop()
    thread = threading.Thread(target=lp.run_forever, daemon=True)
    thread.start()
    yield lp
    lp.call_soon_threadsafe(lp.stop)
    thread.join(5)
    lp.close()


def adder(
    correct: Callable[[GenerationRequest], bool] = lambda r: True, words: int = 0
) -> Callable[[GenerationRequest, int], str]:
    """A FakeBackend script answering ``a + b`` questions: the sum when ``correct(request)``,
    else the sum + 1, after ``words`` filler words."""

    def script(request: GenerationRequest, index: int) -> str:
        text = (request.messages or [])[-1].content or ""
        a, b = (int(x) for x in re.findall(r"(\d+) \+ (\d+)", text)[0])
        answer = a + b if correct(request) else a + b + 1
        return " ".join(["step"] * words + [f"The answer is \\boxed{{{answer}}}."])

    return script


def cold(request: GenerationRequest) -> bool:
    """Right only at low temperature."""
    return request.temperature <= 0.5


def objective(
    space: dict[str, Any],
    fake: FakeBackend,
    loop: asyncio.AbstractEventLoop,
    tmp_path: Path,
    problems: list[Problem] = PROBLEMS,
    **kwargs: Any,
) -> tuple[Objective, list[str]]:
    """An Objective over ``fake`` and the lines it says."""
    said: list[str] = []
    obj = Objective(
        build_space(space, "space.yaml"),
        Orchestrator([fake]),
        loop,
        problems,
        tmp_path / "out",
        say=said.append,
        **{"concurrency": 4, **kwargs},
    )
    return obj, said


def sc_space(**top: Any) -> dict[str, Any]:
    """self_consistency with n in 1..16 at a fixed temperature and max_tokens 32."""
    return {
        "budget": {"max_completion_tokens": 100},
        "rungs": [1.0],
        "common": {"temperature": 0.7, "max_tokens": 32},
        "strategies": {"self_consistency": {"n": {"low": 1, "high": 16}}},
        **top,
    }


def sc(n: int) -> dict[str, Any]:
    return {"strategy": "self_consistency", "self_consistency.n": n}


def trial(study: optuna.Study, number: int) -> FrozenTrial:
    return study.get_trials(deepcopy=False)[number]


# --- the budget filter before any call -----------------------------------------------------


def test_over_budget_composition_is_rejected_before_any_call(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    fake = FakeBackend()
    obj, said = objective(sc_space(), fake, loop, tmp_path)
    study = optuna.create_study(directions=MULTI)
    study.enqueue_trial(sc(16))  # 16 samples x 32 tokens = 512 > 100
    study.optimize(obj, n_trials=1)

    t = trial(study, 0)
    assert t.state == TrialState.PRUNED
    reason = t.user_attrs["rejected"]
    assert "max_completion_tokens" in reason and "512" in reason and "100" in reason
    assert fake.calls == 0
    assert not (tmp_path / "out" / "trial-0").exists()
    assert t.user_attrs["estimate"]["completion_tokens"] == 512
    assert t.user_attrs["constraints"] == [1.0, pytest.approx(512 / 100 - 1)]
    assert t.constraints["budget_exhausted_share"] == 1.0  # Optuna's own copy, for samplers
    assert t.user_attrs["composition"] == one_line(t.user_attrs["spec"])
    assert "n=16" in t.user_attrs["composition"]
    assert not evaluated(t)  # a rejected trial does not count towards --trials
    assert any("rejected before any call" in line for line in said)


def test_in_budget_composition_completes_with_its_records(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    fake = FakeBackend(script=adder())
    obj, _ = objective(sc_space(), fake, loop, tmp_path)
    study = optuna.create_study(directions=MULTI)
    study.enqueue_trial(sc(16))
    study.enqueue_trial(sc(2))
    study.optimize(obj, n_trials=2)

    t = trial(study, 1)
    assert t.state == TrialState.COMPLETE
    a = t.user_attrs
    assert t.values == [a["accuracy"], a["cost"]]
    assert a["accuracy"] == 1.0  # the script adds correctly
    assert a["spec"] == {
        "strategy": "self_consistency",
        "temperature": 0.7,
        "max_tokens": 32,
        "n": 2,
    }
    assert a["composition"] == one_line(a["spec"])
    assert a["rungs"] == [{"problems": 20, "accuracy": 1.0, "cost": a["cost"]}]
    assert set(a["usage"]) == {"completion_tokens", "prompt_tokens", "calls", "usd"}
    assert a["usage"]["calls"] == 1.0  # native n: one call per query
    assert a["cost"] == a["usage"]["completion_tokens"] == 2 * 4  # two 4-word samples
    assert a["constraints"][0] == 0.0 and a["constraints"][1] <= 0
    assert a["problems"] == 20 and evaluated(t)
    records = read_records(tmp_path / "out" / "trial-1" / "records.jsonl")
    assert sorted(r.id for r in records) == sorted(str(p.id) for p in PROBLEMS)
    assert fake.calls == 20  # the rejected trial 0 called nothing
    assert not (tmp_path / "out" / "trial-0").exists()


def test_invalid_composition_is_rejected_with_the_reason(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    from orchestrator.backends.base import Capabilities

    fake = FakeBackend(capabilities=Capabilities(native_n=True))  # no logprobs
    space = {
        "rungs": [1.0],
        "common": {"max_tokens": 32},
        "strategies": {"best_of_n": {"n": 2, "temperature": 0.7, "verifier": "mean_logprob"}},
    }
    obj, _ = objective(space, fake, loop, tmp_path)
    study = optuna.create_study(directions=MULTI)
    study.optimize(obj, n_trials=1)
    t = trial(study, 0)
    assert t.state == TrialState.PRUNED
    assert t.user_attrs["rejected"].startswith("invalid composition")
    assert "logprobs" in t.user_attrs["rejected"]
    assert fake.calls == 0


def test_estimates_learn_the_measured_sample_length(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    """Trial 0 (16 samples) is rejected at the assumed 32 tokens per sample; trial 1 measures
    4-token samples, so the same composition then fits (16 x 4 = 64 <= 100)."""
    fake = FakeBackend(script=adder())
    obj, _ = objective(sc_space(), fake, loop, tmp_path, problems=PROBLEMS[:4])
    study = optuna.create_study(directions=MULTI)
    for n in (16, 2, 16):
        study.enqueue_trial(sc(n))
    study.optimize(obj, n_trials=3)
    first, measured, again = study.trials
    assert first.state == TrialState.PRUNED and first.user_attrs["rejected"]
    assert measured.user_attrs["tokens_per_sample"] == 4
    assert again.state == TrialState.COMPLETE
    assert again.user_attrs["estimate"]["tokens_per_sample"] == 4
    assert again.user_attrs["estimate"]["completion_tokens"] == 16 * 4


# --- constraints ---------------------------------------------------------------------------


def test_budget_cut_trial_is_complete_but_infeasible(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    """The dry run assumes 1-token samples, so 4 samples of max 64 tokens pass a 100-token
    budget; the real samples are 61 tokens long, so the meter cuts every query short."""
    space = {
        "budget": {"max_completion_tokens": 100},
        "estimate": {"tokens_per_sample": 1},
        "rungs": [1.0],
        "common": {"max_tokens": 64, "temperature": {"choices": [0.2, 1.0]}},
        "strategies": {"self_consistency": {"n": {"choices": [1, 4]}}},
    }
    fake = FakeBackend(script=adder(cold, words=57))  # 57 + 4 = 61 words
    obj, _ = objective(space, fake, loop, tmp_path, problems=PROBLEMS[:6])
    study = optuna.create_study(directions=MULTI)
    cut = {**sc(4), "self_consistency.temperature": 0.2}  # accurate, budget-cut
    fits = {**sc(1), "self_consistency.temperature": 1.0}  # wrong, within the budget
    study.enqueue_trial(cut)
    study.enqueue_trial(fits)
    study.optimize(obj, n_trials=2)

    t_cut, t_fits = trial(study, 0), trial(study, 1)
    assert t_cut.state == t_fits.state == TrialState.COMPLETE
    assert t_cut.user_attrs["constraints"][0] == 1.0  # every query was cut short
    assert t_cut.constraints["budget_exhausted_share"] == 1.0
    assert t_cut.user_attrs["usage"]["completion_tokens"] == 100  # never over the limit
    assert t_fits.user_attrs["constraints"][0] == 0.0
    assert t_fits.user_attrs["constraints"][1] <= 0
    # Neither dominates the other (accuracy 1 at 100 tokens vs 0 at 61) ...
    assert t_cut.values[0] > t_fits.values[0] and t_cut.values[1] > t_fits.values[1]
    # ... but Optuna's front and ours keep only the feasible one.
    assert [t.number for t in study.best_trials] == [1]
    assert [t.number for t in results.front(study)] == [1]
    # The study learns the real sample length for the next estimates.
    assert t_cut.user_attrs["tokens_per_sample"] > 1


# --- rungs and pruning ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "rungs", "sizes"),
    [
        (100, [0.1, 0.3, 1.0], [10, 30, 100]),
        (9, [0.1, 0.3, 1.0], [1, 3, 9]),
        (3, [0.1, 0.3, 1.0], [1, 3]),  # 0.1 and 0.3 of 3 are both 1 problem: one rung
        (1, [0.1, 0.3, 1.0], [1]),
        (7, [0.5, 1.0], [4, 7]),  # shares round up
        (20, [1.0], [20]),
    ],
)
def test_rung_sizes(total: int, rungs: list[float], sizes: list[int]) -> None:
    got = rung_sizes(total, rungs)
    assert got == sizes
    assert got[-1] == total and got == sorted(set(got))


def _rung_trial(number: int, rungs: list[tuple[float, float]], state: TrialState) -> FrozenTrial:
    t = create_trial(
        state=state,
        values=[rungs[-1][0], rungs[-1][1]] if state == TrialState.COMPLETE else None,
        params={"strategy": "single"},
        distributions={"strategy": CategoricalDistribution(["single"])},
        user_attrs={"rungs": [{"problems": 5, "accuracy": a, "cost": c} for a, c in rungs]},
    )
    t.number = number
    return t


def _peers_study(peers: list[list[tuple[float, float]]]) -> optuna.Study:
    study = optuna.create_study(directions=MULTI)
    for rungs in peers:
        study.add_trial(_rung_trial(0, rungs, TrialState.COMPLETE))
    return study


def test_stop_multi_stops_below_the_median_of_cheaper_or_equal_peers() -> None:
    study = _peers_study([[(0.8, 50.0)], [(0.6, 50.0)], [(0.9, 10.0)], [(0.7, 30.0)]])
    assert stop_multi(study, 99, 0, accuracy=0.5, cost=50.0)  # median 0.75 of 4 peers
    assert not stop_multi(study, 99, 0, accuracy=0.75, cost=50.0)  # at the median: kept
    assert not stop_multi(study, 99, 0, accuracy=0.9, cost=50.0)


def test_stop_multi_keeps_a_cheap_composition_and_needs_min_peers() -> None:
    study = _peers_study([[(0.8, 50.0)], [(0.6, 50.0)], [(0.9, 10.0)], [(0.7, 30.0)]])
    assert not stop_multi(study, 99, 0, accuracy=0.1, cost=40.0)  # only 2 peers cost <= 40
    assert stop_multi(study, 99, 0, accuracy=0.1, cost=40.0, min_peers=2)  # median 0.8
    assert not stop_multi(study, 99, 0, accuracy=0.1, cost=5.0, min_peers=1)  # none cheaper


def test_stop_multi_ignores_itself_running_trials_and_trials_short_of_the_rung() -> None:
    study = _peers_study([[(0.9, 10.0)], [(0.9, 10.0)], [(0.9, 10.0)]])
    study.add_trial(_rung_trial(0, [(0.9, 10.0)], TrialState.PRUNED))  # a 4th peer at rung 0
    assert stop_multi(study, 99, 0, accuracy=0.5, cost=10.0)
    assert not stop_multi(study, 3, 0, accuracy=0.5, cost=10.0)  # trial 3 is not its own peer
    assert not stop_multi(study, 99, 1, accuracy=0.5, cost=10.0)  # nobody reached rung 1
    running = study.ask()
    study._storage.set_trial_user_attr(
        running._trial_id, "rungs", [{"problems": 5, "accuracy": 1.0, "cost": 1.0}]
    )
    assert not stop_multi(study, 3, 0, accuracy=0.5, cost=10.0)  # RUNNING trials don't count


def single_space() -> dict[str, Any]:
    return {
        "objective": {"mode": "single", "lambda": 0.001},
        "rungs": [0.25, 0.5, 1.0],
        "common": {"max_tokens": 32},
        "strategies": {"single": {"temperature": {"choices": [0.2, 1.0]}}},
    }


def test_single_mode_reports_rungs_and_median_pruner_stops_a_weak_composition(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    fake = FakeBackend(script=adder(cold))
    obj, said = objective(single_space(), fake, loop, tmp_path)
    assert obj.sizes == [5, 10, 20]
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", 5, 20))
    for _ in range(4):
        study.enqueue_trial({"strategy": "single", "single.temperature": 0.2})
    study.enqueue_trial({"strategy": "single", "single.temperature": 1.0})
    study.optimize(obj, n_trials=5)

    strong, weak = trial(study, 0), trial(study, 4)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4 + [TrialState.PRUNED]
    cost = strong.user_attrs["cost"]
    assert strong.values == [pytest.approx(1.0 - 0.001 * cost)]
    assert set(strong.intermediate_values) == {5, 10}  # every rung but the last
    assert strong.intermediate_values[5] == pytest.approx(1.0 - 0.001 * cost)
    assert list(weak.intermediate_values) == [5]
    assert weak.intermediate_values[5] < 0  # accuracy 0 minus the cost term
    assert weak.user_attrs["pruned_at"] == 0
    assert weak.user_attrs["problems"] == 5 and len(weak.user_attrs["rungs"]) == 1
    assert evaluated(weak)  # pruned after a rung: counts as evaluated
    assert len(read_records(tmp_path / "out" / "trial-4" / "records.jsonl")) == 5
    assert any(line.startswith("trial 4: pruned after 5 problems") for line in said)


def test_pruning_off_lets_the_weak_composition_finish(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    obj, _ = objective(
        single_space(), FakeBackend(script=adder(cold)), loop, tmp_path, pruner_on=False
    )
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", 5, 20))
    for temperature in (0.2, 0.2, 0.2, 0.2, 1.0):
        study.enqueue_trial({"strategy": "single", "single.temperature": temperature})
    study.optimize(obj, n_trials=5)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5
    assert trial(study, 4).user_attrs["problems"] == 20


def test_multi_mode_stops_a_weak_expensive_composition_after_the_first_rung(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    space = {
        "rungs": [0.25, 1.0],
        "common": {"max_tokens": 32, "temperature": {"choices": [0.2, 1.0]}},
        "strategies": {"self_consistency": {"n": {"choices": [1, 4]}}},
    }
    obj, _ = objective(space, FakeBackend(script=adder(cold)), loop, tmp_path)
    study = optuna.create_study(directions=MULTI)
    for _ in range(4):
        study.enqueue_trial({**sc(1), "self_consistency.temperature": 0.2})
    study.enqueue_trial({**sc(4), "self_consistency.temperature": 1.0})
    study.optimize(obj, n_trials=5)
    weak = trial(study, 4)
    assert weak.state == TrialState.PRUNED
    assert weak.user_attrs["pruned_at"] == 0
    assert weak.user_attrs["rungs"] == [{"problems": 5, "accuracy": 0.0, "cost": 16.0}]
    assert weak.values is None and evaluated(weak)
    assert [t.state for t in study.trials[:4]] == [TrialState.COMPLETE] * 4


# --- interruption --------------------------------------------------------------------------


def test_interrupt_fails_the_trial_and_queues_it_again(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    holder: list[Objective] = []
    answer = adder()

    def script(request: GenerationRequest, index: int) -> str:
        if fake.calls == 3:  # the third problem's call: Ctrl-C arrives (on the loop's thread)
            holder[0].interrupt()
        return answer(request, index)

    fake = FakeBackend(script=script)
    space = sc_space(budget={})
    obj, said = objective(space, fake, loop, tmp_path, concurrency=1)
    holder.append(obj)
    study = optuna.create_study(directions=MULTI)
    study.enqueue_trial(sc(2))
    study.optimize(obj, n_trials=3, catch=(SearchInterrupted,))  # the trial stops the study

    first, retry = study.trials
    assert first.state == TrialState.FAIL
    assert retry.state == TrialState.WAITING
    assert retry.user_attrs["retry_of"] == 0
    assert fake.calls < len(PROBLEMS)  # the evaluation stopped early
    assert any("interrupted; queued again" in line for line in said)

    # The next run (a new worker) continues with the queued composition.
    obj2, _ = objective(space, fake, loop, tmp_path)
    study.optimize(obj2, n_trials=1)
    done = trial(study, 1)
    assert done.state == TrialState.COMPLETE
    assert done.params == first.params == {"strategy": "self_consistency", "self_consistency.n": 2}
    assert done.user_attrs["retry_of"] == 0 and done.user_attrs["problems"] == 20


def test_interrupted_objective_calls_no_backend(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    fake = FakeBackend()
    obj, _ = objective(sc_space(), fake, loop, tmp_path)
    obj.interrupt()
    study = optuna.create_study(directions=MULTI)
    study.optimize(obj, n_trials=2, catch=(SearchInterrupted,))
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    assert fake.calls == 0


def test_ctrl_c_in_the_worker_loop_queues_the_trial_in_flight(tmp_path: Path) -> None:
    """The CLI's shape: the orchestrator on the main loop, ``optimize_loop`` in a thread;
    cancelling ``run_in_thread`` (Ctrl-C) interrupts the trial and re-raises."""
    fake = FakeBackend(script=adder(), latency=0.05)
    study = optuna.create_study(directions=MULTI)
    study.enqueue_trial(sc(2))

    async def worker() -> None:
        obj, _ = objective(sc_space(budget={}), fake, asyncio.get_running_loop(), tmp_path)
        task = asyncio.create_task(run_in_thread(study, obj, StudyPlan(trials=1), print_trial))
        while fake.calls < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(worker())
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    retry = study.trials[1]
    assert retry.user_attrs["retry_of"] == 0
    assert retry.system_attrs["fixed_params"] == sc(2)  # what the next trial will run
    assert fake.calls < len(PROBLEMS)


def print_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """A no-op progress callback."""


# --- formatting and order ------------------------------------------------------------------


def test_one_line_nested_and_mapping_values() -> None:
    spec = {
        "strategy": "best_of_n",
        "n": 8,
        "verifier": "self_eval",
        "inner": {"strategy": "self_consistency", "n": 4, "temperature": 0.7},
    }
    assert one_line(spec) == (
        "best_of_n(n=8, verifier=self_eval, inner=self_consistency(n=4, temperature=0.7))"
    )
    assert one_line({"strategy": "single"}) == "single()"
    weighted = {"strategy": "self_consistency", "verifier": {"verifier": "self_eval", "k": 5}}
    assert one_line(weighted) == "self_consistency(verifier=verifier=self_eval,k=5)"


def test_rung_order_is_stable_and_seed_dependent() -> None:
    order = rung_order(PROBLEMS, seed=0)
    assert [p.id for p in order] == [p.id for p in rung_order(list(reversed(PROBLEMS)), 0)]
    assert sorted(str(p.id) for p in order) == sorted(str(p.id) for p in PROBLEMS)
    assert [p.id for p in order] != [p.id for p in PROBLEMS]  # shuffled, not file order
    assert [p.id for p in rung_order(PROBLEMS, seed=1)] != [p.id for p in order]
    # A longer dataset keeps the relative order of the problems they share.
    head = rung_order(PROBLEMS[:10], 0)
    assert [p.id for p in head] == [p.id for p in order if p in PROBLEMS[:10]]

"""search.results and search.plots on hand-built studies in a temporary SQLite storage."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from orchestrator.backends.base import GenerationRequest
from orchestrator.config import load_yaml
from orchestrator.datasets import load_dataset
from orchestrator.errors import ConfigError
from orchestrator.runner import Orchestrator
from orchestrator.testing.fake_backend import FakeBackend, default_text
from search import holdout, results
from search.plots import HISTORY_PLOT, IMPORTANCE_PLOT, PARETO_PLOT, write_report
from strategies.base import build_strategy

optuna.logging.set_verbosity(optuna.logging.WARNING)

DATASET = "builtin:addition?n=30&digits=2"
STRATEGIES = ["self_consistency", "best_of_n"]


def _attrs(mode: str) -> dict[str, Any]:
    return {
        "space": {"budget": {"max_calls": 40, "max_completion_tokens": 2048}},
        "space_path": "configs/search/addition.yaml",
        "mode": mode,
        "cost": "completion_tokens",
        "lambda": 0.001,
        "dataset": {
            "source": DATASET,
            "format": None,
            "split": "dev:0.2",
            "limit": None,
            "problems": 7,
        },
        "seed": 0,
    }


def _trial(
    values: list[float] | None,
    acc: float,
    cost: float,
    n: int,
    *,
    strategy: str = "self_consistency",
    temperature: float = 0.5,
    constraints: list[float] | None = None,
    state: TrialState = TrialState.COMPLETE,
    **extra: Any,
) -> optuna.trial.FrozenTrial:
    spec = {"strategy": strategy, "n": n, "temperature": temperature, "max_tokens": 64}
    attrs: dict[str, Any] = {
        "spec": spec,
        "composition": f"{strategy}(n={n}, temperature={temperature}, max_tokens=64)",
    }
    if state == TrialState.COMPLETE:
        attrs.update(
            accuracy=acc,
            cost=cost,
            problems=7,
            constraints=constraints if constraints is not None else [0.0, -0.5],
        )
    return create_trial(
        state=state,
        values=values,
        params={"strategy": strategy, f"{strategy}.n": n, f"{strategy}.temperature": temperature},
        distributions={
            "strategy": CategoricalDistribution(STRATEGIES),
            f"{strategy}.n": IntDistribution(1, 16),
            f"{strategy}.temperature": FloatDistribution(0.2, 1.2),
        },
        user_attrs={**attrs, **extra},
    )


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


@pytest.fixture
def multi(storage: str) -> optuna.Study:
    """Front: trials 1 (cost 20), 6 (60), 0 (100). 2 is dominated by 0; 3 and 5 would dominate
    0 but are infeasible (user-attr constraints, Optuna's own constraints); 4 is pruned."""
    study = optuna.create_study(
        study_name="multi", storage=storage, directions=["maximize", "minimize"]
    )
    for key, value in _attrs("multi").items():
        study.set_user_attr(key, value)
    study.add_trial(_trial([0.9, 100.0], 0.9, 100.0, 8, strategy="best_of_n", temperature=0.9))
    study.add_trial(_trial([0.5, 20.0], 0.5, 20.0, 1))
    study.add_trial(_trial([0.6, 150.0], 0.6, 150.0, 12, temperature=1.1))
    study.add_trial(_trial([0.95, 30.0], 0.95, 30.0, 2, constraints=[0.2, 0.0]))
    study.add_trial(_trial(None, 0, 0, 16, state=TrialState.PRUNED, rejected="over budget"))
    infeasible = _trial([0.99, 5.0], 0.99, 5.0, 3)
    infeasible.system_attrs["constraints:0"] = 1.0  # what Optuna's constraints_func records
    study.add_trial(infeasible)
    study.add_trial(_trial([0.7, 60.0], 0.7, 60.0, 4, strategy="best_of_n", temperature=0.3))
    return study


@pytest.fixture
def single(storage: str) -> optuna.Study:
    """12 feasible trials with scores 0.0..1.1 plus an infeasible one with the best score."""
    study = optuna.create_study(study_name="single", storage=storage, direction="maximize")
    for key, value in _attrs("single").items():
        study.set_user_attr(key, value)
    for i in range(12):
        study.add_trial(_trial([i / 10], i / 10, 10.0 * i, i + 1))
    study.add_trial(_trial([5.0], 1.0, 1.0, 2, constraints=[0.0, 0.3]))
    return study


# --- storage and loading ---------------------------------------------------------------


def test_storage_url_turns_paths_into_sqlite_urls_and_keeps_urls(tmp_path: Path) -> None:
    assert results.storage_url("runs/x.db") == f"sqlite:///{Path('runs/x.db').resolve()}"
    assert results.storage_url("sqlite:///a/b.db") == "sqlite:///a/b.db"
    assert results.storage_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"


def test_load_study_opens_an_existing_study(multi: optuna.Study, tmp_path: Path) -> None:
    study = results.load_study("multi", str(tmp_path / "studies.db"))  # a plain path works too
    assert study.study_name == "multi" and len(study.trials) == 7


def test_load_study_unknown_name_lists_the_studies(multi: optuna.Study, storage: str) -> None:
    with pytest.raises(ConfigError, match=r"no study 'nope' in .*studies there: multi"):
        results.load_study("nope", storage)


def test_load_study_missing_file_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(ConfigError, match="no study database at"):
        results.load_study("x", str(path))
    assert not path.exists()


def test_load_study_bad_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--storage foo://bar: cannot open it"):
        results.load_study("x", "foo://bar")


# --- the front -------------------------------------------------------------------------


def test_multi_front_is_feasible_non_dominated_by_cost(multi: optuna.Study) -> None:
    assert [t.number for t in results.front(multi)] == [1, 6, 0]


def test_single_front_is_top_ten_feasible_by_score(single: optuna.Study) -> None:
    numbers = [t.number for t in results.front(single)]
    assert numbers == list(range(11, 1, -1))  # the infeasible best (12) is left out


def test_front_table_lists_the_front_in_order(multi: optuna.Study) -> None:
    table = results.front_table(multi, results.front(multi))
    lines = table.strip().splitlines()
    assert "Cost/query (completion_tokens)" in lines[0] and "Score" not in lines[0]
    assert len(lines) == 2 + 3
    assert lines[2].startswith("| 1 | 0.500 (n=7) | 20.0 | self_consistency(n=1,")
    assert lines[4].startswith("| 0 | 0.900 (n=7) | 100.0 | best_of_n(n=8,")


def test_front_table_single_mode_shows_the_score(single: optuna.Study) -> None:
    lines = results.front_table(single, results.front(single)).splitlines()
    assert "Score" in lines[0] and "| 11 | 1.100 (n=7) | 110.0 | 1.1000 |" in lines[2]


def test_front_table_without_trials_says_why(storage: str) -> None:
    study = optuna.create_study(
        study_name="empty", storage=storage, directions=["maximize", "minimize"]
    )
    study.add_trial(_trial(None, 0, 0, 1, state=TrialState.PRUNED))
    assert (
        "No feasible COMPLETE trials in study 'empty' yet (1 trials: 1 pruned)"
        in results.front_table(study, results.front(study))
    )


def test_front_json_rows(multi: optuna.Study) -> None:
    rows = results.front_json(multi, results.front(multi))
    assert [r["trial"] for r in rows] == [1, 6, 0]
    assert rows[0]["accuracy"] == 0.5 and rows[0]["cost"] == 20.0 and rows[0]["problems"] == 7
    assert rows[0]["spec"] == {
        "strategy": "self_consistency",
        "n": 1,
        "temperature": 0.5,
        "max_tokens": 64,
    }
    assert rows[0]["cost_unit"] == "completion_tokens" and rows[0]["score"] is None


def test_study_overview_counts_states(multi: optuna.Study) -> None:
    text = results.study_overview(multi)
    assert "7 trials: 6 complete, 1 pruned, 2 of the complete ones infeasible" in text
    assert DATASET in text and "dev:0.2" in text


# --- export ----------------------------------------------------------------------------


def test_export_round_trip_runs_with_the_orchestrator(multi: optuna.Study, tmp_path: Path) -> None:
    path = results.export_trial(multi, 0, tmp_path / "out" / "best.yaml")
    text = path.read_text()
    assert text.startswith("# ttc search export: study 'multi', trial 0\n")
    assert "dev accuracy 0.900 (n=7)" in text and "cost 100.0 completion_tokens" in text
    assert f"ttc eval --config best.yaml --dataset '{DATASET}' --split test:0.2" in text
    spec = multi.trials[0].user_attrs["spec"]
    assert yaml.safe_load(text) == spec
    loaded = load_yaml(path)  # what `ttc solve --config` / `ttc eval --config` read
    strat = build_strategy(dict(loaded))
    described = strat.describe()
    assert described["strategy"] == spec["strategy"] == "best_of_n"
    for key, value in spec.items():  # describe() leaves out defaults: compare the config
        assert getattr(strat.config, key, value) == value
        assert described.get(key, value) == value

    async def run() -> Any:
        async with Orchestrator([FakeBackend(answers=["7"])]) as orch:
            return await orch.run("What is 3 + 4?", loaded)

    result = asyncio.run(run())
    assert result.answer == "7" and result.strategy == "best_of_n"
    assert result.usage.calls >= 1


def test_export_unknown_trial_names_the_range(multi: optuna.Study, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--trial 42: .*trial numbers: 0\.\.6"):
        results.export_trial(multi, 42, tmp_path / "x.yaml")


def test_export_pruned_trial_says_its_state(multi: optuna.Study, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is PRUNED \(rejected: over budget\).*ttc search best"):
        results.export_trial(multi, 4, tmp_path / "x.yaml")
    assert not (tmp_path / "x.yaml").exists()


def test_export_refuses_to_overwrite_unless_forced(multi: optuna.Study, tmp_path: Path) -> None:
    out = tmp_path / "x.yaml"
    out.write_text("keep me\n")
    with pytest.raises(ConfigError, match="already exists; pass --force"):
        results.export_trial(multi, 1, out)
    assert out.read_text() == "keep me\n"
    results.export_trial(multi, 1, out, force=True)
    assert yaml.safe_load(out.read_text())["n"] == 1


def test_export_marks_an_infeasible_trial(multi: optuna.Study, tmp_path: Path) -> None:
    text = results.export_trial(multi, 3, tmp_path / "x.yaml").read_text()
    assert "# WARNING: infeasible" in text


# --- held-out test ---------------------------------------------------------------------


def test_held_out_split_is_the_complement() -> None:
    assert results.held_out_split("dev:0.2") == "test:0.2"
    assert results.held_out_split("test:0.3") == "dev:0.3"
    with pytest.raises(ConfigError, match="no dev split"):
        results.held_out_split(None)


def _adder(request: GenerationRequest, index: int) -> str:
    """Answers 'What is A + B?' correctly."""
    assert request.messages is not None
    a, b = re.findall(r"(\d+) \+ (\d+)", request.messages[-1].content)[-1]
    return default_text(str(int(a) + int(b)))


def test_test_front_evaluates_each_front_trial_and_resumes(
    multi: optuna.Study, tmp_path: Path
) -> None:
    backend = FakeBackend(script=_adder)
    out = tmp_path / "test"

    async def run() -> list[dict[str, Any]]:
        async with Orchestrator([backend]) as orch:
            return await holdout.test_front(
                multi, orch, split=None, limit=None, out_dir=out, concurrency=2, progress=False
            )

    rows = asyncio.run(run())
    held_out = load_dataset(DATASET, split="test:0.2")
    assert [r["trial"] for r in rows] == [1, 6, 0]
    for row in rows:
        assert row["test_problems"] == len(held_out) == 23
        assert row["test_accuracy"] == 1.0 and row["failed"] == 0
        assert row["test_cost"] > 0 and row["cost_unit"] == "completion_tokens"
        records = out / f"trial-{row['trial']}" / "records.jsonl"
        assert len(records.read_text().splitlines()) == 23
    assert rows[0]["dev_accuracy"] == 0.5 and rows[0]["dev_cost"] == 20.0
    calls = backend.calls
    assert calls > 0
    again = asyncio.run(run())  # everything recorded: the rerun makes no backend call
    assert backend.calls == calls
    assert [r["test_accuracy"] for r in again] == [1.0, 1.0, 1.0]
    table = holdout.dev_test_table(rows)
    assert "Test accuracy [95% CI]" in table and "Dev cost (completion_tokens)" in table
    assert "| 1 | 0.500 (n=7) | 1.000 [" in table


def test_test_front_given_trials_and_limit(multi: optuna.Study, tmp_path: Path) -> None:
    async def run() -> list[dict[str, Any]]:
        async with Orchestrator([FakeBackend(script=_adder)]) as orch:
            return await holdout.test_front(
                multi,
                orch,
                limit=5,
                out_dir=tmp_path,
                progress=False,
                trials=[results.usable_trial(multi, 2)],
            )

    rows = asyncio.run(run())
    assert [(r["trial"], r["test_problems"]) for r in rows] == [(2, 5)]
    assert (tmp_path / "trial-2" / "meta.json").exists()


def test_test_front_refuses_the_dev_split(multi: optuna.Study, tmp_path: Path) -> None:
    async def run() -> None:
        async with Orchestrator([FakeBackend()]) as orch:
            await holdout.test_front(multi, orch, split="dev:0.2", out_dir=tmp_path)

    with pytest.raises(ConfigError, match=r"overlaps the dev split .* held-out split is test:0\.2"):
        asyncio.run(run())


@pytest.mark.parametrize(
    ("split", "dev", "overlap"),
    [
        ("test:0.2", "dev:0.2", False),
        ("test:0.3", "dev:0.2", False),
        ("dev:0.1", "dev:0.2", True),
        ("test:0.1", "dev:0.2", True),
        ("dev:0.2", "test:0.2", False),
        ("rest:0.5", "test:0.2", True),
    ],
)
def test_overlap_of_splits(split: str, dev: str, overlap: bool) -> None:
    assert results._overlap(split, dev) is overlap


# --- report ----------------------------------------------------------------------------


def test_write_report_png_writes_plots_and_front(multi: optuna.Study, tmp_path: Path) -> None:
    paths = write_report(multi, tmp_path / "r", "png", stream=io.StringIO())
    names = {p.name for p in paths}
    assert {"front.md", PARETO_PLOT, HISTORY_PLOT} <= names and "report.html" not in names
    for p in paths:
        assert p.exists() and p.stat().st_size > 0
    front_md = (tmp_path / "r" / "front.md").read_text()
    assert "| 6 | 0.700 (n=7) | 60.0 |" in front_md and f"]({PARETO_PLOT})" in front_md


def test_write_report_html_embeds_images_and_table(multi: optuna.Study, tmp_path: Path) -> None:
    paths = write_report(multi, tmp_path, "html", stream=io.StringIO())
    page = (tmp_path / "report.html").read_text()
    assert tmp_path / "report.html" in paths
    for p in paths:
        if p.suffix == ".png":
            assert f'<img src="{p.name}"' in page and p.stat().st_size > 0
    assert "<table>" in page and "<td>best_of_n(n=4, temperature=0.3, max_tokens=64)</td>" in page


def test_write_report_single_mode_has_no_pareto_plot(single: optuna.Study, tmp_path: Path) -> None:
    names = {p.name for p in write_report(single, tmp_path, stream=io.StringIO())}
    assert PARETO_PLOT not in names and HISTORY_PLOT in names


def test_write_report_notes_skipped_importances(storage: str, tmp_path: Path) -> None:
    study = optuna.create_study(
        study_name="one", storage=storage, directions=["maximize", "minimize"]
    )
    study.add_trial(_trial([0.5, 10.0], 0.5, 10.0, 2))
    stream = io.StringIO()
    names = {p.name for p in write_report(study, tmp_path, "html", stream=stream)}
    assert IMPORTANCE_PLOT not in names and PARETO_PLOT in names
    assert "parameter importances need at least 2 COMPLETE trials" in stream.getvalue()
    assert "parameter importances need" in (tmp_path / "report.html").read_text()


def test_write_report_without_complete_trials_writes_front_only(storage: str, tmp_path: Path
                                                                 ) -> None:  # fmt: skip
    study = optuna.create_study(study_name="none", storage=storage,
                                directions=["maximize", "minimize"])  # fmt: skip
    study.add_trial(_trial(None, 0, 0, 1, state=TrialState.PRUNED))
    stream = io.StringIO()
    paths = write_report(study, tmp_path, stream=stream)
    assert [p.name for p in paths] == ["front.md"]
    assert "no COMPLETE trials yet" in stream.getvalue()
    assert "No feasible COMPLETE trials in study 'none'" in paths[0].read_text()


def test_write_report_rejects_an_unknown_format(multi: optuna.Study, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--format: expected png or html"):
        write_report(multi, tmp_path, "pdf")  # type: ignore[arg-type]

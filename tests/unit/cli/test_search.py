"""``ttc search`` as a user runs it, in-process through ``orchestrator.cli.main``, on the fake
backend, with the study in a SQLite file under ``tmp_path`` (the working directory)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from orchestrator.cli.main import main
from orchestrator.config import load_yaml
from search import results
from search.workers import worker_argv

optuna.logging.set_verbosity(optuna.logging.WARNING)

DATASET = "builtin:addition?n=40&digits=2"
STORAGE = "tmp/st.db"

BACKENDS = """\
default: fake
backends:
  fake:
    kind: fake
    options: {answers: ['42', '41']}
"""

SPACE = """\
objective: {mode: multi, cost: completion_tokens}
budget: {max_completion_tokens: 200}
rungs: [0.5, 1.0]
common: {max_tokens: 32, temperature: {choices: [0.3, 0.9]}}
strategies:
  single: {}
  self_consistency: {n: {choices: [1, 2, 4]}}
"""

OTHER_SPACE = """\
rungs: [1.0]
common: {max_tokens: 16, temperature: 0.5}
strategies:
  single: {}
"""

GRID = """\
rungs: [1.0]
common: {max_tokens: 16, temperature: 0.5}
strategies:
  self_consistency: {n: {choices: [1, 2]}}
  best_of_n: {n: {choices: [1, 2]}, verifier: mean_logprob}
"""


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path`` as the working directory, with the backends file and the space files."""
    monkeypatch.chdir(tmp_path)
    for name, text in [
        ("b.yaml", BACKENDS),
        ("space.yaml", SPACE),
        ("other.yaml", OTHER_SPACE),
        ("grid.yaml", GRID),
    ]:
        (tmp_path / name).write_text(text)
    return tmp_path


def run_args(*extra: str, space: str = "space.yaml", trials: str = "4") -> list[str]:
    return [
        "search", "run", "--space", space, "--dataset", DATASET, "--study", "s",
        "--storage", STORAGE, "--trials", trials, "--backends", "b.yaml", "--no-cache", *extra,
    ]  # fmt: skip


def study(name: str = "s") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{Path(STORAGE).resolve()}")


def evaluated(s: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [
        t
        for t in s.trials
        if t.state == TrialState.COMPLETE
        or (t.state == TrialState.PRUNED and not t.user_attrs.get("rejected"))
    ]


def test_run_prints_progress_and_the_front(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(run_args()) == 0
    out, err = capsys.readouterr()
    assert "study 's'" in err and "9 dev problems" in err and "4 trials" in err
    for i in range(4):
        assert re.search(rf"^trial {i} \[{i + 1}/4 evaluated, ", err, re.M), err
    assert "worker 0 stopped: done" in err
    assert out.startswith("| Trial | Dev accuracy | Cost/query (completion_tokens) |")

    s = study()
    assert len(evaluated(s)) == 4 and len(s.trials) == 4
    assert s.directions == [
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
    ]
    attrs = s.user_attrs
    assert attrs["space"]["budget"]["max_completion_tokens"] == 200
    assert attrs["space_path"] == "space.yaml"
    assert (attrs["mode"], attrs["cost"], attrs["seed"]) == ("multi", "completion_tokens", 0)
    assert attrs["dataset"]["source"] == DATASET and attrs["dataset"]["problems"] == 9
    assert attrs["backends"] == "b.yaml"
    for t in s.trials:  # records under the default --out, runs/search/STUDY
        assert (cwd / "runs" / "search" / "s" / f"trial-{t.number}" / "records.jsonl").is_file()
    rows = [line for line in out.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [int(r.split("|")[1]) for r in rows] == [t.number for t in results.front(s)]


def test_rerun_joins_the_study_and_another_space_is_refused(
    cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(run_args(trials="2")) == 0
    assert main(run_args(trials="3")) == 0  # the same study, one more evaluated trial
    assert len(evaluated(study())) == 3
    capsys.readouterr()

    assert main(run_args(space="other.yaml", trials="3")) == 2
    err = capsys.readouterr().err
    assert "study 's'" in err and "space" in err and "--study" in err
    assert len(study().trials) == 3  # nothing ran


@pytest.mark.parametrize("flag", ["--workers", "--trials", "--concurrency", "--heartbeat"])
def test_non_positive_counts_exit_2_naming_the_flag(
    flag: str, cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = run_args()
    if flag == "--trials":
        args[args.index("--trials") + 1] = "0"
    else:
        args += [flag, "0"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert flag in err and "got 0" in err
    assert not Path(STORAGE).exists()  # refused before the study was created


def test_grid_runs_each_composition_exactly_once(
    cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = run_args("--sampler", "grid", space="grid.yaml")
    args = args[: args.index("--trials")] + args[args.index("--trials") + 2 :]  # all of the grid
    assert main(args) == 0
    assert "4 trials, sampler grid" in capsys.readouterr().err
    s = study()
    assert [t.state for t in s.trials] == [TrialState.COMPLETE] * 4
    seen = {(t.params["strategy"], t.params[f"{t.params['strategy']}.n"]) for t in s.trials}
    assert seen == {(name, n) for name in ("self_consistency", "best_of_n") for n in (1, 2)}
    assert s.user_attrs["grid_queued"] == 4


def test_worker_argv_sets_the_index_and_drops_the_parents() -> None:
    argv = ["search", "run", "--workers", "3", "--worker-index", "0", "--study", "s"]
    assert worker_argv(argv, 2) == [
        "search", "run", "--workers", "3", "--study", "s", "--worker-index", "2",
    ]  # fmt: skip
    assert worker_argv(["run", "--worker-index=5", "--trials", "4"], 1) == [
        "run", "--trials", "4", "--worker-index", "1",
    ]  # fmt: skip
    assert worker_argv(["run"], 3) == ["run", "--worker-index", "3"]


def test_best_and_export_read_the_study(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(run_args(trials="3")) == 0
    capsys.readouterr()
    base = ["--study", "s", "--storage", STORAGE]

    assert main(["search", "best", *base, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    front = {t.number for t in study().best_trials}
    assert {r["trial"] for r in rows} == front and rows
    assert all(r["cost_unit"] == "completion_tokens" and r["spec"]["strategy"] for r in rows)

    number = rows[0]["trial"]
    out = cwd / "configs" / "best.yaml"
    out.parent.mkdir()
    assert main(["search", "export", *base, "--trial", str(number), "--out", str(out)]) == 0
    assert load_yaml(out) == rows[0]["spec"]
    assert main(["search", "export", *base, "--trial", str(number), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["search", "export", *base, "--trial", "99", "--out", "x.yaml"]) == 2
    assert "--trial 99" in capsys.readouterr().err

    # The exported file is a strategy config `ttc solve` runs.
    args = ["solve", "--config", str(out), "--backends", "b.yaml", "What is 40 + 2?"]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("answer: 4")


def test_best_on_a_missing_study_exits_2(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "best", "--study", "nope", "--storage", STORAGE]) == 2
    assert "--storage" in capsys.readouterr().err
    assert not Path(STORAGE).exists()  # reading never creates a database


def test_a_dead_backend_stops_the_search(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (cwd / "dead.yaml").write_text(
        "default: fake\nbackends:\n  fake:\n    kind: fake\n    options: {fail_rate: 1.0}\n"
    )
    args = run_args("--timeout", "3", space="other.yaml", trials="2")
    args[args.index("b.yaml")] = "dead.yaml"
    code = main(args)
    failed = [t for t in study().trials if t.state == TrialState.FAIL]
    assert failed  # every trial failed ...
    assert code != 0  # ... so the search says so,
    assert len(failed) <= 10  # after a few attempts, not until the timeout


def test_a_new_study_does_not_resume_an_old_studys_records(
    cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(run_args(trials="1")) == 0  # study s in tmp/st.db, records in runs/search/s
    capsys.readouterr()
    args = run_args(space="other.yaml", trials="1")
    args[args.index(STORAGE)] = "tmp/fresh.db"  # a new study with the same name elsewhere
    main(args)
    err = capsys.readouterr().err
    assert "--resume" not in err  # not a flag of `ttc search run`
    url = f"sqlite:///{(cwd / 'tmp' / 'fresh.db').resolve()}"
    if "s" in optuna.get_all_study_names(url):  # refusing before any trial is fine too
        states = [t.state for t in optuna.load_study(study_name="s", storage=url).trials]
        assert TrialState.FAIL not in states


TWO_BACKENDS = """\
default: alpha
backends:
  alpha:
    kind: fake
    model: model-a
    options: {answers: ['42']}
  beta:
    kind: fake
    model: model-b
    options: {answers: ['41']}
  remote:
    kind: openai
    base_url: http://127.0.0.1:9/v1
    model: never-used
    api_key_env: TTC_TEST_KEY_THAT_IS_NOT_SET
"""

TWO_BACKEND_SPACE = """\
rungs: [1.0]
backends: [alpha, beta]
common: {max_tokens: 16, temperature: 0.5}
strategies:
  self_consistency: {n: {choices: [1, 2]}}
"""


def test_a_space_with_two_backends_runs_trials_on_both(
    cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every declared backend a composition names is built when a trial needs it (the third,
    a remote API whose key is not set, is never built, so its missing key does not matter)."""
    (cwd / "two.yaml").write_text(TWO_BACKENDS)
    (cwd / "space2.yaml").write_text(TWO_BACKEND_SPACE)
    args = run_args("--sampler", "grid", space="space2.yaml", trials="4")
    args[args.index("b.yaml")] = "two.yaml"
    assert main(args) == 0, capsys.readouterr().err
    done = study().get_trials(states=(TrialState.COMPLETE,))
    backend_of = {t.number: t.user_attrs["spec"]["backend"] for t in done}
    assert sorted(backend_of.values()) == ["alpha", "alpha", "beta", "beta"]
    for t in done:
        records = (cwd / "runs/search/s" / f"trial-{t.number}" / "records.jsonl").read_text()
        answers = {json.loads(line)["answer"] for line in records.splitlines()}
        assert answers == ({"42"} if backend_of[t.number] == "alpha" else {"41"})

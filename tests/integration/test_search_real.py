"""``ttc search`` end to end on the embedded model: the issue's acceptance search.

Space configs/search/addition.yaml (self_consistency, best_of_n with self_eval or mean_logprob,
rpc and single; n 1..16, temperature 0.2..1.2), 100 two-digit additions, 20 evaluated trials,
from the CLI with its progress lines and Pareto front; then the front's cheapest trial is
exported and `ttc eval` on the exported config reproduces the trial's dev accuracy from the
shared completion cache; `best`, `report` and `test` run on the finished study.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from orchestrator.evaluation.records import read_records
from search import results
from search.study import evaluated

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DATASET = "builtin:addition?n=100&digits=2"
STRATEGIES = {"self_consistency", "best_of_n", "rpc", "single"}


def _ttc(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "orchestrator.cli", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _check_trial(t: optuna.trial.FrozenTrial) -> None:
    spec = t.user_attrs["spec"]
    assert spec["strategy"] in STRATEGIES
    if "n" in spec:
        assert 1 <= spec["n"] <= 16
    assert 0.2 <= spec["temperature"] <= 1.2
    if spec["strategy"] == "best_of_n":
        assert spec["verifier"] in ("self_eval", "mean_logprob")


def test_search_on_the_embedded_model(embedded_model_dir: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    cache = str(tmp_path / "cache.db")
    run = _ttc(
        "search",
        "run",
        "--space",
        "configs/search/addition.yaml",
        "--dataset",
        DATASET,
        "--study",
        "e2e",
        "--storage",
        storage,
        "--trials",
        "20",
        "--out",
        str(tmp_path / "trials"),
        "--cache",
        cache,
        timeout=3000,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    done = [int(m) for m in re.findall(r"trial \d+ \[(\d+)/20 evaluated", run.stderr)]
    assert done and max(done) >= 20, run.stderr[-3000:]
    assert "| Trial | Dev accuracy |" in run.stdout
    assert "EngineDeadError" not in run.stderr  # the engine closes quietly

    study = optuna.load_study(study_name="e2e", storage=storage)
    trials = study.get_trials()
    assert len({t.number for t in trials}) == len(trials)
    assert sum(evaluated(t) for t in trials) >= 20
    for t in trials:
        if "spec" in t.user_attrs:
            _check_trial(t)
    for t in trials:  # every complete trial's numbers are its records' numbers
        if t.state == optuna.trial.TrialState.COMPLETE:
            recs = read_records(tmp_path / "trials" / f"trial-{t.number}" / "records.jsonl")
            assert len(recs) == t.user_attrs["problems"] > 0
            assert t.values[0] == pytest.approx(sum(r.correct for r in recs) / len(recs))
    front = results.front(study)
    assert front and all(results.feasible(t) for t in front)
    for t in front:
        assert f"| {t.number} |" in run.stdout

    best = _ttc("search", "best", "--study", "e2e", "--storage", storage, "--json")
    assert best.returncode == 0, best.stderr
    assert [row["trial"] for row in json.loads(best.stdout)] == [t.number for t in front]

    # export round trip: the exported config, run by `ttc eval` on the dev split with the
    # search's seed, reproduces the trial's accuracy from the shared completion cache
    cheapest = front[0]
    out = tmp_path / "best.yaml"
    exp = _ttc(
        "search",
        "export",
        "--study",
        "e2e",
        "--storage",
        storage,
        "--trial",
        str(cheapest.number),
        "--out",
        str(out),
    )
    assert exp.returncode == 0, exp.stderr
    assert yaml.safe_load(out.read_text()) == cheapest.user_attrs["spec"]
    ev = _ttc(
        "eval",
        "--config",
        str(out),
        "--dataset",
        DATASET,
        "--split",
        "dev:0.2",
        "--out",
        str(tmp_path / "eval"),
        "--cache",
        cache,
        "--json",
        "--quiet",
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    summary = json.loads(ev.stdout)[0]
    assert summary["problems"] == cheapest.user_attrs["problems"]
    assert summary["accuracy"] == pytest.approx(cheapest.values[0])

    rep = _ttc(
        "search",
        "report",
        "--study",
        "e2e",
        "--storage",
        storage,
        "--out",
        str(tmp_path / "report"),
    )
    assert rep.returncode == 0, rep.stderr
    pngs = list((tmp_path / "report").glob("*.png"))
    assert pngs and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)

    test = _ttc(
        "search",
        "test",
        "--study",
        "e2e",
        "--storage",
        storage,
        "--limit",
        "10",
        "--out",
        str(tmp_path / "test"),
        "--cache",
        cache,
        timeout=1800,
    )
    assert test.returncode == 0, test.stderr[-3000:]
    for t in front:
        assert f"| {t.number} |" in test.stdout

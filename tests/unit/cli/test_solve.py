"""Tests for orchestrator.cli: ``ttc solve`` and the listing commands, on the fake backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli.main import main
from orchestrator.registry import strategies, verifiers

REPO = Path(__file__).resolve().parents[3]
QUESTION = "What is 6*7?"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("TTC_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "WARNING")  # main() sets it; keep it scoped


@pytest.fixture
def backends_file(tmp_path: Path) -> Path:
    path = tmp_path / "backends.yaml"
    path.write_text(
        "default: fake\n"
        "backends:\n"
        "  fake:\n"
        "    kind: fake\n"
        "    pricing: {prompt: 1.0, completion: 2.0}\n"
        "    options: {seed: 0}\n"
        "  broken:\n"
        "    kind: fake\n"
        "    model: broken-model\n"
        "    options: {fail_calls: [0, 1, 2, 3]}\n"
    )
    return path


def solve_json(capsys: pytest.CaptureFixture[str], backends: Path, *args: str) -> dict[str, Any]:
    code = main(["solve", QUESTION, "--backends", str(backends), "--json", *args])
    out = capsys.readouterr().out
    assert code == 0, out
    data: dict[str, Any] = json.loads(out)
    return data


def test_solve_json(capsys: pytest.CaptureFixture[str], backends_file: Path) -> None:
    data = solve_json(capsys, backends_file)
    assert data["answer"] == "42"
    assert data["strategy"] == "single"
    assert len(data["candidates"]) == 1
    usage = data["usage"]
    assert set(usage) >= {"prompt_tokens", "completion_tokens", "calls", "cost_usd", "seconds"}
    assert usage["calls"] == 1 and usage["prompt_tokens"] == 20
    assert usage["completion_tokens"] == data["candidates"][0]["candidate"]["tokens"] == 16
    assert usage["cost_usd"] == pytest.approx((20 * 1.0 + 16 * 2.0) / 1e6)
    assert data["budget_exhausted"] is False
    assert data["trace"]["kind"] == "run"
    assert data["trace"]["children"][0]["name"] == "single"
    assert data["run_id"]


def test_solve_self_consistency_json(
    capsys: pytest.CaptureFixture[str], backends_file: Path
) -> None:
    data = solve_json(capsys, backends_file, "--strategy", "self_consistency", "--n", "8")
    assert len(data["candidates"]) == 8
    assert sum(data["details"]["votes"].values()) == 8
    assert data["answer"] == max(data["details"]["votes"], key=data["details"]["votes"].get)
    assert all(sc["candidate"]["logprobs"] is None for sc in data["candidates"])


def test_solve_logprobs_flag_keeps_logprobs(
    capsys: pytest.CaptureFixture[str], backends_file: Path
) -> None:
    data = solve_json(capsys, backends_file, "--strategy", "best_of_n", "--n", "2", "--logprobs")
    assert all(sc["candidate"]["logprobs"] for sc in data["candidates"])
    assert data["candidate"]["logprobs"]


def test_solve_overrides_and_seed(capsys: pytest.CaptureFixture[str], backends_file: Path) -> None:
    args = (
        "--strategy",
        "self_consistency",
        "--n",
        "6",
        "--max-tokens",
        "12",
        "--temperature",
        "1.2",
        "--seed",
        "3",
    )
    first = solve_json(capsys, backends_file, *args)
    second = solve_json(capsys, backends_file, *args)
    assert all(sc["candidate"]["tokens"] == 12 for sc in first["candidates"])
    assert all(sc["candidate"]["finish_reason"] == "length" for sc in first["candidates"])
    assert [sc["candidate"]["text"] for sc in first["candidates"]] == [
        sc["candidate"]["text"] for sc in second["candidates"]
    ]
    assert first["details"] == second["details"]
    call = first["trace"]["children"][0]["children"][0]
    assert call["attrs"]["max_tokens"] == 12 and call["attrs"]["n"] == 6


def test_candidate_without_an_answer_exits_0(
    capsys: pytest.CaptureFixture[str], backends_file: Path
) -> None:
    code = main(["solve", QUESTION, "--backends", str(backends_file), "--max-tokens", "3"])
    captured = capsys.readouterr()
    assert code == 0  # a candidate exists (without an answer): not an error
    assert "answer: (none)" in captured.out


def test_bad_fake_options_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("default: f\nbackends:\n  f:\n    kind: fake\n    options: {sed: 1}\n")
    assert main(["solve", QUESTION, "--backends", str(path)]) == 2
    err = capsys.readouterr().err
    assert "'f'" in err and "sed" in err


def test_solve_budget_tokens(capsys: pytest.CaptureFixture[str], backends_file: Path) -> None:
    data = solve_json(
        capsys,
        backends_file,
        "--strategy",
        "self_consistency",
        "--n",
        "16",
        "--budget-tokens",
        "40",
    )
    assert data["budget_exhausted"] is True
    assert data["usage"]["completion_tokens"] <= 40
    assert data["answer"] is not None


def test_solve_budget_calls(capsys: pytest.CaptureFixture[str], backends_file: Path) -> None:
    data = solve_json(
        capsys,
        backends_file,
        "--config",
        str(REPO / "configs/strategies/best_of_sc.yaml"),
        "--budget-calls",
        "2",
    )
    assert data["budget_exhausted"] is True and data["usage"]["calls"] == 2


def test_solve_human_output(capsys: pytest.CaptureFixture[str], backends_file: Path) -> None:
    code = main(
        [
            "solve",
            QUESTION,
            "--backends",
            str(backends_file),
            "--strategy",
            "self_consistency",
            "--n",
            "8",
            "--trace",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "answer: 42"
    assert lines[1].startswith("votes: 42 x") and "(confidence " in lines[1]
    assert lines[2].startswith("usage: 1 calls, 20 prompt + 128 completion tokens, $")
    assert "budget exhausted" not in out
    assert lines[3].startswith("run:run ")
    assert lines[4].startswith("  strategy:self_consistency ")
    assert lines[5].startswith("    backend:fake ") and lines[5].endswith("20+128 tok")


def test_solve_human_output_scores_pass_at_k_and_exhaustion(
    capsys: pytest.CaptureFixture[str], backends_file: Path
) -> None:
    code = main(
        [
            "solve",
            QUESTION,
            "--backends",
            str(backends_file),
            "--strategy",
            "best_of_n",
            "--n",
            "4",
            "--budget-tokens",
            "20",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "scores: " in out
    assert "[budget exhausted]" in out
    code = main(
        [
            "solve",
            QUESTION,
            "--backends",
            str(backends_file),
            "--strategy",
            "repeated_sampling",
            "--n",
            "4",
            "--reference",
            "42",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "pass@k: {'1':" in out


def test_solve_named_config(
    capsys: pytest.CaptureFixture[str], backends_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(backends_file.parent)  # named configs do not depend on the working dir
    data = solve_json(capsys, backends_file, "--strategy", "sc8")
    assert data["strategy"] == "self_consistency" and len(data["candidates"]) == 8
    data = solve_json(capsys, backends_file, "--strategy", "best_of_sc", "--n", "2")
    assert data["strategy"] == "best_of_n" and len(data["candidates"]) == 2
    assert [c["name"] for c in data["trace"]["children"][0]["children"]][:2] == [
        "self_consistency",
        "self_consistency",
    ]


def test_solve_config_file(
    capsys: pytest.CaptureFixture[str], backends_file: Path, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("strategy: self_consistency\nn: 3\nmax_tokens: 64\n")
    data = solve_json(capsys, backends_file, "--config", str(spec))
    assert len(data["candidates"]) == 3


def test_unknown_strategy_exits_2_with_known_names(
    capsys: pytest.CaptureFixture[str], backends_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(backends_file.parent)
    code = main(["solve", QUESTION, "--backends", str(backends_file), "--strategy", "nope"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.startswith("ttc: error: unknown strategy 'nope'")
    for name in ("best_of_n", "repeated_sampling", "self_consistency", "single", "sc8"):
        assert name in captured.err


def test_bad_backends_config_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("default: fake\nbackends:\n  fake:\n    kind: fake\n    max_concurrency: -1\n")
    code = main(["solve", QUESTION, "--backends", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(path) in err and "max_concurrency" in err and "-1" in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--strategy", "self_consistency", "--n", "0"], "n: "),
        (["--backend", "nowhere"], "unknown backend 'nowhere'"),
        (["--strategy", "best_of_n", "--config", "x.yaml"], None),  # argparse: exclusive
    ],
)
def test_bad_input_exits_2(
    capsys: pytest.CaptureFixture[str], backends_file: Path, args: list[str], needle: str | None
) -> None:
    try:
        code = main(["solve", QUESTION, "--backends", str(backends_file), *args])
    except SystemExit as exc:  # argparse errors
        code = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert code == 2
    if needle:
        assert needle in err


def test_missing_capability_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text(
        "default: plain\nbackends:\n  plain:\n    kind: fake\n"
        "    capabilities: {logprobs: false, native_n: true}\n"
    )
    code = main(["solve", QUESTION, "--backends", str(path), "--strategy", "best_of_n"])
    err = capsys.readouterr().err
    assert code == 2 and "logprobs" in err


def test_every_sample_failing_exits_1(
    capsys: pytest.CaptureFixture[str], backends_file: Path
) -> None:
    code = main(["solve", QUESTION, "--backends", str(backends_file), "--backend", "broken"])
    captured = capsys.readouterr()
    assert code == 1
    assert "answer: (none)" in captured.out
    assert "error: " in captured.out and "injected failure" in captured.err


def test_model_override(capsys: pytest.CaptureFixture[str], backends_file: Path) -> None:
    data = solve_json(capsys, backends_file, "--model", "other-model")
    assert data["candidate"]["model"] == "other-model"
    assert data["trace"]["children"][0]["children"][0]["attrs"]["model"] == "other-model"


@pytest.mark.parametrize(
    ("command", "registry"), [("strategies", strategies), ("verifiers", verifiers)]
)
def test_list_registered(capsys: pytest.CaptureFixture[str], command: str, registry: Any) -> None:
    assert main([command]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = registry.names()
    assert len(lines) == len(names)
    assert [line.split()[0] for line in lines] == names
    assert all(
        len(line.split(maxsplit=1)) == 2 for line in lines if not line.split()[0].startswith("_")
    )


def test_list_backends(capsys: pytest.CaptureFixture[str], backends_file: Path) -> None:
    assert main(["backends", "--backends", str(backends_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("* fake ") and "fake" in lines[0].split()[2]
    assert lines[1].startswith("  broken ") and lines[1].split()[-1] == "broken-model"


def test_list_backends_bad_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["backends", "--backends", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err

"""``ttc eval`` as a user runs it, on the FakeBackend: flags, resume, SIGKILL, report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.cli.main import main
from orchestrator.evaluation.records import read_records

REPO = Path(__file__).resolve().parents[3]


def backends_file(tmp_path: Path, latency: float = 0.0) -> Path:
    path = tmp_path / "backends.yaml"
    path.write_text(
        "default: fake\n"
        "backends:\n"
        "  fake:\n"
        "    kind: fake\n"
        f"    options: {{latency: {latency}, answers: ['42', '41']}}\n"
    )
    return path


def dataset(tmp_path: Path, k: int = 8) -> Path:
    path = tmp_path / "data.jsonl"
    rows = [{"question": f"Q{i}: what is 40 + 2?", "answer": "so it is\n#### 42"} for i in range(k)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def eval_args(tmp_path: Path, *extra: str, latency: float = 0.0) -> list[str]:
    return [
        "eval", "--dataset", str(dataset(tmp_path)), "--format", "gsm8k",
        "--backends", str(backends_file(tmp_path, latency)),
        "--cache", str(tmp_path / "cache.db"), "--out", str(tmp_path / "out"), "--quiet",
        *extra,
    ]  # fmt: skip


def test_eval_two_strategies_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = eval_args(tmp_path, "--strategy", "self_consistency", "--strategy", "single", "--n", "4")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "self_consistency" in out and "single" in out and "|" in out
    for label in ("self_consistency", "single"):
        assert len(read_records(tmp_path / "out" / label / "records.jsonl")) == 8
        assert (tmp_path / "out" / label / "summary.json").is_file()
    assert (tmp_path / "out" / "report.md").is_file()
    assert list((tmp_path / "out").glob("*.png"))


def test_eval_refuses_to_overwrite_and_resume_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = eval_args(tmp_path, "--strategy", "self_consistency", "--n", "2")
    assert main(args) == 0
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    assert "nothing to run" in capsys.readouterr().err


def test_eval_config_list_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(
        "- {label: sc2, strategy: self_consistency, n: 2}\n"
        "- {label: sc4, strategy: self_consistency, n: 4}\n"
    )
    assert main([*eval_args(tmp_path, "--config", str(cfg)), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["label"] for s in data] == ["sc2", "sc4"]


def test_eval_bad_input_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--strategy", "single"]) == 2
    assert "--dataset" in capsys.readouterr().err
    assert main(eval_args(tmp_path, "--strategy", "nope")) == 2
    assert "unknown strategy 'nope'" in capsys.readouterr().err
    assert main(eval_args(tmp_path)) == 2
    assert "--strategy" in capsys.readouterr().err
    missing = ["eval", "--dataset", str(tmp_path / "none.jsonl"), "--strategy", "single"]
    assert main(missing) == 2
    assert "none.jsonl" in capsys.readouterr().err


def test_eval_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(eval_args(tmp_path, "--strategy", "self_consistency", "--n", "4")) == 0
    capsys.readouterr()
    report_dir = tmp_path / "report"
    assert main(["eval", "report", str(tmp_path / "out"), "--out", str(report_dir)]) == 0
    assert "self_consistency" in capsys.readouterr().out
    assert (report_dir / "report.md").is_file()
    pngs = list(report_dir.glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def _start_and_wait(cmd: list[str], cwd: Path, records: Path, lines: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if records.exists() and records.read_bytes().count(b"\n") >= lines:
            break
        time.sleep(0.02)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_keeps_records_and_writes_a_partial_summary(
    tmp_path: Path, sig: signal.Signals
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": f"Q{i}", "answer": "#### 42"}) + "\n"
                            for i in range(40)))  # fmt: skip
    cmd = [
        sys.executable, "-m", "orchestrator.cli", "eval", "--dataset", str(data),
        "--strategy", "single", "--backends", str(backends_file(tmp_path, latency=0.15)),
        "--no-cache", "--out", str(tmp_path / "out"), "--quiet",
    ]  # fmt: skip
    records = tmp_path / "out" / "single" / "records.jsonl"
    proc = _start_and_wait(cmd, tmp_path, records, 4)
    proc.send_signal(sig)  # SIGTERM unwinds like Ctrl-C: backends closed, summary written
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "--resume" in err
    done = read_records(records)
    assert 4 <= len(done) < 40
    summary = json.loads((records.parent / "summary.json").read_text())
    assert summary["problems"] == len(done)
    meta = json.loads((records.parent / "meta.json").read_text())
    assert meta["invocations"][-1]["interrupted"] is True


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_counts_every_problem_once(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    rows = [{"question": f"Q{i}: 40 + 2?", "answer": "#### 42"} for i in range(40)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmd = [
        sys.executable, "-m", "orchestrator.cli", "eval", "--dataset", str(data),
        "--format", "gsm8k", "--strategy", "self_consistency", "--n", "2",
        "--backends", str(backends_file(tmp_path, latency=0.15)), "--concurrency", "2",
        "--cache", str(tmp_path / "cache.db"), "--out", str(tmp_path / "out"), "--quiet",
    ]  # fmt: skip
    records = tmp_path / "out" / "self_consistency" / "records.jsonl"
    proc = _start_and_wait(cmd, tmp_path, records, 6)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    first = read_records(records)
    assert 6 <= len(first) < 40, "the kill should land mid-run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([*cmd, "--resume"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = records.read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert len(ids) == len(set(ids)) == 40  # every problem exactly once, no partial lines
    summary = json.loads((records.parent / "summary.json").read_text())
    assert summary["problems"] == 40
    assert [json.loads(line) for line in lines[: len(first)]] == [
        r.model_dump(mode="json") for r in first
    ]

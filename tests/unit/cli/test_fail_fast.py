"""Bad input is refused before any engine starts: ``ttc solve``, ``eval``, ``search run`` and
``serve`` on the embedded default backend exit 2 in seconds, build no model and start no vLLM
process.

Each command runs as a real ``ttc`` process on the shipped backends (the embedded model on the
in-process vLLM engine is the default) with an empty model cache: had the backend been built,
the model would have been converted into that cache; had it been started, a ``VLLM::EngineCore``
process would have appeared among the command's descendants.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[3]
LIMIT_SECONDS = 45.0  # start-up and imports: 3-5 s on an idle machine; an engine adds 20-40 s


def run_ttc(tmp_path: Path, *args: str) -> tuple[int, str, float, set[str]]:
    """Run ``ttc *args``; (exit code, stderr, seconds, names of every descendant process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTC_")}
    env |= {"TTC_MODEL_CACHE": str(tmp_path / "models"), "TTC_STORE_URL": str(tmp_path / "t.db")}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: set[str] = set()
    parent = psutil.Process(proc.pid)
    while proc.poll() is None and time.monotonic() - t0 < 120:
        with contextlib.suppress(psutil.Error):
            seen.update(c.name() for c in parent.children(recursive=True))
        time.sleep(0.05)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err, time.monotonic() - t0, seen


CASES = {
    "unknown strategy": (["solve", "hi", "--strategy", "nope"], "unknown strategy 'nope'"),
    "bad field": (["solve", "hi", "--strategy", "self_consistency", "--n", "0"], "n: "),
    "flag the strategy lacks": (["solve", "hi", "--n", "4"], "--n: strategy 'single'"),
    "eval unknown strategy": (
        ["eval", "--dataset", "builtin:addition?n=3", "--strategy", "nope"],
        "unknown strategy 'nope'",
    ),
    "eval bad field": (
        [
            "eval",
            "--dataset",
            "builtin:addition?n=3",
            "--strategy",
            "best_of_n",
            "--verifier",
            "no_such_verifier",
        ],
        "unknown verifier 'no_such_verifier'",
    ),
    "search bad space": (
        [
            "search",
            "run",
            "--space",
            "missing.yaml",
            "--dataset",
            "builtin:addition?n=3",
            "--study",
            "s",
        ],
        "missing.yaml",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_before_any_engine(tmp_path: Path, case: str) -> None:
    args, needle = CASES[case]
    code, err, seconds, processes = run_ttc(tmp_path, *args)
    assert code == 2, err
    assert needle in err
    assert seconds < LIMIT_SECONDS, f"took {seconds:.1f} s"
    assert not any("VLLM" in name for name in processes), processes
    assert not (tmp_path / "models").exists(), "the embedded model was prepared"


@pytest.mark.slow
def test_serve_with_a_bad_default_strategy_exits_2_before_any_engine(tmp_path: Path) -> None:
    settings = tmp_path / "service.yaml"
    settings.write_text("default_strategy: {strategy: self_consistency, n: 0}\n")
    code, err, seconds, processes = run_ttc(
        tmp_path, "serve", "--config", str(settings), "--port", "0"
    )
    assert code == 2 and "n: " in err, err
    assert seconds < LIMIT_SECONDS and not any("VLLM" in n for n in processes)

"""Tests for the ``unit_tests`` verifier and its sandbox (``verifiers._sandbox``).

The sandbox cases run real hostile programs under small limits (wall 2 s, CPU 1 s) and check
that each ends with score 0 within its limit and leaves no process behind (psutil: no child of
ours, no process of the sandbox uid, zombies included). Protections that need root are asserted
when we are root; otherwise the tests assert the documented fallback instead.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import psutil
import pytest

from orchestrator.budget import BudgetMeter
from orchestrator.context import RunContext
from orchestrator.errors import ConfigError
from orchestrator.testing import FakeBackend
from orchestrator.trace import Trace
from orchestrator.types import Candidate, Problem, Score
from verifiers import build_verifier
from verifiers import unit_tests as unit_tests_module
from verifiers._sandbox import UID_BASE, UID_COUNT, SandboxLimits, run_sandboxed
from verifiers.unit_tests import UnitTests, extract_code

ROOT = os.geteuid() == 0
LIMITS = {"wall_seconds": 2, "cpu_seconds": 1, "memory_bytes": 256 << 20, "max_processes": 8}
MARGIN = 2.0  # start-up and cleanup on a slow machine
ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]


def answer(code: str) -> Candidate:
    return Candidate(text=f"Here you go:\n```python\n{code}\n```\nDone.", finish_reason="stop")


def make_ctx(problem: Problem) -> RunContext:
    return RunContext(problem, {"fake": FakeBackend()}, "fake", BudgetMeter(), Trace())


async def score(
    cands: list[Candidate],
    tests: list[str] | list[dict[str, str]] | None = ADD_TESTS,
    problem: Problem | None = None,
    **config: object,
) -> list[Score]:
    problem = problem or Problem(question="Write add(a, b).")
    options = {"verifier": "unit_tests", "limits": LIMITS, **config}
    if tests is not None:
        options["tests"] = tests
    return await build_verifier(options)(problem, cands, make_ctx(problem))


_TEST_STARTED = [0.0]


@pytest.fixture(autouse=True)
def _mark_test_start() -> None:
    """Remember when the test began: descendants older than that (e.g. vLLM servers kept by
    session fixtures of other test modules) are not this test's sandboxes."""
    _TEST_STARTED[0] = time.time()


def _started_during_test(p: psutil.Process) -> bool:
    try:
        return p.create_time() >= _TEST_STARTED[0] - 0.05
    except psutil.Error:  # gone (or a zombie psutil cannot read): count it, to be safe
        return True


def leftovers(uids: Iterable[int] = ()) -> list[psutil.Process]:
    """Our descendants started during this test, and every process (zombies too) of the given
    sandbox uids."""
    found = [p for p in psutil.Process().children(recursive=True) if _started_during_test(p)]
    wanted = set(uids)
    for p in psutil.process_iter(["uids"]):
        if p.info["uids"] is not None and p.info["uids"].real in wanted:
            found.append(p)
    return found


def assert_clean(s: Score) -> None:
    assert s.details["sandbox"]["leftover_processes"] == 0
    assert leftovers(s.details["sandbox"]["uids"]) == []


# --- code extraction --------------------------------------------------------------------------


def test_extract_code_prefers_the_last_python_block() -> None:
    text = "```python\nx = 1\n```\ntext\n```py\nx = 2\n```\nOutput:\n```\n3\n```"
    assert extract_code(text) == "x = 2\n"


def test_extract_code_falls_back_to_plain_block_then_whole_text() -> None:
    assert extract_code("Try:\n```\nprint(1)\n```\n") == "print(1)\n"
    assert extract_code("print(2)") == "print(2)"
    assert extract_code("```python\nprint(3)\n") == "print(3)\n"  # cut-off answer
    assert extract_code("   \n") is None
    assert extract_code("```python\n```") is None


# --- scoring ----------------------------------------------------------------------------------


async def test_correct_code_scores_one() -> None:
    [s] = await score([answer(ADD)])
    assert s.value == 1.0 and s.verifier == "unit_tests"
    assert s.details["passed"] == 3 and s.details["total"] == 3 and s.details["failure"] is None
    assert_clean(s)


async def test_partially_correct_code_scores_the_fraction() -> None:
    wrong_for_negatives = "def add(a, b):\n    return abs(a) + abs(b)\n"
    right, partial = await score([answer(ADD), answer(wrong_for_negatives)])
    assert right.value == 1.0
    assert partial.value == pytest.approx(2 / 3)
    assert "add(-1, 1) == 0" in partial.details["failure"]
    assert "AssertionError" in partial.details["failure"]


async def test_a_crash_before_the_tests_fails_them_all() -> None:
    [s] = await score([answer("raise ValueError('boom')\n" + ADD)])
    assert s.value == 0.0
    assert "ValueError: boom" in s.details["failure"]


async def test_main_block_does_not_run_for_assert_tests() -> None:
    code = ADD + "if __name__ == '__main__':\n    print(add(*map(int, input().split())))\n"
    [s] = await score([answer(code)])
    assert s.value == 1.0


async def test_printing_cannot_forge_results() -> None:
    forger = (  # result lines without the run's nonce
        "import json, sys\nfor i in range(3):\n"
        "    sys.__stdout__.write(json.dumps([i, True, '']) + '\\n')\n"
    )
    [s] = await score([answer(ADD.replace("a + b", "a - b") + forger)])
    assert s.value == 0.0


async def test_input_output_pairs() -> None:
    code = "a, b = map(int, input().split())\nprint(a + b)\n"
    pairs = [
        {"input": "1 2\n", "output": "3"},
        {"input": "10 -3\n", "output": "7\n\n"},  # surrounding blank lines are ignored
        {"input": "2 2\n", "output": "5"},
    ]
    good, crash = await score([answer(code), answer("print(1/0)")], tests=pairs)
    assert good.value == pytest.approx(2 / 3)
    assert good.details["sandbox"]["runs"] == 3
    assert "expected '5', got '4\\n'" in good.details["failure"]
    assert crash.value == 0.0 and "ZeroDivisionError" in crash.details["failure"]
    assert_clean(good)


async def test_tests_from_problem_metadata() -> None:
    problem = Problem(question="q", metadata={"tests": ["assert add(3, 4) == 7"]})
    [s] = await score([answer(ADD)], tests=None, problem=problem)
    assert s.value == 1.0 and s.details["total"] == 1
    io = Problem(question="q", metadata={"tests": [{"input": "", "output": "hi"}]})
    [s] = await score([answer("print('hi')")], tests=None, problem=io)
    assert s.value == 1.0


async def test_missing_or_invalid_tests_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="no tests"):
        await score([answer(ADD)], tests=None)
    bad = Problem(question="q", metadata={"tests": [{"stdin": "x"}]})
    with pytest.raises(ConfigError, match="metadata"):
        await score([answer(ADD)], tests=None, problem=bad)
    with pytest.raises(ConfigError):
        UnitTests(tests=[])
    with pytest.raises(ConfigError):
        UnitTests(tests=["assert True"], language="rust")


async def test_no_code_and_failed_samples_score_zero_without_running() -> None:
    failed = Candidate(text="", finish_reason="error", error="BackendUnavailable: x")
    empty, broken = await score([Candidate(text="  \n"), failed])
    assert empty.value == 0.0 and empty.details["failure"] == "no code in the answer"
    assert broken.value == 0.0 and broken.details["sandbox"]["runs"] == 0


async def test_sandbox_spans_and_bounded_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    running = peak = 0
    real = unit_tests_module.run_sandboxed

    async def counting(*args: object, **kwargs: object) -> object:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            return await real(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            running -= 1

    monkeypatch.setattr(unit_tests_module, "run_sandboxed", counting)
    problem = Problem(question="q")
    ctx = make_ctx(problem)
    verifier = UnitTests(tests=ADD_TESTS, limits=LIMITS, concurrency=2)
    scores = await verifier(problem, [answer(ADD)] * 5, ctx)
    assert [s.value for s in scores] == [1.0] * 5
    assert peak == 2
    [span] = ctx.trace.root.children
    steps = [c for c in span.children if c.name == "sandbox"]
    assert len(steps) == 5 and all(c.kind == "step" and c.attrs["passed"] == 3 for c in steps)


# --- the sandbox: hostile programs --------------------------------------------------------------

HOSTILE = {
    "fork_bomb": ("import os\nwhile True:\n    os.fork()\n", None),
    "fork_bomb_that_survives_errors_and_escapes_its_group": (
        "import os\nwhile True:\n    try:\n        if os.fork() == 0:\n            os.setsid()\n"
        "    except OSError:\n        pass\n",
        "wall",
    ),
    "memory_hog": ("hog = []\nwhile True:\n    hog.append(bytearray(10**7))\n", None),
    "cpu_loop": ("while True:\n    pass\n", "cpu"),
    "sleep_forever": ("import time\ntime.sleep(10**6)\n", "wall"),
    "huge_output_on_stdout": ("import os\nwhile True:\n    os.write(1, b'x' * 65536)\n", "output"),
    "huge_print": ("while True:\n    print('x' * 1000)\n", "output"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_hostile_program_scores_zero_within_its_limit_and_leaves_nothing(case: str) -> None:
    bomb, reason = HOSTILE[case]
    # The CPU case gets wall-clock headroom so that, on a busy machine, RLIMIT_CPU still fires
    # before the wall clock: it is the protection under test there.
    limits = {**LIMITS, "wall_seconds": 8} if case == "cpu_loop" else LIMITS
    t0 = time.monotonic()
    [s] = await score([answer(ADD + bomb)], limits=limits)  # the tests pass if it ever ends
    elapsed = time.monotonic() - t0
    assert s.value == 0.0
    assert elapsed < limits["wall_seconds"] + MARGIN, f"{case} took {elapsed:.1f} s"
    if reason is not None:
        assert s.details["killed_reason"] == reason
    if case == "memory_hog":
        assert "MemoryError" in s.details["failure"]
    assert_clean(s)


async def test_process_limit_and_children_killed_after_the_program_ends() -> None:
    code = (
        "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
        "            time.sleep(60)\n            os._exit(0)\n        n += 1\nexcept OSError:\n"
        "    print(n)\n"
    )
    result = await run_sandboxed(code, limits=SandboxLimits(**LIMITS))
    assert result.ok and result.seconds < MARGIN  # sleeping children did not hold it up
    forked = int(result.stdout)
    if ROOT:  # our own uid: RLIMIT_NPROC counts only the sandbox
        assert forked == LIMITS["max_processes"] - 1
    else:  # documented fallback: NPROC = our user's processes + max_processes
        assert forked <= LIMITS["max_processes"] + len(psutil.pids())
    assert result.leftover_processes == 0
    assert leftovers([result.uid] if result.uid is not None else []) == []


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A world-writable directory under the temp dir, removed afterwards."""
    path = Path(tempfile.mkdtemp())
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_network_connections_fail(world_dir: Path) -> None:
    unix_path = str(world_dir / "agent.sock")
    with (
        socket.create_server(("127.0.0.1", 0)) as tcp,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix,
    ):
        unix.bind(unix_path)
        os.chmod(unix_path, 0o777)
        unix.listen()
        port = tcp.getsockname()[1]
        probe = (
            "import socket\nERRORS = []\n"
            f"for family, address in [(socket.AF_INET, ('127.0.0.1', {port})), "
            f"(socket.AF_UNIX, {unix_path!r})]:\n"
            "    try:\n        s = socket.socket(family)\n        s.settimeout(1)\n"
            "        s.connect(address)\n        s.sendall(b'leak')\n"
            "    except OSError as exc:\n        ERRORS.append(repr(exc))\n"
            "    else:\n        ERRORS.append(None)\n"
        )
        tests = ["assert ERRORS[0] is None, ERRORS[0]", "assert ERRORS[1] is None, ERRORS[1]"]
        [s] = await score([answer(probe)], tests=tests)
        tcp.settimeout(0.2)
        unix.settimeout(0.2)
        if ROOT:
            assert s.value == 0.0 and s.details["sandbox"]["network_isolated"]
            assert "Network is unreachable" in s.details["failure"]
            for server in (tcp, unix):
                with pytest.raises(TimeoutError):
                    server.accept()
        else:  # documented fallback: the result says whether the network was isolated
            assert s.value < 1.0 or not s.details["sandbox"]["network_isolated"]
    assert_clean(s)


@pytest.fixture
def outside_targets(world_dir: Path) -> Iterator[list[str]]:
    """Paths outside the sandbox: in world-writable directories, in the project, in /root."""
    token = secrets.token_hex(6)
    project_dir = Path(__file__).resolve().parents[3] / f".pytest_sandbox_probe_{token}"
    project_dir.mkdir()
    project_dir.chmod(0o777)
    targets = [str(world_dir / "escaped"), str(project_dir / "escaped"), f"/root/.probe_{token}"]
    yield targets
    shutil.rmtree(project_dir, ignore_errors=True)
    Path(targets[2]).unlink(missing_ok=True)


async def test_writes_outside_the_working_directory_fail(outside_targets: list[str]) -> None:
    probe = (
        f"WROTE = []\nfor path in {outside_targets!r}:\n    try:\n"
        "        with open(path, 'w') as f:\n            f.write('escaped')\n"
        "        WROTE.append(path)\n    except OSError:\n        pass\n"
    )
    tests = [f"assert {path!r} in WROTE" for path in outside_targets]
    [s] = await score([answer(probe)], tests=tests)
    landed = [p for p in outside_targets if os.path.exists(p)]
    if ROOT:
        assert s.value == 0.0 and landed == []
        assert s.details["sandbox"]["filesystem_isolated"]
    else:  # documented fallback: only what our own user may not write is protected
        assert not s.details["sandbox"]["filesystem_isolated"]
        assert len(landed) == round(s.value * len(outside_targets))
    assert_clean(s)


async def test_working_directory_environment_and_cleanup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTC_TEST_SECRET", "hunter2")
    code = (
        "import os, sys\nopen('notes.txt', 'w').write(sys.stdin.read())\n"
        "print(os.getcwd())\nprint(open('notes.txt').read())\nprint(sorted(os.environ))\n"
        "print(os.environ['HOME'] == os.getcwd())\n"
    )
    result = await run_sandboxed(code, stdin="from stdin", limits=SandboxLimits(**LIMITS))
    cwd, notes, env, home_is_cwd = result.stdout.splitlines()
    assert result.ok and notes == "from stdin" and home_is_cwd == "True"
    assert "TTC_TEST_SECRET" not in env
    assert not os.path.exists(cwd)
    if ROOT:
        assert UID_BASE <= (result.uid or 0) < UID_BASE + UID_COUNT
        assert result.network_isolated and result.filesystem_isolated
    else:
        assert result.uid is None and not result.filesystem_isolated


async def test_cancellation_kills_the_sandbox() -> None:
    problem = Problem(question="q")
    verifier = UnitTests(tests=ADD_TESTS, limits={**LIMITS, "wall_seconds": 60})
    code = ADD + "import os, time\nos.fork()\ntime.sleep(10**6)\n"
    task = asyncio.create_task(verifier(problem, [answer(code)], make_ctx(problem)))
    program: list[psutil.Process] = []
    give_up = time.monotonic() + 10
    while not program and time.monotonic() < give_up:
        await asyncio.sleep(0.02)
        kids = psutil.Process().children(recursive=True)
        program = [p for p in kids if "prog.py" in p.cmdline()]
    assert program, "the sandboxed program never started"
    uid, cwd = program[0].uids().real, program[0].cwd()
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - t0 < MARGIN
    assert leftovers([uid] if ROOT else []) == []
    assert not os.path.exists(cwd)

"""The ``unit_tests`` verifier: run each candidate's code against tests in a sandbox.

Example::

    {"verifier": "unit_tests", "tests": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]}
    {"verifier": "unit_tests", "tests": [{"input": "1 2\\n", "output": "3"}],
     "limits": {"wall_seconds": 2}, "concurrency": 4}

Tests come from the ``tests`` option or, when it is not set, from ``problem.metadata["tests"]``
(same shapes; a dataset can carry per-problem tests that way). Two kinds:

- **assert statements**: one sandboxed program per candidate runs the candidate's code as a
  module named ``solution`` (so an ``if __name__ == "__main__":`` block does not run), then each
  test in the same namespace, each in its own try/except, printing a result line per test
  tagged with a random nonce. That costs one interpreter start per candidate rather than one per
  test; the price is that a crash, hang or kill of the program fails every test it had not
  reported yet (the score is the fraction passed so far). What the candidate prints goes to
  stderr, so it cannot pass for a result line.
- **input/output pairs** (``{"input": ..., "output": ...}``): one sandboxed run per pair, the
  code as ``__main__`` with the input on stdin. A pair passes when the program exits with 0
  within its limits and its stdout equals the expected output, ignoring leading and trailing
  blank lines and spaces at line ends.

The code is the last fenced ```python block of the candidate's text, else the last plain ```
block, else the whole text (an unterminated last fence counts: truncated answers still run).
Score = passed / total in [0, 1]; details give ``passed``, ``total``, the first ``failure``
(truncated), ``killed_reason`` and a ``sandbox`` summary (isolation in place, uids, time,
leftover processes). Failed candidates and candidates without code score 0 and run nothing.
At most ``concurrency`` sandboxes of one ``score`` call run at once; each candidate's runs are
recorded in a ``sandbox`` step span. Sandboxing, its limits and its fallbacks are described in
``verifiers._sandbox``. The sandbox protects the host, not the verdict: code that reads its own
program file could learn the nonce and forge result lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from orchestrator.context import RunContext
from orchestrator.errors import ConfigError
from orchestrator.registry import verifiers
from orchestrator.trust import privileged, tuning
from orchestrator.types import Candidate, Problem, Score
from verifiers._sandbox import SandboxLimits, SandboxResult, isolation_status, run_sandboxed
from verifiers.base import Verifier, VerifierConfig

_MESSAGE_CHARS = 300

sandbox_isolation = isolation_status
"""``(isolated, how or why not)``: whether client-supplied code (``tests``) run here is kept
away from the service's files, processes and network (root, or bubblewrap); see
``verifiers._sandbox``."""
_FENCE = re.compile(
    r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.DOTALL | re.MULTILINE
)
_PYTHON_TAGS = {"python", "py", "python3"}

# The assert-test program: NONCE, CODE and TESTS are prepended as literals.
_HARNESS = """
import json as _json, sys as _sys
_out, _sys.stdout = _sys.stdout, _sys.stderr
def _report(index, ok, message=""):
    _out.write(NONCE + _json.dumps([index, ok, message[:300]]) + "\\n")
    _out.flush()
def _describe(exc):
    return type(exc).__name__ + (f": {exc}" if str(exc) else "")
_namespace = {"__name__": "solution"}
try:
    exec(compile(CODE, "solution.py", "exec"), _namespace)
except SystemExit as exc:
    if exc.code not in (None, 0):
        _report(-1, False, "the code exited with " + repr(exc.code))
        raise
except BaseException as exc:
    _report(-1, False, _describe(exc))
    raise SystemExit(1)
for _index, _test in enumerate(TESTS):
    try:
        exec(compile(_test, f"test_{_index}", "exec"), _namespace)
    except BaseException as exc:
        _report(_index, False, _describe(exc))
    else:
        _report(_index, True)
"""


class IOTest(BaseModel):
    """One input/output test: the program reads ``input`` and must print ``output``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str = ""
    output: str


Tests = list[str] | list[IOTest]
_TESTS: TypeAdapter[Tests] = TypeAdapter(Tests)


class UnitTestsConfig(VerifierConfig):
    """``unit_tests`` options."""

    tests: Tests | None = Field(
        None,
        description="assert statements or {input, output} pairs; "
        "None: take them from problem.metadata['tests']",
        json_schema_extra=privileged("client_code", "runs the given tests as code in the sandbox"),
    )
    language: Literal["python"] = Field("python", json_schema_extra=tuning())
    limits: SandboxLimits = Field(
        default_factory=SandboxLimits,
        json_schema_extra=privileged("resources", "the sandbox limits"),
    )
    concurrency: int = Field(
        2,
        ge=1,
        le=64,
        description="sandboxes running at once per call",
        json_schema_extra=privileged("resources", "sandboxes running at once"),
    )

    @field_validator("tests")
    @classmethod
    def _not_empty(cls, tests: Tests | None) -> Tests | None:
        if tests is not None and not tests:
            raise ValueError("give at least one test, or leave `tests` unset to use metadata")
        return tests


def extract_code(text: str) -> str | None:
    """The code of a candidate's text (see the module docstring); None when there is none."""
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(text)]
    python = [body for tag, body in blocks if tag in _PYTHON_TAGS]
    plain = [body for tag, body in blocks if not tag]
    code: str = (python or plain or [text])[-1]
    return code if code.strip() else None


def _normalise(output: str) -> str:
    return "\n".join(line.rstrip() for line in output.strip().splitlines())


def _clip(message: str) -> str:
    return message if len(message) <= _MESSAGE_CHARS else message[: _MESSAGE_CHARS - 3] + "..."


def _why(result: SandboxResult, limits: SandboxLimits) -> str:
    """Why a run failed, in a few words."""
    reasons = {
        "wall": f"timed out after {limits.wall_seconds:g} s",
        "cpu": f"CPU time limit ({limits.cpu_seconds} s) exceeded",
        "output": f"output limit ({limits.output_bytes} bytes) exceeded",
        "signal": f"killed by signal {-(result.exit_code or 0) or '?'}",
    }
    if result.killed_reason is not None:
        return reasons[result.killed_reason]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit code {result.exit_code}"


@dataclass
class _Tally:
    """One candidate's test outcome and the sandbox runs behind it."""

    total: int
    passed: int = 0
    failure: str | None = None
    runs: list[SandboxResult] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failure = self.failure or _clip(message)

    def details(self) -> dict[str, Any]:
        killed = next((r.killed_reason for r in self.runs if r.killed_reason), None)
        sandbox = {
            "runs": len(self.runs),
            "seconds": round(sum(r.seconds for r in self.runs), 3),
            "network_isolated": all(r.network_isolated for r in self.runs),
            "filesystem_isolated": all(r.filesystem_isolated for r in self.runs),
            "uids": sorted({r.uid for r in self.runs if r.uid is not None}),
            "leftover_processes": sum(r.leftover_processes for r in self.runs),
        }
        return {"passed": self.passed, "total": self.total, "failure": self.failure,
                "killed_reason": killed, "sandbox": sandbox}  # fmt: skip


@verifiers.register("unit_tests")
class UnitTests(Verifier):
    """Fraction of the tests that a candidate's code passes, run in a sandbox."""

    Config = UnitTestsConfig

    async def score(
        self, problem: Problem, candidates: list[Candidate], ctx: RunContext
    ) -> list[Score]:
        if not candidates:
            return []
        tests = self._tests(problem)
        slots = asyncio.Semaphore(self.config.concurrency)
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self._score_one(i, c, tests, slots, ctx))
                for i, c in enumerate(candidates)
            ]
        return [t.result() for t in tasks]

    def _tests(self, problem: Problem) -> Tests:
        """The config's tests, else the problem's ``metadata["tests"]``; ConfigError if none."""
        if self.config.tests is not None:
            tests: Tests = self.config.tests
            return tests
        raw = problem.metadata.get("tests")
        where = "problem.metadata['tests']"
        if raw is None:
            raise ConfigError(
                f"verifier 'unit_tests' has no tests: set its `tests` option or give {where} "
                "(a list of assert statements or of {input, output} pairs)"
            )
        try:
            tests = _TESTS.validate_python(raw)
        except ValidationError as exc:
            raise ConfigError(
                f"{where} must be a list of assert statements or of {{input, output}} pairs; "
                f"got {_clip(repr(raw))} ({exc.error_count()} validation errors)"
            ) from None
        if not tests:
            raise ConfigError(f"{where} is empty: give at least one test")
        return tests

    async def _score_one(
        self, index: int, cand: Candidate, tests: Tests, slots: asyncio.Semaphore, ctx: RunContext
    ) -> Score:
        code = None if cand.failed else extract_code(cand.text)
        tally = _Tally(total=len(tests))
        if code is None:
            tally.fail("the sample failed" if cand.failed else "no code in the answer")
        else:
            with ctx.trace.span("sandbox", kind="step", candidate=index, tests=len(tests)) as span:
                asserts = [t for t in tests if isinstance(t, str)]  # tests are all of one kind
                if asserts:
                    await self._run_asserts(code, asserts, slots, tally)
                else:
                    pairs = [t for t in tests if isinstance(t, IOTest)]
                    await self._run_io(code, pairs, slots, tally)
                span.set(passed=tally.passed, runs=len(tally.runs), failure=tally.failure)
        value = tally.passed / tally.total
        return Score(value=value, verifier=self.name, details=tally.details())

    async def _sandbox(self, code: str, slots: asyncio.Semaphore, stdin: str = "") -> SandboxResult:
        async with slots:
            return await run_sandboxed(code, stdin=stdin, limits=self.config.limits)

    async def _run_asserts(
        self, code: str, tests: list[str], slots: asyncio.Semaphore, tally: _Tally
    ) -> None:
        """All assert tests in one program; see the module docstring."""
        nonce = f"@@ttc-{secrets.token_hex(8)}@@"
        program = f"NONCE = {nonce!r}\nCODE = {code!r}\nTESTS = {tests!r}\n{_HARNESS}"
        result = await self._sandbox(program, slots)
        tally.runs.append(result)
        reports: dict[int, tuple[bool, str]] = {}
        for line in result.stdout.splitlines():
            with contextlib.suppress(ValueError, TypeError):  # e.g. a line cut by the cap
                if line.startswith(nonce):
                    index, ok, message = json.loads(line[len(nonce) :])
                    reports.setdefault(int(index), (bool(ok), str(message)))
        if -1 in reports:
            tally.fail(f"the code failed before the tests: {reports[-1][1]}")
        for i, test in enumerate(tests):
            ok, message = reports.get(i, (False, _why(result, self.config.limits)))
            tally.passed += ok
            if not ok:
                tally.fail(f"{test.strip()!r}: {message}")

    async def _run_io(
        self, code: str, tests: list[IOTest], slots: asyncio.Semaphore, tally: _Tally
    ) -> None:
        """One sandboxed run per input/output pair."""
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self._sandbox(code, slots, t.input)) for t in tests]
        for i, (test, task) in enumerate(zip(tests, tasks, strict=True)):
            result = task.result()
            tally.runs.append(result)
            if not result.ok:
                tally.fail(f"test {i}: {_why(result, self.config.limits)}")
            elif result.truncated or _normalise(result.stdout) != _normalise(test.output):
                tally.fail(f"test {i}: expected {test.output!r}, got {result.stdout!r}")
            else:
                tally.passed += 1

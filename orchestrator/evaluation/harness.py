"""EvalRunner: run strategies over a dataset, durably and resumably.

Layout of an evaluation directory ``OUT``::

    OUT/<label>/meta.json       what was run (strategy spec, dataset, seed) and each invocation
    OUT/<label>/records.jsonl   one ProblemRecord per finished problem (flushed and fsynced)
    OUT/<label>/summary.json    the Summary over the records (rewritten at the end)
    OUT/report.md, OUT/*.png    the comparison table and plots over every label

Contract:

- Problems run concurrently, at most ``concurrency`` at a time over all strategies, strategy by
  strategy (so a later strategy finds the earlier one's samples in the completion cache).
- A record is written only when its problem finished; a killed process loses the problems in
  flight and nothing else. ``resume=True`` skips the problems already recorded; without it an
  existing non-empty records file is an error (never overwritten).
- A problem whose run fails (backend down after retries) gets no record: it is counted as failed,
  reported, and run again by the next ``--resume``.
- Each problem's seed is derived from the evaluation seed and the problem id, so a resumed run
  seeds the remaining problems exactly as an uninterrupted one would.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from orchestrator.answers import answers_equivalent, normalize_answer
from orchestrator.budget import Budget
from orchestrator.errors import ConfigError
from orchestrator.evaluation.progress import Progress
from orchestrator.evaluation.records import ProblemRecord, RecordFile, read_records, write_json
from orchestrator.evaluation.report import write_report
from orchestrator.evaluation.summary import Summary, summarize
from orchestrator.runner import Orchestrator
from orchestrator.types import Problem, Result
from strategies.base import Strategy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalTarget:
    """One strategy to evaluate: a label (its directory name) and its spec."""

    label: str
    spec: dict[str, Any]


@dataclass
class TargetRun:
    """Bookkeeping of one target in one invocation."""

    target: EvalTarget
    directory: Path
    todo: list[Problem]
    done_ids: set[str]
    meta: dict[str, Any]
    failed: list[str] = field(default_factory=list)
    ran: int = 0
    started: float | None = None
    finished: float | None = None


def safe_label(label: str) -> str:
    """A label usable as a directory name (other characters become ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", label).strip(".") or "strategy"


def problem_seed(seed: int, problem_id: str) -> int:
    """The seed of one problem's run: stable across processes and resumes."""
    return int(hashlib.sha256(f"{seed}:{problem_id}".encode()).hexdigest()[:8], 16)


def make_record(label: str, problem: Problem, result: Result, seconds: float) -> ProblemRecord:
    """The ProblemRecord of one finished run (correctness judged against the reference)."""
    ref = problem.reference
    cands = [sc.candidate for sc in result.candidates if not sc.candidate.failed]
    answers = [c.answer for c in cands]
    votes = result.details.get("votes")
    return ProblemRecord(
        id=problem.id or "",
        strategy=label,
        question=problem.question,
        reference=ref,
        answer=result.answer,
        correct=ref is not None and answers_equivalent(result.answer, ref),
        candidates=[normalize_answer(a) if a is not None else None for a in answers],
        candidates_correct=[ref is not None and answers_equivalent(a, ref) for a in answers],
        votes={str(k): float(v) for k, v in votes.items()} if isinstance(votes, dict) else None,
        usage=result.usage,
        seconds=seconds,
        trace_id=(result.trace or {}).get("trace_id"),
        run_id=result.run_id,
        budget_exhausted=result.budget_exhausted,
    )


class EvalRunner:
    """Evaluates ``targets`` on ``problems`` with ``orch`` and writes into ``out_dir``.

    Args:
        orch: the Orchestrator (its completion cache, if any, is used by every run).
        problems: the problems; each needs a unique ``id``.
        targets: the strategies, with unique labels.
        out_dir: the evaluation directory (see the module docstring).
        budget: the per-problem budget, or None.
        concurrency: problems in flight at once (>= 1).
        resume: continue the records in ``out_dir`` instead of refusing to touch them.
        seed: the evaluation seed.
        dataset: a description of the dataset, saved in meta.json.
        progress: print the progress line; stream: where (default stderr).
        report: write report.md and the plots over every label when done (the architecture
            search, which runs one target per trial, turns this off).
    """

    def __init__(
        self,
        orch: Orchestrator,
        problems: Sequence[Problem],
        targets: Sequence[EvalTarget],
        out_dir: Path,
        *,
        budget: Budget | None = None,
        concurrency: int = 4,
        resume: bool = False,
        seed: int = 0,
        dataset: dict[str, Any] | None = None,
        progress: bool = True,
        stream: TextIO | None = None,
        report: bool = True,
    ) -> None:
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
        if not targets:
            raise ConfigError("nothing to evaluate: give at least one strategy")
        ids = [p.id for p in problems]
        if any(not i for i in ids) or len(set(ids)) != len(ids):
            raise ConfigError(
                "every problem needs a unique id (load it with orchestrator.datasets)"
            )
        labels = [t.label for t in targets]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"strategy labels must be unique, got {labels}")
        self.orch = orch
        self.problems = list(problems)
        self.targets = list(targets)
        self.out_dir = Path(out_dir)
        self.budget = budget
        self.concurrency = concurrency
        self.resume = resume
        self.seed = seed
        self.dataset = dataset or {}
        self.show_progress = progress
        self.stream = stream or sys.stderr
        self.report = report
        self.runs = [self._plan(t) for t in self.targets]

    def _plan(self, target: EvalTarget) -> TargetRun:
        directory = self.out_dir / safe_label(target.label)
        records_path = directory / "records.jsonl"
        done = read_records(records_path)
        meta_path = directory / "meta.json"
        meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if done and not self.resume:
            raise ConfigError(
                f"{records_path} already holds {len(done)} records; pass --resume to continue "
                "that evaluation, or choose another --out"
            )
        if meta and self.resume and meta.get("spec") != target.spec:
            raise ConfigError(
                f"--resume: {directory} was evaluated with strategy spec {meta.get('spec')}, "
                f"now {target.spec}; use another --out for a different strategy"
            )
        if meta and self.resume and meta.get("seed") != self.seed:
            raise ConfigError(
                f"--resume: {directory} was evaluated with --seed {meta.get('seed')}, "
                f"now {self.seed}"
            )
        done_ids = {r.id for r in done}
        todo = [p for p in self.problems if p.id not in done_ids]
        meta = meta or {
            "label": target.label,
            "spec": target.spec,
            "seed": self.seed,
            "dataset": self.dataset,
            "budget": self.budget.model_dump(exclude_none=True) if self.budget else None,
            "invocations": [],
        }
        return TargetRun(target, directory, todo, done_ids, meta)

    @property
    def pending(self) -> int:
        """Problems (over all targets) this invocation will run."""
        return sum(len(r.todo) for r in self.runs)

    async def run(self) -> list[Summary]:
        """Run every pending problem and write records, summaries and the report.

        Returns one Summary per target, over the records of the current problems. Every target
        is checked first; backends are started by the first run that needs them, so a finished
        evaluation starts none and makes no calls.
        On cancellation (Ctrl-C) the records written so far and partial summaries are kept.
        """
        progress = Progress(
            self.pending,
            already=sum(len(r.done_ids) for r in self.runs),
            stream=self.stream,
            enabled=self.show_progress,
        )
        strategies: dict[str, Strategy] = {}
        try:
            for r in self.runs:  # every target checked before any backend starts
                strategies[r.target.label], _ = await self.orch.prepare(dict(r.target.spec))
            if self.pending:
                await self._run_all(strategies, progress)
        finally:
            for strat in strategies.values():
                await strat.aclose()
            summaries = self._finish()
        return summaries

    async def _run_all(self, strategies: dict[str, Strategy], progress: Progress) -> None:
        sem = asyncio.Semaphore(self.concurrency)
        files = {r.target.label: RecordFile(r.directory / "records.jsonl") for r in self.runs}
        for r in self.runs:
            r.directory.mkdir(parents=True, exist_ok=True)
            r.meta["invocations"].append(
                {"started": datetime.now(UTC).isoformat(timespec="seconds"), "todo": len(r.todo)}
            )
            write_json(r.directory / "meta.json", r.meta)
            files[r.target.label].open_for_append()

        async def one(r: TargetRun, strat: Strategy, problem: Problem) -> None:
            async with sem:
                r.started = r.started or time.monotonic()
                t0 = time.perf_counter()
                try:
                    result = await self.orch.run(
                        problem, strat, self.budget, seed=problem_seed(self.seed, problem.id or "")
                    )
                    if result.candidate is None and result.details.get("error"):
                        raise RuntimeError(f"every sample failed: {result.details['error']}")
                except Exception as exc:  # the problem stays unrecorded: --resume retries it
                    r.failed.append(problem.id or "")
                    log.warning("%s: problem %s failed: %s", r.target.label, problem.id, exc)
                    print(
                        f"ttc eval: {r.target.label}: problem {problem.id} failed: "
                        f"{type(exc).__name__}: {exc}",
                        file=self.stream,
                    )
                    progress.fail(r.target.label)
                    return
                finally:
                    r.finished = time.monotonic()
                rec = make_record(r.target.label, problem, result, time.perf_counter() - t0)
                files[r.target.label].append(rec)
                r.ran += 1
                u = rec.usage
                progress.update(
                    correct=rec.correct,
                    tokens=u.completion_tokens,
                    cached=u.cached_tokens,
                    cost=u.cost_usd,
                    label=r.target.label,
                )

        try:
            async with asyncio.TaskGroup() as tg:
                for r in self.runs:
                    strat = strategies[r.target.label]
                    for problem in r.todo:
                        tg.create_task(one(r, strat, problem))
        finally:
            for f in files.values():
                f.close()

    def _finish(self) -> list[Summary]:
        """Close this invocation in meta.json and write each summary and the report."""
        current = {p.id for p in self.problems}
        summaries = []
        for r in self.runs:
            invocations = r.meta.get("invocations", [])
            if invocations and "finished" not in invocations[-1] and r.todo:
                wall = (r.finished - r.started) if r.started and r.finished else 0.0
                invocations[-1].update(
                    finished=datetime.now(UTC).isoformat(timespec="seconds"),
                    ran=r.ran,
                    failed=len(r.failed),
                    wall_seconds=round(wall, 3),
                    interrupted=r.ran + len(r.failed) < len(r.todo),
                )
                write_json(r.directory / "meta.json", r.meta)
            records = [
                rec for rec in read_records(r.directory / "records.jsonl") if rec.id in current
            ]
            wall_total = sum(i.get("wall_seconds", 0.0) for i in invocations)
            summary = summarize(
                records, label=r.target.label, wall_seconds=wall_total or None, spec=r.target.spec
            )
            if records:
                write_json(r.directory / "summary.json", summary.model_dump(mode="json"))
            summaries.append(summary)
        if self.report and any(s.problems for s in summaries):
            write_report([s for s in summaries if s.problems], self.out_dir)
        return summaries

    @property
    def failed(self) -> int:
        """Problems that failed in this invocation (they have no record)."""
        return sum(len(r.failed) for r in self.runs)

"""Per-problem evaluation records and the JSONL file that holds them.

One ``ProblemRecord`` per (strategy, problem) is appended to ``records.jsonl`` as soon as the
problem finishes, flushed and fsynced, so a killed process loses at most the problems in flight.
A process killed while writing can leave a partial last line: ``read_records`` skips it and
``RecordFile.open_for_append`` truncates it away before appending, so every problem is counted
exactly once. When a file holds two records for the same id (never written by ttc itself, but
possible after manual edits), the last one wins.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, Field, ValidationError

from orchestrator.types import Usage


class ProblemRecord(BaseModel):
    """The outcome of one strategy on one problem.

    Attributes:
        id: the problem id (stable across runs: resume and splits rely on it).
        strategy: the strategy label in this evaluation (a name, or the config file stem).
        question: the question as posed.
        reference: the reference answer.
        answer: the strategy's final answer (None when it gave none).
        correct: whether ``answer`` is equivalent to ``reference``.
        candidates: the extracted answer of every candidate the strategy sampled, in order
            (None for a candidate without one; failed samples are left out).
        candidates_correct: per candidate, whether its answer is equivalent to the reference.
        votes: the vote table when the strategy voted.
        usage: tokens, calls, cost and seconds of the run (``cached_tokens`` = the part of the
            completion tokens served by the completion cache).
        seconds: wall time of the run.
        trace_id: the run's trace id; run_id: the run's id.
        budget_exhausted: whether the budget stopped the strategy early.
    """

    id: str
    strategy: str
    question: str
    reference: str | None = None
    answer: str | None = None
    correct: bool = False
    candidates: list[str | None] = Field(default_factory=list)
    candidates_correct: list[bool] = Field(default_factory=list)
    votes: dict[str, float] | None = None
    usage: Usage = Field(default_factory=Usage)
    seconds: float = 0.0
    trace_id: str | None = None
    run_id: str | None = None
    budget_exhausted: bool = False


def read_records(path: Path) -> list[ProblemRecord]:
    """The records of a JSONL file, in file order, one per id (the last wins).

    A last line without its newline (a write cut short by a kill) is skipped. A damaged line
    elsewhere raises ValueError naming the file and the line number.
    """
    if not path.exists():
        return []
    by_id: dict[str, ProblemRecord] = {}
    data = path.read_bytes()
    lines = data.split(b"\n")
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        last = lineno == len(lines)  # no trailing newline: a partial write
        try:
            rec = ProblemRecord.model_validate_json(raw)
        except ValidationError as exc:
            if last:
                continue
            raise ValueError(
                f"{path}:{lineno}: not a valid record: {exc.errors()[0]['msg']}"
            ) from None
        by_id.pop(rec.id, None)
        by_id[rec.id] = rec
    return list(by_id.values())


class RecordFile:
    """Appends records to a JSONL file durably (flush + fsync per record)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[bytes] | None = None

    def open_for_append(self) -> None:
        """Open for appending, first cutting a partial last line left by a killed writer."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            keep = data.rfind(b"\n") + 1
            if keep != len(data):
                with self.path.open("r+b") as fh:
                    fh.truncate(keep)
        self._fh = self.path.open("ab")

    def append(self, record: ProblemRecord) -> None:
        """Write one record as one line and make it durable before returning."""
        if self._fh is None:
            self.open_for_append()
        assert self._fh is not None
        self._fh.write(record.model_dump_json().encode() + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)

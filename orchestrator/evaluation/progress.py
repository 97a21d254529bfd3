"""A progress line for long evaluations: problems done, accuracy so far, tokens, cost, ETA.

On a terminal the line is redrawn in place; otherwise (logs, CI, pipes) a full line is printed
at most every ``interval`` seconds and at the end, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _human(x: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.1f}{unit}"
    return f"{x:.0f}"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Progress:
    """Counts finished problems of one evaluation and prints a status line.

    Args:
        total: problems to run in this invocation (resumed ones excluded).
        already: problems finished by earlier invocations (shown, not timed).
        stream: where to write (default stderr); enabled: False silences it.
        interval: seconds between lines when the stream is not a terminal.
    """

    def __init__(
        self,
        total: int,
        *,
        already: int = 0,
        stream: TextIO | None = None,
        enabled: bool = True,
        interval: float = 10.0,
    ) -> None:
        self.total = total
        self.already = already
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interval = interval
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self._last = 0.0
        self.done = 0
        self.correct = 0
        self.failed = 0
        self.tokens = 0
        self.cached = 0
        self.cost = 0.0

    def update(
        self, *, correct: bool, tokens: int, cached: int = 0, cost: float = 0.0, label: str = ""
    ) -> None:
        """Count one finished problem and redraw the line when due."""
        self.done += 1
        self.correct += int(correct)
        self.tokens += tokens
        self.cached += cached
        self.cost += cost
        self._draw(label)

    def fail(self, label: str = "") -> None:
        """Count one problem that could not be evaluated (backend failure)."""
        self.failed += 1
        self._draw(label)

    def line(self, label: str = "") -> str:
        """The status line as text."""
        finished = self.done + self.failed
        elapsed = time.monotonic() - self.started
        acc = self.correct / self.done if self.done else 0.0
        eta = elapsed / finished * (self.total - finished) if finished else 0.0
        parts = [
            f"{label + ' ' if label else ''}{finished}/{self.total}"
            + (f" (+{self.already} earlier)" if self.already else ""),
            f"acc {acc:.3f}",
            f"tok {_human(self.tokens)}"
            + (f" ({_human(self.cached)} cached)" if self.cached else ""),
            f"${self.cost:.4f}",
            f"{_duration(elapsed)} elapsed",
        ]
        if self.failed:
            parts.append(f"{self.failed} failed")
        if finished < self.total:
            parts.append(f"ETA {_duration(eta)}")
        return " | ".join(parts)

    def _draw(self, label: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        last = self.done + self.failed >= self.total
        if self.tty:
            self.stream.write("\r\033[K" + self.line(label) + ("\n" if last else ""))
            self.stream.flush()
        elif last or now - self._last >= self.interval:
            self._last = now
            print(self.line(label), file=self.stream, flush=True)

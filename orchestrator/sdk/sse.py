"""A small server-sent events decoder (WHATWG HTML, "Interpreting an event stream").

Rules implemented: lines end with CRLF, LF or CR (and nothing else: a U+2028 inside a JSON
string is data, which is why this module splits lines itself rather than using
``httpx.Response.aiter_lines``, which splits like ``str.splitlines``); a blank line dispatches the
pending event; a line starting with ':' is a comment; ``field: value`` loses one leading space of
the value; a line without ':' is a field with an empty value; several ``data`` lines join with
"\\n"; ``event`` sets the type (default ``message``); ``id`` sets the last event id, which
persists across events (an id containing NUL is ignored); ``retry`` and unknown fields are
ignored; an event without any ``data`` line is not dispatched; an event (or line) not completed
when the stream ends is dropped.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

_EOL = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event."""

    event: str = "message"
    data: str = ""
    id: str | None = None


class LineSplitter:
    """Splits a text stream arriving in chunks into lines (CRLF / LF / CR), incrementally."""

    def __init__(self) -> None:
        self._buf = ""
        self._after_cr = False

    def feed(self, text: str) -> list[str]:
        """The lines completed by ``text``; an unterminated tail waits for the next chunk."""
        if self._after_cr and text.startswith("\n"):
            text = text[1:]  # the LF of a CRLF split across two chunks
        buf = self._buf + text
        if not buf:
            return []
        lines, start = [], 0
        for m in _EOL.finditer(buf):
            lines.append(buf[start : m.start()])
            start = m.end()
        self._buf = buf[start:]
        self._after_cr = buf.endswith("\r")
        return lines


class SSEDecoder:
    """Incremental event decoder: ``feed`` one line (without its terminator) at a time."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._has_data = False
        self._last_id: str | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        """Process one line; return the event it dispatches, if any."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event, data, has_data = self._event, self._data, self._has_data
        self._event, self._data, self._has_data = "", [], False
        if not has_data:
            return None
        return ServerSentEvent(event or "message", "\n".join(data), self._last_id)


def parse_sse(text: str) -> list[ServerSentEvent]:
    """Every event of a complete stream text."""
    decoder = SSEDecoder()
    events = (decoder.feed(line) for line in LineSplitter().feed(text))
    return [e for e in events if e is not None]


async def iter_sse(chunks: AsyncIterator[str]) -> AsyncIterator[ServerSentEvent]:
    """The events of a stream of text chunks, e.g. ``httpx.Response.aiter_text()``."""
    splitter, decoder = LineSplitter(), SSEDecoder()
    async for chunk in chunks:
        for line in splitter.feed(chunk):
            event = decoder.feed(line)
            if event is not None:
                yield event

"""A streaming check of downloaded NDJSON (:class:`NdjsonCheck`: every line a resource of the
file's type) and the error for a file that fails it."""

from __future__ import annotations

from cwsctl.core.errors import CwsError, ServerFailureError
from cwsctl.core.jsondoc import loads_json
from cwsctl.core.text import printable
from cwsctl.core.transport.bounded import format_size

#: Longest NDJSON line (one resource) checked; a longer one is an error (the checker holds a
#: line in memory, once per download thread).
MAX_LINE_SIZE = 16 << 20


class FileCheckError(CwsError):
    """A downloaded file is not what its manifest entry says (exit 5: the server's fault)."""

    exit_status = ServerFailureError.exit_status


class NdjsonCheck:
    """Checks NDJSON fed in chunks: every line a JSON object of ``resourceType`` ``expected``.

    Only the line being read is held in memory, at most ``max_line`` bytes of it: a longer line
    is a problem, and the rest of it is skipped. One newline after the last line is allowed;
    any other empty line is an error. The first problem is kept in ``problem``.
    """

    def __init__(self, expected: str, max_line: int = MAX_LINE_SIZE) -> None:
        self.expected = expected
        self.max_line = max_line
        self.lines = 0
        self.problem: str | None = None
        self._pending = bytearray()
        self._too_long = False  # the line being read passed max_line: its bytes are dropped

    def feed(self, chunk: bytes) -> None:
        """Check every line completed by ``chunk``."""
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            self._take(chunk[start:end])
            self._end_line()
            start = end + 1
        self._take(chunk[start:])

    def finish(self) -> None:
        """Check the last line (the one without a newline after it)."""
        if self._pending or self._too_long:
            self._end_line()

    def _take(self, piece: bytes) -> None:
        if self._too_long or not piece:
            return
        if len(self._pending) + len(piece) > self.max_line:
            self._too_long = True
            self._pending.clear()
            return
        self._pending += piece

    def _end_line(self) -> None:
        raw, too_long = bytes(self._pending), self._too_long
        self._pending.clear()
        self._too_long = False
        self.lines += 1
        if self.problem is not None:
            return
        if too_long:
            self.problem = f"line {self.lines} is longer than {format_size(self.max_line)}"
            return
        text = raw.removesuffix(b"\r")
        if not text.strip():
            self.problem = f"line {self.lines} is empty"
            return
        try:
            resource = loads_json(text)
        except ValueError:
            self.problem = f"line {self.lines} is not JSON"
            return
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        if kind != self.expected:
            found = f"a {printable(kind)}" if isinstance(kind, str) else "no resource"
            self.problem = f"line {self.lines} holds {found}, not a {self.expected}"

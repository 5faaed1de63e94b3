"""The audit log: one JSON line per request in ``$CWSCTL_HOME/audit/<profile>.jsonl``.

Each line says when, which profile, method and path (never the query string: it can carry an
external_id), the status, the SHA-256 of both bodies, whether the response verified, who signed
it with which key, and how long it took. No body content, no signature, no patient data.
Files rotate by size: ``<profile>.jsonl`` → ``.1`` → … → ``.{KEEP}``, oldest dropped.

The writing and rotating is the standard library's ``logging.handlers.RotatingFileHandler``, used as
a plain file writer: it is attached to no logger, so an entry never reaches the root logger or any
other handler, and nothing else is written to the audit file. Its files are created 0600 (in a 0700
directory) whatever the umask, and a failed write raises instead of being printed and ignored.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from io import TextIOWrapper
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cwsctl.core.files import describe_os_error, ensure_private_dir

if TYPE_CHECKING:
    import logging
    from logging.handlers import RotatingFileHandler

MAX_BYTES = 10 * 1024 * 1024
KEEP = 5


class AuditLog:
    """Appends audit entries for one profile; safe to share between threads."""

    def __init__(
        self, root: Path, profile: str, *, max_bytes: int = MAX_BYTES, keep: int = KEEP
    ) -> None:
        self.directory = root / "audit"
        self.path = self.directory / f"{profile}.jsonl"
        self.profile = profile
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()
        self._file: RotatingFileHandler | None = None  # made on first use, kept open

    def record(
        self,
        *,
        method: str,
        url: str,
        status: int | None,
        request_sha256: str,
        response_sha256: str | None,
        verified: bool,
        signer: str | None,
        key_fingerprint: str | None,
        duration_ms: float,
        error: str | None = None,
    ) -> None:
        """Append one entry (the URL's query string and fragment are dropped)."""
        import logging

        entry: dict[str, Any] = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "profile": self.profile,
            "method": method,
            "path": urlsplit(url).path,
            "status": status,
            "request_sha256": request_sha256,
            "response_sha256": response_sha256,
            "verified": verified,
            "signer": signer,
            "key_fingerprint": key_fingerprint,
            "duration_ms": round(duration_ms, 1),
        }
        if error:
            entry["error"] = error
        line = json.dumps(entry, separators=(",", ":"))  # ASCII: its length is its size on disk
        # handle() takes the handler's own lock around the size check, rotation and write.
        try:
            self._handler().handle(logging.makeLogRecord({"msg": line}))
        except OSError as exc:
            from cwsctl.core.errors import LocalKeyError

            raise LocalKeyError(
                f"cannot write the audit log {self.path}: {describe_os_error(exc)}",
                hint=f"make {self.directory} a directory you can write in (the request itself "
                "was sent; see its outcome on the server)",
            ) from None

    def _handler(self) -> RotatingFileHandler:
        with self._lock:
            if self._file is None:
                self._file = _private_rotating_file_handler()(
                    self.path,
                    maxBytes=self.max_bytes,
                    backupCount=self.keep,
                    encoding="utf-8",
                    delay=True,
                )
            return self._file

    def close(self) -> None:
        """Close the log file (it is reopened if more is recorded)."""
        with self._lock:
            if self._file is not None:
                # Nothing is buffered past a record (each is flushed); a failed flush here is
                # the entry whose own write was already reported as an error.
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None

    def entries(self, since: float | None = None) -> Iterator[dict[str, Any]]:
        """Entries oldest first (rotated files included), optionally only those after ``since``."""
        files = [self.path.with_name(f"{self.path.name}.{i}") for i in range(self.keep, 0, -1)]
        for path in [*files, self.path]:
            try:
                handle = path.open("rb")
            except FileNotFoundError:
                continue
            with handle:
                for line in handle:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue  # a line torn by a crash: skip it
                    if since is None or _timestamp(entry) >= since:
                        yield entry


# Made on first use: `cwsctl --help` imports this module, and logging.handlers costs milliseconds.
@functools.cache
def _private_rotating_file_handler() -> type[RotatingFileHandler]:
    from logging.handlers import RotatingFileHandler

    class PrivateRotatingFileHandler(RotatingFileHandler):
        """Writes each record's message as one line, in files that are 0600 from creation on."""

        def _open(self) -> TextIOWrapper:
            # FileHandler's open() would create the file (and the new one after each rotation)
            # with the umask's mode; os.open gives 0600 at creation, never readable by others.
            ensure_private_dir(Path(self.baseFilename).parent)
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(self.baseFilename, flags, 0o600)
            try:
                return open(fd, "a", encoding="utf-8", newline="")
            except BaseException:
                os.close(fd)
                raise

        def format(self, record: logging.LogRecord) -> str:
            return str(record.msg)  # already a JSON line

        def handleError(self, record: logging.LogRecord) -> None:
            # logging would print a traceback to stderr and carry on; an entry that could not be
            # written is the caller's error. Called from inside emit's except block: re-raise.
            raise

    return PrivateRotatingFileHandler


def _timestamp(entry: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(entry["time"])).timestamp()
    except (KeyError, ValueError):
        return 0.0


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``24h``, ``7d`` or ``2w`` → seconds."""
    from cwsctl.core.errors import InputError

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = text.strip().lower()
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise InputError(f"bad duration {text!r}", hint="use e.g. 30m, 24h, 7d")
    return int(text[:-1]) * units[text[-1]]


def cutoff(duration: str | None) -> float | None:
    """The epoch time ``duration`` ago, or None."""
    return time.time() - parse_duration(duration) if duration else None


def body_sha256(body: bytes) -> str:
    """Hex SHA-256 of a body, the form used in reports, journals and audit lines."""
    import hashlib

    return hashlib.sha256(body).hexdigest()

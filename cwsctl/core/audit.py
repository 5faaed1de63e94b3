"""The audit log: one JSON line per request in ``$CWSCTL_HOME/audit/<profile>.jsonl``.

Each line says when, which profile, method and path (never the query string: it can carry an
external_id), the status, the SHA-256 of both bodies, whether the response verified, who signed
it with which key, and how long it took. No body content, no signature, no patient data.
Files rotate by size: ``<profile>.jsonl`` → ``.1`` → … → ``.{KEEP}``, oldest dropped.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cwsctl.core.files import ensure_private_dir

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
        self._fd = -1  # opened on first use and kept: bulk loads write one line per request
        self._size = 0

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
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self._fd < 0:
                self._open()
            if self._size and self._size + len(line) > self.max_bytes:
                self._rotate()
            self._size += os.write(self._fd, line)

    def _open(self) -> None:
        ensure_private_dir(self.directory)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        os.close(self._fd)
        for index in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._open()

    def close(self) -> None:
        """Close the log file (it is reopened if more is recorded)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

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

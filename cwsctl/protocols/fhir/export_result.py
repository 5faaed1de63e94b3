"""What a run reports (:class:`ExportResult`, the ``--json`` document), tells while it works
(:class:`Events`) and is told (:class:`ExportOptions`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Most seconds one run waits for the job to finish (polling), unless told otherwise.
DEFAULT_WAIT_S = 6 * 3600.0
#: Default seconds each network operation (connect, the next chunk of an answer) may take.
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_PARALLEL = 4
MAX_PARALLEL = 16
DEFAULT_MAX_FILE_SIZE = 16 << 30


@dataclass
class ExportResult:
    """What a run did, for the summary line and ``--json``."""

    directory: Path
    state: str
    already_done: bool = False
    kicked_off: bool = False
    resumed: bool = False
    status_url: str | None = None
    transaction_time: Any = None
    transaction_instant: str | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    fetched: int = 0
    inline_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: Tokens this run got after its first (expiry, or a 401).
    token_renewals: int = 0

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document."""
        outputs = [f for f in self.files if f.get("kind") == "output"]
        return {
            "directory": str(self.directory),
            "state": self.state,
            "already_done": self.already_done,
            "kicked_off": self.kicked_off,
            "resumed": self.resumed,
            "status_url": self.status_url,
            "transaction_time": self.transaction_time,
            "transaction_instant": self.transaction_instant,
            "files": [_public_file(f) for f in self.files],
            "fetched": self.fetched,
            "resources": sum(int(f.get("lines") or 0) for f in outputs),
            "bytes": sum(int(f.get("bytes") or 0) for f in self.files),
            "error_files": sum(1 for f in self.files if f.get("kind") == "error"),
            "inline_errors": self.inline_errors,
            "token_renewals": self.token_renewals,
            "seconds": round(self.seconds, 3),
        }


def _public_file(entry: dict[str, Any]) -> dict[str, Any]:
    names = ("path", "kind", "type", "url", "count", "bytes", "lines", "sha256", "done")
    return {name: entry.get(name) for name in names}


class Events:
    """What a run tells its caller while it works (the CLI shows these on stderr)."""

    def note(self, message: str) -> None:
        """A line for people (e.g. "resuming the export started at …")."""

    def progress(self, message: str) -> None:
        """The current status (polling, X-Progress, files done): a terminal's status line."""


@dataclass
class ExportOptions:
    """How a run behaves (see the CLI's options)."""

    new: bool = False
    parallel: int = DEFAULT_PARALLEL
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    wait: float = DEFAULT_WAIT_S
    timeout: float = DEFAULT_TIMEOUT_S
    #: Called between polls instead of time.sleep (tests of the poller could pass another).
    sleep: Callable[[float], None] = time.sleep

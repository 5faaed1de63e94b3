"""The bulk-load journal: an append-only, synced-to-disk record of what was sent and what came back.

One JSON object per line. The first line holds a random salt; every other line names a patient
by ``key`` = HMAC-SHA256(salt, external_id + NUL + facility), so the journal itself holds no
patient data. Before a row is sent a ``sending`` line is made durable; after the answer an
``outcome`` line is. A ``sending`` with no later outcome means the request may have taken effect:
the next run looks the patient up before sending it again. A torn last line (the process died
mid-write) is cut off on open; the row it described is then re-checked the same way.

An exclusive OS lock (``flock``) on the journal stops two runs at once; the kernel drops it when
a process dies, so a killed run never blocks the next one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from cwsctl.core.errors import InputError

JOURNAL_VERSION = 1
#: Outcomes after which a row is never sent again.
FINAL_OUTCOMES = frozenset({"created", "exists"})


class JournalBusyError(InputError):
    """Another run holds the journal."""


class Journal:
    """Append-only journal with an in-memory index of each key's latest state."""

    def __init__(self, path: Path, target: str | None = None) -> None:
        """Open (or start) the journal at ``path``; ``target`` names the server it loads into
        (e.g. ``"cws https://coremr.example.org"``): a journal of another target is refused."""
        self.path = path
        self.target: str | None = None
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._written = self._synced = 0  # lines appended, and how many of them are on disk
        self._states: dict[str, dict[str, Any]] = {}
        self.torn_lines = 0
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            _lock_exclusively(self._fd, path)
            self._salt = self._load()
            self._bind(target)
        except BaseException:
            os.close(self._fd)
            raise

    # -- opening -------------------------------------------------------------------------
    def _load(self) -> bytes:
        data = _read_all(self._fd)
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a torn last line: drop it so the next append starts clean
            self.torn_lines += 1
            os.ftruncate(self._fd, end)
            data = data[:end]
        salt: bytes | None = None
        for number, line in enumerate(data.splitlines(), start=1):
            try:
                entry = json.loads(line)
                if number == 1:
                    salt = _salt_of(entry)
                elif isinstance(entry, dict) and isinstance(entry.get("key"), str):
                    self._states[entry["key"]] = entry
                elif isinstance(entry, dict) and isinstance(entry.get("target"), str):
                    self.target = entry["target"]
                else:
                    raise ValueError("not a journal entry")
            except (ValueError, RecursionError):
                raise InputError(
                    f"{self.path} is not a cwsctl journal, or is corrupt at line {number}",
                    hint="move it away to start over (rows already created will answer 409)",
                ) from None
        if salt is None:
            salt = secrets.token_bytes(16)
            self._append({"journal": JOURNAL_VERSION, "salt": salt.hex()})
        return salt

    def _bind(self, target: str | None) -> None:
        """Refuse a journal written for another server; tie a new (or older) one to ``target``.

        Outcomes are only true of the server they came from: a row "created" in CorEMR is not
        in OpenEMR, so resuming another target's journal would silently skip every row.
        """
        if target is None or self.target == target:
            return
        if self.target is not None:
            raise InputError(
                f"{self.path} is the journal of a load into {self.target}, not {target}",
                hint="give this load its own journal with --journal FILE",
            )
        self._append({"target": target})
        self.target = target

    # -- queries -------------------------------------------------------------------------
    def key_for(self, external_id: str, facility: str) -> str:
        """The journal's name for a patient (no PHI: a salted hash)."""
        message = f"{external_id}\0{facility}".encode()
        return hmac.new(self._salt, message, hashlib.sha256).hexdigest()[:32]

    def state(self, key: str) -> dict[str, Any] | None:
        """The latest entry for ``key``, or None if it was never sent."""
        return self._states.get(key)

    def is_done(self, key: str) -> bool:
        """True when the row got a verified 201 or 409 in an earlier run."""
        entry = self._states.get(key)
        return bool(entry and entry.get("outcome") in FINAL_OUTCOMES)

    def in_doubt(self, key: str) -> bool:
        """True when a request for ``key`` may have taken effect without our knowing."""
        entry = self._states.get(key)
        return bool(entry and entry.get("outcome") in ("sending", "unknown", "failed"))

    # -- writing -------------------------------------------------------------------------
    def record(self, key: str, row: int, outcome: str, **facts: Any) -> None:
        """Append a durable entry for ``key`` (on disk before this returns)."""
        entry = {"key": key, "row": row, "outcome": outcome, "t": round(time.time(), 3), **facts}
        line = _encode(entry)
        with self._lock:
            os.write(self._fd, line)  # O_APPEND: whole lines, never interleaved
            self._states[key] = entry
            self._written += 1
            mine = self._written
        self._sync(mine)

    def _sync(self, mine: int) -> None:
        """Make the ``mine``-th write durable (group commit).

        One flush at a time: a thread that waited for another's flush returns without one of
        its own when that flush began after its write, so concurrent rows share disk flushes.
        """
        with self._sync_lock:
            if self._synced >= mine:
                return
            with self._lock:
                upto = self._written
            _datasync(self._fd)
            self._synced = upto

    def _append(self, entry: dict[str, Any]) -> None:
        os.write(self._fd, _encode(entry))
        _datasync(self._fd)

    def close(self) -> None:
        """Release the lock and close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _encode(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, separators=(",", ":")).encode() + b"\n"


# fdatasync flushes the appended bytes and the file size (all a reader needs), not the mtime.
_datasync = getattr(os, "fdatasync", os.fsync)


def _salt_of(header: Any) -> bytes:
    """The salt from a journal's first line; ValueError if it is not one."""
    if not isinstance(header, dict) or header.get("journal") != JOURNAL_VERSION:
        raise ValueError("not a journal header")
    salt = header.get("salt")
    if not isinstance(salt, str) or not salt:
        raise ValueError("no salt")
    return bytes.fromhex(salt)


def _lock_exclusively(fd: int, path: Path) -> None:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise JournalBusyError(
            f"another cwsctl run is using the journal {path}",
            hint="wait for it to finish (overlapping cron runs?); a killed run releases it at once",
        ) from None


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)

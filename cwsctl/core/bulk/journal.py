"""The bulk-load journal: an append-only, synced-to-disk record of what was sent and what came back.

One JSON object per line. The first line holds a random salt; every other line names a patient
by ``key`` = HMAC-SHA256(salt, external_id + NUL + facility), so the journal itself holds no
patient data. Before a row is sent a ``sending`` line is made durable; after the answer an
``outcome`` line is. A ``sending`` with no later outcome means the request may have taken effect:
the next run looks the patient up before sending it again. A torn last line (the process died
mid-write) is cut off on open; the row it described is then re-checked the same way.

An exclusive OS lock (``flock``) on the journal stops two runs at once; the kernel drops it when
a process dies, so a killed run never blocks the next one.

A journal is trusted only when it is ours: a regular file (never through a symlink), owned by
this user, writable by nobody else, whose first line is a cwsctl journal header. Anything else
(``--journal bookings.csv``, a slip for ``--from``) is refused before a byte of it is changed —
the torn-line repair runs only on a file already known to be a journal.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
import secrets
import stat
import threading
import time
from pathlib import Path
from typing import Any

from cwsctl.core.errors import InputError
from cwsctl.core.files import describe_os_error

JOURNAL_VERSION = 1
#: Outcomes after which a row is never sent again.
FINAL_OUTCOMES = frozenset({"created", "exists"})
#: How every journal's first line starts (see :func:`_encode`).
_HEADER_START = b'{"journal":'


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
        self._fd = _open_own_file(path)
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
        self._check_header(data)
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

    def _check_header(self, data: bytes) -> None:
        """Refuse a non-empty file whose first line is not a journal header (nothing written yet).

        A first line cut off by a crash (no newline yet) is accepted when it is the start of a
        header, so the torn-line repair can drop it.
        """
        if not data:
            return
        first, newline, _ = data.partition(b"\n")
        if newline:
            try:
                _salt_of(json.loads(first))
                return
            except (ValueError, RecursionError):
                pass
        elif _HEADER_START.startswith(first) or first.startswith(_HEADER_START):
            return
        raise InputError(
            f"{self.path} is not a cwsctl journal; refusing to use it (it was not changed)",
            hint="--journal names the journal file (the input is --from); "
            "name a new file or a journal of an earlier run",
        )

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
            self._write(line)  # O_APPEND: whole lines, never interleaved
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
            try:
                _datasync(self._fd)
            except OSError as exc:
                raise self._failure(exc) from None
            self._synced = upto

    def _append(self, entry: dict[str, Any]) -> None:
        self._write(_encode(entry))
        try:
            _datasync(self._fd)
        except OSError as exc:
            raise self._failure(exc) from None

    def _write(self, line: bytes) -> None:
        """Append one whole line, or none of it (a short write is cut off again)."""
        size = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, "short write")
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
            raise self._failure(exc) from None

    def _failure(self, exc: OSError) -> InputError:
        return InputError(
            f"cannot write journal {self.path}: {describe_os_error(exc)}",
            hint="rows in flight are re-checked on the next run",
        )

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


def _open_own_file(path: Path) -> int:
    """Open (or create, 0600) the journal at ``path``: a regular file of ours, never via a link."""
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)  # a FIFO must not hang
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            reason = "it is a symbolic link"
        elif exc.errno == errno.ENOENT:
            reason = f"directory {path.parent} does not exist"
        elif exc.errno == errno.EISDIR:
            reason = "it is a directory"
        else:
            reason = exc.strerror or str(exc)
        raise InputError(f"cannot use journal {path}: {reason}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"cannot use journal {path}: it is not a regular file")
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            raise InputError(
                f"refusing journal {path}: it belongs to another user",
                hint="a journal decides which rows are sent: use one of your own",
            )
        if info.st_mode & 0o022:
            raise InputError(
                f"refusing journal {path}: others can write it (mode {stat.S_IMODE(info.st_mode):o})",
                hint=f"a journal decides which rows are sent: chmod 600 {path}",
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


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

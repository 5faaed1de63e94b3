"""Bulk FHIR export ($export) from OpenEMR or a server that follows the Bulk Data Access IG.

One export is one job, and its state lives in the output directory, so that a cron job can be
killed at any moment and simply run again:

- **Kick-off** (``GET {fhir}/$export``, ``/Patient/$export`` or ``/Group/{id}/$export`` with
  ``Accept: application/fhir+json`` and ``Prefer: respond-async``): the resource types go in both
  ``_type`` (the specification) and ``type`` (what OpenEMR reads), ``_typeFilter`` only when
  given. OpenEMR runs the whole export inside this request (up to about two minutes), so it gets
  :data:`KICKOFF_TIMEOUT_S`. The answer is 202 with a ``Content-Location``: the status URL.
- **Status**: polled as the server asks (``Retry-After``, capped at :data:`MAX_RETRY_AFTER_S`;
  without one, from 1 s growing to 30 s), 429 backs off, a 5xx is retried
  :data:`STATUS_RETRIES` times in a row with backoff, all within one budget per run (``wait``,
  default :data:`DEFAULT_WAIT_S`). 202 means running (``X-Progress`` shown on a terminal); 200
  carries the manifest; another 4xx/5xx means the job failed, with the OperationOutcome's text.
- **Files**: every ``output``, ``error`` and ``deleted`` file is streamed to ``DIR/<name>.part``
  (memory flat in file size, SHA-256 computed while streaming) by at most ``parallel`` threads,
  each capped at ``max_file_size`` (the bounded transport's cap, raised per file), checked —
  every line parses as a JSON object whose ``resourceType`` is the entry's ``type``, and the
  line count equals the manifest's ``count`` when it has one — and only then renamed. A bearer
  token is sent only when ``requiresAccessToken`` is true, and only to the profile's own server
  (the URL's path on the profile URL's origin, as for OAuth endpoints).
- **Tokens**: the client-credentials grant with the profile's ``system/*`` scopes (never a
  person's refresh token: OpenEMR exports as its system user) from a :class:`TokenSource`
  limited to that grant — cached in the profile's token file (0600, locked) apart from a
  person's token, renewed before it expires (OpenEMR's last 300 s) and after any 401 (then
  the request is sent again; a download restarts its file).
- **State**: ``DIR/.cwsctl-export.json`` (0600, replaced atomically after every change): the
  request, the status URL, the manifest, the transaction time as given and as an instant, and
  each finished file with its size, line count and SHA-256. Running the same command again
  continues the job: no second kick-off, finished files kept, partial files restarted.
- **Manifest**: ``DIR/manifest.json`` is written last: the server's manifest with, on every
  file entry, the local ``path``, ``bytes``, ``lines`` and ``sha256``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from cwsctl.core.audit import AuditLog, body_sha256
from cwsctl.core.errors import (
    ClientRequestError,
    CwsError,
    InputError,
    NetworkError,
    ProfileError,
    ServerFailureError,
)
from cwsctl.core.files import atomic_write
from cwsctl.core.jsondoc import loads_json
from cwsctl.core.profile import Profile, Store
from cwsctl.core.text import printable
from cwsctl.core.transport.bounded import (
    ResponseTooLargeError,
    bounded_client,
    format_size,
    retry_after_seconds,
)
from cwsctl.core.transport.deadline import exchange_deadline
from cwsctl.core.transport.errors import network_error
from cwsctl.protocols.oauth2.grants import run_flow
from cwsctl.protocols.oauth2.tokens import GRANT_CLIENT_CREDENTIALS, Token
from cwsctl.targets.openemr.endpoints import at_origin, endpoints
from cwsctl.targets.openemr.scopes import ENABLE_CLIENT_PLACE, SYSTEM_SCOPES_PLACE, system_scope
from cwsctl.targets.openemr.tokens import TokenSource

EMPTY_SHA256 = body_sha256(b"")  # every export request is a GET or DELETE without a body
STATE_FILE = ".cwsctl-export.json"
MANIFEST_FILE = "manifest.json"
STATE_VERSION = 1
#: OpenEMR exports inside the kick-off request (its own cap: two minutes), so it may take this long.
KICKOFF_TIMEOUT_S = 180.0
#: Most seconds one run waits for the job to finish (polling), unless told otherwise.
DEFAULT_WAIT_S = 6 * 3600.0
#: Default seconds each network operation (connect, the next chunk of an answer) may take.
DEFAULT_TIMEOUT_S = 60.0
#: Most seconds one file's download may take in all (the stall timeout above still applies).
FILE_DEADLINE_S = 24 * 3600.0
DEFAULT_PARALLEL = 4
MAX_PARALLEL = 16
DEFAULT_MAX_FILE_SIZE = 16 << 30
#: A status or manifest answer larger than this is not a manifest (10,000 entries take ~2 MiB).
MAX_MANIFEST_SIZE = 8 << 20
#: Most file entries (output, error, deleted) a manifest may list: each is a file in DIR and an
#: entry in the state file, rewritten after every download.
MAX_FILES = 10_000
#: Longest NDJSON line (one resource) checked; a longer one is an error (the checker holds a
#: line in memory, once per download thread).
MAX_LINE_SIZE = 16 << 20
#: The longest ``Retry-After`` honoured as given (longer ones are cut to it), and the shortest
#: (a server answering 0 again and again is not polled in a tight loop).
MAX_RETRY_AFTER_S = 300.0
MIN_RETRY_AFTER_S = 1.0
#: Polling interval without ``Retry-After``: from the first value, times 1.5, up to the second.
POLL_START_S, POLL_MAX_S = 1.0, 30.0
#: Consecutive 5xx answers (or lost answers) of the status URL retried before the job counts as
#: failed.
STATUS_RETRIES = 5
#: Attempts per file (a cut download, a 5xx, a lost connection, a 401 after renewal).
FILE_ATTEMPTS = 4
CHUNK_SIZE = 1 << 16
#: Seconds an interrupted run waits for its download threads to stop before it exits anyway.
STOP_GRACE_S = 2.0
FHIR_JSON = "application/fhir+json"
NDJSON = "application/fhir+ndjson"

SCOPE_FOR_LEVEL = {
    "system": "system/*.$export",
    "patient": "system/Patient.$export",
    "group": "system/Group.$export",
}
STATUS_SCOPE = "system/*.$bulkdata-status"
BINARY_SCOPE = "system/Binary.read"
#: States of a job in DIR: running ones are continued, finished ones reported or replaced (--new).
RUNNING_STATES = ("kicking-off", "running", "downloading")
ENDED_STATES = ("done", "cancelled", "failed", "expired")
_TYPE = re.compile(r"[A-Z][A-Za-z0-9]{0,63}")
#: OpenEMR's DateSearchField: YYYY[-MM[-DD[Thh:mm[:ss][.f]]]][Z|±hh:mm].
_SINCE = re.compile(r"\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?)?)?(Z|[+-]\d{2}:\d{2})?")
_PHP_DATE = "%Y-%m-%d %H:%M:%S.%f"
#: A FHIR instant: date, time to the second, any fraction, an offset (read on Python 3.10 too).
_INSTANT = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})")


# -- the request ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportRequest:
    """What to export: the level (``system``, ``patient`` or ``group``), types, since, filters.

    ``since`` is as the user gave it (an instant or ``last``); :meth:`query` gets the value sent.
    """

    level: str = "system"
    group: str | None = None
    types: tuple[str, ...] = ()
    since: str | None = None
    type_filter: tuple[str, ...] = ()

    @property
    def scope(self) -> str:
        """The scope OpenEMR checks for this kick-off route."""
        return SCOPE_FOR_LEVEL[self.level]

    @property
    def path(self) -> str:
        """The kick-off path under the FHIR base."""
        if self.level == "patient":
            return "Patient/$export"
        if self.level == "group":
            return f"Group/{quote(self.group or '', safe='')}/$export"
        return "$export"

    def query(self, since: str | None) -> list[tuple[str, str]]:
        """The kick-off's query parameters (``since`` is the value to send, if any)."""
        params: list[tuple[str, str]] = []
        if self.types:
            joined = ",".join(self.types)
            params += [("_type", joined), ("type", joined)]
        if since:
            params.append(("_since", since))
        params += [("_typeFilter", value) for value in self.type_filter]
        return params

    def to_json(self) -> dict[str, Any]:
        """The form kept in the state file."""
        return {
            "level": self.level,
            "group": self.group,
            "types": list(self.types),
            "since": self.since,
            "type_filter": list(self.type_filter),
        }

    @classmethod
    def from_json(cls, data: Any) -> ExportRequest:
        """The request kept in a state file (a damaged one raises InputError)."""
        if not isinstance(data, dict) or data.get("level") not in SCOPE_FOR_LEVEL:
            raise InputError("the export state names no valid request")
        for name in ("group", "since"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise InputError(f"the export state's request {name} is not text")
        for name in ("types", "type_filter"):
            value = data.get(name)
            if value is not None and not (
                isinstance(value, list) and all(isinstance(v, str) for v in value)
            ):
                raise InputError(f"the export state's request {name} is not a list of text")
        return cls(
            level=str(data["level"]),
            group=data.get("group"),
            types=tuple(str(t) for t in data.get("types") or ()),
            since=data.get("since"),
            type_filter=tuple(str(t) for t in data.get("type_filter") or ()),
        )

    def describe(self) -> str:
        """One line: ``/Patient/$export type=Patient since=last``."""
        parts = [f"/{self.path}"]
        if self.types:
            parts.append("type=" + ",".join(self.types))
        if self.since:
            parts.append(f"since={self.since}")
        parts += [f"typeFilter={f}" for f in self.type_filter]
        return " ".join(parts)


def parse_types(value: str | None) -> tuple[str, ...]:
    """``Patient,Observation`` → ``("Patient", "Observation")``; InputError for a bad name."""
    if not value:
        return ()
    names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    for name in names:
        if not _TYPE.fullmatch(name):
            raise InputError(
                f"--type: {name!r} is not a FHIR resource type",
                hint="give resource type names separated by commas, e.g. Patient,Observation",
            )
    return names


def check_since(value: str) -> str:
    """``--since TIME`` as OpenEMR and the specification read it (``last`` passes as it is)."""
    if value == "last" or _SINCE.fullmatch(value):
        return value
    hint = "an instant such as 2026-03-01T12:00:00Z (a date or YYYY-MM-DDThh:mm also work)"
    if " " in value:
        hint += "; use T between date and time (OpenEMR refuses a space)"
    raise InputError(f"--since: {value!r} is not a FHIR instant", hint=hint + ", or last")


# -- transaction times ---------------------------------------------------------------------


def format_instant(moment: datetime) -> str:
    """A UTC instant as FHIR writes it: ``2026-03-01T12:00:00Z`` (fractions only when there)."""
    moment = moment.astimezone(timezone.utc)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def _php_timezone(kind: Any, name: Any) -> Any:
    """The tzinfo of a PHP DateTime's ``timezone_type`` (1 offset, 2 abbreviation, 3 zone id)."""
    if not isinstance(name, str) or not name:
        return None
    if kind == 1 or re.fullmatch(r"[+-]\d{2}:?\d{2}", name):
        match = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", name)
        if not match:
            return None
        sign = -1 if match.group(1) == "-" else 1
        return timezone(sign * timedelta(hours=int(match.group(2)), minutes=int(match.group(3))))
    if name.upper() in ("UTC", "GMT", "Z", "UCT"):
        return timezone.utc
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def normalise_transaction_time(value: Any) -> str | None:
    """The manifest's ``transactionTime`` as a UTC instant string, or None when unreadable.

    A specification server sends an instant (``2026-03-01T12:00:00.123Z``); OpenEMR sends a PHP
    DateTime object ``{"date": "2026-03-01 12:00:00.000000", "timezone_type": 3,
    "timezone": "UTC"}``, read with its zone (zoneinfo for zone ids).
    """
    try:
        if isinstance(value, str):
            match = _INSTANT.fullmatch(value.strip())
            if match is None:
                return None  # not an instant (one without an offset says no moment)
            date, fraction, offset = match.groups()
            micro = (fraction or "").ljust(6, "0")[:6]
            zone = "+00:00" if offset == "Z" else offset
            moment = datetime.fromisoformat(f"{date}.{micro}{zone}")
            return format_instant(moment)
        if isinstance(value, dict) and isinstance(value.get("date"), str):
            tz = _php_timezone(value.get("timezone_type"), value.get("timezone"))
            if tz is None:
                return None
            text = value["date"].strip()
            fmt = _PHP_DATE if "." in text else _PHP_DATE.removesuffix(".%f")
            return format_instant(datetime.strptime(text, fmt).replace(tzinfo=tz))
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 moved to UTC
        return None
    return None


# -- NDJSON checks -------------------------------------------------------------------------


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


# -- state on disk -------------------------------------------------------------------------


def _now() -> str:
    return format_instant(datetime.now(timezone.utc).replace(microsecond=0))


class ExportState:
    """The job's state in ``DIR/.cwsctl-export.json``: read once, replaced atomically on change."""

    def __init__(self, directory: Path, data: dict[str, Any]) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE
        self.data = data
        self.lock = threading.Lock()

    @classmethod
    def load(cls, directory: Path) -> ExportState | None:
        """The state in ``directory`` (None when there is none; InputError when damaged)."""
        path = directory / STATE_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise InputError(
                f"{path} is not a cwsctl export state (damaged, or another version)",
                hint="export into another directory, or remove the file to start over",
            )
        problem = _state_problem(data)
        if problem is not None:
            raise InputError(
                f"{path} is damaged: {problem}",
                hint="export into another directory, or remove the file to start over",
            )
        return cls(directory, data)

    @property
    def state(self) -> str:
        """``kicking-off``, ``running``, ``downloading``, ``done``, ``cancelled``, ``failed``
        or ``expired``."""
        return str(self.data.get("state", ""))

    @property
    def files(self) -> list[dict[str, Any]]:
        """The planned files (empty until the manifest came)."""
        value = self.data.get("files")
        return value if isinstance(value, list) else []

    def save(self) -> None:
        """Write the state atomically (mode 0600)."""
        self.data["updated_at"] = _now()
        document = json.dumps(self.data, indent=1, sort_keys=True).encode("utf-8")
        atomic_write(self.path, document, what="export state file")

    def update(self, **values: Any) -> None:
        """Set ``values`` and save, under the state's lock (download threads share it)."""
        with self.lock:
            self.data.update(values)
            self.save()


#: A file name the exporter gives: ``[error-|deleted-]<Type>-<n>.ndjson`` (nothing else is ever
#: opened, written or removed in DIR on a state file's word).
_FILE_NAME = re.compile(r"(?:error-|deleted-)?[A-Z][A-Za-z0-9]{0,63}-[1-9][0-9]{0,5}\.ndjson")
_FILE_FIELDS: dict[str, tuple[type, ...]] = {
    "kind": (str,),
    "index": (int,),
    "type": (str,),
    "url": (str,),
    "done": (bool,),
}


def _state_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with a state file's contents (None when it is usable)."""
    if not isinstance(data.get("state"), str):
        return "no state"
    for name in ("status_url", "kickoff_url", "kicked_off_at", "transaction_instant"):
        if data.get(name) is not None and not isinstance(data[name], str):
            return f"{name} is not text"
    try:
        ExportRequest.from_json(data.get("request"))
    except InputError as exc:
        return exc.message
    for name in ("last_done", "manifest"):
        if data.get(name) is not None and not isinstance(data[name], dict):
            return f"{name} is not an object"
    files = data.get("files", [])
    if not isinstance(files, list) or len(files) > MAX_FILES:
        return f"files is not a list of at most {MAX_FILES}"
    seen: set[str] = set()
    for number, entry in enumerate(files):
        if not isinstance(entry, dict):
            return f"files[{number}] is not an object"
        path = entry.get("path")
        if not isinstance(path, str) or not _FILE_NAME.fullmatch(path) or path in seen:
            return f"files[{number}] names no file cwsctl writes"
        seen.add(path)
        for name, kinds in _FILE_FIELDS.items():
            value = entry.get(name)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                return f"files[{number}].{name} is missing or of the wrong kind"
        if entry["kind"] not in ("output", "error", "deleted") or entry["index"] < 0:
            return f"files[{number}] is not an output, error or deleted entry"
        if not _TYPE.fullmatch(entry["type"]):
            return f"files[{number}] names no valid resource type"
        for name in ("count", "bytes", "lines"):
            value = entry.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                return f"files[{number}].{name} is not a number"
        if entry["done"] and not (
            isinstance(entry.get("sha256"), str) and isinstance(entry.get("bytes"), int)
        ):
            return f"files[{number}] is done without its size and digest"
    return None


# -- results -------------------------------------------------------------------------------


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


# -- helpers -------------------------------------------------------------------------------


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the answer's ``Retry-After`` asks for, within the poll bounds; None if none."""
    seconds = retry_after_seconds(response.headers.get("retry-after"))
    if seconds is None:
        return None
    return min(max(seconds, MIN_RETRY_AFTER_S), MAX_RETRY_AFTER_S)


def outcome_text(content: bytes) -> str:
    """What an error answer says, on one safe line: an OperationOutcome's diagnostics or
    details, OpenEMR's ``message``/``error``, else nothing."""
    try:
        document = loads_json(content) if content.strip() else None
    except (ValueError, UnicodeDecodeError):
        return printable(content[:200].decode("utf-8", "replace")) if content.strip() else ""
    texts: list[str] = []
    if isinstance(document, dict):
        issues = document.get("issue")
        for issue in issues if isinstance(issues, list) else []:
            if not isinstance(issue, dict):
                continue
            details = issue.get("details")
            text = issue.get("diagnostics") or (
                details.get("text") if isinstance(details, dict) else None
            )
            if isinstance(text, str) and text:
                texts.append(text)
        for name in ("message", "error_description", "error"):
            value = document.get(name)
            if not texts and isinstance(value, str) and value:
                texts.append(value)
    return printable("; ".join(texts))


def _status_error(
    what: str, response: httpx.Response, content: bytes, hint: str | None = None
) -> CwsError:
    text = outcome_text(content)
    reason = printable(response.reason_phrase)
    message = f"{what}: HTTP {response.status_code} {reason}".rstrip() + (
        f": {text}" if text else ""
    )
    if response.status_code >= 500:
        return ServerFailureError(message, hint)
    return ClientRequestError(message, hint)


def _head_of(response: httpx.Response, limit: int = 1 << 16) -> bytes:
    """At most ``limit`` bytes of a streamed error answer (its text is all that is shown)."""
    head = bytearray()
    with contextlib.suppress(httpx.HTTPError):
        for chunk in response.iter_raw(CHUNK_SIZE):
            head += chunk
            if len(head) >= limit:
                break
    return bytes(head[:limit])


def status_document(state: ExportState) -> dict[str, Any]:
    """What ``--status`` shows of the export kept in a directory (no server asked)."""
    files = state.files
    done = [f for f in files if f.get("done")]
    return {
        "directory": str(state.directory),
        "state": state.state,
        "request": state.data.get("request"),
        "status_url": state.data.get("status_url"),
        "kicked_off_at": state.data.get("kicked_off_at"),
        "transaction_time": state.data.get("transaction_time"),
        "transaction_instant": state.data.get("transaction_instant"),
        "files": len(files),
        "files_done": len(done),
        "bytes_done": sum(int(f.get("bytes") or 0) for f in done),
        "finished_at": state.data.get("finished_at"),
        "last_done": state.data.get("last_done"),
    }


# -- the exporter --------------------------------------------------------------------------


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


class _Stopped(Exception):
    """A download thread stops because the run is ending (Ctrl-C, or another file failed)."""


class FileGoneError(ClientRequestError):
    """The server no longer has an export file (OpenEMR deletes them an hour after the job)."""


class Exporter:
    """Runs, shows or cancels the export kept in one directory for one openemr profile."""

    def __init__(
        self,
        profile: Profile,
        store: Store,
        private_key: rsa.RSAPrivateKey,
        directory: Path,
        options: ExportOptions | None = None,
        events: Events | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.profile = profile
        self.audit = audit
        self.directory = directory
        self.options = options or ExportOptions()
        self.events = events or Events()
        self.source = TokenSource(profile, store, private_key, grant=GRANT_CLIENT_CREDENTIALS)
        ends = endpoints(profile)
        self.fhir_base = at_origin(profile.url, ends.fhir_base).rstrip("/")
        self._api: httpx.Client | None = None
        self._files_client: httpx.Client | None = None
        self._token_lock = threading.Lock()
        self._current_token: str | None = None
        #: Tokens this run got after its first (expiry, or a 401).
        self.token_renewals = 0
        self._stop = threading.Event()

    # -- plumbing --

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP clients."""
        for client in (self._api, self._files_client):
            if client is not None:
                client.close()
        if self.audit is not None:
            self.audit.close()

    @property
    def api(self) -> httpx.Client:
        """The client for token, kick-off, status and cancel requests (64 MiB cap)."""
        if self._api is None:
            self._api = bounded_client(
                timeout=KICKOFF_TIMEOUT_S, max_response_size=MAX_MANIFEST_SIZE
            )
        return self._api

    @property
    def files_client(self) -> httpx.Client:
        """The client for downloads: ``max_file_size`` per answer, a connection per thread."""
        if self._files_client is None:
            self._files_client = bounded_client(
                timeout=FILE_DEADLINE_S,
                max_response_size=self.options.max_file_size,
                max_connections=max(self.options.parallel, 1),
            )
        return self._files_client

    def _token(self, reject: str | None = None) -> Token:
        """A usable client-credentials token (cached in the profile's token file, renewed
        before it expires or when it is ``reject``, the one a 401 refused); threads share it."""
        with exchange_deadline(self.options.timeout):
            token = run_flow(
                self.source.token_flow(reject=reject),
                self.api,
                timeout=self.options.timeout,
                max_response_size=MAX_MANIFEST_SIZE,
            )
        with self._token_lock:
            if token.access_token != self._current_token:
                if self._current_token is not None:
                    self.token_renewals += 1
                self._current_token = token.access_token
        return token

    def _home_url(self, url: str) -> str:
        """Where a server-named URL is fetched with credentials: its path on the profile's
        origin (OpenEMR names its URLs after its Site Address, which may be another host)."""
        return at_origin(self.profile.url, url)

    def _send(
        self,
        client: httpx.Client,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        authorize: bool = True,
        stream: bool = False,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> httpx.Response:
        """Send with a bearer token; a 401 gets a new token and one more try."""
        token = self._token() if authorize else None
        for attempt in (0, 1):
            sent = dict(headers)
            if token is not None:
                sent["Authorization"] = token.authorization
            request = client.build_request(
                method, url, headers=sent, timeout=httpx.Timeout(timeout or self.options.timeout)
            )
            started = time.perf_counter()
            try:
                if deadline is not None:
                    with exchange_deadline(deadline):
                        response = client.send(request, stream=stream)
                else:
                    response = client.send(request, stream=stream)
            except httpx.HTTPError as exc:
                error = network_error(exc, method, url, timeout=deadline or timeout)
                self._audit(method, url, None, started, error=type(error).__name__)
                raise error from None
            last = response.status_code != 401 or token is None or bool(attempt)
            if not (stream and last):  # a streamed answer is recorded once it is read
                digest = None if stream else body_sha256(response.content)
                self._audit(method, url, response.status_code, started, digest)
            if last or token is None:
                return response
            response.close()
            token = self._token(reject=token.access_token)
        raise AssertionError("unreachable")  # pragma: no cover

    def _audit(
        self,
        method: str,
        url: str,
        status: int | None,
        started: float,
        response_sha256: str | None = None,
        error: str | None = None,
    ) -> None:
        """One audit line for an export request: method, path (never the query string: a
        ``_typeFilter`` may name a patient), status, the answer's SHA-256, how long it took."""
        if self.audit is None:
            return
        self.audit.record(
            method=method,
            url=url,
            status=status,
            request_sha256=EMPTY_SHA256,
            response_sha256=response_sha256,
            verified=False,
            signer=None,
            key_fingerprint=None,
            duration_ms=(time.perf_counter() - started) * 1000,
            error=error,
        )

    def _scope_hint(self, scope: str) -> str:
        name = self.profile.name
        return (
            f"register the client with it: cwsctl -p {name} oauth register --export-scopes "
            f"(types other than Patient also need system/<Type>.read: add them with --scope); "
            f"an administrator then enables the client ({ENABLE_CLIENT_PLACE})"
        )

    def _unauthorized(self, what: str, scope: str, content: bytes) -> CwsError:
        text = outcome_text(content)
        if text and "unauthorized" not in text.lower():
            # OpenEMR's OperationOutcome "AccessToken does not grant access to resource R"
            resource = re.search(r"resource (\w+)", text)
            needed = f"system/{resource.group(1)}.read" if resource else scope
            return ClientRequestError(
                f"{what}: HTTP 401: {text} (the token needs {needed})",
                hint=self._scope_hint(needed),
            )
        return ClientRequestError(
            f"{what}: HTTP 401: the token lacks the scope {scope}", hint=self._scope_hint(scope)
        )

    def _check_scopes(self, request: ExportRequest) -> None:
        held = set(system_scope(self.source.scope).split())
        if not held:
            raise ProfileError(
                f"profile {self.profile.name!r} has no system/ scopes: a bulk export needs the "
                "client-credentials grant with them",
                hint=f"cwsctl -p {self.profile.name} oauth register --export-scopes (system "
                f"scopes must be on: {SYSTEM_SCOPES_PLACE}); an administrator then enables the "
                f"client ({ENABLE_CLIENT_PLACE})",
            )
        for needed in (request.scope, STATUS_SCOPE, BINARY_SCOPE):
            if needed not in held:
                raise ProfileError(
                    f"profile {self.profile.name!r} does not hold the scope {needed}, "
                    f"which {request.describe().split()[0]} needs",
                    hint=self._scope_hint(needed),
                )

    # -- public entry points --

    def run(self, request: ExportRequest) -> ExportResult:
        """Kick off (or continue) the export into the directory and download every file."""
        started = time.monotonic()
        self._prepare_directory()
        state = ExportState.load(self.directory)
        result = ExportResult(self.directory, state="running")
        if state is not None and state.state == "done" and not self.options.new:
            return self._done_result(state, result, already=True)
        if state is not None and state.state in RUNNING_STATES and state.data.get("status_url"):
            saved = ExportRequest.from_json(state.data.get("request"))
            if saved != request:
                raise InputError(
                    f"{self.directory} holds an unfinished export of another request "
                    f"({saved.describe()})",
                    hint="run the same command to continue it, or --cancel it first",
                )
            result.resumed = True
            self.events.note(
                f"continuing the export started at {state.data.get('kicked_off_at')}"
                + (" (--new starts one only once it is finished)" if self.options.new else "")
            )
        else:
            if state is not None and state.state in ENDED_STATES[1:] and not self.options.new:
                raise InputError(
                    f"{self.directory} holds a {state.state} export",
                    hint="start a new one with --new",
                )
            state = self._kick_off(request, state, result)
        result.status_url = state.data.get("status_url")
        if state.state == "running":
            self._poll(state)
        self._download(state, result)
        self._finish(state)
        result.seconds = time.monotonic() - started
        return self._done_result(state, result, already=False)

    def status(self, *, poll: bool = True) -> dict[str, Any]:
        """The job's state from the directory; a running job's status URL is asked once."""
        state = self._require_state()
        document = status_document(state)
        if poll and state.state == "running" and state.data.get("status_url"):
            response = self._send(
                self.api,
                "GET",
                self._home_url(str(state.data["status_url"])),
                {"Accept": "application/json"},
                deadline=self.options.timeout,
            )
            content = response.read()
            response.close()
            document["server_status"] = response.status_code
            if response.status_code == 202:
                progress = response.headers.get("x-progress")
                document["progress"] = printable(progress) if progress else None
            elif response.status_code == 429:
                document["progress"] = "polled too soon (429)"
                document["retry_after"] = retry_after(response)
            elif response.status_code == 200:
                self._take_manifest(state, content)
                document = status_document(state)
                document["server_status"] = 200
            else:
                document["server_error"] = outcome_text(content) or None
        return document

    def cancel(self) -> dict[str, Any]:
        """DELETE the status URL and mark the directory cancelled."""
        state = self._require_state()
        url = state.data.get("status_url")
        document: dict[str, Any] = {"directory": str(self.directory), "previous": state.state}
        if not isinstance(url, str) or not url:
            raise InputError(
                f"the export in {self.directory} has no status URL (it never got past the "
                "kick-off): nothing to cancel"
            )
        response = self._send(
            self.api,
            "DELETE",
            self._home_url(url),
            {"Accept": FHIR_JSON},
            deadline=self.options.timeout,
        )
        content = response.read()
        response.close()
        status = response.status_code
        if status in (404, 410):
            document["server"] = "the server no longer knows the job"
        elif status == 401:
            raise self._unauthorized("the server refused the cancel", STATUS_SCOPE, content)
        elif not 200 <= status < 300:
            raise _status_error("the server refused the cancel", response, content)
        else:
            document["server"] = f"HTTP {status}"
        self._remove_parts(state)
        state.update(state="cancelled", cancelled_at=_now())
        document["state"] = "cancelled"
        return document

    # -- steps --

    def _prepare_directory(self) -> None:
        path = self.directory
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise InputError(f"--out {path} is not a directory")
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot make {path}: {exc.strerror or exc}") from None

    def _require_state(self) -> ExportState:
        state = ExportState.load(self.directory)
        if state is None:
            raise InputError(
                f"no export in {self.directory}",
                hint="start one: cwsctl -p PROFILE export --out DIR",
            )
        return state

    def _since_value(self, request: ExportRequest, previous: ExportState | None) -> str | None:
        if request.since != "last":
            return request.since
        last = previous.data.get("last_done") if previous is not None else None
        instant = last.get("transaction_instant") if isinstance(last, dict) else None
        if not isinstance(instant, str) or not instant:
            raise InputError(
                f"--since last: {self.directory} holds no finished export with a transaction "
                "time to continue from",
                hint="run a full export into it first (without --since)",
            )
        return instant

    def _kick_off(
        self, request: ExportRequest, previous: ExportState | None, result: ExportResult
    ) -> ExportState:
        since = self._since_value(request, previous)
        self._check_scopes(request)
        url = f"{self.fhir_base}/{request.path}"
        query = request.query(since)
        if query:
            url += "?" + urlencode(query, quote_via=quote, safe=",")
        old_files = list(previous.files) if previous is not None else []
        last_done = previous.data.get("last_done") if previous is not None else None
        state = ExportState(
            self.directory,
            {
                "version": STATE_VERSION,
                "state": "kicking-off",
                "profile": self.profile.name,
                "server": self.profile.url,
                "request": request.to_json(),
                "since_sent": since,
                "kickoff_url": url,
                "kicked_off_at": _now(),
                "last_done": last_done,
                "files": [],
            },
        )
        state.save()
        self.events.progress(f"kicking off {request.describe()}")
        response = self._send(
            self.api,
            "GET",
            url,
            {"Accept": FHIR_JSON, "Prefer": "respond-async"},
            timeout=KICKOFF_TIMEOUT_S,
        )
        content = response.read()
        response.close()
        status = response.status_code
        what = "the server refused the export"
        if status == 401:
            state.update(state="failed")
            raise self._unauthorized(what, request.scope, content)
        if status == 501:
            state.update(state="failed")
            raise ServerFailureError(
                f"{what}: HTTP 501 Not Implemented: OpenEMR's system scopes are switched off",
                hint=f"an OpenEMR administrator turns them on ({SYSTEM_SCOPES_PLACE}); then "
                f"cwsctl -p {self.profile.name} oauth register --export-scopes, and the "
                f"administrator enables the client ({ENABLE_CLIENT_PLACE})",
            )
        if status != 202:
            state.update(state="failed")
            if status < 400:
                raise ServerFailureError(
                    f"the kick-off answered HTTP {status}, not 202 Accepted with a status URL"
                )
            raise _status_error(what, response, content)
        location = response.headers.get("content-location", "").strip()
        if not location:
            state.update(state="failed")
            raise ServerFailureError("the kick-off answered 202 without a Content-Location")
        status_url = urljoin(str(response.url), location)
        if urlsplit(status_url).scheme not in ("http", "https"):
            state.update(state="failed")
            raise ServerFailureError("the kick-off's Content-Location is not an http(s) URL")
        # A new export replaces the previous one's files only once the server took it.
        for entry in old_files:
            with contextlib.suppress(OSError):
                (self.directory / str(entry.get("path"))).unlink()
        with contextlib.suppress(OSError):
            (self.directory / MANIFEST_FILE).unlink()
        state.update(state="running", status_url=status_url)
        result.kicked_off = True
        return state

    def _poll(self, state: ExportState) -> None:
        url = self._home_url(str(state.data["status_url"]))
        give_up = time.monotonic() + self.options.wait
        interval = POLL_START_S
        failures = 0
        while True:
            delay: float
            try:
                response = self._send(
                    self.api,
                    "GET",
                    url,
                    {"Accept": "application/json"},
                    deadline=self.options.timeout,
                )
                content = response.read()
                response.close()
            except NetworkError as exc:
                if isinstance(exc.__cause__, ResponseTooLargeError) or failures >= STATUS_RETRIES:
                    raise
                failures += 1
                delay = min(2.0 ** (failures - 1), POLL_MAX_S)
                self.events.progress(f"status URL unreachable; again in {delay:.0f} s")
            else:
                status = response.status_code
                asked = retry_after(response)
                if status == 200:
                    self._take_manifest(state, content)
                    return
                if status == 202:
                    failures = 0
                    progress = response.headers.get("x-progress")
                    shown = printable(progress) if progress else "running"
                    delay = asked if asked is not None else interval
                    interval = min(interval * 1.5, POLL_MAX_S)
                    self.events.progress(f"export {shown}; next poll in {delay:.0f} s")
                elif status == 429:
                    interval = min(interval * 2, POLL_MAX_S)
                    delay = asked if asked is not None else interval
                    self.events.progress(f"asked to slow down (429); next poll in {delay:.0f} s")
                elif status >= 500 and failures < STATUS_RETRIES:
                    failures += 1
                    delay = asked if asked is not None else min(2.0 ** (failures - 1), POLL_MAX_S)
                    self.events.progress(
                        f"status URL answered {status}; retry {failures} in {delay:.0f} s"
                    )
                elif status in (404, 410):
                    state.update(state="expired")
                    raise _status_error(
                        "the server no longer knows the export job",
                        response,
                        content,
                        hint="it was cancelled or has expired; start a new one with --new",
                    )
                elif status == 401:
                    raise self._unauthorized(
                        "the server refused the status request", STATUS_SCOPE, content
                    )
                else:
                    state.update(state="failed")
                    raise _status_error(
                        "the export job failed",
                        response,
                        content,
                        hint="start a new one with --new once the cause is fixed",
                    )
            if time.monotonic() + delay > give_up:
                raise NetworkError(
                    f"the export did not finish within {self.options.wait:g} s (--wait)",
                    hint="its state is kept: run the same command again to keep waiting",
                )
            self.options.sleep(delay)

    def _take_manifest(self, state: ExportState, content: bytes) -> None:
        try:
            manifest = loads_json(content)
        except (ValueError, UnicodeDecodeError):
            manifest = None
        if not isinstance(manifest, dict):
            raise ServerFailureError("the completed export's status answer is not a JSON object")
        requires = manifest.get("requiresAccessToken")
        files: list[dict[str, Any]] = []
        inline: list[str] = []
        counters: dict[str, int] = {}
        for kind in ("output", "error", "deleted"):
            entries = manifest.get(kind) or []
            if not isinstance(entries, list):
                raise ServerFailureError(f"the manifest's {kind!r} is not a list")
            if len(files) + len(inline) + len(entries) > MAX_FILES:
                raise ServerFailureError(
                    f"the manifest lists more than {MAX_FILES} files: not exported",
                    hint="export fewer types or patients at a time (--type, --group, --since)",
                )
            for index, entry in enumerate(entries):
                if isinstance(entry, dict) and entry.get("resourceType") == "OperationOutcome":
                    inline.append(outcome_text(json.dumps(entry).encode()) or "an error")
                    continue  # OpenEMR puts some OperationOutcomes straight into "error"
                if not isinstance(entry, dict):
                    raise ServerFailureError(f"the manifest's {kind}[{index}] is not an object")
                kind_type, url = entry.get("type"), entry.get("url")
                if not isinstance(kind_type, str) or not _TYPE.fullmatch(kind_type):
                    raise ServerFailureError(
                        f"the manifest's {kind}[{index}] names no valid resource type"
                    )
                if not isinstance(url, str) or not url:
                    raise ServerFailureError(f"the manifest's {kind}[{index}] has no url")
                count = entry.get("count")
                if count is not None and (not isinstance(count, int) or count < 0):
                    count = None
                prefix = {"output": "", "error": "error-", "deleted": "deleted-"}[kind]
                key = prefix + kind_type
                counters[key] = counters.get(key, 0) + 1
                files.append(
                    {
                        "path": f"{key}-{counters[key]}.ndjson",
                        "kind": kind,
                        "index": index,
                        "type": kind_type,
                        "url": urljoin(str(state.data["status_url"]), url),
                        "count": count,
                        "done": False,
                    }
                )
        raw_time = manifest.get("transactionTime")
        state.update(
            state="downloading",
            manifest=manifest,
            requires_access_token=requires is not False,
            transaction_time=raw_time,
            transaction_instant=normalise_transaction_time(raw_time),
            inline_errors=inline,
            files=files,
        )
        if raw_time is not None and state.data["transaction_instant"] is None:
            self.events.note(
                "the manifest's transactionTime cannot be read: --since last will not work "
                "from this export"
            )

    def _remove_parts(self, state: ExportState) -> None:
        for entry in state.files:
            with contextlib.suppress(OSError):
                (self.directory / f"{entry['path']}.part").unlink()

    def _download(self, state: ExportState, result: ExportResult) -> None:
        self._remove_parts(state)  # a partial file is restarted (OpenEMR serves no ranges)
        pending = []
        for entry in state.files:
            local = self.directory / entry["path"]
            if entry.get("done") and local.is_file() and local.stat().st_size == entry.get("bytes"):
                continue
            entry["done"] = False
            pending.append(entry)
        if not pending:
            return
        total = len(state.files)
        done_count = [total - len(pending)]
        self.events.progress(f"downloading {len(pending)} of {total} files")
        bad: list[str] = []
        fatal: list[BaseException] = []
        work: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        for entry in pending:
            work.put(entry)
        results: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()

        def worker() -> None:
            while not self._stop.is_set():
                try:
                    entry = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    self._fetch_file(state, entry)
                except BaseException as exc:  # handed to the main thread
                    results.put(exc)
                else:
                    results.put(None)

        # Daemon threads, not an executor: on Ctrl-C a thread stuck in a stalled read must not
        # keep the process (an executor's threads are joined at exit).
        threads = [
            threading.Thread(target=worker, name=f"cwsctl-export-{number}", daemon=True)
            for number in range(min(max(1, self.options.parallel), len(pending)))
        ]
        for thread in threads:
            thread.start()
        outstanding = len(pending)
        try:
            while outstanding:
                try:
                    error = results.get(timeout=0.5)
                except queue.Empty:
                    if results.empty() and not any(t.is_alive() for t in threads):
                        break  # stopped by a fatal error: the rest were never started
                    continue
                outstanding -= 1
                if error is None:
                    result.fetched += 1
                    done_count[0] += 1
                    self.events.progress(f"{done_count[0]} of {total} files downloaded")
                elif isinstance(error, FileCheckError):
                    bad.append(error.message)
                elif not isinstance(error, _Stopped):
                    fatal.append(error)
                    self._stop.set()
        except BaseException:
            self._stop.set()
            give_up = time.monotonic() + STOP_GRACE_S
            for thread in threads:
                thread.join(max(0.0, give_up - time.monotonic()))
            self._remove_parts(state)  # a thread still stuck in a read leaves its .part
            raise
        for thread in threads:
            thread.join()
        if fatal:
            first = fatal[0]
            if isinstance(first, FileGoneError):
                state.update(state="expired")
            raise first
        if bad:
            raise FileCheckError(
                bad[0] + (f" (and {len(bad) - 1} more files)" if len(bad) > 1 else ""),
                hint="the file was not kept; running the same command again fetches only the "
                "files not yet accepted",
            )

    def _fetch_file(self, state: ExportState, entry: dict[str, Any]) -> None:
        name = entry["path"]
        requires = bool(state.data.get("requires_access_token", True))
        url = self._home_url(entry["url"]) if requires else entry["url"]
        last_error: CwsError | None = None
        for attempt in range(FILE_ATTEMPTS):
            if self._stop.is_set():
                raise _Stopped
            if attempt and self._stop.wait(min(2.0 ** (attempt - 1), 8.0)):
                raise _Stopped
            try:
                self._fetch_once(state, entry, url, requires)
                return
            except FileCheckError:
                raise
            except _Retry as retry:
                last_error = retry.error
                if retry.delay and self._stop.wait(retry.delay):
                    raise _Stopped from None
        assert last_error is not None
        raise type(last_error)(
            f"{name}: {last_error.message} (after {FILE_ATTEMPTS} attempts)",
            hint="its state is kept: run the same command again to continue",
        )

    def _fetch_once(
        self, state: ExportState, entry: dict[str, Any], url: str, requires: bool
    ) -> None:
        name = entry["path"]
        part = self.directory / f"{name}.part"
        started = time.perf_counter()
        try:
            response = self._send(
                self.files_client, "GET", url, {"Accept": NDJSON}, authorize=requires, stream=True
            )
        except NetworkError as exc:
            raise _Retry(exc) from None
        try:
            status = response.status_code
            if status != 200:
                content = _head_of(response)
                if status in (404, 410):
                    raise FileGoneError(
                        f"{name}: the server no longer has it (HTTP {status}; {entry['url']})",
                        hint="OpenEMR deletes export files an hour after the job started: "
                        "start a new export with --new",
                    )
                if status == 401:
                    raise self._unauthorized(
                        f"{name}: the download was refused", BINARY_SCOPE, content
                    )
                if status == 429 or status >= 500:
                    raise _Retry(_status_error(f"{name}", response, content), retry_after(response))
                raise _status_error(f"{name}: the download was refused", response, content)
            check = NdjsonCheck(entry["type"])
            digest = hashlib.sha256()
            size = 0
            fd = os.open(
                part,
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0),
                0o600,
            )
            try:
                try:
                    for chunk in response.iter_raw(CHUNK_SIZE):
                        if self._stop.is_set():
                            raise _Stopped
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view) :]
                        digest.update(chunk)
                        check.feed(chunk)
                        size += len(chunk)
                except ResponseTooLargeError:
                    raise NetworkError(
                        f"{name}: larger than {format_size(self.options.max_file_size)} "
                        "(--max-file-size); stopped",
                        hint="raise --max-file-size if the file is legitimately this large",
                    ) from None
                except httpx.HTTPError as exc:
                    raise _Retry(network_error(exc, "GET", url)) from None
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as exc:
            response.close()
            with contextlib.suppress(OSError):
                part.unlink()
            cause = exc.error if isinstance(exc, _Retry) else exc
            failed = None if response.status_code != 200 else type(cause).__name__.lstrip("_")
            self._audit("GET", url, response.status_code, started, error=failed)
            raise
        response.close()
        self._audit("GET", url, 200, started, digest.hexdigest())
        length = response.headers.get("content-length", "")
        if re.fullmatch(r"[0-9]{1,20}", length) and int(length) != size:
            part.unlink()
            raise _Retry(NetworkError(f"{name}: got {size} of {length} bytes"))
        check.finish()
        problem = check.problem
        count = entry.get("count")
        if problem is None and isinstance(count, int) and count != check.lines:
            problem = f"{check.lines} resources, the manifest says {count}"
        if problem is not None:
            part.unlink()
            raise FileCheckError(f"{name} ({entry['type']}, {entry['url']}): {problem}")
        os.replace(part, self.directory / name)
        with state.lock:
            entry.update(done=True, bytes=size, lines=check.lines, sha256=digest.hexdigest())
            state.save()

    def _finish(self, state: ExportState) -> None:
        manifest = state.data.get("manifest")
        document = dict(manifest) if isinstance(manifest, dict) else {}
        for kind in ("output", "error", "deleted"):
            entries = document.get(kind)
            if not isinstance(entries, list):
                continue
            entries = [dict(e) if isinstance(e, dict) else e for e in entries]
            for entry in state.files:
                index = entry["index"]
                if (
                    entry["kind"] == kind
                    and index < len(entries)
                    and isinstance(entries[index], dict)
                ):
                    entries[index].update(
                        path=entry["path"],
                        bytes=entry["bytes"],
                        lines=entry["lines"],
                        sha256=entry["sha256"],
                    )
            document[kind] = entries
        document["cwsctl"] = {
            "transactionInstant": state.data.get("transaction_instant"),
            "statusUrl": state.data.get("status_url"),
            "kickoffUrl": state.data.get("kickoff_url"),
            "finishedAt": _now(),
        }
        atomic_write(
            self.directory / MANIFEST_FILE,
            json.dumps(document, indent=1).encode("utf-8") + b"\n",
            what="export manifest",
        )
        finished = _now()
        state.update(
            state="done",
            finished_at=finished,
            last_done={
                "transaction_time": state.data.get("transaction_time"),
                "transaction_instant": state.data.get("transaction_instant"),
                "finished_at": finished,
            },
        )

    def _done_result(
        self, state: ExportState, result: ExportResult, *, already: bool
    ) -> ExportResult:
        result.state = state.state
        result.already_done = already
        result.status_url = state.data.get("status_url")
        result.transaction_time = state.data.get("transaction_time")
        result.transaction_instant = state.data.get("transaction_instant")
        result.files = list(state.files)
        result.token_renewals = self.token_renewals
        inline = state.data.get("inline_errors")
        result.inline_errors = [str(i) for i in inline] if isinstance(inline, list) else []
        return result


class _Retry(Exception):
    """One download attempt failed in a way another attempt may mend."""

    def __init__(self, error: CwsError, delay: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.delay = delay

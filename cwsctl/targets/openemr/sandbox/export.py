"""Bulk FHIR export for the OpenEMR flavour: ``$export``, ``$bulkdata-status`` and ``Binary``.

Two modes (``export_mode``):

- ``openemr``: OpenEMR as its source shows it (``../shared/servers/OPENEMR.md``, "Bulk FHIR
  export"; ``EXP`` = ``FhirOperationExportRestController.php``). The whole export runs inside
  the kick-off request, then 202 with ``Content-Location`` and nothing else; types come from
  ``type`` (``_type`` and ``_typeFilter`` are never read); the status answers 200 at once with a
  manifest whose ``transactionTime`` is a serialised PHP ``DateTime`` and whose ``output``
  entries carry no ``count``; every requested type gets a document, empty ones too (EXP
  ``processResourceExportForJob`` writes one per resource whatever it holds); files expire an
  hour after the job started;
- ``spec``: the FHIR Bulk Data Access IG. The kick-off answers 202 at once and the files are
  written by a thread; the status answers 202 with ``X-Progress`` and ``Retry-After`` until
  ``export_delay`` seconds have passed (429 with ``Retry-After`` when polled sooner than told),
  then 200 with an instant ``transactionTime`` and ``count`` per file; types from ``_type``,
  ``_typeFilter`` for simple Patient searches; types the token cannot read are reported in an
  ``error`` file; empty files are not listed.

Both modes share the routes and their scopes (``system/*.$export``, ``system/Patient.$export``,
``system/Group.$export``, ``system/*.$bulkdata-status``, ``system/Binary.read`` and
``system/<R>.read`` per exported type), 501 with no body while system scopes are off, the
``Accept``/``Prefer`` checks, jobs kept per client, DELETE, and the files: NDJSON written to
``data_dir/openemr-exports`` when the job runs (streamed from SQLite, never held in memory), one
``\\n`` between records and none after the last, served from disk with ``Content-Length``.

Only patients are stored: the Patient file holds every stored patient (as the FHIR read shows
it, filtered by ``_since`` and the Group); other exportable types the token may read are empty.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import formatdate
from pathlib import Path
from typing import IO, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cwsctl.core.files import ensure_private_dir
from cwsctl.sandbox.envelope import Answer
from cwsctl.targets.openemr.sandbox import patients
from cwsctl.targets.openemr.sandbox.api import (
    FHIR_JSON,
    fhir_outcome,
    kernel_body,
    kernel_error,
    unauthorized,
)
from cwsctl.targets.openemr.sandbox.scopes import (
    FHIR_READ_RESOURCES,
    V703,
    allows,
    allows_operation,
)
from cwsctl.targets.openemr.sandbox.state import PHP_DEFAULT_TYPE, OpenEmrState
from cwsctl.targets.openemr.sandbox.store import Grant, Patient

OPENEMR_MODE = "openemr"
SPEC_MODE = "spec"
EXPORT_MODES = (OPENEMR_MODE, SPEC_MODE)
#: OpenEMR's MAX_DOCUMENT_ACCESS_TIME: documents expire an hour after the job started (EXP:49).
DEFAULT_EXPORT_TTL_S = 3600.0
EXPORTS_DIR = "openemr-exports"
NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
ACCEPT = "application/fhir+json"
PREFER = "respond-async"
CHUNK = 64 * 1024
#: FHIR resources OpenEMR reads but has no export service for (FhirExportServiceLocator); every
#: other readable one is exportable. Outside the patient compartment (SYSTEM_ONLY) only the
#: system-level export operation supports a type.
NOT_EXPORTABLE = frozenset(
    {"Appointment", "Binary", "OperationDefinition", "Questionnaire", "ValueSet"}
)
EXPORTABLE = tuple(r for r in FHIR_READ_RESOURCES if r not in NOT_EXPORTABLE)
SYSTEM_ONLY = frozenset(
    {
        "Group",
        "Location",
        "Medication",
        "Organization",
        "Person",
        "Practitioner",
        "PractitionerRole",
    }
)
#: FHIR resource types a spec-mode ``_type`` may name (unknown ones are a 400).
KNOWN_TYPES = frozenset(FHIR_READ_RESOURCES) - {"OperationDefinition"}
#: Patient search parameters a spec-mode ``_typeFilter`` may use.
TYPE_FILTER_PARAMS = ("_id", "gender", "birthdate", "family", "given", "name")
NOT_FOUND_704 = "The job id you submitted was not found"
NOT_FOUND_703 = "The job id you submitted was invalid"
NO_EXPORT_OPERATION = "Resource does not support this export operation"
_DATE_SEARCH = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?)?)?)?"
    r"(Z|[+-]\d{2}:\d{2})?$"
)
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS export_jobs (
    uuid       TEXT PRIMARY KEY,
    client_id  TEXT NOT NULL,
    role       TEXT NOT NULL,
    mode       TEXT NOT NULL,
    request    TEXT NOT NULL,
    base       TEXT NOT NULL,
    started    REAL NOT NULL,
    ready_at   REAL NOT NULL,
    status     TEXT NOT NULL,
    output     TEXT NOT NULL DEFAULT '[]',
    errors     TEXT NOT NULL DEFAULT '[]',
    next_poll  REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS export_documents (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job        TEXT NOT NULL,
    name       TEXT NOT NULL,
    type       TEXT NOT NULL,
    path       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    count      INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
"""
RUNNING = "running"
DONE = "done"


@dataclass
class ExportFaults:
    """Export fault switches; set them on a running server (``server.export_faults``).

    - ``cut_file_after``: the next download of a file longer than this many bytes sends only
      that many bytes of its full ``Content-Length``, then closes the connection (one shot);
    - ``status_errors``: the next N status polls answer 500 (openemr: the kernel's body; spec:
      an OperationOutcome with code ``transient``), counting down;
    - ``wrong_type``: a resource type; while set, new jobs write that type's file with a first
      line of another ``resourceType`` (counted in the spec manifest's ``count``);
    - ``wrong_count``: spec mode, while set: every manifest ``count`` is one more than the lines.
    """

    cut_file_after: int | None = None
    status_errors: int = 0
    wrong_type: str | None = None
    wrong_count: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def take_cut(self, size: int) -> int | None:
        """The byte count to cut a ``size``-byte download at (using the switch up), or None."""
        with self._lock:
            cut = self.cut_file_after
            if cut is None or cut >= size:
                return None
            self.cut_file_after = None
            return max(cut, 0)

    def take_status_error(self) -> bool:
        """Whether this status poll answers 500 (counting the switch down)."""
        with self._lock:
            if self.status_errors > 0:
                self.status_errors -= 1
                return True
            return False


class FileAnswer(Answer):
    """A Binary download: the envelope streams ``file`` (``size`` bytes, or ``cut`` of them)."""

    __slots__ = ("cut", "file", "size")

    def __init__(
        self, file: IO[bytes], size: int, headers: list[tuple[bytes, bytes]], cut: int | None
    ) -> None:
        super().__init__(200, b"", headers, content_type=NDJSON.encode("ascii"))
        self.file = file
        self.size = size
        self.cut = cut

    def chunks(self) -> Iterator[bytes]:
        """The bytes to send, in chunks (closing the file at the end)."""
        limit = self.size if self.cut is None else self.cut
        try:
            sent = 0
            while sent < limit:
                chunk = self.file.read(min(CHUNK, limit - sent))
                if not chunk:
                    break
                sent += len(chunk)
                yield chunk
        finally:
            self.file.close()


@dataclass(frozen=True)
class Document:
    """A stored export file (OpenEMR: a Document in folder ``system-fhir-export``)."""

    id: int
    job: str
    name: str
    type: str
    path: Path
    size: int
    count: int
    expires_at: float


@dataclass
class Job:
    """An export job row."""

    uuid: str
    client_id: str
    role: str
    mode: str
    request: str
    base: str
    started: float
    ready_at: float
    status: str
    output: list[dict[str, Any]]
    errors: list[Any]
    next_poll: float


@dataclass(frozen=True)
class Plan:
    """What a job exports: kind (system, patient, group), types, filters."""

    kind: str
    resources: list[str]
    denied: list[str]  # spec mode: types the token may not read (reported in an error file)
    since: str | None  # UTC, YYYY-MM-DDThh:mm:ssZ, compared with created_at
    group: str | None
    filters: dict[str, list[list[tuple[str, str]]]]  # spec: type → OR of AND-ed params


class ExportStore:
    """Jobs and documents in ``openemr.db`` (their own connection and lock), files on disk."""

    def __init__(self, db_path: Path, files: Path) -> None:
        from cwsctl.sandbox.db import open_private_db

        self.db_path = db_path
        self.files = files
        self._lock = threading.Lock()
        self._db = open_private_db(db_path, _SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def add_job(self, job: Job) -> None:
        """Store a new job."""
        with self._lock:
            self._db.execute(
                "INSERT INTO export_jobs (uuid, client_id, role, mode, request, base, started,"
                " ready_at, status, output, errors) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.uuid,
                    job.client_id,
                    job.role,
                    job.mode,
                    job.request,
                    job.base,
                    job.started,
                    job.ready_at,
                    job.status,
                    json.dumps(job.output),
                    json.dumps(job.errors),
                ),
            )

    def finish_job(self, job_uuid: str, output: list[dict[str, Any]], errors: list[Any]) -> bool:
        """Mark a job done with its output and errors; False if it is gone (cancelled)."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE export_jobs SET status = ?, output = ?, errors = ? WHERE uuid = ?",
                (DONE, json.dumps(output), json.dumps(errors), job_uuid),
            )
        return cursor.rowcount > 0

    def set_next_poll(self, job_uuid: str, when: float) -> None:
        """Remember when the client was told to poll again (spec mode's 429)."""
        with self._lock:
            self._db.execute(
                "UPDATE export_jobs SET next_poll = ? WHERE uuid = ?", (when, job_uuid)
            )

    def job(self, job_uuid: str, client_id: str, role: str) -> Job | None:
        """The job ``job_uuid`` of this client and user, or None (OpenEMR's lookup)."""
        with self._lock:
            row = self._db.execute(
                "SELECT uuid, client_id, role, mode, request, base, started, ready_at, status,"
                " output, errors, next_poll FROM export_jobs"
                " WHERE uuid = ? AND client_id = ? AND role = ?",
                (job_uuid, client_id, role),
            ).fetchone()
        if row is None:
            return None
        return Job(
            uuid=row[0],
            client_id=row[1],
            role=row[2],
            mode=row[3],
            request=row[4],
            base=row[5],
            started=row[6],
            ready_at=row[7],
            status=row[8],
            output=json.loads(row[9]),
            errors=json.loads(row[10]),
            next_poll=row[11],
        )

    def add_document(
        self, job: str, name: str, kind: str, path: Path, size: int, count: int, expires_at: float
    ) -> int:
        """Store a written file; return its document id."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO export_documents (job, name, type, path, size, count, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job, name, kind, str(path), size, count, expires_at),
            )
        assert cursor.lastrowid is not None
        return int(cursor.lastrowid)

    def document(self, document_id: int) -> Document | None:
        """A document by id (expired ones included), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, job, name, type, path, size, count, expires_at"
                " FROM export_documents WHERE id = ?",
                (document_id,),
            ).fetchone()
        if row is None:
            return None
        return Document(row[0], row[1], row[2], row[3], Path(row[4]), *row[5:])

    def delete_job(self, job_uuid: str) -> None:
        """Remove a job, its documents and their files."""
        self._delete_documents("job = ?", job_uuid, "DELETE FROM export_jobs WHERE uuid = ?")

    def purge_expired(self, now: float) -> None:
        """Delete the files (and rows) of documents past their expiry."""
        self._delete_documents("expires_at <= ?", now)

    def _delete_documents(self, where: str, value: object, *also: str) -> None:
        """Delete the documents matching ``where`` (one ``?`` for ``value``) and their files;
        the statements ``also`` (same parameter) run in the same locked step."""
        # ``where`` is one of this class's constants, never a caller's text.
        select = f"SELECT path FROM export_documents WHERE {where}"  # noqa: S608
        delete = f"DELETE FROM export_documents WHERE {where}"  # noqa: S608
        with self._lock:
            rows = self._db.execute(select, (value,)).fetchall()
            self._db.execute(delete, (value,))
            for statement in also:
                self._db.execute(statement, (value,))
        for (path,) in rows:
            Path(path).unlink(missing_ok=True)

    def clear(self) -> None:
        """Forget every job and document, and delete the files."""
        with self._lock:
            self._db.execute("DELETE FROM export_documents")
            self._db.execute("DELETE FROM export_jobs")
        if self.files.exists():
            for path in self.files.iterdir():
                path.unlink(missing_ok=True)


class ExportService:
    """The export routes over one :class:`OpenEmrState` and :class:`ExportStore`."""

    def __init__(
        self,
        state: OpenEmrState,
        data_dir: Path,
        *,
        mode: str = OPENEMR_MODE,
        delay: float = 0.0,
        ttl: float = DEFAULT_EXPORT_TTL_S,
        faults: ExportFaults | None = None,
    ) -> None:
        if mode not in EXPORT_MODES:
            raise ValueError(f"export_mode must be one of {', '.join(EXPORT_MODES)}, not {mode!r}")
        if not (math.isfinite(delay) and delay >= 0):
            raise ValueError(f"export_delay must be a number of seconds ≥ 0, not {delay!r}")
        if not (math.isfinite(ttl) and ttl > 0):
            raise ValueError(f"export_ttl must be a number of seconds > 0, not {ttl!r}")
        self.state = state
        self.mode = mode
        self.delay = delay
        self.ttl = ttl
        self.faults = faults if faults is not None else ExportFaults()
        files = data_dir / EXPORTS_DIR
        self.store = ExportStore(state.store.path, files)
        self.group_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"cwsctl-sandbox:{state.site}:panel"))
        self._cancelled: set[str] = set()
        self._threads: list[threading.Thread] = []

    def close(self) -> None:
        """Wait for running spec-mode jobs (briefly) and close the store."""
        self._cancelled.update(t.name for t in self._threads)
        for thread in self._threads:
            thread.join(timeout=5)
        self.store.close()

    def clear(self) -> None:
        """Cancel running jobs, forget every job and document, delete the files."""
        self._cancelled.update(t.name for t in self._threads if t.is_alive())
        self.store.clear()

    # -- shared checks --------------------------------------------------------------------------
    def _off(self) -> Response | None:
        """501, no body, while system scopes are off (EXP:167)."""
        if self.state.system_scopes:
            return None
        return Response(b"", 501, media_type=PHP_DEFAULT_TYPE)

    def _outcome(self, status: int, text: str, code: str = "processing") -> Response:
        """An error as the mode words it: OpenEMR's OperationOutcome (``details.text``,
        ``application/json``) or a FHIR one (``diagnostics``, ``application/fhir+json``)."""
        if self.mode == OPENEMR_MODE:
            return JSONResponse(_emr_outcome(text), status)
        return JSONResponse(fhir_outcome(text, code), status, media_type=FHIR_JSON)

    def _readable(self, grant: Grant, resource: str) -> bool:
        """``hasAccessToResource``: the token holds ``system/<R>.read``."""
        return allows(self.state.version, grant.role, grant.scope, resource, "r")

    # -- kick-off -------------------------------------------------------------------------------
    async def kickoff_system(self, request: Request) -> Response:
        return await self._kickoff(request, "system", "*")

    async def kickoff_patient(self, request: Request) -> Response:
        return await self._kickoff(request, "patient", "Patient")

    async def kickoff_group(self, request: Request) -> Response:
        return await self._kickoff(request, "group", "Group")

    async def _kickoff(self, request: Request, kind: str, resource: str) -> Response:
        off = self._off()
        if off is not None:
            return off
        grant: Grant = request.state.grant
        if not allows_operation(grant.role, grant.scope, resource, "$export"):
            return unauthorized(self.state.version)
        group = request.path_params.get("id") if kind == "group" else None
        if self.mode == OPENEMR_MODE:
            plan_or_refusal = self._openemr_plan(request, grant, kind, group)
        else:
            plan_or_refusal = self._spec_plan(request, grant, kind, group)
        if isinstance(plan_or_refusal, Response):
            return plan_or_refusal
        plan = plan_or_refusal
        now = time.time()
        self.store.purge_expired(now)
        base = self.state.base(request)
        job = Job(
            uuid=str(uuid.uuid4()),
            client_id=grant.client_id,
            role=grant.role,
            mode=self.mode,
            request=self._request_text(request),
            base=base,
            started=math.floor(now) if self.mode == OPENEMR_MODE else now,
            ready_at=now + (self.delay if self.mode == SPEC_MODE else 0.0),
            status=RUNNING,
            output=[],
            errors=[],
            next_poll=0.0,
        )
        self.store.add_job(job)
        if self.mode == OPENEMR_MODE:
            await asyncio.to_thread(self._run, job, plan)  # inside the kick-off (EXP:216)
        else:
            thread = threading.Thread(target=self._run, args=(job, plan), name=job.uuid)
            thread.daemon = True
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()
        location = f"{base}/apis/{self.state.site}/fhir/$bulkdata-status?job={job.uuid}"
        return Response(
            b"", 202, headers={"Content-Location": location}, media_type="application/json"
        )

    def _request_text(self, request: Request) -> str:
        """The manifest's ``request``: 7.0.4+ openemr the path and query as sent (Symfony
        ``getRequestUri``); 7.0.3 and spec mode the full URL."""
        raw = request.scope.get("raw_path") or request.url.path.encode("utf-8")
        query = request.scope.get("query_string", b"")
        path = bytes(raw).decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")
        if self.mode == OPENEMR_MODE and self.state.version != V703:
            return path
        return f"{self.state.base(request)}{path}"

    def _openemr_plan(
        self, request: Request, grant: Grant, kind: str, group: str | None
    ) -> Plan | Response:
        query = request.query_params
        since = None
        if "_since" in query:  # parsed before the controller's try (EXP:173)
            since = _openemr_since(query["_since"])
            if since is None:
                message = f"Date format invalid: {query['_since'][:64]}"
                if self.state.version == V703:
                    return Response(message, 500, media_type=PHP_DEFAULT_TYPE)
                return kernel_error(500, message)
        accept, prefer = request.headers.get("accept"), request.headers.get("prefer")
        if accept != ACCEPT:
            return self._outcome(400, "'Accept' header invalid")
        if prefer != PREFER:
            return self._outcome(400, "'Prefer' header invalid")
        output_format = query.get("_outputFormat", OUTPUT_FORMATS[0])
        if output_format not in OUTPUT_FORMATS:
            text = f"Invalid output format {output_format[:64]}"
            if self.state.version == V703:
                return Response(text, 500, media_type=PHP_DEFAULT_TYPE)
            return self._outcome(400, text)
        named = [t.strip() for t in query.get("type", "").split(",") if t.strip()]
        denied_status = 400 if self.state.version == V703 else 401
        if named:
            for resource in named:
                if not self._readable(grant, resource):
                    return self._outcome(
                        denied_status, f"AccessToken does not grant access to resource {resource}"
                    )
            resources = named
        else:
            resources = [r for r in EXPORTABLE if self._readable(grant, r)]
            if not resources:
                return self._outcome(
                    denied_status,
                    "AccessToken does grant access to any supported system resources",
                )
        return Plan(kind, resources, [], since, group, {})

    def _spec_plan(
        self, request: Request, grant: Grant, kind: str, group: str | None
    ) -> Plan | Response:
        query = request.query_params
        if request.headers.get("accept") != ACCEPT:
            return self._outcome(400, f"Accept must be {ACCEPT}", "invalid")
        if request.headers.get("prefer") != PREFER:
            return self._outcome(400, f"Prefer must be {PREFER}", "invalid")
        output_format = query.get("_outputFormat", OUTPUT_FORMATS[0])
        if output_format not in OUTPUT_FORMATS:
            return self._outcome(400, f"unsupported _outputFormat {output_format[:64]}", "invalid")
        since = None
        if "_since" in query:
            since = _instant_utc(query["_since"])
            if since is None:
                return self._outcome(400, "_since must be a FHIR instant", "invalid")
        named: list[str] = []
        for value in query.getlist("_type"):
            named += [t.strip() for t in value.split(",") if t.strip()]
        unknown = [t for t in named if t not in KNOWN_TYPES]
        if unknown:
            return self._outcome(400, f"unsupported _type {unknown[0][:64]}", "not-supported")
        wanted = list(dict.fromkeys(named)) or list(EXPORTABLE)
        resources, denied = [], []
        for resource in wanted:
            supported = resource in EXPORTABLE and (kind == "system" or resource not in SYSTEM_ONLY)
            if supported and self._readable(grant, resource):
                resources.append(resource)
            elif named:  # asked for by name: say why it is missing
                denied.append(resource)
        filters: dict[str, list[list[tuple[str, str]]]] = {}
        for value in query.getlist("_typeFilter"):
            resource, _, search = value.partition("?")
            params = [tuple(p.split("=", 1)) for p in search.split("&") if p]
            if resource != "Patient" or not params or any(len(p) != 2 for p in params):
                return self._outcome(
                    400, f"the sandbox cannot apply _typeFilter {value[:80]}", "not-supported"
                )
            pairs = [(k, v) for k, v in params]
            if any(k not in TYPE_FILTER_PARAMS for k, _ in pairs):
                return self._outcome(
                    400, f"the sandbox cannot apply _typeFilter {value[:80]}", "not-supported"
                )
            filters.setdefault(resource, []).append(pairs)
        return Plan(kind, resources, denied, since, group, filters)

    # -- the job --------------------------------------------------------------------------------
    def _run(self, job: Job, plan: Plan) -> None:
        """Write every file of ``job`` and record its output (in a worker thread)."""
        ensure_private_dir(self.store.files)
        expires = job.started + self.ttl
        output: list[dict[str, Any]] = []
        errors: list[Any] = []
        for resource in plan.resources:
            if job.uuid in self._cancelled:
                return
            if self.mode == OPENEMR_MODE and not _supports(resource, plan.kind):
                errors.append(_emr_outcome(NO_EXPORT_OPERATION))  # the object itself (EXP:418)
                continue
            name = f"{resource}-{job.uuid}.ndjson"
            path = self.store.files / name
            lines = self._records(resource, plan) if resource == "Patient" else iter(())
            if self.faults.wrong_type == resource:
                other = "Observation" if resource != "Observation" else "Patient"
                lines = _prepend(json.dumps({"resourceType": other, "id": "wrong-type"}), lines)
            written = _write_ndjson(path, lines, lambda: job.uuid in self._cancelled)
            if written is None:
                path.unlink(missing_ok=True)
                return
            size, count = written
            if self.mode == SPEC_MODE and count == 0:
                path.unlink(missing_ok=True)  # spec mode lists only files that hold something
                continue
            doc = self.store.add_document(job.uuid, name, resource, path, size, count, expires)
            output.append({"type": resource, "doc": doc, "count": count})
        if plan.denied:
            name = f"OperationOutcome-{job.uuid}-{uuid.uuid4()}.ndjson"
            path = self.store.files / name
            texts = (
                json.dumps(
                    fhir_outcome(f"{r} not exported: no system/{r}.read or no export", "processing")
                )
                for r in plan.denied
            )
            written = _write_ndjson(path, texts, lambda: False)
            assert written is not None
            doc = self.store.add_document(
                job.uuid, name, "OperationOutcome", path, written[0], written[1], expires
            )
            errors.append({"type": "OperationOutcome", "doc": doc, "count": written[1]})
        if not self.store.finish_job(job.uuid, output, errors):
            for entry in output + [e for e in errors if "doc" in e]:
                doc_row = self.store.document(int(entry["doc"]))
                if doc_row is not None:
                    doc_row.path.unlink(missing_ok=True)

    def _records(self, resource: str, plan: Plan) -> Iterator[str]:
        """The stored patients as NDJSON lines, read with a connection of their own."""
        if plan.kind == "group" and plan.group != self.group_id:
            return
        db = sqlite3.connect(f"file:{self.store.db_path}?mode=ro", uri=True)
        try:
            sql = "SELECT pid, uuid, record FROM patient_data"
            args: tuple[str, ...] = ()
            if plan.since is not None:
                sql += " WHERE created_at >= ?"
                args = (plan.since,)
            cursor = db.execute(sql + " ORDER BY pid", args)
            cursor.arraysize = 1000
            alternatives = plan.filters.get(resource)
            while rows := cursor.fetchmany():
                for pid, patient_uuid, record in rows:
                    patient = Patient(int(pid), str(patient_uuid), json.loads(record))
                    if alternatives and not any(
                        all(_matches(patient, k, v) for k, v in params) for params in alternatives
                    ):
                        continue
                    yield json.dumps(
                        patients.fhir_resource(patient), ensure_ascii=False, separators=(",", ":")
                    )
        finally:
            db.close()

    # -- status, cancel -------------------------------------------------------------------------
    async def status(self, request: Request) -> Response:
        off = self._off()
        if off is not None:
            return off
        grant: Grant = request.state.grant
        if not allows_operation(grant.role, grant.scope, "*", "$bulkdata-status"):
            return unauthorized(self.state.version)
        job_uuid = request.query_params.get("job", "")
        job = self.store.job(job_uuid, grant.client_id, grant.role) if job_uuid else None
        if request.method == "DELETE":
            return self._cancel(job)
        if job is None:
            if self.mode == OPENEMR_MODE and self.state.version == V703:
                return self._outcome(400, NOT_FOUND_703)
            return self._outcome(404, NOT_FOUND_704, "not-found")
        if self.faults.take_status_error():
            if self.mode == OPENEMR_MODE:
                return kernel_error(500, "injected fault: status lookup failed")
            return self._outcome(500, "injected fault: try again", "transient")
        if self.mode == SPEC_MODE and job.status != DONE and time.time() >= job.ready_at:
            job = await self._settle(job)  # a job about to end: a moment's wait, not a 202
        if self.mode == OPENEMR_MODE:
            if job.status != DONE:  # unreachable in OpenEMR: the job ends before its id is out
                return Response(b"", 202, media_type="application/json")
            return JSONResponse(self._manifest(job))
        return self._spec_status(job)

    async def _settle(self, job: Job, wait: float = 0.5) -> Job:
        """``job`` again once its thread has finished, or after ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while job.status != DONE and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            again = self.store.job(job.uuid, job.client_id, job.role)
            if again is None:
                break
            job = again
        return job

    def _spec_status(self, job: Job) -> Response:
        now = time.time()
        if now < job.next_poll - 0.05:
            wait = max(1, math.ceil(job.next_poll - now))
            response = self._outcome(429, f"polled too early: retry after {wait} s", "throttled")
            response.headers["Retry-After"] = str(wait)
            return response
        if job.status != DONE or now < job.ready_at:
            remaining = max(job.ready_at - now, 0.0)
            wait = max(1, math.ceil(remaining))
            self.store.set_next_poll(job.uuid, now + wait)
            span = max(job.ready_at - job.started, 1e-9)
            percent = min(99, int(100 * (now - job.started) / span))
            headers = {"X-Progress": f"{percent}% done", "Retry-After": str(wait)}
            return Response(b"", 202, headers=headers, media_type="application/json")
        expires = formatdate(job.started + self.ttl, usegmt=True)
        return JSONResponse(self._manifest(job), headers={"Expires": expires})

    def _manifest(self, job: Job) -> dict[str, Any]:
        binary = f"{job.base}/apis/{self.state.site}/fhir/Binary"
        spec = job.mode == SPEC_MODE
        extra = 1 if spec and self.faults.wrong_count else 0

        def entry(item: dict[str, Any], *, error: bool) -> Any:
            if "doc" not in item:
                return item  # an OperationOutcome placed directly (openemr mode)
            document: dict[str, Any] = {"url": f"{binary}/{item['doc']}", "type": item["type"]}
            if spec:
                document["count"] = int(item["count"]) + (0 if error else extra)
            return document

        if spec:
            stamp = datetime.fromtimestamp(job.started, timezone.utc)
            transaction_time: Any = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        else:
            transaction_time = _php_datetime(job.started)
        return {
            "transactionTime": transaction_time,
            "request": job.request,
            "requiresAccessToken": True,
            "output": [entry(item, error=False) for item in job.output],
            "error": [entry(item, error=True) for item in job.errors],
        }

    def _cancel(self, job: Job | None) -> Response:
        if job is None:
            if self.mode == OPENEMR_MODE and self.state.version == V703:
                return Response(b"", 404, media_type=PHP_DEFAULT_TYPE)
            return self._outcome(404, NOT_FOUND_704, "not-found")
        self._cancelled.add(job.uuid)
        self.store.delete_job(job.uuid)
        return Response(b"", 202, media_type="application/json")

    # -- files ----------------------------------------------------------------------------------
    async def binary_route(self, request: Request) -> Response:
        """Never reached for GET (the app streams those, :meth:`binary`)."""
        return Response(b"", 405)

    def binary(self, grant: Grant | None, document_id: str) -> Answer:
        """``GET /fhir/Binary/{id}``: the file, streamed, or 404 with no body (openemr)."""
        if grant is None:
            return Answer(500, b"")
        if not allows(self.state.version, grant.role, grant.scope, "Binary", "r"):
            if self.state.version == V703:
                return Answer(401, b"", content_type=PHP_DEFAULT_TYPE.encode("ascii"))
            body = kernel_body("Unauthorized")
            return Answer(401, body, content_type=PHP_DEFAULT_TYPE.encode("ascii"))
        document = self.store.document(int(document_id)) if document_id.isdigit() else None
        if document is None or document.expires_at <= time.time():
            return self._gone()
        try:
            file = document.path.open("rb")
        except OSError:
            return self._gone()
        size = os.fstat(file.fileno()).st_size
        headers = [
            (b"content-description", b"File Transfer"),
            (b"content-disposition", f"attachment; filename={document.name}".encode()),
            (b"expires", formatdate(document.expires_at, usegmt=True).encode("ascii")),
            (b"cache-control", b"must-revalidate; post-check=0; pre-check=0"),
            (b"pragma", b"public"),
        ]
        return FileAnswer(file, size, headers, self.faults.take_cut(size))

    def _gone(self) -> Answer:
        if self.mode == OPENEMR_MODE:
            return Answer(404, b"", content_type=PHP_DEFAULT_TYPE.encode("ascii"))
        document = fhir_outcome("no such file, or it has expired", "not-found")
        return Answer(404, json.dumps(document).encode(), content_type=FHIR_JSON.encode("ascii"))


# -- helpers ------------------------------------------------------------------------------------
def _supports(resource: str, kind: str) -> bool:
    """Whether OpenEMR's export service for ``resource`` supports this export operation."""
    return resource in EXPORTABLE and (kind == "system" or resource not in SYSTEM_ONLY)


def _emr_outcome(text: str) -> dict[str, Any]:
    """OpenEMR's ``createOperationOutcomeError``: code processing, the text in details."""
    return {
        "resourceType": "OperationOutcome",
        "id": str(uuid.uuid4()),
        "issue": [{"severity": "error", "code": "processing", "details": {"text": text}}],
    }


def _php_datetime(moment: float) -> dict[str, Any]:
    """``json_encode`` of a PHP DateTime in UTC: ``{"date", "timezone_type": 3, "timezone"}``."""
    stamp = datetime.fromtimestamp(moment, timezone.utc)
    return {
        "date": stamp.strftime("%Y-%m-%d %H:%M:%S.%f"),
        "timezone_type": 3,
        "timezone": "UTC",
    }


def _openemr_since(text: str) -> str | None:
    """``DateSearchField``'s formats → UTC ``YYYY-MM-DDThh:mm:ssZ`` (no zone: the server's,
    UTC); None when the value does not parse."""
    match = _DATE_SEARCH.match(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, zone = match.groups()
    try:
        moment = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            tzinfo=_zone(zone),
        )
    except ValueError:
        return None
    return _utc_text(moment)


def _instant_utc(text: str) -> str | None:
    """A FHIR instant → UTC ``YYYY-MM-DDThh:mm:ssZ``, or None."""
    if _INSTANT.match(text) is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return _utc_text(moment)


def _zone(zone: str | None) -> timezone:
    if not zone or zone == "Z":
        return timezone.utc
    sign = -1 if zone[0] == "-" else 1
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _matches(patient: Patient, name: str, value: str) -> bool:
    if name == "gender":
        return patients.fhir_resource(patient).get("gender") == value
    return patients.fhir_matches(patient, name, value)


def _prepend(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def _write_ndjson(path: Path, lines: Iterator[str], cancelled: Any) -> tuple[int, int] | None:
    """Write ``lines`` joined by ``\\n`` (none after the last) to a new owner-only file; return
    (bytes, lines), or None when ``cancelled()`` turned true on the way."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    size = count = 0
    with open(fd, "wb", buffering=1024 * 1024) as out:
        for line in lines:
            data = line.encode("utf-8")
            if count:
                out.write(b"\n")
                size += 1
            out.write(data)
            size += len(data)
            count += 1
            if count % 5000 == 0 and cancelled():
                return None
    return size, count


__all__ = [
    "DEFAULT_EXPORT_TTL_S",
    "EXPORT_MODES",
    "OPENEMR_MODE",
    "SPEC_MODE",
    "ExportFaults",
    "ExportService",
    "FileAnswer",
]

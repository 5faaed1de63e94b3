"""The bulk export's persistence: jobs and documents in ``openemr.db`` (:class:`ExportStore`),
the :class:`Job`, :class:`Document` and :class:`Plan` records; the NDJSON files live on disk.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

"""The openEHR flavour's state: EHRs, EHR_STATUS versions and composition versions (SQLite).

It lives in ``openehr.db`` in the sandbox's data dir, beside the other flavours' files (nothing
shared). Like the OpenEMR flavour's store it needs neither starlette nor uvicorn, one connection is
shared by the server's threads behind a lock, and every write commits when it returns.

Optimistic locking happens here: a new version is written only if the caller's preceding
version is still the latest, checked and written under the one lock, so of two writers holding
the same version exactly one wins and the other gets :class:`StaleVersionError` naming the
latest. Every commit gets a time strictly after the previous one (``version_at_time`` is then
never ambiguous).

Compositions are kept as the bytes received, plus what the API and AQL need without parsing
them again: name, template id, archetype node id. An EHR's subject (external id + namespace) is
unique, enforced by the database. Uploaded operational templates are kept as EHRbase keeps them:
id, concept, root archetype id, upload time and the OPT re-serialised.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cwsctl.sandbox.db import open_private_db

DB_FILE = "openehr.db"

#: openEHR terminology "audit change type" codes.
CREATION, MODIFICATION, DELETED = "creation", "modification", "deleted"
CHANGE_TYPE_CODES = {CREATION: "249", MODIFICATION: "251", DELETED: "523"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ehrs (
    ehr_id            TEXT PRIMARY KEY,
    status_id         TEXT NOT NULL,
    subject_id        TEXT,
    subject_namespace TEXT,
    time_created      TEXT NOT NULL,
    created_us        INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS ehrs_subject ON ehrs (subject_id, subject_namespace);
CREATE TABLE IF NOT EXISTS versions (
    object_id        TEXT NOT NULL,
    version          INTEGER NOT NULL,
    ehr_id           TEXT NOT NULL,
    kind             TEXT NOT NULL,
    body             BLOB NOT NULL,
    name             TEXT,
    template_id      TEXT,
    archetype_node_id TEXT,
    change_type      TEXT NOT NULL,
    time_committed   TEXT NOT NULL,
    committed_us     INTEGER NOT NULL,
    PRIMARY KEY (object_id, version)
);
CREATE INDEX IF NOT EXISTS versions_ehr ON versions (ehr_id, kind);
CREATE TABLE IF NOT EXISTS templates (
    template_id   TEXT PRIMARY KEY,
    concept       TEXT NOT NULL,
    archetype_id  TEXT NOT NULL,
    created       TEXT NOT NULL,
    opt           BLOB NOT NULL
);
"""

STATUS = "EHR_STATUS"
COMPOSITION = "COMPOSITION"


@dataclass(frozen=True)
class Ehr:
    """An EHR: its id, the object id of its EHR_STATUS, its subject and creation time."""

    ehr_id: str
    status_id: str
    subject_id: str | None
    subject_namespace: str | None
    time_created: str


@dataclass(frozen=True)
class Version:
    """One version of an EHR_STATUS or a composition, as stored."""

    object_id: str
    version: int
    ehr_id: str
    kind: str
    body: bytes
    name: str | None
    template_id: str | None
    archetype_node_id: str | None
    change_type: str
    time_committed: str

    @property
    def deleted(self) -> bool:
        """Whether this version records a deletion (its body is empty)."""
        return self.change_type == DELETED


@dataclass(frozen=True)
class Content:
    """What a write stores: the body bytes and the fields read from them."""

    body: bytes
    name: str | None = None
    template_id: str | None = None
    archetype_node_id: str | None = None


@dataclass(frozen=True)
class Subject:
    """An EHR's subject: external id and namespace (both None for a subject without one)."""

    subject_id: str | None
    namespace: str | None


class EhrExistsError(Exception):
    """An EHR with that id exists already."""


class SubjectTakenError(Exception):
    """Another EHR has that subject."""

    def __init__(self, ehr_id: str) -> None:
        super().__init__(ehr_id)
        self.ehr_id = ehr_id


class StaleVersionError(Exception):
    """The preceding version named by the caller is not the latest; ``latest`` is."""

    def __init__(self, latest: Version) -> None:
        super().__init__(latest.object_id)
        self.latest = latest


class AlreadyDeletedError(Exception):
    """The latest version is a deletion already."""


@dataclass(frozen=True)
class StoredTemplate:
    """An uploaded operational template: its id, concept, root archetype, upload time, OPT."""

    template_id: str
    concept: str
    archetype_id: str
    created: str
    opt: bytes


class TemplateExistsError(Exception):
    """A template with that id is stored already (and overwriting is off)."""


class OpenEhrStore:
    """One SQLite connection to ``data_dir/openehr.db``, safe to share between threads."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / DB_FILE
        self._lock = threading.Lock()
        self._db = open_private_db(self.path, _SCHEMA)
        self._last = datetime.fromtimestamp(0, timezone.utc)
        with self._lock:
            row = self._db.execute("SELECT max(committed_us) FROM versions").fetchone()
            if row[0] is not None:
                self._last = _from_us(int(row[0]))

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    # -- EHRs -------------------------------------------------------------------------------
    def create_ehr(self, ehr_id: str | None, subject: Subject, status: Content) -> Ehr:
        """A new EHR with its first EHR_STATUS version (``status.body``); one transaction."""
        with self._lock:
            ehr_id = ehr_id or str(uuid.uuid4())
            if self._ehr_locked(ehr_id) is not None:
                raise EhrExistsError(ehr_id)
            self._check_subject(subject, None)
            now = self._tick()
            status_id = str(uuid.uuid4())
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO ehrs (ehr_id, status_id, subject_id, subject_namespace,"
                    " time_created, created_us) VALUES (?, ?, ?, ?, ?, ?)",
                    (ehr_id, status_id, subject.subject_id, subject.namespace, *_stamp(now)),
                )
                self._insert(status_id, 1, ehr_id, STATUS, status, CREATION, now)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            ehr = self._ehr_locked(ehr_id)
        assert ehr is not None
        return ehr

    def ehr(self, ehr_id: str) -> Ehr | None:
        """The EHR with ``ehr_id``, or None."""
        with self._lock:
            return self._ehr_locked(ehr_id)

    def ehr_by_subject(self, subject_id: str, namespace: str) -> Ehr | None:
        """The EHR whose subject is ``subject_id`` in ``namespace``, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT ehr_id FROM ehrs WHERE subject_id = ? AND subject_namespace = ?",
                (subject_id, namespace),
            ).fetchone()
            return None if row is None else self._ehr_locked(str(row[0]))

    def ehrs(self) -> list[Ehr]:
        """Every EHR, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT ehr_id FROM ehrs ORDER BY created_us, ehr_id")
            found = [self._ehr_locked(str(r[0])) for r in rows.fetchall()]
        return [e for e in found if e is not None]

    def count_ehrs(self) -> int:
        """How many EHRs are stored."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM ehrs").fetchone()[0])

    def update_status(self, ehr: Ehr, preceding: int, subject: Subject, status: Content) -> Version:
        """EHR_STATUS version ``preceding + 1`` if ``preceding`` is still the latest."""
        with self._lock:
            latest = self._version_locked(ehr.status_id)
            assert latest is not None
            if latest.version != preceding:
                raise StaleVersionError(latest)
            self._check_subject(subject, ehr.ehr_id)
            now = self._tick()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE ehrs SET subject_id = ?, subject_namespace = ? WHERE ehr_id = ?",
                    (subject.subject_id, subject.namespace, ehr.ehr_id),
                )
                self._insert(
                    ehr.status_id, preceding + 1, ehr.ehr_id, STATUS, status, MODIFICATION, now
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            written = self._version_locked(ehr.status_id)
        assert written is not None
        return written

    # -- versions (EHR_STATUS and compositions) -----------------------------------------------
    def version(
        self,
        object_id: str,
        *,
        number: int | None = None,
        at: datetime | None = None,
        ehr_id: str | None = None,
    ) -> Version | None:
        """Version ``number``, or the one in force at time ``at``, or the latest; or None.

        ``ehr_id``: only if the object belongs to that EHR.
        """
        with self._lock:
            return self._version_locked(object_id, number=number, at=at, ehr_id=ehr_id)

    def create_composition(
        self, ehr_id: str, content: Content, object_id: str | None = None
    ) -> Version:
        """Version 1 of a new composition in ``ehr_id`` (``object_id`` given or new).

        Raises EhrExistsError if ``object_id`` is taken (by any object).
        """
        with self._lock:
            if object_id is not None and self._version_locked(object_id) is not None:
                raise EhrExistsError(object_id)
            object_id = object_id or str(uuid.uuid4())
            self._insert(object_id, 1, ehr_id, COMPOSITION, content, CREATION, self._tick())
            written = self._version_locked(object_id)
        assert written is not None
        return written

    def update_composition(
        self, ehr_id: str, object_id: str, preceding: int, content: Content | None
    ) -> Version:
        """Version ``preceding + 1`` (a deletion if ``content`` is None), if still the latest.

        Raises AlreadyDeletedError (a deletion when the latest is a deletion, whatever
        ``preceding`` says), StaleVersionError (another version came first), KeyError (no such composition in ``ehr_id``).
        """
        with self._lock:
            latest = self._version_locked(object_id, ehr_id=ehr_id)
            if latest is None or latest.kind != COMPOSITION:
                raise KeyError(object_id)
            if content is None and latest.deleted:
                raise AlreadyDeletedError(object_id)
            if latest.version != preceding:
                raise StaleVersionError(latest)
            change = DELETED if content is None else MODIFICATION
            stored = content if content is not None else Content(b"")
            self._insert(
                object_id, preceding + 1, ehr_id, COMPOSITION, stored, change, self._tick()
            )
            written = self._version_locked(object_id)
        assert written is not None
        return written

    def history(self, object_id: str, ehr_id: str) -> list[Version]:
        """Every version of ``object_id`` in ``ehr_id``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM versions WHERE object_id = ? AND ehr_id = ?"  # noqa: S608
                " ORDER BY version",
                (object_id, ehr_id),
            ).fetchall()
        return [_row_version(r) for r in rows]

    def latest_compositions(self) -> list[Version]:
        """The latest version of every composition that is not deleted, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM versions v WHERE kind = ? AND change_type != ?"  # noqa: S608
                " AND version = (SELECT max(version) FROM versions w"
                " WHERE w.object_id = v.object_id)"
                " ORDER BY (SELECT min(committed_us) FROM versions w"
                " WHERE w.object_id = v.object_id), object_id",
                (COMPOSITION, DELETED),
            ).fetchall()
        return [_row_version(r) for r in rows]

    # -- templates --------------------------------------------------------------------------------
    def add_template(self, template: StoredTemplate, *, overwrite: bool = False) -> None:
        """Store ``template``; TemplateExistsError if its id is taken and ``overwrite`` is off."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM templates WHERE template_id = ?", (template.template_id,)
            ).fetchone()
            if row is not None and not overwrite:
                raise TemplateExistsError(template.template_id)
            self._db.execute(
                "INSERT OR REPLACE INTO templates (template_id, concept, archetype_id, created, opt)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    template.template_id,
                    template.concept,
                    template.archetype_id,
                    template.created,
                    template.opt,
                ),
            )

    def template(self, template_id: str) -> StoredTemplate | None:
        """The template with ``template_id``, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT template_id, concept, archetype_id, created, opt FROM templates"
                " WHERE template_id = ?",
                (template_id,),
            ).fetchone()
        return None if row is None else _row_template(row)

    def templates(self) -> list[StoredTemplate]:
        """Every uploaded template, by id."""
        with self._lock:
            rows = self._db.execute(
                "SELECT template_id, concept, archetype_id, created, opt FROM templates"
                " ORDER BY template_id"
            ).fetchall()
        return [_row_template(r) for r in rows]

    def clear(self) -> None:
        """Forget every EHR and version."""
        with self._lock:
            self._db.execute("DELETE FROM ehrs")
            self._db.execute("DELETE FROM versions")
            self._db.execute("DELETE FROM templates")

    # -- internals (lock held) --------------------------------------------------------------------
    def _tick(self) -> datetime:
        now = datetime.now(timezone.utc)
        if now <= self._last:
            now = self._last + timedelta(microseconds=1)
        self._last = now
        return now

    def _check_subject(self, subject: Subject, ehr_id: str | None) -> None:
        if subject.subject_id is None or subject.namespace is None:
            return
        row = self._db.execute(
            "SELECT ehr_id FROM ehrs WHERE subject_id = ? AND subject_namespace = ?",
            (subject.subject_id, subject.namespace),
        ).fetchone()
        if row is not None and row[0] != ehr_id:
            raise SubjectTakenError(str(row[0]))

    def _insert(
        self,
        object_id: str,
        number: int,
        ehr_id: str,
        kind: str,
        content: Content,
        change_type: str,
        when: datetime,
    ) -> None:
        self._db.execute(
            "INSERT INTO versions (object_id, version, ehr_id, kind, body, name, template_id,"
            " archetype_node_id, change_type, time_committed, committed_us)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                object_id,
                number,
                ehr_id,
                kind,
                content.body,
                content.name,
                content.template_id,
                content.archetype_node_id,
                change_type,
                *_stamp(when),
            ),
        )

    def _ehr_locked(self, ehr_id: str) -> Ehr | None:
        row = self._db.execute(
            "SELECT ehr_id, status_id, subject_id, subject_namespace, time_created FROM ehrs"
            " WHERE ehr_id = ?",
            (ehr_id,),
        ).fetchone()
        return None if row is None else Ehr(*row)

    def _version_locked(
        self,
        object_id: str,
        *,
        number: int | None = None,
        at: datetime | None = None,
        ehr_id: str | None = None,
    ) -> Version | None:
        query = f"SELECT {_COLUMNS} FROM versions WHERE object_id = ?"  # noqa: S608
        args: list[object] = [object_id]
        if ehr_id is not None:
            query += " AND ehr_id = ?"
            args.append(ehr_id)
        if number is not None:
            query += " AND version = ?"
            args.append(number)
        if at is not None:
            query += " AND committed_us <= ?"
            args.append(_to_us(at))
        row = self._db.execute(query + " ORDER BY version DESC LIMIT 1", args).fetchone()
        return None if row is None else _row_version(row)


_COLUMNS = (
    "object_id, version, ehr_id, kind, body, name, template_id, archetype_node_id,"
    " change_type, time_committed"
)
_EPOCH = datetime.fromtimestamp(0, timezone.utc)


def _row_version(row: tuple[object, ...]) -> Version:
    (object_id, number, ehr_id, kind, body, name, template_id, node_id, change, when) = row
    return Version(
        str(object_id),
        int(number),  # type: ignore[call-overload]
        str(ehr_id),
        str(kind),
        bytes(body),  # type: ignore[call-overload]
        None if name is None else str(name),
        None if template_id is None else str(template_id),
        None if node_id is None else str(node_id),
        str(change),
        str(when),
    )


def _row_template(row: tuple[object, ...]) -> StoredTemplate:
    template_id, concept, archetype_id, created, opt = row
    return StoredTemplate(
        str(template_id),
        str(concept),
        str(archetype_id),
        str(created),
        bytes(opt),  # type: ignore[call-overload]
    )


def _to_us(when: datetime) -> int:
    delta = when - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _stamp(when: datetime) -> tuple[str, int]:
    """ISO 8601 text (UTC, microseconds) and microseconds since the epoch."""
    return when.isoformat(timespec="microseconds"), _to_us(when)

"""The OpenEMR flavour's state: OAuth clients, tokens, seen ``jti``s and patients (SQLite).

It lives in ``openemr.db`` in the sandbox's data dir, beside the CWS flavour's ``sandbox.db``
(nothing shared). Tokens, codes and registration access tokens are stored as SHA-256 digests
only, so the file holds nothing a client could present. Like :mod:`.store`, it needs neither
starlette nor uvicorn, one connection is shared by the server's threads behind a lock, and every
statement commits when it returns (a patient create, identifiers included, is one transaction).

Patients are one table for both APIs: the Standard API's fields (``fname``, ``lname``, ``DOB``,
``sex``, ``pubpid``, …) as JSON, plus ``patient_identifiers`` (system, value) for FHIR. A patient
made through the Standard API gets one identifier, ``(PUBPID_SYSTEM, pubpid)``; one made
through FHIR keeps every identifier it was sent, and its first identifier's value is its pubpid.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cwsctl.sandbox.store import open_private_db

DB_FILE = "openemr.db"
#: The identifier system a Standard API patient's pubpid gets in FHIR (HL7 v2 table 0203, "PT").
PUBPID_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0203"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS oauth_clients (
    client_id          TEXT PRIMARY KEY,
    metadata           TEXT NOT NULL,
    registration_token TEXT NOT NULL,
    issued_at          INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS oauth_tokens (
    digest     TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    scope      TEXT NOT NULL,
    expires_at REAL NOT NULL,
    extra      TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS oauth_jtis (
    client_id  TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE TABLE IF NOT EXISTS patients (
    pid        INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid       TEXT NOT NULL UNIQUE,
    pubpid     TEXT NOT NULL,
    record     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS patient_identifiers (
    pid    INTEGER NOT NULL,
    system TEXT NOT NULL,
    value  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS patient_identifiers_value ON patient_identifiers (value);
CREATE INDEX IF NOT EXISTS patients_pubpid ON patients (pubpid);
"""

ACCESS = "access"
REFRESH = "refresh"
CODE = "code"


def digest(token: str) -> str:
    """What the store keeps of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Grant:
    """What a token or code stands for."""

    client_id: str
    scope: str
    expires_at: float
    extra: dict[str, Any]


@dataclass(frozen=True)
class Patient:
    """A stored patient: Standard API fields plus FHIR identifiers ``(system, value)``."""

    pid: int
    uuid: str
    record: dict[str, Any]
    identifiers: list[tuple[str, str]]


class MultipleMatchesError(Exception):
    """A conditional create matched more than one patient."""


class OpenEmrStore:
    """One SQLite connection to ``data_dir/openemr.db``, safe to share between threads."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / DB_FILE
        self._lock = threading.Lock()
        self._db = open_private_db(self.path, _SCHEMA)  # fake patients and token digests

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    # -- clients ----------------------------------------------------------------------------
    def add_client(self, client_id: str, metadata: dict[str, Any], registration_token: str) -> None:
        """Store a registered client's metadata (as answered, without the registration token)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO oauth_clients (client_id, metadata, registration_token, issued_at)"
                " VALUES (?, ?, ?, ?)",
                (client_id, json.dumps(metadata), digest(registration_token), int(time.time())),
            )

    def client(self, client_id: str) -> dict[str, Any] | None:
        """A registered client's metadata, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT metadata FROM oauth_clients WHERE client_id = ?", (client_id,)
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    # -- tokens and codes -------------------------------------------------------------------
    def add_token(
        self,
        token: str,
        kind: str,
        client_id: str,
        scope: str,
        lifetime: float,
        extra: dict[str, Any] | None = None,
    ) -> float:
        """Remember ``token`` (an access or refresh token, or a code); return its expiry time."""
        expires_at = time.time() + lifetime
        with self._lock:
            self._db.execute(
                "INSERT INTO oauth_tokens (digest, kind, client_id, scope, expires_at, extra)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (digest(token), kind, client_id, scope, expires_at, json.dumps(extra or {})),
            )
        return expires_at

    def token(self, token: str, kind: str) -> Grant | None:
        """The unexpired grant behind ``token`` of ``kind``, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT client_id, scope, expires_at, extra FROM oauth_tokens"
                " WHERE digest = ? AND kind = ? AND expires_at > ?",
                (digest(token), kind, time.time()),
            ).fetchone()
        return None if row is None else Grant(row[0], row[1], row[2], json.loads(row[3]))

    def take_token(self, token: str, kind: str) -> Grant | None:
        """Like ``token``, but the token is used up: a second take finds nothing."""
        key = digest(token)
        with self._lock:  # one connection behind one lock: the select and delete are one step
            row = self._db.execute(
                "SELECT client_id, scope, expires_at, extra FROM oauth_tokens"
                " WHERE digest = ? AND kind = ?",
                (key, kind),
            ).fetchone()
            self._db.execute("DELETE FROM oauth_tokens WHERE digest = ?", (key,))
        if row is None or row[2] <= time.time():
            return None
        return Grant(row[0], row[1], row[2], json.loads(row[3]))

    def revoke(self, kinds: tuple[str, ...] = (ACCESS,)) -> int:
        """Forget every token of ``kinds``; return how many there were."""
        marks = ", ".join("?" for _ in kinds)
        with self._lock:
            cursor = self._db.execute(f"DELETE FROM oauth_tokens WHERE kind IN ({marks})", kinds)  # noqa: S608
        return cursor.rowcount

    def remember_jti(self, client_id: str, jti: str, expires_at: float) -> bool:
        """Record a client assertion's ``jti`` until ``expires_at``; False if it was seen."""
        now = time.time()
        with self._lock:
            self._db.execute("DELETE FROM oauth_jtis WHERE expires_at < ?", (now,))
            self._db.execute("DELETE FROM oauth_tokens WHERE expires_at < ?", (now,))
            try:
                self._db.execute(
                    "INSERT INTO oauth_jtis (client_id, jti, expires_at) VALUES (?, ?, ?)",
                    (client_id, jti, expires_at),
                )
            except sqlite3.IntegrityError:
                return False
        return True

    # -- patients ---------------------------------------------------------------------------
    def create_patient(
        self,
        record: dict[str, Any],
        identifiers: list[tuple[str, str]] | None = None,
        *,
        if_none_exist: tuple[str | None, str] | None = None,
    ) -> tuple[Patient, bool]:
        """Store a validated patient; return it and True, or an existing match and False.

        ``identifiers`` defaults to ``[(PUBPID_SYSTEM, pubpid)]``; an empty pubpid becomes the
        pid (as OpenEMR does). ``if_none_exist`` (system or None, value): when exactly one
        patient has that identifier it is returned instead; more than one raises
        MultipleMatchesError. The look-up and the insert are one step under the lock.
        """
        with self._lock:
            if if_none_exist is not None:
                pids = self._pids_by_identifier(*if_none_exist)
                if len(pids) > 1:
                    raise MultipleMatchesError(f"{len(pids)} patients match")
                if pids:
                    found = self._get_locked(pids[0])
                    assert found is not None
                    return found, False
            new_uuid = str(uuid.uuid4())
            record = dict(record)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute(
                    "INSERT INTO patients (uuid, pubpid, record, created_at) VALUES (?, ?, ?, ?)",
                    (new_uuid, str(record.get("pubpid") or ""), "{}", _now()),
                )
                pid = cursor.lastrowid
                assert pid is not None
                if not record.get("pubpid"):
                    record["pubpid"] = str(pid)
                if identifiers is None:
                    identifiers = [(PUBPID_SYSTEM, record["pubpid"])]
                self._db.execute(
                    "UPDATE patients SET pubpid = ?, record = ? WHERE pid = ?",
                    (record["pubpid"], json.dumps(record, ensure_ascii=False), pid),
                )
                self._db.executemany(
                    "INSERT INTO patient_identifiers (pid, system, value) VALUES (?, ?, ?)",
                    [(pid, system, value) for system, value in identifiers],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return Patient(pid, new_uuid, record, list(identifiers)), True

    def patient(self, patient_uuid: str) -> Patient | None:
        """The patient with ``patient_uuid``, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT pid FROM patients WHERE uuid = ?", (patient_uuid,)
            ).fetchone()
            return None if row is None else self._get_locked(int(row[0]))

    def patients(self) -> list[Patient]:
        """Every patient, by pid."""
        with self._lock:
            pids = [int(r[0]) for r in self._db.execute("SELECT pid FROM patients ORDER BY pid")]
            return [p for p in map(self._get_locked, pids) if p is not None]

    def patients_by_pubpid(self, pubpid: str) -> list[Patient]:
        """Patients whose pubpid is ``pubpid`` (exact), by pid."""
        with self._lock:
            pids = [
                int(r[0])
                for r in self._db.execute(
                    "SELECT pid FROM patients WHERE pubpid = ? ORDER BY pid", (pubpid,)
                )
            ]
            return [p for p in map(self._get_locked, pids) if p is not None]

    def patients_by_identifier(self, system: str | None, value: str) -> list[Patient]:
        """Patients with identifier ``value`` (in ``system``, unless None), by pid."""
        with self._lock:
            pids = self._pids_by_identifier(system, value)
            return [p for p in map(self._get_locked, pids) if p is not None]

    def count_patients(self) -> int:
        """How many patients are stored."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM patients").fetchone()[0])

    def clear(self) -> None:
        """Forget patients, clients, tokens and seen ``jti``s."""
        with self._lock:
            for table in ("patients", "patient_identifiers", "oauth_clients", "oauth_tokens"):
                self._db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
            self._db.execute("DELETE FROM oauth_jtis")

    def _pids_by_identifier(self, system: str | None, value: str) -> list[int]:
        if system is None:
            rows = self._db.execute(
                "SELECT DISTINCT pid FROM patient_identifiers WHERE value = ? ORDER BY pid",
                (value,),
            )
        else:
            rows = self._db.execute(
                "SELECT DISTINCT pid FROM patient_identifiers WHERE system = ? AND value = ?"
                " ORDER BY pid",
                (system, value),
            )
        return [int(r[0]) for r in rows]

    def _get_locked(self, pid: int) -> Patient | None:
        row = self._db.execute(
            "SELECT pid, uuid, record FROM patients WHERE pid = ?", (pid,)
        ).fetchone()
        if row is None:
            return None
        identifiers = [
            (str(s), str(v))
            for s, v in self._db.execute(
                "SELECT system, value FROM patient_identifiers WHERE pid = ? ORDER BY rowid",
                (pid,),
            )
        ]
        return Patient(int(row[0]), str(row[1]), json.loads(row[2]), identifiers)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

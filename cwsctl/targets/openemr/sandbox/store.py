"""The OpenEMR flavour's state: OAuth clients, tokens, trusted users, seen ``jti``s and patients.

It lives in ``openemr.db`` in the sandbox's data dir, beside the CWS flavour's ``sandbox.db``
(nothing shared). Tokens, codes and registration access tokens are stored as SHA-256 digests
only, so the file holds nothing a client could present. Like :mod:`.store`, it needs neither
starlette nor uvicorn, one connection is shared by the server's threads behind a lock, and every
statement commits when it returns.

As in OpenEMR:

- a client has an ``enabled`` flag that only an administrator sets (:func:`enable_client`, which
  works on the file while the server runs);
- a token belongs to a role: ``system`` (client credentials, OpenEMR's system user) or ``users``
  (a user's authorization code grant). A user's grant opens a *trusted-user session*; every
  access and refresh token of that login carries it, and a logout ends it;
- a patient is one ``patient_data`` row: the Standard API's fields, ``pubpid`` and ``ss`` among
  them. FHIR identifiers are not stored as such (OpenEMR drops their ``system``).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cwsctl.sandbox.db import open_private_db

DB_FILE = "openemr.db"

# Table names differ from the first sandbox's (oauth_clients, oauth_tokens, patients), so a data
# dir written by it opens cleanly: the old tables are left alone.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_clients (
    client_id          TEXT PRIMARY KEY,
    metadata           TEXT NOT NULL,
    registration_token TEXT NOT NULL,
    issued_at          INTEGER NOT NULL,
    enabled            INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_tokens (
    digest     TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    scope      TEXT NOT NULL,
    role       TEXT NOT NULL,
    session    TEXT,
    expires_at REAL NOT NULL,
    revoked    INTEGER NOT NULL DEFAULT 0,
    extra      TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS trusted_users (
    session   TEXT PRIMARY KEY,
    client_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS oauth_jtis (
    client_id  TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE TABLE IF NOT EXISTS patient_data (
    pid        INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid       TEXT NOT NULL UNIQUE,
    pubpid     TEXT NOT NULL,
    ss         TEXT NOT NULL DEFAULT '',
    record     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS patient_data_pubpid ON patient_data (pubpid);
CREATE INDEX IF NOT EXISTS patient_data_ss ON patient_data (ss);
"""

ACCESS = "access"
REFRESH = "refresh"
CODE = "code"
#: Token roles, OpenEMR's names: the system user (client credentials) and a logged-in user.
SYSTEM = "system"
USERS = "users"


def digest(token: str) -> str:
    """What the store keeps of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Client:
    """A registered client: its registration answer's metadata and whether it is enabled."""

    client_id: str
    metadata: dict[str, Any]
    enabled: bool

    @property
    def scope(self) -> str:
        """The scopes it registered, space-separated."""
        return str(self.metadata.get("scope", ""))

    def to_json(self) -> dict[str, Any]:
        """``client_id``, ``enabled``, ``scope`` (and the client's name and role)."""
        return {
            "client_id": self.client_id,
            "enabled": self.enabled,
            "scope": self.scope,
            "client_name": self.metadata.get("client_name"),
            "client_role": self.metadata.get("client_role"),
        }


@dataclass(frozen=True)
class Grant:
    """What a token or code stands for."""

    client_id: str
    scope: str
    role: str
    session: str | None
    expires_at: float
    revoked: bool
    extra: dict[str, Any]


@dataclass(frozen=True)
class Patient:
    """A stored patient: the Standard API's fields (``pubpid``, ``ss``, ``fname``, …)."""

    pid: int
    uuid: str
    record: dict[str, Any]

    @property
    def pubpid(self) -> str:
        """The patient's public id (its pid when none was given)."""
        return str(self.record.get("pubpid", ""))


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

    def __enter__(self) -> OpenEmrStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- clients ----------------------------------------------------------------------------
    def add_client(
        self, client_id: str, metadata: dict[str, Any], registration_token: str, *, enabled: bool
    ) -> None:
        """Store a registered client's metadata (without its registration token or secret)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO api_clients"
                " (client_id, metadata, registration_token, issued_at, enabled)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    client_id,
                    json.dumps(metadata),
                    digest(registration_token),
                    int(time.time()),
                    int(enabled),
                ),
            )

    def client(self, client_id: str) -> Client | None:
        """A registered client, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT client_id, metadata, enabled FROM api_clients WHERE client_id = ?",
                (client_id,),
            ).fetchone()
        return None if row is None else Client(row[0], json.loads(row[1]), bool(row[2]))

    def clients(self) -> list[Client]:
        """Every registered client, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT client_id, metadata, enabled FROM api_clients ORDER BY rowid"
            ).fetchall()
        return [Client(r[0], json.loads(r[1]), bool(r[2])) for r in rows]

    def set_enabled(self, client_id: str, enabled: bool = True) -> bool:
        """Enable (or disable) a client, as Admin → System → API Clients does; False if unknown."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE api_clients SET enabled = ? WHERE client_id = ?", (int(enabled), client_id)
            )
        return cursor.rowcount > 0

    # -- tokens, codes, sessions ------------------------------------------------------------
    def add_token(
        self,
        token: str,
        kind: str,
        client_id: str,
        scope: str,
        lifetime: float,
        *,
        role: str,
        session: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> float:
        """Remember ``token`` (an access or refresh token, or a code); return its expiry time."""
        expires_at = time.time() + lifetime
        with self._lock:
            self._db.execute(
                "INSERT INTO api_tokens"
                " (digest, kind, client_id, scope, role, session, expires_at, extra)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    digest(token),
                    kind,
                    client_id,
                    scope,
                    role,
                    session,
                    expires_at,
                    json.dumps(extra or {}),
                ),
            )
        return expires_at

    def token(self, token: str, kind: str) -> Grant | None:
        """The grant behind ``token`` of ``kind`` (expired or revoked included), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT client_id, scope, role, session, expires_at, revoked, extra"
                " FROM api_tokens WHERE digest = ? AND kind = ?",
                (digest(token), kind),
            ).fetchone()
        return None if row is None else _grant(row)

    def take_token(self, token: str, kind: str) -> Grant | None:
        """The grant behind ``token``, which is revoked by this call (a second take sees that)."""
        key = digest(token)
        with self._lock:  # one connection behind one lock: the select and update are one step
            row = self._db.execute(
                "SELECT client_id, scope, role, session, expires_at, revoked, extra"
                " FROM api_tokens WHERE digest = ? AND kind = ?",
                (key, kind),
            ).fetchone()
            self._db.execute("UPDATE api_tokens SET revoked = 1 WHERE digest = ?", (key,))
        return None if row is None else _grant(row)

    def revoke_digest(self, token_digest: str) -> None:
        """Revoke the token stored under ``token_digest`` (a refresh's old access token)."""
        with self._lock:
            self._db.execute("UPDATE api_tokens SET revoked = 1 WHERE digest = ?", (token_digest,))

    def revoke(self, kinds: tuple[str, ...] = (ACCESS,)) -> int:
        """Revoke every live token of ``kinds``; return how many there were."""
        marks = ", ".join("?" for _ in kinds)
        with self._lock:
            cursor = self._db.execute(
                f"UPDATE api_tokens SET revoked = 1 WHERE revoked = 0 AND expires_at > ?"  # noqa: S608
                f" AND kind IN ({marks})",
                (time.time(), *kinds),
            )
        return cursor.rowcount

    def open_session(self, client_id: str) -> str:
        """Start a trusted-user session (a user's login through ``client_id``); return its id."""
        session = secrets.token_hex(16)
        with self._lock:
            self._db.execute(
                "INSERT INTO trusted_users (session, client_id) VALUES (?, ?)", (session, client_id)
            )
        return session

    def session_active(self, session: str) -> bool:
        """Whether the trusted-user session is still there (no logout since)."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM trusted_users WHERE session = ?", (session,)
            ).fetchone()
        return row is not None

    def end_sessions(self) -> int:
        """Log every user out: end every session and revoke its refresh tokens; return how many."""
        with self._lock:
            self._db.execute(
                "UPDATE api_tokens SET revoked = 1 WHERE kind = ? AND session IS NOT NULL",
                (REFRESH,),
            )
            cursor = self._db.execute("DELETE FROM trusted_users")
        return cursor.rowcount

    def remember_jti(self, client_id: str, jti: str, expires_at: float) -> bool:
        """Record a client assertion's ``jti`` until ``expires_at``; False if it was seen."""
        now = time.time()
        with self._lock:
            self._db.execute("DELETE FROM oauth_jtis WHERE expires_at < ?", (now,))
            self._db.execute("DELETE FROM api_tokens WHERE expires_at < ?", (now - 86400,))
            try:
                self._db.execute(
                    "INSERT INTO oauth_jtis (client_id, jti, expires_at) VALUES (?, ?, ?)",
                    (client_id, jti, expires_at),
                )
            except sqlite3.IntegrityError:
                return False
        return True

    # -- patients ---------------------------------------------------------------------------
    def create_patient(self, record: dict[str, Any]) -> Patient:
        """Store a validated patient, always a new one; an empty pubpid becomes the pid."""
        new_uuid = str(uuid.uuid4())
        record = dict(record)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute(
                    "INSERT INTO patient_data (uuid, pubpid, ss, record, created_at)"
                    " VALUES (?, '', ?, '{}', ?)",
                    (new_uuid, str(record.get("ss") or ""), _now()),
                )
                pid = cursor.lastrowid
                assert pid is not None
                if not record.get("pubpid"):
                    record["pubpid"] = str(pid)
                self._db.execute(
                    "UPDATE patient_data SET pubpid = ?, record = ? WHERE pid = ?",
                    (record["pubpid"], json.dumps(record, ensure_ascii=False), pid),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return Patient(pid, new_uuid, record)

    def patient(self, patient_uuid: str) -> Patient | None:
        """The patient with ``patient_uuid``, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT pid, uuid, record FROM patient_data WHERE uuid = ?", (patient_uuid,)
            ).fetchone()
        return None if row is None else _patient(row)

    def patients(self) -> list[Patient]:
        """Every patient, by pid."""
        with self._lock:
            rows = self._db.execute(
                "SELECT pid, uuid, record FROM patient_data ORDER BY pid"
            ).fetchall()
        return [_patient(r) for r in rows]

    def patients_by_pubpid(self, pubpid: str) -> list[Patient]:
        """Patients whose pubpid is ``pubpid`` (exact), by pid."""
        with self._lock:
            rows = self._db.execute(
                "SELECT pid, uuid, record FROM patient_data WHERE pubpid = ? ORDER BY pid",
                (pubpid,),
            ).fetchall()
        return [_patient(r) for r in rows]

    def patients_by_identifier(self, value: str) -> list[Patient]:
        """Patients with ``ss = value OR pubpid = value`` (OpenEMR's FHIR identifier search)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT pid, uuid, record FROM patient_data WHERE ss = ? OR pubpid = ?"
                " ORDER BY pid",
                (value, value),
            ).fetchall()
        return [_patient(r) for r in rows]

    def seed_patients(
        self,
        n: int,
        *,
        facility: str = "10000",
        prefix: str = "P",
        created_at: str | None = None,
    ) -> int:
        """Insert ``n`` generated, valid patients in one transaction; return how many.

        Public ids are ``{facility}:{prefix}{k}`` with ``k`` counting on from the patients
        already stored, so repeated seeding never repeats one. Names, sex and birth dates are
        derived from ``k`` (fake, deterministic). ``created_at`` (``YYYY-MM-DDThh:mm:ssZ``,
        default now) is what an export's ``_since`` compares with.
        """
        if n < 0:
            raise ValueError(f"n must be ≥ 0, not {n}")
        stamp = created_at or _now()
        with self._lock:
            start = int(self._db.execute("SELECT count(*) FROM patient_data").fetchone()[0])
            rows = (_seed_row(start + i + 1, facility, prefix, stamp) for i in range(n))
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO patient_data (uuid, pubpid, ss, record, created_at)"
                    " VALUES (?, ?, '', ?, ?)",
                    rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return n

    def count_patients(self) -> int:
        """How many patients are stored."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM patient_data").fetchone()[0])

    def clear(self) -> None:
        """Forget patients, clients, tokens, sessions and seen ``jti``s."""
        with self._lock:
            for table in ("patient_data", "api_clients", "api_tokens", "trusted_users"):
                self._db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
            self._db.execute("DELETE FROM oauth_jtis")


def enable_client(data_dir: Path, client_id: str) -> Client | None:
    """Enable ``client_id`` in ``data_dir`` (works while the server runs); None if unknown."""
    with OpenEmrStore(data_dir) as store:
        if not store.set_enabled(client_id, True):
            return None
        return store.client(client_id)


def list_clients(data_dir: Path) -> list[Client]:
    """The clients registered in ``data_dir``."""
    with OpenEmrStore(data_dir) as store:
        return store.clients()


def _grant(row: tuple[Any, ...]) -> Grant:
    return Grant(row[0], row[1], row[2], row[3], row[4], bool(row[5]), json.loads(row[6]))


def _patient(row: tuple[Any, ...]) -> Patient:
    return Patient(int(row[0]), str(row[1]), json.loads(row[2]))


_GIVEN = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "John", "Radia", "Ken")
_FAMILY = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Backus")


def _seed_row(k: int, facility: str, prefix: str, stamp: str) -> tuple[str, str, str, str]:
    """One generated patient_data row: uuid, pubpid, record JSON, created_at."""
    pubpid = f"{facility}:{prefix}{k}"
    record = {
        "fname": _GIVEN[k % len(_GIVEN)],
        "lname": _FAMILY[(k // len(_GIVEN)) % len(_FAMILY)],
        "DOB": f"{1930 + k % 80}-{1 + k % 12:02d}-{1 + k % 28:02d}",
        "sex": "Female" if k % 2 else "Male",
        "pubpid": pubpid,
    }
    return str(uuid.uuid4()), pubpid, json.dumps(record), stamp


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

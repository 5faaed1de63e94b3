"""The CWS sandbox's data dir: its own RSA key, registered client keys, patients (SQLite).

Layout of a data dir (mode 0700)::

    server.pem    the sandbox's private key (PKCS#8 PEM, mode 0600); it signs responses as "coremr"
    sandbox.db    SQLite: client_keys (username → public key PEM), patients

Nothing here needs starlette or uvicorn, so ``cwsctl sandbox add-key`` and ``server-key`` work
without the ``cwsctl[sandbox]`` extra. The database runs in WAL mode, so the CLI can register a
key while a server is running; ``synchronous=NORMAL`` means a committed patient survives a crash
of the server process (not necessarily a power cut), which is what a sandbox needs.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from cwsctl.core import keys
from cwsctl.core.bulk.rows import patient_key
from cwsctl.core.errors import CwsError, InputError
from cwsctl.protocols.cws_signature import DEFAULT_SERVER_USERNAME
from cwsctl.sandbox.db import open_private_db

SERVER_KEY_FILE = "server.pem"
DB_FILE = "sandbox.db"
#: The name the sandbox signs its responses as, like CorEMR's own key.
SERVER_USERNAME = DEFAULT_SERVER_USERNAME
_SCHEMA_VERSION = 1
_USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS client_keys (
    username       TEXT PRIMARY KEY,
    public_key_pem TEXT NOT NULL,
    fingerprint    TEXT NOT NULL,
    added_at       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS patients (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    external_id  TEXT NOT NULL,
    facility_key TEXT NOT NULL,
    record       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    UNIQUE (external_id, facility_key)
);
"""


def validate_username(username: str) -> str:
    """Client usernames go into the Authorization header: keep them to a safe alphabet."""
    if not _USERNAME_RE.match(username):
        raise InputError(
            f"invalid username {username!r}",
            hint="use letters, digits, '.', '_', '@' and '-' (up to 64 characters)",
        )
    return username


def load_or_create_server_key(data_dir: Path, bits: int = keys.DEFAULT_BITS) -> rsa.RSAPrivateKey:
    """The sandbox's private key from ``data_dir/server.pem``, made (``bits`` bits) if absent.

    An existing key is used whatever its size. Safe against two processes creating it at once.
    """
    path = data_dir / SERVER_KEY_FILE
    if path.exists():
        return keys.load_private_key(path)
    key = keys.generate_private_key(bits)
    try:
        keys.save_private_key(path, key, None, overwrite=False)
    except CwsError:
        if path.exists():  # another process won the race: use its key
            return keys.load_private_key(path)
        raise
    return key


def server_public_key_pem(data_dir: Path, bits: int = keys.DEFAULT_BITS) -> str:
    """The sandbox's public key PEM (creating the key pair if the data dir is new)."""
    return keys.public_key_pem(load_or_create_server_key(data_dir, bits).public_key()).decode(
        "ascii"
    )


@dataclass(frozen=True)
class ClientKey:
    """A registered client public key (CorEMR's Administration → Public Keys)."""

    username: str
    public_key_pem: str
    fingerprint: str
    added_at: str

    def to_json(self) -> dict[str, str]:
        """The ``--json`` shape (without the PEM)."""
        return {
            "username": self.username,
            "fingerprint": self.fingerprint,
            "added_at": self.added_at,
        }


class DuplicatePatientError(Exception):
    """A patient with the same (external_id, facility) exists; ``existing_id`` is its id."""

    def __init__(self, existing_id: int) -> None:
        super().__init__(f"duplicate patient (existing id {existing_id})")
        self.existing_id = existing_id


class SandboxStore:
    """One SQLite connection to ``data_dir/sandbox.db``, safe to share between threads."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / DB_FILE
        self._lock = threading.Lock()
        self._db = open_private_db(self.path, _SCHEMA)
        self._db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> SandboxStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- client keys ------------------------------------------------------------------------
    def add_client_key(
        self, username: str, public_key: rsa.RSAPublicKey, *, replace: bool = False
    ) -> ClientKey:
        """Register ``public_key`` under ``username``; the same key again is a no-op.

        A different key for a known username raises InputError unless ``replace`` is set.
        """
        validate_username(username)
        pem = keys.public_key_pem(public_key).decode("ascii")
        entry = ClientKey(username, pem, keys.fingerprint(public_key), _now())
        with self._lock:
            row = self._db.execute(
                "SELECT public_key_pem, fingerprint, added_at FROM client_keys WHERE username = ?",
                (username,),
            ).fetchone()
            if row is not None:
                if row[1] == entry.fingerprint:
                    return ClientKey(username, row[0], row[1], row[2])
                if not replace:
                    raise InputError(
                        f"username {username!r} already has another key ({row[1]})",
                        hint="pass --replace to register the new key instead",
                    )
            self._db.execute(
                "INSERT OR REPLACE INTO client_keys (username, public_key_pem, fingerprint,"
                " added_at) VALUES (?, ?, ?, ?)",
                (entry.username, entry.public_key_pem, entry.fingerprint, entry.added_at),
            )
        return entry

    def client_key_pem(self, username: str) -> str | None:
        """The PEM registered for ``username``, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT public_key_pem FROM client_keys WHERE username = ?", (username,)
            ).fetchone()
        return None if row is None else str(row[0])

    def client_keys(self) -> list[ClientKey]:
        """Every registered key, by username."""
        with self._lock:
            rows = self._db.execute(
                "SELECT username, public_key_pem, fingerprint, added_at FROM client_keys"
                " ORDER BY username"
            ).fetchall()
        return [ClientKey(*row) for row in rows]

    # -- patients ---------------------------------------------------------------------------
    def insert_patient(self, record: dict[str, Any]) -> dict[str, Any]:
        """Store a validated record; return it with its new ``id`` (committed on return).

        Raises DuplicatePatientError when (external_id, facility) is taken.
        """
        external_id, facility = patient_key(record)
        data = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            try:
                cursor = self._db.execute(
                    "INSERT INTO patients (external_id, facility_key, record, created_at)"
                    " VALUES (?, ?, ?, ?)",
                    (external_id, facility, data, _now()),
                )
            except sqlite3.IntegrityError:
                row = self._db.execute(
                    "SELECT id FROM patients WHERE external_id = ? AND facility_key = ?",
                    (external_id, facility),
                ).fetchone()
                if row is None:  # pragma: no cover - deleted in between
                    raise
                raise DuplicatePatientError(int(row[0])) from None
        new_id = cursor.lastrowid
        assert new_id is not None
        return {"id": new_id, **record}

    def get_patient(self, patient_id: int) -> dict[str, Any] | None:
        """The patient with ``patient_id``, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, record FROM patients WHERE id = ?", (patient_id,)
            ).fetchone()
        return None if row is None else _patient(row)

    def find_patients(self, external_id: str, facility: str | None = None) -> list[dict[str, Any]]:
        """Patients with ``external_id`` (in ``facility`` when given), by id."""
        with self._lock:
            if facility is None:
                rows = self._db.execute(
                    "SELECT id, record FROM patients WHERE external_id = ? ORDER BY id",
                    (external_id,),
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT id, record FROM patients WHERE external_id = ? AND facility_key = ?"
                    " ORDER BY id",
                    (external_id, facility),
                ).fetchall()
        return [_patient(row) for row in rows]

    def count_patients(self) -> int:
        """How many patients are stored."""
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM patients").fetchone()
        return int(row[0])

    def clear(self, *, patients: bool = True, client_keys: bool = True) -> None:
        """Forget patients and/or client keys (tests and demos start from a clean slate)."""
        with self._lock:
            if patients:
                self._db.execute("DELETE FROM patients")
            if client_keys:
                self._db.execute("DELETE FROM client_keys")


def register_client_key(
    data_dir: Path, username: str, public_key: rsa.RSAPublicKey, *, replace: bool = False
) -> ClientKey:
    """Register a client key in ``data_dir`` without running the server (works while it runs)."""
    with SandboxStore(data_dir) as store:
        return store.add_client_key(username, public_key, replace=replace)


def list_client_keys(data_dir: Path) -> list[ClientKey]:
    """The client keys registered in ``data_dir``."""
    with SandboxStore(data_dir) as store:
        return store.client_keys()


def _patient(row: tuple[Any, ...]) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(row[1])
    return {"id": int(row[0]), **record}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

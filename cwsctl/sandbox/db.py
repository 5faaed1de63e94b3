"""Where a sandbox keeps its state, and the one way every flavour opens its SQLite database.

Nothing here needs starlette or uvicorn: the CLI's administration commands use it without the extra.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from cwsctl.core.errors import InputError
from cwsctl.core.files import ensure_private_dir
from cwsctl.core.profile import cwsctl_home

DATA_DIR_ENV = "CWSCTL_SANDBOX_DIR"


def default_data_dir() -> Path:
    """``$CWSCTL_SANDBOX_DIR``, else ``$CWSCTL_HOME/sandbox``."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return cwsctl_home() / "sandbox"


def open_private_db(path: Path, schema: str) -> sqlite3.Connection:
    """A connection to the SQLite file ``path`` as every sandbox flavour keeps its data.

    The file is owner-only from its creation (fake or not, it is patient data; WAL files
    inherit the mode); autocommit mode, so every statement is its own transaction, committed
    when it returns; WAL with NORMAL syncing; shareable between threads (callers hold a lock);
    ``schema`` applied.
    """
    ensure_private_dir(path.parent)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    db: sqlite3.Connection | None = None
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA busy_timeout = 5000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(schema)
    except sqlite3.DatabaseError as exc:  # not SQLite, or damaged: the user's file, not a bug
        if db is not None:
            db.close()
        raise InputError(
            f"{path} is not a usable sandbox database ({exc})",
            hint="point --data-dir at a sandbox's data directory, or move that file away",
        ) from None
    return db

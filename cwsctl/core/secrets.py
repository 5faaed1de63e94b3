"""Passwords and bearer tokens for openehr profiles: from the environment, a file, or the profile.

Secrets are never taken on the command line (they would show in ``ps`` and shell history). The
first source that has one wins: the variable holding the secret itself (``CWSCTL_PASSWORD`` /
``CWSCTL_TOKEN``), then a file named by ``CWSCTL_PASSWORD_FILE`` / ``CWSCTL_TOKEN_FILE`` (its
first line), then the copy kept in ``$CWSCTL_HOME/secrets/<profile>.json`` (mode 0600) when the
user asked ``profile init … --store-secret``.

A secret that cannot go in its header is refused before anything is sent, naming where it came
from and never quoting it: a token with a control or non-ASCII character, a password with a
control character (a CRLF file read with ``$(cat …)``). A password may hold non-ASCII characters:
basic auth sends it as UTF-8 (RFC 7617), inside base64.
"""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

from cwsctl.core.errors import CwsError, InputError, ProfileError
from cwsctl.core.files import (
    atomic_write,
    check_private_file,
    ensure_private_dir,
    no_core_dumps,
    read_bytes,
)
from cwsctl.core.profile import Store, validate_profile_name

#: What each auth method needs, and the environment variables that give it.
SECRET_FOR_AUTH = {"basic": "password", "bearer": "token"}
_ENV = {"password": "CWSCTL_PASSWORD", "token": "CWSCTL_TOKEN"}


def secret_env(kind: str) -> tuple[str, str]:
    """The variables for ``kind`` (password or token): the secret itself, and a file holding it."""
    name = _ENV[kind]
    return name, f"{name}_FILE"


def read_secret_file(path: Path, kind: str) -> str:
    """A secret file's first line (like ``--passphrase-file``)."""
    data = read_bytes(path, what=f"{kind} file", error=InputError)
    lines = data.decode("utf-8", "replace").splitlines()
    if not lines or not lines[0]:
        raise InputError(f"{kind} file {path} is empty")
    return lines[0]


def secrets_path(store: Store, profile: str) -> Path:
    """Where a profile's stored secret lives."""
    return store.root / "secrets" / f"{validate_profile_name(profile)}.json"


def store_secret(store: Store, profile: str, kind: str, value: str) -> Path:
    """Keep ``value`` for ``profile`` in its 0600 secrets file (in a 0700 directory)."""
    path = secrets_path(store, profile)
    ensure_private_dir(path.parent)
    atomic_write(path, json.dumps({kind: value}).encode(), mode=0o600)
    return path


def forget_secret(store: Store, profile: str) -> None:
    """Remove a profile's stored secret, if any."""
    secrets_path(store, profile).unlink(missing_ok=True)


def check_secret(
    value: str, kind: str, where: str, error: type[CwsError] = InputError, hint: str | None = None
) -> str:
    """``value`` unchanged when it can be sent as a ``kind`` (token or password); else ``error``
    naming ``where`` it came from, without the value."""
    from cwsctl.core.headers import check_value

    if kind in ("password", "username"):  # basic auth: base64 of UTF-8, controls refused
        bad = next((ch for ch in value if unicodedata.category(ch) == "Cc"), None)
        if bad is not None:
            what = "a line break or NUL" if bad in "\r\n\x00" else "a control character"
            raise error(
                f"the {kind} from {where} holds {what}: refusing to send it (nothing was sent)",
                hint=hint or f"fix {where} (a file written on Windows ends its lines with CR)",
            )
        return value
    return check_value(
        value,
        f"the {kind} from {where}",
        error,
        hint=hint or f"fix {where} (a file written on Windows ends its lines with CR)",
    )


def resolve_secret(store: Store, profile: str, kind: str) -> str:
    """The secret for ``profile``: environment, then secret file, then the stored copy; one
    that cannot be sent is an error naming its source (exit 2; 3 for the stored copy). A stored
    copy others can read is refused (exit 3), and from here on the process writes no core dump."""
    no_core_dumps()  # the secret is about to be in this process's memory
    direct, file_var = secret_env(kind)
    if os.environ.get(direct):
        return check_secret(os.environ[direct], kind, direct)
    if os.environ.get(file_var):
        path = Path(os.environ[file_var])
        return check_secret(read_secret_file(path, kind), kind, f"{file_var} ({path})")
    path = secrets_path(store, profile)
    check_private_file(path, what=f"stored {kind} file")
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        stored = {}
    except (OSError, ValueError) as exc:
        raise ProfileError(f"cannot read the stored {kind} in {path}: {exc}") from None
    value = stored.get(kind) if isinstance(stored, dict) else None
    if isinstance(value, str) and value:
        return check_secret(
            value,
            kind,
            f"the stored copy in {path}",
            ProfileError,
            hint=f"store a good one: cwsctl profile init {profile} … --{kind}-file FILE "
            "--store-secret",
        )
    raise ProfileError(
        f"no {kind} for profile {profile!r}",
        hint=f"set {direct} or {file_var}, or keep one with: cwsctl profile init {profile} "
        f"… --{kind}-file FILE --store-secret",
    )

"""Access tokens, what a grant gave, and a profile's 0600 token cache with its locks.

The cache, ``$CWSCTL_HOME/tokens/<profile>.json`` (mode 0600, in a 0700 directory, replaced
atomically), holds the access token with its expiry, the refresh token and the registration
access token. An access token is reused until ``min(10 s, 10 % of its lifetime)`` before it
expires (10 s for OpenEMR's 300-second client-credentials tokens and its one-hour user tokens).
Tokens never appear in ``repr``, error messages or the audit log.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cwsctl.core.errors import LocalKeyError
from cwsctl.core.files import (
    atomic_write,
    check_private_file,
    ensure_private_dir,
    exclusive_lock,
    no_core_dumps,
)
from cwsctl.core.profile import Store, validate_profile_name
from cwsctl.core.transport.deadline import time_left

#: A cached token is reused until this long before it expires (or 10 % of its lifetime, if less).
REUSE_MARGIN_S = 10.0
TOKENS_DIR = "tokens"

GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_REFRESH_TOKEN = "refresh_token"  # noqa: S105 - a grant type name, not a secret
GRANT_AUTHORIZATION_CODE = "authorization_code"
#: The token file's entries: the access token of the usual grants, a refresh token, and the
#: client-credentials token of a source that never uses a person's sign-in (bulk export).
ACCESS, SYSTEM_ACCESS = "access", "system_access"
GRANT_SLOTS = (ACCESS, "refresh_token", SYSTEM_ACCESS)


@dataclass
class Token:
    """An access token and when it stops being usable (times are Unix seconds)."""

    access_token: str
    token_type: str
    scope: str
    obtained_at: float
    expires_at: float

    def __repr__(self) -> str:  # never show the token itself
        return (
            f"Token(token_type={self.token_type!r}, scope={self.scope!r}, "
            f"expires_at={self.expires_at!r}, access_token=<redacted>)"
        )

    @property
    def lifetime(self) -> float:
        """Seconds between obtaining the token and its expiry."""
        return max(0.0, self.expires_at - self.obtained_at)

    def usable(self, now: float | None = None) -> bool:
        """True until :func:`reuse_margin` before the token expires."""
        now = time.time() if now is None else now
        return now < self.expires_at - reuse_margin(self.lifetime)

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value."""
        return f"Bearer {self.access_token}"

    def to_json(self) -> dict[str, Any]:
        """The cached form."""
        return {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "scope": self.scope,
            "obtained_at": self.obtained_at,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_json(cls, data: Any) -> Token | None:
        """The cached token, or None when the entry is not one."""
        if not isinstance(data, dict):
            return None
        try:
            token = cls(
                access_token=str(data["access_token"]),
                token_type=str(data.get("token_type", "Bearer")),
                scope=str(data.get("scope", "")),
                obtained_at=float(data["obtained_at"]),
                expires_at=float(data["expires_at"]),
            )
        except (KeyError, TypeError, ValueError):
            return None
        # A token that never expires (a cache written from an expires_in of 1e999) is none.
        finite = math.isfinite(token.obtained_at) and math.isfinite(token.expires_at)
        return token if finite else None


def reuse_margin(lifetime: float) -> float:
    """How long before expiry a token stops being reused: the smaller of 10 s and 10 %."""
    return min(REUSE_MARGIN_S, 0.1 * lifetime)


@dataclass
class GrantResult:
    """What a token endpoint granted."""

    token: Token
    refresh_token: str | None

    def __repr__(self) -> str:
        return f"GrantResult(token={self.token!r}, refresh_token={'<redacted>' if self.refresh_token else None})"


class TokenStore:
    """A profile's OAuth2 secrets on disk: ``$CWSCTL_HOME/tokens/<profile>.json``, mode 0600.

    The file holds the cached access token and the refresh token (both valid only for the
    ``client_id`` and token URL they were issued for: after a new registration or a URL change
    they are ignored) and the registration answer's secrets. Writers hold an exclusive lock on
    ``<profile>.lock`` beside it (see :meth:`locked`) so that two cron jobs do not both spend a
    rotating refresh token.
    """

    def __init__(self, store: Store, profile: str) -> None:
        self.directory = store.root / TOKENS_DIR
        validate_profile_name(profile)  # it becomes a file name
        self.path = self.directory / f"{profile}.json"
        self.lock_path = self.directory / f"{profile}.lock"

    def read(self) -> dict[str, Any]:
        """The whole file (empty when missing or unreadable as JSON).

        A file group or others can read or write is refused (exit 3, like a key): its tokens
        may have been copied, or planted."""
        check_private_file(self.path, what="token file")
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError:
            return {}  # a damaged cache only costs a new token
        no_core_dumps()  # tokens are in memory from now on
        try:
            data = json.loads(raw)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def write(self, data: dict[str, Any]) -> None:
        """Replace the file atomically (0600 in a 0700 directory)."""
        ensure_private_dir(self.directory)
        atomic_write(
            self.path,
            json.dumps(data, indent=1).encode("utf-8"),
            what="token file",
            error=LocalKeyError,
        )

    @contextlib.contextmanager
    def _updating(self) -> Iterator[dict[str, Any]]:
        """Read, let the caller change, and write the file under an exclusive lock of its own
        (``<profile>.json.lock``, not the grant lock: a grant holder writes too), so concurrent
        writers (a registration and a token refresh) never lose each other's change."""
        ensure_private_dir(self.directory)
        with exclusive_lock(self.directory / f"{self.path.name}.lock", error=LocalKeyError):
            data = self.read()
            yield data
            self.write(data)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the profile's token lock (an advisory ``flock``; a no-op where there is none),
        waiting at most until the exchange's deadline (or 60 s when there is none)."""
        ensure_private_dir(self.directory)
        with exclusive_lock(
            self.lock_path, error=LocalKeyError, wait=time_left() or 60.0, what="token lock"
        ):
            yield

    def _grants(self, client_id: str, token_url: str) -> dict[str, Any]:
        data = self.read()
        if data.get("client_id") != client_id or data.get("token_url") != token_url:
            return {}
        return data

    def access_token(self, client_id: str, token_url: str, slot: str = ACCESS) -> Token | None:
        """The cached access token for this client and token URL (usable or not), if any.

        ``slot`` :data:`SYSTEM_ACCESS` is the client-credentials token kept apart from a
        signed-in person's (see :class:`~cwsctl.protocols.oauth2.grants.TokenSource`'s ``grant``)."""
        return Token.from_json(self._grants(client_id, token_url).get(slot))

    def refresh_token(self, client_id: str, token_url: str) -> str | None:
        """The stored refresh token for this client and token URL, if any."""
        value = self._grants(client_id, token_url).get("refresh_token")
        return value if isinstance(value, str) and value else None

    def save_grant(
        self, client_id: str, token_url: str, result: GrantResult, slot: str = ACCESS
    ) -> None:
        """Cache a granted access token (in ``slot``); keep (or replace, when rotated) the
        refresh token."""
        with self._updating() as data:
            if data.get("client_id") != client_id or data.get("token_url") != token_url:
                for name in GRANT_SLOTS[1:] if slot == ACCESS else GRANT_SLOTS:
                    data.pop(name, None)
            data.update({"client_id": client_id, "token_url": token_url})
            data[slot] = result.token.to_json()
            if result.refresh_token:
                data["refresh_token"] = result.refresh_token

    def drop_refresh_token(self) -> None:
        """Forget a refresh token the server refused."""
        with self._updating() as data:
            data.pop("refresh_token", None)

    def clear_grants(self) -> None:
        """Forget the access and refresh tokens (the registration secrets stay)."""
        with self._updating() as data:
            for name in (*GRANT_SLOTS, "client_id", "token_url"):
                data.pop(name, None)

    def registration(self) -> dict[str, Any]:
        """The stored registration secrets (``client_id``, ``registration_access_token`` …)."""
        value = self.read().get("registration")
        return value if isinstance(value, dict) else {}

    def save_registration(self, secrets_: dict[str, str]) -> None:
        """Store a registration answer's secrets."""
        with self._updating() as data:
            data["registration"] = secrets_

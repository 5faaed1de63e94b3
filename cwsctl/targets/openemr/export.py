"""What is OpenEMR's in a bulk FHIR export: PHP ``DateTime`` transaction times, the kick-off
timeout, its refusals and admin-page hints; :func:`exporter_for` builds the generic Bulk Data
client (:class:`cwsctl.protocols.fhir.exporter.Exporter`) for an openemr profile.

- **Kick-off**: OpenEMR runs the whole export inside the kick-off request (up to about two
  minutes), so it gets :data:`KICKOFF_TIMEOUT_S`; a 501 means its system scopes are switched
  off. Its URLs are named after its Site Address, which may be another host: a server-named URL
  is fetched with credentials at its path on the profile's origin.
- **Tokens**: the client-credentials grant with the profile's ``system/*`` scopes (never a
  person's refresh token: OpenEMR exports as its system user) from a :class:`TokenSource`
  limited to that grant — cached in the profile's token file (0600, locked) apart from a
  person's token, renewed before it expires (OpenEMR's last 300 s) and after any 401 (then
  the request is sent again; a download restarts its file).
- **Transaction time**: OpenEMR sends a PHP DateTime object, read with its zone.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from cwsctl.core.audit import AuditLog
from cwsctl.core.errors import CwsError, ProfileError, ServerFailureError
from cwsctl.core.profile import Profile, Store
from cwsctl.protocols.fhir.export_request import BINARY_SCOPE, STATUS_SCOPE, ExportRequest
from cwsctl.protocols.fhir.export_result import Events, ExportOptions
from cwsctl.protocols.fhir.export_session import ExportServer
from cwsctl.protocols.fhir.exporter import Exporter
from cwsctl.protocols.fhir.instant import format_instant, normalise_instant
from cwsctl.protocols.oauth2.grants import run_flow
from cwsctl.protocols.oauth2.tokens import GRANT_CLIENT_CREDENTIALS, Token
from cwsctl.targets.openemr.endpoints import at_origin, endpoints
from cwsctl.targets.openemr.scopes import ENABLE_CLIENT_PLACE, SYSTEM_SCOPES_PLACE, system_scope
from cwsctl.targets.openemr.tokens import TokenSource

#: OpenEMR exports inside the kick-off request (its own cap: two minutes), so it may take this long.
KICKOFF_TIMEOUT_S = 180.0
#: Why a file is gone (404 or 410): OpenEMR's lifetime of export files.
FILE_GONE_HINT = (
    "OpenEMR deletes export files an hour after the job started: start a new export with --new"
)
_PHP_DATE = "%Y-%m-%d %H:%M:%S.%f"


# -- transaction times ---------------------------------------------------------------------


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
    if isinstance(value, str):
        return normalise_instant(value)
    try:
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


# -- refusals and hints --------------------------------------------------------------------


def _scope_hint(profile: Profile, scope: str) -> str:
    name = profile.name
    return (
        f"register the client with it: cwsctl -p {name} oauth register --export-scopes "
        f"(types other than Patient also need system/<Type>.read: add them with --scope); "
        f"an administrator then enables the client ({ENABLE_CLIENT_PLACE})"
    )


def _check_scopes(profile: Profile, source: TokenSource, request: ExportRequest) -> None:
    held = set(system_scope(source.scope).split())
    if not held:
        raise ProfileError(
            f"profile {profile.name!r} has no system/ scopes: a bulk export needs the "
            "client-credentials grant with them",
            hint=f"cwsctl -p {profile.name} oauth register --export-scopes (system "
            f"scopes must be on: {SYSTEM_SCOPES_PLACE}); an administrator then enables the "
            f"client ({ENABLE_CLIENT_PLACE})",
        )
    for needed in (request.scope, STATUS_SCOPE, BINARY_SCOPE):
        if needed not in held:
            raise ProfileError(
                f"profile {profile.name!r} does not hold the scope {needed}, "
                f"which {request.describe().split()[0]} needs",
                hint=_scope_hint(profile, needed),
            )


def _kickoff_refusal(profile: Profile, status: int, what: str) -> CwsError | None:
    """A 501 from OpenEMR's kick-off: its system scopes are switched off."""
    if status != 501:
        return None
    return ServerFailureError(
        f"{what}: HTTP 501 Not Implemented: OpenEMR's system scopes are switched off",
        hint=f"an OpenEMR administrator turns them on ({SYSTEM_SCOPES_PLACE}); then "
        f"cwsctl -p {profile.name} oauth register --export-scopes, and the "
        f"administrator enables the client ({ENABLE_CLIENT_PLACE})",
    )


# -- the exporter --------------------------------------------------------------------------


class _SystemTokens:
    """The exporter's tokens: the client-credentials grant of a :class:`TokenSource`."""

    def __init__(self, source: TokenSource) -> None:
        self.source = source

    def token(
        self,
        client: httpx.Client,
        *,
        timeout: float,
        max_response_size: int,
        reject: str | None = None,
    ) -> Token:
        """A usable client-credentials token (cached in the profile's token file, renewed
        before it expires or when it is ``reject``, the one a 401 refused)."""
        return run_flow(
            self.source.token_flow(reject=reject),
            client,
            timeout=timeout,
            max_response_size=max_response_size,
        )


def exporter_for(
    profile: Profile,
    store: Store,
    private_key: rsa.RSAPrivateKey,
    directory: Path,
    options: ExportOptions | None = None,
    events: Events | None = None,
    audit: AuditLog | None = None,
) -> Exporter:
    """The exporter that runs, shows or cancels the export kept in one directory for one
    openemr profile."""
    source = TokenSource(profile, store, private_key, grant=GRANT_CLIENT_CREDENTIALS)
    ends = endpoints(profile)

    def home_url(url: str) -> str:
        """Where a server-named URL is fetched with credentials: its path on the profile's
        origin (OpenEMR names its URLs after its Site Address, which may be another host)."""
        return at_origin(profile.url, url)

    server = ExportServer(
        fhir_base=at_origin(profile.url, ends.fhir_base),
        home_url=home_url,
        kickoff_timeout=KICKOFF_TIMEOUT_S,
        scope_hint=lambda scope: _scope_hint(profile, scope),
        check_scopes=lambda request: _check_scopes(profile, source, request),
        kickoff_refusal=lambda status, what: _kickoff_refusal(profile, status, what),
        file_gone_hint=FILE_GONE_HINT,
        transaction_instant=normalise_transaction_time,
    )
    return Exporter(profile, server, _SystemTokens(source), directory, options, events, audit)

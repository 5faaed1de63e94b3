"""The OpenEMR flavour's shared state: the server's configuration and what its modules share.

:class:`OpenEmrState` holds OpenEMR's globals (version, site, Site Address Override, system
scopes, manual approval) and the store; beside it PHP's default Content-Type and
league/oauth2-server's refusal (:class:`OAuthError`), used by :mod:`.oauth`,
:mod:`.assertion`, :mod:`.api`, the ``export_*`` modules, :mod:`.app` and :mod:`.server`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cwsctl.targets.openemr.sandbox.scopes import VERSIONS
from cwsctl.targets.openemr.sandbox.store import SYSTEM, OpenEmrStore

#: OpenEMR's lifetimes: client-credentials access tokens, user access tokens, refresh, code.
CLIENT_CREDENTIALS_LIFETIME_S = 300
USER_ACCESS_LIFETIME_S = 3600
REFRESH_LIFETIME_S = 90 * 24 * 3600
CODE_LIFETIME_S = 60
#: league/oauth2-server's messages.
INVALID_CLIENT = "Client authentication failed"
INVALID_REQUEST = (
    "The request is missing a required parameter, includes an invalid parameter value, "
    "includes a parameter more than once, or is otherwise malformed."
)
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
#: What PHP sends when a script sets no Content-Type (7.0.3's registration, empty 401s).
PHP_DEFAULT_TYPE = "text/html; charset=UTF-8"


@dataclass
class OpenEmrState:
    """The server's configuration (OpenEMR's globals) and store, shared by every endpoint."""

    store: OpenEmrStore
    site: str = "default"
    version: str = "7.0.4"
    site_address: str | None = None
    system_scopes: bool = False
    manual_approval: bool = False
    token_lifetime: int | None = None
    log_refusals: bool = True

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise ValueError(f"version must be one of {', '.join(VERSIONS)}, not {self.version!r}")

    def base(self, request: Request) -> str:
        """OpenEMR's site address: the override, else scheme + X-Forwarded-Host or Host."""
        if self.site_address:
            return self.site_address.rstrip("/")
        host = request.headers.get("x-forwarded-host") or request.headers.get("host", "")
        return f"{request.url.scheme}://{host}"

    def token_url(self, request: Request) -> str:
        """The token URL assertions must name as ``aud``."""
        return f"{self.base(request)}/oauth2/{self.site}/token"

    def fhir_base(self, request: Request) -> str:
        """``{site address}/apis/{site}/fhir``."""
        return f"{self.base(request)}/apis/{self.site}/fhir"

    def access_lifetime(self, role: str) -> int:
        """Seconds an access token of ``role`` lives (an override applies to both)."""
        if self.token_lifetime is not None:
            return self.token_lifetime
        return CLIENT_CREDENTIALS_LIFETIME_S if role == SYSTEM else USER_ACCESS_LIFETIME_S


class OAuthError(Exception):
    """A league/oauth2-server refusal; ``reason`` goes to the sandbox's log, not the body."""

    def __init__(
        self,
        error: str,
        message: str,
        status: int = 400,
        hint: str | None = None,
        *,
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.error = error
        self.message = message
        self.status = status
        self.hint = hint
        self.reason = reason or hint or message

    def body(self) -> dict[str, Any]:
        """``{"error", "error_description", "hint"?, "message"}``."""
        document: dict[str, Any] = {"error": self.error, "error_description": self.message}
        if self.hint is not None:
            document["hint"] = self.hint
        document["message"] = self.message
        return document

    def response(self) -> Response:
        """The JSON answer."""
        return JSONResponse(self.body(), self.status, headers=NO_STORE)


def invalid_client(reason: str, status: int = 401) -> OAuthError:
    """``invalid_client``: 401 (unknown, disabled, no usable key) or 400 (a failed assertion)."""
    return OAuthError("invalid_client", INVALID_CLIENT, status, reason=reason)

"""The OpenEMR flavour of the sandbox: OAuth2 with JWT client assertions, Standard API, FHIR R4.

A stand-in for an OpenEMR instance's API (site ``default`` unless told otherwise), for demos and
tests; not OpenEMR. Endpoints (``{site}`` is the server's site):

- ``POST /oauth2/{site}/registration``, ``GET /oauth2/{site}/authorize``,
  ``POST /oauth2/{site}/token`` — :mod:`.openemr_oauth`;
- ``GET|POST /apis/{site}/api/patient``, ``GET /apis/{site}/api/patient/{uuid}``,
  ``GET /apis/{site}/fhir/metadata``, ``GET|POST /apis/{site}/fhir/Patient``,
  ``GET /apis/{site}/fhir/Patient/{id}`` — :mod:`.openemr_api`.

The envelope is the CWS flavour's (:class:`~.app.EnvelopeApp`: body limit, request timeouts,
access log, faults), with a bearer-token check instead of signatures: every ``/apis/`` request
but FHIR ``metadata`` needs ``Authorization: Bearer ACCESS_TOKEN`` → else 401 with
``WWW-Authenticate: Bearer …``. The fault switches drop, error and latency hit the patient routes
(``/apis/{site}/api/patient…``, ``/apis/{site}/fhir/Patient…``); corrupt and unsigned have no
meaning here (no response signatures). The access log names the OAuth client, never a token.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cwsctl.sandbox.app import MAX_BODY_BYTES, Answer, EnvelopeApp, Scope, printable
from cwsctl.sandbox.faults import Faults
from cwsctl.sandbox.openemr_api import ApiEndpoints, outcome
from cwsctl.sandbox.openemr_oauth import (
    DEFAULT_TOKEN_LIFETIME_S,
    OAuthEndpoints,
    OpenEmrState,
    bearer_grant,
)
from cwsctl.sandbox.openemr_store import ACCESS, REFRESH, OpenEmrStore, Patient
from cwsctl.sandbox.server import (
    DEFAULT_HOST,
    REQUEST_TIMEOUT_S,
    BaseSandboxServer,
)
from cwsctl.sandbox.store import default_data_dir

DEFAULT_SITE = "default"
_SITE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def openemr_routes(state: OpenEmrState) -> Starlette:
    """The OAuth2, Standard API and FHIR endpoints of one site, never redirecting."""
    oauth = OAuthEndpoints(state)
    api = ApiEndpoints(state)
    site = state.site
    router = Starlette(
        routes=[
            Route(f"/oauth2/{site}/registration", oauth.registration, methods=["POST"]),
            Route(f"/oauth2/{site}/authorize", oauth.authorize, methods=["GET"]),
            Route(f"/oauth2/{site}/token", oauth.token, methods=["POST"]),
            Route(f"/apis/{site}/api/patient", api.patients, methods=["GET", "POST"]),
            Route(f"/apis/{site}/api/patient/{{uuid}}", api.patient, methods=["GET"]),
            Route(f"/apis/{site}/fhir/metadata", api.metadata, methods=["GET"]),
            Route(f"/apis/{site}/fhir/Patient", api.fhir_patients, methods=["GET", "POST"]),
            Route(f"/apis/{site}/fhir/Patient/{{id}}", api.fhir_patient, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_exception},
    )
    router.router.redirect_slashes = False
    return router


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = "no such endpoint"
    else:
        message = f"method {request.method} is not allowed here"
    if "/fhir/" in request.url.path:
        return outcome(exc.status_code, message, "not-supported")
    return JSONResponse({"error": message}, exc.status_code, headers=exc.headers)


class OpenEmrApp(EnvelopeApp):
    """The envelope with bearer tokens checked on ``/apis/`` (FHIR metadata excepted)."""

    def __init__(
        self,
        state: OpenEmrState,
        *,
        faults: Faults | None = None,
        access_log: bool = True,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        super().__init__(
            openemr_routes(state), faults=faults, access_log=access_log, max_body=max_body
        )
        self.state = state
        site = re.escape(state.site)
        self._patient_path = re.compile(rf"^/apis/{site}/(api/patient|fhir/Patient)(/.*)?$")
        self._metadata_path = f"/apis/{state.site}/fhir/metadata"

    def _faulty(self, path: str) -> bool:
        return self._patient_path.match(path) is not None

    def _authenticate(self, scope: Scope, body: bytes) -> tuple[str, Answer | None]:
        path: str = scope["path"]
        if not path.startswith("/apis/") or path == self._metadata_path:
            return "-", None
        values = [bytes(v).decode("latin-1") for k, v in scope["headers"] if k == b"authorization"]
        client_id, refusal = bearer_grant(self.state.store, values)
        if client_id is not None:
            return printable(client_id, 64), None
        if refusal is None:  # no token at all: no error code (RFC 6750 §3.1)
            challenge = 'Bearer realm="OpenEMR"'
            document = {
                "error": "invalid_request",
                "error_description": "this API needs Authorization: Bearer ACCESS_TOKEN",
            }
        else:
            challenge = (
                f'Bearer realm="OpenEMR", error="invalid_token", error_description="{refusal}"'
            )
            document = {"error": "invalid_token", "error_description": refusal}
        body_bytes = json.dumps(document, separators=(",", ":")).encode("utf-8")
        return "-", Answer(401, body_bytes, [(b"www-authenticate", challenge.encode("ascii"))])


class OpenEmrSandboxServer(BaseSandboxServer):
    """An OpenEMR stand-in on ``host:port`` with state in ``data_dir/openemr.db``.

    Runs like :class:`~.server.SandboxServer` (``start``/``stop``, ``with``, ``serve_forever``,
    ``faults``). ``token_lifetime``: seconds an access token lives (OpenEMR: 60). ``site``: the
    ``{site}`` in every path.
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        site: str = DEFAULT_SITE,
        token_lifetime: int = DEFAULT_TOKEN_LIFETIME_S,
        faults: Faults | None = None,
        access_log: bool = True,
        max_body: int = MAX_BODY_BYTES,
        request_timeout: float = REQUEST_TIMEOUT_S,
    ) -> None:
        if not _SITE.match(site):
            raise ValueError(f"site must be 1-64 letters, digits, '_' or '-', not {site!r}")
        if (
            isinstance(token_lifetime, bool)
            or not isinstance(token_lifetime, int)
            or token_lifetime < 1
        ):
            raise ValueError(
                f"token_lifetime must be a whole number of seconds ≥ 1, not {token_lifetime!r}"
            )
        self._init_running(
            host=host, port=port, access_log=access_log, request_timeout=request_timeout
        )
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.site = site
        self.store = OpenEmrStore(self.data_dir)
        self.state = OpenEmrState(self.store, site, token_lifetime)
        self.app = OpenEmrApp(
            self.state,
            faults=faults if faults is not None else Faults.from_env(),
            access_log=access_log,
            max_body=max_body,
        )

    @property
    def token_lifetime(self) -> int:
        """Seconds an access token lives; assign to change it for tokens issued from now on."""
        return self.state.token_lifetime

    @token_lifetime.setter
    def token_lifetime(self, seconds: int) -> None:
        self.state.token_lifetime = seconds

    @property
    def token_url(self) -> str:
        """The token endpoint, the ``aud`` of every client assertion."""
        return f"{self.url}/oauth2/{self.site}/token"

    @property
    def api_url(self) -> str:
        """``…/apis/{site}``, the base of the Standard API (``/api``) and FHIR (``/fhir``)."""
        return f"{self.url}/apis/{self.site}"

    def revoke_tokens(self, *, refresh: bool = False) -> int:
        """Make every access token (and refresh token, if asked) stop working; return how many."""
        return self.store.revoke((ACCESS, REFRESH) if refresh else (ACCESS,))

    def patients(self) -> list[Patient]:
        """Every stored patient, by pid."""
        return self.store.patients()

    def count_patients(self) -> int:
        """How many patients are stored."""
        return self.store.count_patients()

    def reset(self) -> None:
        """Forget clients, tokens and patients, and switch faults off."""
        self.store.clear()
        self.faults = Faults()

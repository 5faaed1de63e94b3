"""The OpenEMR flavour of the sandbox: OAuth2 with JWT client assertions, Standard API, FHIR R4.

A stand-in for an OpenEMR 7.0.3 or 7.0.4+ instance's API (site ``default`` unless told
otherwise), modelled on OpenEMR's source; ``cwsctl/sandbox/README.md`` keeps the table of what
it does, for which version, with references, and what it does not model. Endpoints (``{site}``
is the server's site):

- ``GET /oauth2/{site}/.well-known/openid-configuration``,
  ``GET /apis/{site}/fhir/.well-known/smart-configuration``, ``GET /apis/{site}/fhir/metadata``
  (public) and ``POST /oauth2/{site}/registration``, ``GET /oauth2/{site}/authorize``,
  ``POST /oauth2/{site}/token`` — :mod:`.openemr_oauth` (client assertions:
  :mod:`.openemr_assertion`);
- ``GET|POST /apis/{site}/api/patient``, ``GET /apis/{site}/api/patient/{uuid}``,
  ``GET|POST /apis/{site}/fhir/Patient``, ``GET /apis/{site}/fhir/Patient/{id}`` —
  :mod:`.openemr_api`.

Every endpoint shares one :class:`~.openemr_state.OpenEmrState` (OpenEMR's globals, the store).

The envelope is the CWS flavour's (:class:`~.app.EnvelopeApp`: body limit, request timeouts,
access log, faults), with a bearer-token check instead of signatures on every other ``/apis/``
request: an unknown, expired or revoked token is 401 (7.0.3: league's ``access_denied`` JSON;
7.0.4+: ``{"error":"An error occurred","message":…,"code":0}``); a user token whose login was
ended by :meth:`OpenEmrSandboxServer.logout` is 400 "Refresh Token revoked or logged out". The
fault switches drop, error and latency hit the patient routes; corrupt and unsigned have no
meaning here. The access log names the OAuth client, never a token.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cwsctl.sandbox.db import default_data_dir
from cwsctl.sandbox.envelope import (
    MAX_BODY_BYTES,
    Answer,
    EnvelopeApp,
    Receive,
    Scope,
    Send,
    printable,
)
from cwsctl.sandbox.faults import FaultDice, Faults
from cwsctl.sandbox.server import DEFAULT_HOST, REQUEST_TIMEOUT_S, BaseSandboxServer
from cwsctl.targets.openemr.sandbox.api import ApiEndpoints, kernel_body, outcome
from cwsctl.targets.openemr.sandbox.export import (
    DEFAULT_EXPORT_TTL_S,
    OPENEMR_MODE,
    ExportFaults,
    ExportService,
    FileAnswer,
)
from cwsctl.targets.openemr.sandbox.oauth import OAuthEndpoints
from cwsctl.targets.openemr.sandbox.scopes import V703, V704, VERSIONS
from cwsctl.targets.openemr.sandbox.state import PHP_DEFAULT_TYPE, OpenEmrState
from cwsctl.targets.openemr.sandbox.store import ACCESS, REFRESH, Client, OpenEmrStore, Patient

DEFAULT_SITE = "default"
DEFAULT_VERSION = V704
_SITE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ACCESS_DENIED = "The resource owner or authorization server denied the request."
LOGGED_OUT = "Refresh Token revoked or logged out"


def openemr_routes(state: OpenEmrState, export: ExportService | None = None) -> Starlette:
    """The OAuth2, discovery, Standard API, FHIR and bulk export endpoints of one site, never
    redirecting (no export routes without ``export``)."""
    oauth = OAuthEndpoints(state)
    api = ApiEndpoints(state)
    site = state.site
    fhir = f"/apis/{site}/fhir"
    export_routes = []
    if export is not None:  # before Patient/{id}: Patient/$export is not a patient id
        export_routes = [
            Route(f"{fhir}/$export", export.kickoff_system, methods=["GET"]),
            Route(f"{fhir}/Patient/$export", export.kickoff_patient, methods=["GET"]),
            Route(f"{fhir}/Group/{{id}}/$export", export.kickoff_group, methods=["GET"]),
            Route(f"{fhir}/$bulkdata-status", export.status, methods=["GET", "DELETE"]),
            Route(f"{fhir}/Binary/{{id}}", export.binary_route, methods=["GET"]),
        ]
    router = Starlette(
        routes=[
            Route(
                f"/oauth2/{site}/.well-known/openid-configuration",
                oauth.openid_configuration,
                methods=["GET"],
            ),
            Route(f"/oauth2/{site}/registration", oauth.registration, methods=["POST"]),
            Route(f"/oauth2/{site}/authorize", oauth.authorize, methods=["GET"]),
            Route(f"/oauth2/{site}/token", oauth.token, methods=["POST"]),
            Route(
                f"/apis/{site}/fhir/.well-known/smart-configuration",
                oauth.smart_configuration,
                methods=["GET"],
            ),
            Route(f"/apis/{site}/api/patient", api.patients, methods=["GET", "POST"]),
            Route(f"/apis/{site}/api/patient/{{uuid}}", api.patient, methods=["GET"]),
            Route(f"/apis/{site}/fhir/metadata", api.metadata, methods=["GET"]),
            *export_routes,
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
    """The envelope with bearer tokens checked on ``/apis/`` (metadata and discovery excepted)."""

    def __init__(
        self,
        state: OpenEmrState,
        *,
        faults: Faults | None = None,
        access_log: bool = True,
        max_body: int = MAX_BODY_BYTES,
        export: ExportService | None = None,
    ) -> None:
        super().__init__(
            openemr_routes(state, export), faults=faults, access_log=access_log, max_body=max_body
        )
        self.state = state
        self.export = export
        site = re.escape(state.site)
        self._patient_path = re.compile(
            rf"^/apis/{site}/(api/patient|fhir/Patient)(/[^$].*)?$"  # not Patient/$export
        )
        self._binary_path = re.compile(rf"^/apis/{site}/fhir/Binary/([^/]*)$")
        self._public = {
            f"/apis/{state.site}/fhir/metadata",
            f"/apis/{state.site}/fhir/.well-known/smart-configuration",
        }

    def close(self) -> None:
        """Stop export jobs still running (spec mode) and close their store."""
        if self.export is not None:
            self.export.close()

    def _faulty(self, path: str) -> bool:
        return self._patient_path.match(path) is not None

    def _authenticate(self, scope: Scope, body: bytes) -> tuple[str, Answer | None]:
        path: str = scope["path"]
        if not path.startswith("/apis/") or path in self._public:
            return "-", None
        values = [bytes(v).decode("latin-1") for k, v in scope["headers"] if k == b"authorization"]
        token = ""
        if values:
            kind, _, rest = values[0].strip().partition(" ")
            token = rest.strip() if kind.lower() == "bearer" else ""
        grant = self.state.store.token(token, ACCESS) if token else None
        if grant is None or grant.revoked or grant.expires_at <= time.time():
            if not values:
                hint = 'Missing "Authorization" header'
            elif grant is None:
                hint = "The JWT string must have two dots"
            elif grant.revoked:
                hint = "Access token has been revoked"
            else:
                hint = "Access token could not be verified"
            return "-", self._denied(hint)
        client = printable(grant.client_id, 64)
        if grant.session is not None and not self.state.store.session_active(grant.session):
            return client, self._logged_out()
        scope.setdefault("state", {})["grant"] = grant
        return client, None

    async def _dispatch(self, scope: Scope, body: bytes) -> Answer:
        """Binary downloads are streamed from disk, not captured whole like other answers."""
        match = self._binary_path.match(scope["path"])
        if self.export is not None and match is not None and scope["method"] == "GET":
            grant = scope.get("state", {}).get("grant")
            return self.export.binary(grant, match.group(1))
        return await super()._dispatch(scope, body)

    async def _respond(
        self,
        send: Send,
        answer: Answer,
        dice: FaultDice | None,
        log: Callable[[str], None],
        unread: Receive | None = None,
    ) -> None:
        if not isinstance(answer, FileAnswer):
            await super()._respond(send, answer, dice, log, unread)
            return
        now = time.time() + self.faults.clock_skew_s
        headers = [
            (b"content-type", answer.content_type),
            (b"content-length", str(answer.size).encode("ascii")),
            *answer.headers,
            (b"date", formatdate(now, usegmt=True).encode("ascii")),
        ]
        log("" if answer.cut is None else f" fault=cut@{answer.cut}")
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for chunk in answer.chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if answer.cut is not None:
            return  # the response never completes: uvicorn closes the connection
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _denied(self, hint: str) -> Answer:
        """401 for a missing, unknown, expired or revoked token, as each version words it."""
        return self._refusal(401, "access_denied", ACCESS_DENIED, hint)

    def _logged_out(self) -> Answer:
        """400 for a user token whose trusted-user session is gone (logout, admin revoke)."""
        return self._refusal(400, "invalid _request", LOGGED_OUT)  # sic: OpenEMR's typo

    def _refusal(self, status: int, error: str, text: str, hint: str | None = None) -> Answer:
        """7.0.3: league's OAuth error JSON (``error`` as given, ``text`` as description and
        message, ``hint`` when given); 7.0.4+: the kernel's ``{"error":"An error occurred",
        "message": text, "code": 0}`` with PHP's default content type."""
        if self.state.version == V703:
            document: dict[str, object] = {"error": error, "error_description": text}
            if hint is not None:
                document["hint"] = hint
            document["message"] = text
            return Answer(status, _json(document))
        return Answer(status, kernel_body(text), content_type=PHP_DEFAULT_TYPE.encode("ascii"))


def _json(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


class OpenEmrSandboxServer(BaseSandboxServer):
    """An OpenEMR stand-in on ``host:port`` with state in ``data_dir/openemr.db``.

    Runs like :class:`~.server.SandboxServer` (``start``/``stop``, ``with``, ``serve_forever``,
    ``faults``). OpenEMR's settings:

    - ``version``: ``"7.0.3"`` or ``"7.0.4"`` (7.0.4 and master behave alike here);
    - ``site``: the ``{site}`` in every path;
    - ``site_address``: the Site Address Override (e.g. ``https://emr.example.test``); None →
      every request's scheme + ``X-Forwarded-Host`` or ``Host``. Base of the discovery URLs and
      of the ``aud`` an assertion must carry;
    - ``system_scopes``: "Enable OpenEMR FHIR System Scopes" (``system/*`` scopes exist);
    - ``manual_approval``: every new client starts disabled, not only confidential ones with
      ``user/`` or ``system/`` scopes;
    - ``token_lifetime``: None → OpenEMR's (client credentials 300 s, user tokens 3600 s); an
      int overrides every access token's lifetime (tests);
    - ``export_mode``: ``"openemr"`` (bulk export as OpenEMR's source does it) or ``"spec"``
      (the Bulk Data Access IG: asynchronous, ``export_delay`` seconds of 202s), see
      :mod:`.openemr_export`; ``export_ttl``: seconds export files live after the job started
      (OpenEMR's hour; tests shorten it). ``export_faults`` (:class:`ExportFaults`) are settable
      while running.
    """

    store: OpenEmrStore

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        site: str = DEFAULT_SITE,
        version: str = DEFAULT_VERSION,
        site_address: str | None = None,
        system_scopes: bool = False,
        manual_approval: bool = False,
        token_lifetime: int | None = None,
        export_mode: str = OPENEMR_MODE,
        export_delay: float = 0.0,
        export_ttl: float = DEFAULT_EXPORT_TTL_S,
        faults: Faults | None = None,
        access_log: bool = True,
        max_body: int = MAX_BODY_BYTES,
        request_timeout: float = REQUEST_TIMEOUT_S,
    ) -> None:
        if not _SITE.match(site):
            raise ValueError(f"site must be 1-64 letters, digits, '_' or '-', not {site!r}")
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {', '.join(VERSIONS)}, not {version!r}")
        if token_lifetime is not None and (
            isinstance(token_lifetime, bool)
            or not isinstance(token_lifetime, int)
            or token_lifetime < 1
        ):
            raise ValueError(
                f"token_lifetime must be a whole number of seconds ≥ 1, not {token_lifetime!r}"
            )
        if site_address is not None and not re.match(
            r"^https?://[^/?#\s]+(/[^?#\s]*)?$", site_address
        ):
            raise ValueError(f"site_address must be an http(s) URL, not {site_address!r}")
        self._init_running(
            host=host, port=port, access_log=access_log, request_timeout=request_timeout
        )
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.site = site
        self.store = OpenEmrStore(self.data_dir)
        self.state = OpenEmrState(
            self.store,
            site,
            version=version,
            site_address=site_address.rstrip("/") if site_address else None,
            system_scopes=system_scopes,
            manual_approval=manual_approval,
            token_lifetime=token_lifetime,
            log_refusals=access_log,
        )
        self.export = ExportService(
            self.state, self.data_dir, mode=export_mode, delay=export_delay, ttl=export_ttl
        )
        self.app = OpenEmrApp(
            self.state,
            faults=faults if faults is not None else Faults.from_env(),
            access_log=access_log,
            max_body=max_body,
            export=self.export,
        )

    # -- configuration ------------------------------------------------------------------------
    @property
    def version(self) -> str:
        """The OpenEMR version modelled: ``7.0.3`` or ``7.0.4``."""
        return self.state.version

    @property
    def site_address(self) -> str | None:
        """The Site Address Override, or None (each request's own scheme and host)."""
        return self.state.site_address

    @property
    def system_scopes(self) -> bool:
        """Whether ``system/*`` scopes are turned on."""
        return self.state.system_scopes

    @property
    def manual_approval(self) -> bool:
        """Whether every new client starts disabled."""
        return self.state.manual_approval

    @property
    def export_mode(self) -> str:
        """``openemr`` or ``spec``."""
        return self.export.mode

    @property
    def export_delay(self) -> float:
        """Spec mode: seconds a job answers 202 before its manifest."""
        return self.export.delay

    @property
    def export_faults(self) -> ExportFaults:
        """The export fault switches (attributes settable while the server runs)."""
        return self.export.faults

    @export_faults.setter
    def export_faults(self, value: ExportFaults) -> None:
        self.export.faults = value

    @property
    def group_id(self) -> str:
        """The one Group (a provider panel holding every patient) ``Group/{id}/$export`` knows."""
        return self.export.group_id

    @property
    def token_lifetime(self) -> int | None:
        """The access-token lifetime override (None: OpenEMR's); settable while running."""
        return self.state.token_lifetime

    @token_lifetime.setter
    def token_lifetime(self, seconds: int | None) -> None:
        self.state.token_lifetime = seconds

    # -- URLs ---------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The site address: the override, else this server's own URL."""
        return self.state.site_address or self.url

    @property
    def token_url(self) -> str:
        """The configured token URL: the ``aud`` the server checks (requests without a proxy)."""
        return f"{self.base_url}/oauth2/{self.site}/token"

    @property
    def oauth_url(self) -> str:
        """``{site address}/oauth2/{site}`` (registration, authorize, token, discovery)."""
        return f"{self.base_url}/oauth2/{self.site}"

    @property
    def fhir_url(self) -> str:
        """The FHIR base as the server names it: ``{site address}/apis/{site}/fhir``."""
        return f"{self.base_url}/apis/{self.site}/fhir"

    @property
    def api_url(self) -> str:
        """``{this server's URL}/apis/{site}``: where to send API requests (never the override)."""
        return f"{self.url}/apis/{self.site}"

    # -- administration -----------------------------------------------------------------------
    def enable_client(self, client_id: str) -> bool:
        """Enable a client (Admin → System → API Clients → Enable); False if there is none."""
        return self.store.set_enabled(client_id, True)

    def disable_client(self, client_id: str) -> bool:
        """Disable a client again; False if there is none."""
        return self.store.set_enabled(client_id, False)

    def clients(self) -> list[dict[str, object]]:
        """Every registered client: ``client_id``, ``enabled``, ``scope`` (and name, role)."""
        return [client.to_json() for client in self.store.clients()]

    def client(self, client_id: str) -> Client | None:
        """One registered client, or None."""
        return self.store.client(client_id)

    def revoke_tokens(self, *, refresh: bool = False) -> int:
        """Revoke every live access token (and refresh token, if asked); return how many."""
        return self.store.revoke((ACCESS, REFRESH) if refresh else (ACCESS,))

    def logout(self) -> int:
        """End every user's login (trusted-user sessions); return how many there were.

        Every API call with one of their access tokens then answers 400 "Refresh Token revoked
        or logged out", and their refresh tokens get 400 ``invalid_grant``. Client-credentials
        tokens (the system user) are not affected.
        """
        return self.store.end_sessions()

    def patients(self) -> list[Patient]:
        """Every stored patient, by pid."""
        return self.store.patients()

    def count_patients(self) -> int:
        """How many patients are stored."""
        return self.store.count_patients()

    def seed_patients(
        self, n: int, *, facility: str = "10000", prefix: str = "P", created_at: str | None = None
    ) -> int:
        """Insert ``n`` generated patients at once (one transaction); return how many."""
        return self.store.seed_patients(n, facility=facility, prefix=prefix, created_at=created_at)

    def reset(self) -> None:
        """Forget clients, tokens, sessions, patients and export jobs; switch faults off."""
        self.store.clear()
        self.export.clear()
        self.faults = Faults()


__all__ = [
    "DEFAULT_SITE",
    "DEFAULT_VERSION",
    "V703",
    "V704",
    "ExportFaults",
    "OpenEmrApp",
    "OpenEmrSandboxServer",
]

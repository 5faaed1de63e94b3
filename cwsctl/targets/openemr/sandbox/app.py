"""The OpenEMR flavour's routes and envelope: :func:`openemr_routes` and :class:`OpenEmrApp`, a
bearer-token check on ``/apis/`` requests and Binary downloads streamed from disk.

Endpoints (``{site}`` is the server's site):

- ``GET /oauth2/{site}/.well-known/openid-configuration``,
  ``GET /apis/{site}/fhir/.well-known/smart-configuration``, ``GET /apis/{site}/fhir/metadata``
  (public) and ``POST /oauth2/{site}/registration``, ``GET /oauth2/{site}/authorize``,
  ``POST /oauth2/{site}/token`` — :mod:`.oauth` (client assertions: :mod:`.assertion`);
- ``GET|POST /apis/{site}/api/patient``, ``GET /apis/{site}/api/patient/{uuid}``,
  ``GET|POST /apis/{site}/fhir/Patient``, ``GET /apis/{site}/fhir/Patient/{id}`` — :mod:`.api`;
- ``GET /apis/{site}/fhir/$export``, ``Patient/$export``, ``Group/{id}/$export``,
  ``GET|DELETE $bulkdata-status``, ``GET Binary/{id}`` — :mod:`.export_routes`.

Every endpoint shares one :class:`~.state.OpenEmrState` (OpenEMR's globals, the store).

The envelope is the CWS flavour's (:class:`~cwsctl.sandbox.envelope.EnvelopeApp`: body limit,
request timeouts, access log, faults), with a bearer-token check instead of signatures on every
other ``/apis/`` request: an unknown, expired or revoked token is 401 (7.0.3: league's
``access_denied`` JSON; 7.0.4+: ``{"error":"An error occurred","message":…,"code":0}``); a user
token whose login was ended by :meth:`~.server.OpenEmrSandboxServer.logout` is 400 "Refresh
Token revoked or logged out". The fault switches drop, error and latency hit the patient
routes; corrupt and unsigned have no meaning here. The access log names the OAuth client, never
a token.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from email.utils import formatdate

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

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
from cwsctl.targets.openemr.sandbox.api import ApiEndpoints, kernel_body, outcome
from cwsctl.targets.openemr.sandbox.export_routes import ExportService
from cwsctl.targets.openemr.sandbox.export_support import FileAnswer
from cwsctl.targets.openemr.sandbox.oauth import OAuthEndpoints
from cwsctl.targets.openemr.sandbox.scopes import V703
from cwsctl.targets.openemr.sandbox.state import PHP_DEFAULT_TYPE, OpenEmrState
from cwsctl.targets.openemr.sandbox.store import ACCESS

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


__all__ = ["OpenEmrApp", "openemr_routes"]

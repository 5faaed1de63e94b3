"""The openEHR sandbox's ASGI app: every route under ``BASE_PATH`` wired to its route class,
EHRbase's error answers for what no route takes, and the envelope with HTTP basic or bearer auth
(and the reading of the basic-auth and bearer-token files)."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cwsctl.core.errors import InputError
from cwsctl.core.files import read_bytes
from cwsctl.sandbox.envelope import MAX_BODY_BYTES, Answer, EnvelopeApp, Scope, printable
from cwsctl.sandbox.faults import Faults
from cwsctl.targets.openehr.sandbox.composition_routes import CompositionRoutes
from cwsctl.targets.openehr.sandbox.context import OpenEhrContext
from cwsctl.targets.openehr.sandbox.ehr_routes import EhrRoutes
from cwsctl.targets.openehr.sandbox.http import BASE_PATH, STATUS_PATH, BadRequest, error
from cwsctl.targets.openehr.sandbox.opt import FormatError
from cwsctl.targets.openehr.sandbox.query_routes import QueryRoutes
from cwsctl.targets.openehr.sandbox.template_routes import TemplateRoutes

REALM = "openEHR"
#: A basic-auth file is one short line; anything longer is not one.
_MAX_AUTH_FILE_BYTES = 4096
#: A bearer-token file: one token a line, a few of them.
_MAX_TOKEN_FILE_BYTES = 64 * 1024
_RFC6750 = "https://tools.ietf.org/html/rfc6750#section-3.1"


class OpenEhrEndpoints:
    """The route classes over one :class:`OpenEhrContext`: what :func:`openehr_routes` wires."""

    def __init__(self, context: OpenEhrContext) -> None:
        self.context = context
        self.ehr_routes = EhrRoutes(context)
        self.template_routes = TemplateRoutes(context)
        self.composition_routes = CompositionRoutes(context)
        self.query_routes = QueryRoutes(context)


def openehr_routes(endpoints: OpenEhrEndpoints) -> Starlette:
    """Every endpoint under ``BASE_PATH``, and ``/ehrbase/rest/status``; never redirecting."""
    b = BASE_PATH
    ehr = f"{b}/ehr/{{ehr_id}}"
    adl = f"{b}/definition/template/adl1.4"
    ehrs, templates = endpoints.ehr_routes, endpoints.template_routes
    compositions, queries = endpoints.composition_routes, endpoints.query_routes
    router = Starlette(
        routes=[
            Route(STATUS_PATH, queries.status, methods=["GET"]),
            Route(f"{b}/ehr", ehrs.ehrs, methods=["GET", "POST"]),
            Route(ehr, ehrs.ehr, methods=["GET", "PUT"]),
            Route(f"{ehr}/ehr_status", ehrs.ehr_status, methods=["GET", "PUT"]),
            Route(f"{ehr}/ehr_status/{{version_uid}}", ehrs.ehr_status_version, methods=["GET"]),
            Route(f"{ehr}/composition", compositions.compositions, methods=["POST"]),
            Route(
                f"{ehr}/composition/{{uid}}",
                compositions.composition,
                methods=["GET", "PUT", "DELETE"],
            ),
            Route(
                f"{ehr}/versioned_composition/{{uid}}",
                compositions.versioned_composition,
                methods=["GET"],
            ),
            Route(
                f"{ehr}/versioned_composition/{{uid}}/revision_history",
                compositions.revision_history,
                methods=["GET"],
            ),
            Route(f"{b}/query/aql", queries.query, methods=["GET", "POST"]),
            Route(adl, templates.templates, methods=["GET", "POST"]),
            Route(f"{adl}/{{template_id}}", templates.template, methods=["GET"]),
            Route(f"{adl}/{{template_id}}/example", templates.template_example, methods=["GET"]),
        ],
        exception_handlers={
            HTTPException: _http_exception,
            BadRequest: _bad_request,
            FormatError: _format_error,
        },
    )
    router.router.redirect_slashes = False
    return router


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error(404, f"No resource found at path: {request.url.path[:200]}")
    return error(
        exc.status_code,
        f"Request method '{request.method}' is not supported",
        dict(exc.headers or {}),
    )


async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadRequest)
    return error(exc.status, exc.message, **exc.extra)


async def _format_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FormatError)
    return error(exc.status, exc.message)


def read_basic_auth_file(path: Path) -> tuple[str, str]:
    """``(user, password)`` from a file holding one ``user:password`` line.

    Errors never quote the file's content.
    """
    data = read_bytes(path, what="basic-auth file")
    if len(data) > _MAX_AUTH_FILE_BYTES:
        raise InputError(f"basic-auth file {path} is too long: it must hold one user:password line")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"basic-auth file {path} is not UTF-8 text") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise InputError(
            f"basic-auth file {path} must hold exactly one user:password line, not {len(lines)}"
        )
    user, colon, password = lines[0].rstrip("\r\n").partition(":")
    if not colon or not user or not password:
        raise InputError(f"basic-auth file {path}: the line must be user:password (both non-empty)")
    return user, password


def read_bearer_token_file(path: Path) -> set[str]:
    """The accepted bearer tokens in a file: one a line (blank lines ignored).

    Errors never quote the file's content.
    """
    data = read_bytes(path, what="bearer-token file")
    if len(data) > _MAX_TOKEN_FILE_BYTES:
        raise InputError(f"bearer-token file {path} is too long (over 64 KiB)")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise InputError(f"bearer-token file {path} must be ASCII text") from None
    tokens = {line.strip() for line in text.splitlines() if line.strip()}
    if not tokens:
        raise InputError(f"bearer-token file {path} holds no token (one a line)")
    if any(" " in t or "\t" in t for t in tokens):
        raise InputError(f"bearer-token file {path}: a token must not contain spaces")
    return tokens


class OpenEhrApp(EnvelopeApp):
    """The envelope with optional HTTP basic or bearer auth, faults on the EHR routes."""

    def __init__(
        self,
        endpoints: OpenEhrEndpoints,
        *,
        basic_auth: tuple[str, str] | None = None,
        bearer_tokens: Iterable[str] | None = None,
        faults: Faults | None = None,
        access_log: bool = True,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        super().__init__(
            openehr_routes(endpoints), faults=faults, access_log=access_log, max_body=max_body
        )
        self.basic_auth = basic_auth
        self.bearer_tokens: set[str] | None = None if bearer_tokens is None else set(bearer_tokens)
        #: Tokens that were accepted once and have expired: token → when.
        self.expired_tokens: dict[str, str] = {}
        self._lock = threading.Lock()

    def _faulty(self, path: str) -> bool:
        return path == f"{BASE_PATH}/ehr" or path.startswith(f"{BASE_PATH}/ehr/")

    def _authenticate(self, scope: Scope, body: bytes) -> tuple[str, Answer | None]:
        if self.bearer_tokens is not None:
            return self._bearer(scope)
        if self.basic_auth is None:
            return "-", None
        values = [bytes(v) for k, v in scope["headers"] if k == b"authorization"]
        if len(values) == 1:
            scheme, _, credentials = values[0].partition(b" ")
            if scheme.lower() == b"basic":
                user, password = self.basic_auth
                try:
                    decoded = base64.b64decode(credentials.strip(), validate=True)
                except (binascii.Error, ValueError):
                    decoded = b""
                given_user, _, given_password = decoded.partition(b":")
                expected_user = user.encode("utf-8")
                expected_password = password.encode("utf-8")
                user_ok = hmac.compare_digest(given_user, expected_user)
                if hmac.compare_digest(given_password, expected_password) and user_ok:
                    scope["cwsctl.user"] = user
                    return printable(user, 64), None
        # Spring Security's error body (EHRBASE.md "Auth": no `message`, so a client cannot
        # come to rely on one the real server does not send).
        document = {
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "status": 401,
            "error": "Unauthorized",
            "path": printable(scope["path"], 200),
        }
        body_bytes = json.dumps(document, separators=(",", ":")).encode("utf-8")
        challenge = f'Basic realm="{REALM}"'.encode("ascii")
        return "-", Answer(401, body_bytes, [(b"www-authenticate", challenge)])

    def _bearer(self, scope: Scope) -> tuple[str, Answer | None]:
        values = [bytes(v) for k, v in scope["headers"] if k == b"authorization"]
        challenge = "Bearer"
        if len(values) == 1 and values[0][:7].lower() == b"bearer ":
            token = values[0][7:].strip().decode("latin-1")
            with self._lock:
                accepted = self.bearer_tokens or set()
                known = any(hmac.compare_digest(token, t) for t in accepted)
                expired_at = next(
                    (when for t, when in self.expired_tokens.items() if t == token), None
                )
            if known:
                scope["cwsctl.user"] = "bearer"
                return "bearer", None
            if expired_at is not None:
                description = (
                    "An error occurred while attempting to decode the Jwt: "
                    f"Jwt expired at {expired_at}"
                )
            else:
                description = (
                    "An error occurred while attempting to decode the Jwt: Malformed token"
                )
            challenge = (
                f'Bearer error="invalid_token", error_description="{description}", '
                f'error_uri="{_RFC6750}"'
            )
        return "-", Answer(401, b"", [(b"www-authenticate", challenge.encode("ascii"))])

    def expire_token(self, token: str) -> None:
        """Make an accepted bearer token expired from now on (401 "Jwt expired at …")."""
        when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self._lock:
            if self.bearer_tokens is not None:
                self.bearer_tokens.discard(token)
            self.expired_tokens[token] = when

"""The openEHR flavour of the sandbox: the openEHR REST API as EHRbase 2.x serves it.

A stand-in for EHRbase (v2.31.0 read from source, ``../shared/servers/EHRBASE.md``), for demos
and tests; not EHRbase. The rule: where EHRbase refuses, the sandbox refuses the same way, so a
client that passes here works there. The table of behaviours with their EHRbase version or
setting and the source reference is in ``cwsctl/sandbox/README.md`` ("openEHR (EHRbase)").

Everything lives under ``BASE_PATH`` (``/ehrbase/rest/openehr/v1``; a profile URL is
``http://HOST:PORT`` + that) plus ``GET /ehrbase/rest/status``. State is ``openehr.db`` in the
data dir (:mod:`.openehr_store`); handlers in :mod:`.openehr_api`; AQL in :mod:`.openehr_aql`;
OPT parsing, web template, example and FLAT/STRUCTURED conversion in :mod:`.openehr_templates`.
Errors are ``{"error": REASON_PHRASE, "message": TEXT}``.

Switches (``OpenEhrSandboxServer(...)`` / ``cwsctl sandbox serve --kind openehr``):

- ``if_match="ehrbase"`` (``--if-match ehrbase``, default; EHRbase 2.0–2.31): ``If-Match`` is
  read raw, so a quoted value → 400 ``"UUID string too large"`` and nothing is written; a bare
  version uid works. ``"spec"`` (ITS-REST 1.0.3, EHRbase after #1645): ``"uid"`` or bare;
  ``W/``, ``*`` and unbalanced quotes → 400. ``GET /ehrbase/rest/status`` reports
  ``ehrbase_version`` 2.31.0 or 2.32.0.
- ``max_fetch=N`` (``--max-fetch``): a ``fetch`` above it → 422 "Fetch parameter F exceeds
  maximum fetch N". ``fetch_precedence="reject"|"min-fetch"`` (``--fetch-precedence``): an AQL
  LIMIT with fetch/offset → 422, or limit = min(LIMIT, fetch) (an AQL OFFSET then 422).
  ``default_limit=N`` (``--default-limit``): rows when neither fetch nor LIMIT says (else all).
- ``template_overwrite=True``: a second upload of a template id replaces it (else 409).
- ``basic_auth=(user, password)`` (``--basic-auth-file``) or ``bearer_tokens={…}``
  (``--bearer-token-file``; ``server.expire_token(t)`` makes one expired): a wrong or missing
  credential → 401 (bearer: ``WWW-Authenticate: Bearer error="invalid_token",
  error_description="… Jwt expired at …"`` or "Malformed token", empty body).
- ``templates=[opt_bytes, …]`` / ``server.upload_template(opt)``: OPTs already uploaded.

Endpoints (``{b}`` = ``BASE_PATH``):

- ``POST {b}/ehr`` (an EHR_STATUS or nothing) → 201, ``ETag: "<ehr_id>"``, ``Location``, body
  with ``Prefer: return=representation`` (exactly that string) else none; ``PUT {b}/ehr/{id}``
  the same with a given UUID (400 not a UUID, 409 exists). The EHR:
  ``{"system_id","ehr_id","ehr_status":{"id":{"_type":"OBJECT_VERSION_ID","value":V},
  "namespace":"local","type":"EHR_STATUS"},"time_created"}``. Subject namespace outside
  ``[a-zA-Z][a-zA-Z0-9-_:/&+?]*`` → 400; same subject twice → 409. ``GET {b}/ehr/{id}``;
  ``GET {b}/ehr?subject_id=&subject_namespace=`` (404 "No EHR with supplied subject parameters
  found"). A non-UUID ehr_id anywhere → 400.
- ``GET {b}/ehr/{id}/ehr_status[?version_at_time=]``, ``…/ehr_status/{version_uid}``,
  ``PUT …/ehr_status`` with If-Match (per mode) → 204/200 + ``ETag``/``Location``; stale → 412.
- ``POST {b}/ehr/{id}/composition``: canonical JSON, or FLAT/STRUCTURED
  (``?format=FLAT|STRUCTURED&templateId=ID`` or Content-Type
  ``application/openehr.wt.flat.schema+json`` / ``…structured.schema+json``); the template must
  be uploaded (422 "Template with template_id 'X' does not exist"); mandatory attributes
  missing → 400. Minimal → **204**, representation → 201 + body; ``ETag: "uid::cwsctl-sandbox::1"``,
  ``Location: …/composition/<object uid>``. ``PUT …/composition/{object uid}`` + If-Match → 204
  (200 with representation), Location = version uid; stale → 412 ``{"error":"Precondition
  Failed","message":"If-Match version_uid does not match latest version"}`` with **no ETag or
  Location**. ``DELETE …/composition/{preceding version uid}`` → 204; stale → 409 (same message,
  no ETag/Location); deleted or unknown → 404. ``GET …/composition/{uid}[?version_at_time=]
  [&format=]``: a deleted version → 204 without ETag. ``version_at_time`` must be extended ISO
  8601 (a space → 400). ``…/versioned_composition/{uid}[/revision_history]`` (``{"items":[…]}``).
- ``POST|GET {b}/query/aql``: the AQL subset of :mod:`.openehr_aql` (outside it → 400 "not
  supported by the sandbox"); offset without fetch → 422; the limit rules above; ``meta``:
  ``_href``, ``_type``, ``_schema_version``, ``_created``, ``_executed_aql``, ``resultsize``,
  ``fetch``/``offset`` when a limit applies, ``default-limit``/``max-fetch`` when set.
- ``POST {b}/definition/template/adl1.4`` (Content-Type and Accept ``application/xml``, else
  415/406) → 201; the id is the XML's ``template_id/value``; a second upload → 409.
  ``GET …/adl1.4`` lists ``[{template_id, concept, archetype_id, created_timestamp}]``;
  ``GET …/adl1.4/{id}`` → the OPT re-serialised (XML) or, for ``application/json`` /
  ``application/openehr.wt+json``, the sandbox's minimal web template; ``…/{id}/example``.

The envelope is :class:`~.app.EnvelopeApp` (body limit, request timeouts, access log of method,
path without query, status and user — never a body or credential); the fault switches (drop,
error, latency) hit ``{b}/ehr`` and everything under it only.
"""

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
from cwsctl.sandbox.db import default_data_dir
from cwsctl.sandbox.envelope import MAX_BODY_BYTES, Answer, EnvelopeApp, Scope, printable
from cwsctl.sandbox.faults import Faults
from cwsctl.sandbox.server import DEFAULT_HOST, REQUEST_TIMEOUT_S, BaseSandboxServer
from cwsctl.targets.openehr.sandbox.api import (
    BASE_PATH,
    FETCH_PRECEDENCES,
    IF_MATCH_MODES,
    STATUS_PATH,
    SYSTEM_ID,
    BadRequest,
    OpenEhrEndpoints,
    error,
)
from cwsctl.targets.openehr.sandbox.store import Ehr, OpenEhrStore
from cwsctl.targets.openehr.sandbox.templates import FormatError

__all__ = [
    "BASE_PATH",
    "FETCH_PRECEDENCES",
    "IF_MATCH_MODES",
    "STATUS_PATH",
    "SYSTEM_ID",
    "OpenEhrSandboxServer",
    "read_basic_auth_file",
    "read_bearer_token_file",
]

REALM = "openEHR"
#: A basic-auth file is one short line; anything longer is not one.
_MAX_AUTH_FILE_BYTES = 4096
#: A bearer-token file: one token a line, a few of them.
_MAX_TOKEN_FILE_BYTES = 64 * 1024
_RFC6750 = "https://tools.ietf.org/html/rfc6750#section-3.1"


def openehr_routes(endpoints: OpenEhrEndpoints) -> Starlette:
    """Every endpoint under ``BASE_PATH``, and ``/ehrbase/rest/status``; never redirecting."""
    b = BASE_PATH
    ehr = f"{b}/ehr/{{ehr_id}}"
    adl = f"{b}/definition/template/adl1.4"
    router = Starlette(
        routes=[
            Route(STATUS_PATH, endpoints.status, methods=["GET"]),
            Route(f"{b}/ehr", endpoints.ehrs, methods=["GET", "POST"]),
            Route(ehr, endpoints.ehr, methods=["GET", "PUT"]),
            Route(f"{ehr}/ehr_status", endpoints.ehr_status, methods=["GET", "PUT"]),
            Route(
                f"{ehr}/ehr_status/{{version_uid}}", endpoints.ehr_status_version, methods=["GET"]
            ),
            Route(f"{ehr}/composition", endpoints.compositions, methods=["POST"]),
            Route(
                f"{ehr}/composition/{{uid}}",
                endpoints.composition,
                methods=["GET", "PUT", "DELETE"],
            ),
            Route(
                f"{ehr}/versioned_composition/{{uid}}",
                endpoints.versioned_composition,
                methods=["GET"],
            ),
            Route(
                f"{ehr}/versioned_composition/{{uid}}/revision_history",
                endpoints.revision_history,
                methods=["GET"],
            ),
            Route(f"{b}/query/aql", endpoints.query, methods=["GET", "POST"]),
            Route(adl, endpoints.templates, methods=["GET", "POST"]),
            Route(f"{adl}/{{template_id}}", endpoints.template, methods=["GET"]),
            Route(f"{adl}/{{template_id}}/example", endpoints.template_example, methods=["GET"]),
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


class OpenEhrSandboxServer(BaseSandboxServer):
    """An openEHR stand-in behaving like EHRbase 2.x on ``host:port``, state in ``data_dir``.

    Runs like :class:`~.server.SandboxServer` (``start``/``stop``, ``with``, ``serve_forever``,
    ``faults``). Settings (see the module docstring and the sandbox README):

    - ``if_match``: ``"ehrbase"`` (2.0–2.31: a quoted If-Match → 400 "UUID string too large")
      or ``"spec"`` (quoted as ITS-REST 1.0.3 says; bare accepted too);
    - ``max_fetch``, ``fetch_precedence`` (``"reject"``/``"min-fetch"``), ``default_limit``:
      ``ehrbase.rest.aql.*``; ``template_overwrite``: ``ehrbase.template.allow-overwrite``;
    - ``basic_auth=(user, password)`` or ``bearer_tokens={…}`` (never both), or neither;
    - ``templates``: OPTs (bytes) uploaded before the server starts (an admin's earlier upload).
    """

    store: OpenEhrStore

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        basic_auth: tuple[str, str] | None = None,
        bearer_tokens: Iterable[str] | None = None,
        if_match: str = "ehrbase",
        max_fetch: int | None = None,
        fetch_precedence: str = "reject",
        default_limit: int | None = None,
        template_overwrite: bool = False,
        templates: Iterable[bytes] = (),
        faults: Faults | None = None,
        access_log: bool = True,
        max_body: int = MAX_BODY_BYTES,
        request_timeout: float = REQUEST_TIMEOUT_S,
    ) -> None:
        if basic_auth is not None and (
            len(basic_auth) != 2 or not basic_auth[0] or not basic_auth[1] or ":" in basic_auth[0]
        ):
            raise ValueError("basic_auth must be (user, password), both non-empty, no ':' in user")
        tokens = None if bearer_tokens is None else set(bearer_tokens)
        if tokens is not None and (not tokens or not all(isinstance(t, str) and t for t in tokens)):
            raise ValueError("bearer_tokens must be non-empty strings")
        if basic_auth is not None and tokens is not None:
            raise ValueError(
                "basic_auth and bearer_tokens exclude each other (EHRbase: one authType)"
            )
        if if_match not in IF_MATCH_MODES:
            raise ValueError(f"if_match must be one of {IF_MATCH_MODES}, not {if_match!r}")
        if fetch_precedence not in FETCH_PRECEDENCES:
            raise ValueError(
                f"fetch_precedence must be one of {FETCH_PRECEDENCES}, not {fetch_precedence!r}"
            )
        for name, value in (("max_fetch", max_fetch), ("default_limit", default_limit)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be a whole number ≥ 1 or None, not {value!r}")
        self._init_running(
            host=host, port=port, access_log=access_log, request_timeout=request_timeout
        )
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.store = OpenEhrStore(self.data_dir)
        self.endpoints = OpenEhrEndpoints(
            self.store,
            if_match=if_match,
            max_fetch=max_fetch,
            fetch_precedence=fetch_precedence,
            default_limit=default_limit,
            template_overwrite=template_overwrite,
        )
        self.app = OpenEhrApp(
            self.endpoints,
            basic_auth=basic_auth,
            bearer_tokens=tokens,
            faults=faults if faults is not None else Faults.from_env(),
            access_log=access_log,
            max_body=max_body,
        )
        for opt in templates:
            self.upload_template(opt, exist_ok=True)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/ehrbase/rest/openehr/v1``: what an openehr profile's URL is."""
        return self.url + BASE_PATH

    @property
    def status_url(self) -> str:
        """``http://127.0.0.1:PORT/ehrbase/rest/status``."""
        return self.url + STATUS_PATH

    @property
    def _openehr_app(self) -> OpenEhrApp:
        assert isinstance(self.app, OpenEhrApp)
        return self.app

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        """The credentials required, or None; assign to change them while running."""
        return self._openehr_app.basic_auth

    @basic_auth.setter
    def basic_auth(self, value: tuple[str, str] | None) -> None:
        self._openehr_app.basic_auth = value

    @property
    def bearer_tokens(self) -> set[str] | None:
        """The accepted bearer tokens (None: bearer auth off); assign to change them."""
        return self._openehr_app.bearer_tokens

    @bearer_tokens.setter
    def bearer_tokens(self, value: Iterable[str] | None) -> None:
        self._openehr_app.bearer_tokens = None if value is None else set(value)

    def expire_token(self, token: str) -> None:
        """From now on ``token`` answers 401 ``invalid_token`` "Jwt expired at …"."""
        self._openehr_app.expire_token(token)

    @property
    def if_match(self) -> str:
        """``"ehrbase"`` or ``"spec"``."""
        return self.endpoints.if_match_mode

    @property
    def max_fetch(self) -> int | None:
        """EHRbase's ``max-fetch``, or None."""
        return self.endpoints.max_fetch

    @property
    def fetch_precedence(self) -> str:
        """``"reject"`` or ``"min-fetch"``."""
        return self.endpoints.fetch_precedence

    @property
    def default_limit(self) -> int | None:
        """EHRbase's ``default-limit``, or None (every row)."""
        return self.endpoints.default_limit

    @property
    def ehrbase_version(self) -> str:
        """What ``GET /ehrbase/rest/status`` reports."""
        from cwsctl.targets.openehr.sandbox.api import EHRBASE_VERSIONS

        return EHRBASE_VERSIONS[self.if_match]

    @property
    def system_id(self) -> str:
        """The system id in every version uid."""
        return SYSTEM_ID

    def upload_template(self, opt: bytes, *, exist_ok: bool = False) -> str:
        """Store an OPT as an upload would (the id read from its XML); returns the template id.

        ValueError if EHRbase would refuse it (400) or, unless ``exist_ok``, its id is taken.
        """
        try:
            return self.endpoints.add_template(opt)
        except FormatError as exc:
            raise ValueError(exc.message) from None
        except BadRequest as exc:
            if exc.status == 409 and exist_ok:
                from cwsctl.targets.openehr.sandbox.templates import parse_opt

                return parse_opt(opt).template_id
            raise ValueError(exc.message) from None

    def template_ids(self) -> list[str]:
        """The uploaded templates' ids."""
        return [t.template_id for t in self.store.templates()]

    def ehrs(self) -> list[Ehr]:
        """Every stored EHR, oldest first."""
        return self.store.ehrs()

    def count_ehrs(self) -> int:
        """How many EHRs are stored."""
        return self.store.count_ehrs()

    def reset(self) -> None:
        """Forget every EHR, composition and template, and switch faults off."""
        self.store.clear()
        self.faults = Faults()

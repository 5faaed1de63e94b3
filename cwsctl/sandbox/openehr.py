"""The openEHR flavour of the sandbox: an EHRbase-like openEHR REST API (ITS-REST 1.0.x).

A stand-in for an openEHR server, for demos and tests; not EHRbase. Everything lives under
``BASE_PATH`` (``/ehrbase/rest/openehr/v1``), so a profile URL looks like a real EHRbase's:
``http://127.0.0.1:8080/ehrbase/rest/openehr/v1``. State is ``openehr.db`` in the data dir
(:mod:`.openehr_store`); handlers are in :mod:`.openehr_api`; AQL in :mod:`.openehr_aql`.

Endpoints (``{base}`` = ``BASE_PATH``; "version headers" = ``ETag: "<version uid>"``,
``Location: <absolute base>/ehr/<ehr_id>/<composition|ehr_status>/<version uid>``,
``Last-Modified``; errors are ``{"error": REASON, "message": TEXT}``; unknown ehr_id → 404):

- ``POST {base}/ehr`` — body empty or an EHR_STATUS (canonical JSON, Content-Type
  application/json) → 201, ``ETag: "<ehr_id>"``, ``Location: …/ehr/<ehr_id>``, body the EHR with
  ``Prefer: return=representation``, else empty. A second EHR for the same subject
  (external_ref id.value + namespace) → 409. ``PUT {base}/ehr/{ehr_id}`` the same with a given
  UUID (400 if not a UUID, 409 if it exists). ``GET {base}/ehr/{ehr_id}`` → 200 EHR;
  ``GET {base}/ehr?subject_id=ID&subject_namespace=NS`` → 200 EHR, 404 none. The EHR is
  ``{"system_id":{"value":"cwsctl-sandbox"},"ehr_id":{"value":ID},"ehr_status":{EHR_STATUS with
  "uid":{"_type":"OBJECT_VERSION_ID","value":"<uuid>::cwsctl-sandbox::<n>"}},
  "time_created":{"value":ISO}}``.
- ``GET {base}/ehr/{ehr_id}/ehr_status[?version_at_time=ISO]``,
  ``GET {base}/ehr/{ehr_id}/ehr_status/{version_uid}`` → 200 EHR_STATUS + version headers;
  ``PUT {base}/ehr/{ehr_id}/ehr_status`` with ``If-Match: "<version uid>"`` → 200 (representation)
  or 204 + version headers of the new version; If-Match missing → 400; stale → 412 with the
  latest's version headers and ``latest_version_uid`` in the error body.
- ``POST {base}/ehr/{ehr_id}/composition`` (canonical JSON; ``openEHR-TEMPLATE_ID`` optional, 422
  if it contradicts the body's template_id) → 201 + version headers (version 1), body per Prefer.
  ``GET {base}/ehr/{ehr_id}/composition/{uid}``: a version uid → that version, a versioned object
  uid → the latest (or the one in force at ``?version_at_time=ISO``); 404 unknown; 204 (with
  version headers) when that version is a deletion. ``PUT …/composition/{versioned_object_uid}``
  with ``If-Match: "<preceding version uid>"`` (quotes optional) → version n+1: 200 with the
  composition or 204, + version headers; If-Match missing → 400; stale → 412 with the latest's
  version headers and ``latest_version_uid``. ``DELETE …/composition/{preceding_version_uid}`` →
  204 + version headers of the new, deleted version; stale → 409 (the release's code) with the
  latest's version headers and ``latest_version_uid``; already deleted → 400.
  ``GET {base}/ehr/{ehr_id}/versioned_composition/{uid}`` → VERSIONED_COMPOSITION;
  ``…/{uid}/revision_history`` → ``[{"version_id":{"value":V},"audits":[{"change_type":{"value":
  "creation|modification|deleted",…},"time_committed":{"value":ISO},…}]}, …]``.
- ``POST {base}/query/aql`` ``{"q": AQL, "query_parameters": {…}, "offset": N, "fetch": N}`` and
  ``GET {base}/query/aql?q=…&offset=&fetch=&query_parameters=…`` (a JSON object or
  ``name=value&…``; other URL parameters count as query parameters too, as on EHRbase) → 200
  ``{"meta":{…,"_executed_aql","resultsize","fetch","offset"},"q","columns":[{"name":"#0"|alias,
  "path":"/ehr_id/value"}],"rows":[[…]]}``. The AQL subset is in :mod:`.openehr_aql`; outside it
  → 400 "… not supported by the sandbox …". Without fetch or LIMIT, ``fetch`` is 100
  (``default_fetch``), so paging shows; LIMIT/OFFSET in the AQL together with offset/fetch → 400.
- ``GET {base}/definition/template/adl1.4`` → ``[{"template_id","concept","archetype_id",
  "created_timestamp"}]`` for the template ids seen in compositions (none are uploaded).
- ``OPTIONS {base}`` → server identity ``{"solution":"cwsctl-sandbox","solution_version",
  "vendor","restapi_specs_version":"1.0.3","conformance_profile":"CUSTOM","endpoints"}``; the
  one request that never needs credentials.

Authentication: none by default; with ``basic_auth=(user, password)`` every other request needs
``Authorization: Basic …`` with exactly those → else 401 ``WWW-Authenticate: Basic
realm="openEHR"``. The envelope is :class:`~.app.EnvelopeApp` (body limit, request timeouts,
access log of method, path without query, status and user — never a body or credential); the
fault switches drop, error and latency hit ``{base}/ehr`` and everything under it (EHRs,
EHR_STATUS, compositions), not queries, definitions or OPTIONS; corrupt and unsigned have no
meaning here (nothing is signed).

Where the v0.1 proposal (the seed) and the released API (ITS-REST 1.0.x, as EHRbase serves it)
differ, the sandbox follows the release:

1. ``Match-If`` → ``If-Match`` (RFC 9110), the preceding version uid, quoted as an ETag; the
   release requires it on updates, so a missing one is 400 (not 428).
2. ``/ehr/{ehrId}/compositions/…`` → ``/ehr/{ehr_id}/composition/…``; the proposal's EHR-less
   ``/compositions/{objectId}`` routes do not exist in the release and are not served.
3. ``versionSelector`` (a time, a uid or ``LATEST_TRUNK_VERSION`` in one parameter) →
   ``?version_at_time=ISO`` on object uids, version uids in the path; no LATEST_TRUNK_VERSION.
4. Deleting: the proposal's ``DELETE …/compositions/{object_id}`` with Match-If → the release's
   ``DELETE …/composition/{preceding_version_uid}`` with no header; a stale uid is 409 Conflict
   (not 412); deleting a deleted composition is 400; reading a deleted one is 204.
5. ``POST /ehr`` body: the proposal's ``{commit_audit, ehr_status, ehr_access}`` → the EHR_STATUS
   itself (the wrapper gets a 400 saying so); EHR_ACCESS, directory and contribution endpoints
   are not served.
6. The EHR answer: the proposal's ``"ehr_status": "versioned ehr status uid"`` → an object. The
   sandbox embeds the whole EHR_STATUS with its ``uid`` (as EHRbase 0.x does); the 1.0.x spec
   example (and EHRbase 2) give an OBJECT_REF ``{"id":{"value":UID},"namespace","type":
   "EHR_STATUS"}`` instead — a client should accept ``ehr_status.uid.value`` or
   ``ehr_status.id.value``.
7. ``GET /ehr?subject_id=&subject_namespace=`` (not in the proposal) is served; a second EHR for
   a subject is 409. ``PUT /ehr/{id}`` on an existing id is 409 (the proposal lists 409 and 405).
8. Headers: answers carry ``Location`` (absolute) and ``ETag`` (quoted), also on 412 for the
   latest version, where the proposal says ``Content-Location``; ``Prefer`` defaults to
   ``return=minimal`` (201/204 with no body).
9. JSON is canonical openEHR JSON with ``_type`` (the proposal's ``@type``); ``?format=`` is
   ignored.
10. Queries: the proposal's ``GET /query/?aql=`` and ``{aql, aqlParameters, offset, fetch}`` →
    ``/query/aql`` with ``q`` and ``query_parameters``; the answer is the release's RESULT_SET
    (``meta``, ``q``, ``columns``, ``rows``), not ``{metaData, resultSet, executedAql}`` or the
    ``"@type": "raw"`` document.
11. ``GET /definition/template/adl1.4`` and ``OPTIONS {base}`` exist only in the release.

Sandbox choices besides: a composition is stored as the bytes received and answered with its
``uid`` set to the version uid (as servers do), re-serialized as compact JSON; a PUT may follow
a deletion (the composition lives again); ``is_queryable``/``is_modifiable`` are kept but not
enforced; commit audits record no committer; an ``If-Match`` from another system id is stale.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cwsctl.core.errors import InputError
from cwsctl.core.files import read_bytes
from cwsctl.sandbox.app import MAX_BODY_BYTES, Answer, EnvelopeApp, Scope, printable
from cwsctl.sandbox.faults import Faults
from cwsctl.sandbox.openehr_api import (
    BASE_PATH,
    DEFAULT_FETCH,
    SYSTEM_ID,
    BadRequest,
    OpenEhrEndpoints,
    error,
)
from cwsctl.sandbox.openehr_store import Ehr, OpenEhrStore
from cwsctl.sandbox.server import DEFAULT_HOST, REQUEST_TIMEOUT_S, BaseSandboxServer
from cwsctl.sandbox.store import default_data_dir

__all__ = ["BASE_PATH", "SYSTEM_ID", "OpenEhrSandboxServer", "read_basic_auth_file"]

REALM = "openEHR"
#: A basic-auth file is one short line; anything longer is not one.
_MAX_AUTH_FILE_BYTES = 4096


def openehr_routes(endpoints: OpenEhrEndpoints) -> Starlette:
    """Every endpoint under ``BASE_PATH``, never redirecting."""
    b = BASE_PATH
    ehr = f"{b}/ehr/{{ehr_id}}"
    router = Starlette(
        routes=[
            Route(b, endpoints.options, methods=["OPTIONS"]),
            Route(f"{b}/", endpoints.options, methods=["OPTIONS"]),
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
            Route(f"{b}/definition/template/adl1.4", endpoints.templates, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_exception, BadRequest: _bad_request},
    )
    router.router.redirect_slashes = False
    return router


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error(404, "no such endpoint")
    return error(exc.status_code, f"method {request.method} is not allowed here", exc.headers)


async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadRequest)
    return error(exc.status, exc.message, **exc.extra)


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


class OpenEhrApp(EnvelopeApp):
    """The envelope with optional HTTP basic auth, faults on the EHR routes."""

    def __init__(
        self,
        endpoints: OpenEhrEndpoints,
        *,
        basic_auth: tuple[str, str] | None = None,
        faults: Faults | None = None,
        access_log: bool = True,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        super().__init__(
            openehr_routes(endpoints), faults=faults, access_log=access_log, max_body=max_body
        )
        self.basic_auth = basic_auth

    def _faulty(self, path: str) -> bool:
        return path == f"{BASE_PATH}/ehr" or path.startswith(f"{BASE_PATH}/ehr/")

    def _authenticate(self, scope: Scope, body: bytes) -> tuple[str, Answer | None]:
        if self.basic_auth is None:
            return "-", None
        if scope["method"] == "OPTIONS" and scope["path"] in (BASE_PATH, f"{BASE_PATH}/"):
            return "-", None
        values = [bytes(v) for k, v in scope["headers"] if k == b"authorization"]
        reason = "this server needs Authorization: Basic (user:password)"
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
                    return printable(user, 64), None
                reason = "wrong user or password"
        elif len(values) > 1:
            reason = "more than one Authorization header"
        document = {"error": "Unauthorized", "message": reason}
        body_bytes = json.dumps(document, separators=(",", ":")).encode("utf-8")
        challenge = f'Basic realm="{REALM}", charset="UTF-8"'.encode("ascii")
        return "-", Answer(401, body_bytes, [(b"www-authenticate", challenge)])


class OpenEhrSandboxServer(BaseSandboxServer):
    """An openEHR stand-in on ``host:port`` with state in ``data_dir/openehr.db``.

    Runs like :class:`~.server.SandboxServer` (``start``/``stop``, ``with``, ``serve_forever``,
    ``faults``). ``basic_auth``: ``(user, password)`` every request must present, or None.
    ``default_fetch``: rows a query answers when it does not say.
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        basic_auth: tuple[str, str] | None = None,
        default_fetch: int = DEFAULT_FETCH,
        faults: Faults | None = None,
        access_log: bool = True,
        max_body: int = MAX_BODY_BYTES,
        request_timeout: float = REQUEST_TIMEOUT_S,
    ) -> None:
        if basic_auth is not None and (
            len(basic_auth) != 2 or not basic_auth[0] or not basic_auth[1] or ":" in basic_auth[0]
        ):
            raise ValueError("basic_auth must be (user, password), both non-empty, no ':' in user")
        if (
            isinstance(default_fetch, bool)
            or not isinstance(default_fetch, int)
            or default_fetch < 1
        ):
            raise ValueError(f"default_fetch must be a whole number ≥ 1, not {default_fetch!r}")
        self._init_running(
            host=host, port=port, access_log=access_log, request_timeout=request_timeout
        )
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.store = OpenEhrStore(self.data_dir)
        self.endpoints = OpenEhrEndpoints(self.store, default_fetch)
        self.app = OpenEhrApp(
            self.endpoints,
            basic_auth=basic_auth,
            faults=faults if faults is not None else Faults.from_env(),
            access_log=access_log,
            max_body=max_body,
        )

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/ehrbase/rest/openehr/v1``: what an openehr profile's URL is."""
        return self.url + BASE_PATH

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        """The credentials required, or None; assign to change them while running."""
        assert isinstance(self.app, OpenEhrApp)
        return self.app.basic_auth

    @basic_auth.setter
    def basic_auth(self, value: tuple[str, str] | None) -> None:
        assert isinstance(self.app, OpenEhrApp)
        self.app.basic_auth = value

    @property
    def system_id(self) -> str:
        """The system id in every version uid."""
        return SYSTEM_ID

    def ehrs(self) -> list[Ehr]:
        """Every stored EHR, oldest first."""
        return self.store.ehrs()

    def count_ehrs(self) -> int:
        """How many EHRs are stored."""
        return self.store.count_ehrs()

    def reset(self) -> None:
        """Forget every EHR and composition, and switch faults off."""
        self.store.clear()
        self.faults = Faults()

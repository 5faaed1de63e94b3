"""The openEHR flavour of the sandbox: the openEHR REST API as EHRbase 2.x serves it.

A stand-in for EHRbase (v2.31.0 read from source, ``../shared/servers/EHRBASE.md``), for demos
and tests; not EHRbase. The rule: where EHRbase refuses, the sandbox refuses the same way, so a
client that passes here works there. The table of behaviours with their EHRbase version or
setting and the source reference is in ``cwsctl/sandbox/README.md`` ("openEHR (EHRbase)").

Everything lives under ``BASE_PATH`` (``/ehrbase/rest/openehr/v1``; a profile URL is
``http://HOST:PORT`` + that) plus ``GET /ehrbase/rest/status``. State is ``openehr.db`` in the
data dir (:mod:`.store`); the routes and auth in :mod:`.app`; handlers in :mod:`.ehr_routes`,
:mod:`.composition_routes`, :mod:`.template_routes` and :mod:`.query_routes` over one
:mod:`.context`, EHRbase's HTTP plumbing in :mod:`.http`; AQL in :mod:`.aql`; OPT parsing and
web template in :mod:`.opt`, example and FLAT/STRUCTURED conversion in :mod:`.web_formats`.
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
- ``POST|GET {b}/query/aql``: the AQL subset of :mod:`.aql` (outside it → 400 "not
  supported by the sandbox"); offset without fetch → 422; the limit rules above; ``meta``:
  ``_href``, ``_type``, ``_schema_version``, ``_created``, ``_executed_aql``, ``resultsize``,
  ``fetch``/``offset`` when a limit applies, ``default-limit``/``max-fetch`` when set.
- ``POST {b}/definition/template/adl1.4`` (Content-Type and Accept ``application/xml``, else
  415/406) → 201; the id is the XML's ``template_id/value``; a second upload → 409.
  ``GET …/adl1.4`` lists ``[{template_id, concept, archetype_id, created_timestamp}]``;
  ``GET …/adl1.4/{id}`` → the OPT re-serialised (XML) or, for ``application/json`` /
  ``application/openehr.wt+json``, the sandbox's minimal web template; ``…/{id}/example``.

The envelope is :class:`~cwsctl.sandbox.envelope.EnvelopeApp` (body limit, request timeouts, access
log of method, path without query, status and user — never a body or credential); the fault
switches (drop, error, latency) hit ``{b}/ehr`` and everything under it only.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cwsctl.sandbox.db import default_data_dir
from cwsctl.sandbox.envelope import MAX_BODY_BYTES
from cwsctl.sandbox.faults import Faults
from cwsctl.sandbox.server import DEFAULT_HOST, REQUEST_TIMEOUT_S, BaseSandboxServer
from cwsctl.targets.openehr.sandbox.app import OpenEhrApp, OpenEhrEndpoints
from cwsctl.targets.openehr.sandbox.context import OpenEhrContext
from cwsctl.targets.openehr.sandbox.http import (
    BASE_PATH,
    EHRBASE_VERSIONS,
    FETCH_PRECEDENCES,
    IF_MATCH_MODES,
    STATUS_PATH,
    SYSTEM_ID,
    BadRequest,
)
from cwsctl.targets.openehr.sandbox.opt import FormatError, parse_opt
from cwsctl.targets.openehr.sandbox.store import Ehr, OpenEhrStore

__all__ = ["OpenEhrSandboxServer"]


class OpenEhrSandboxServer(BaseSandboxServer):
    """An openEHR stand-in behaving like EHRbase 2.x on ``host:port``, state in ``data_dir``.

    Runs like :class:`~cwsctl.sandbox.server.SandboxServer` (``start``/``stop``, ``with``,
    ``serve_forever``, ``faults``). Settings (see the module docstring and the sandbox README):

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
            OpenEhrContext(
                self.store,
                if_match=if_match,
                max_fetch=max_fetch,
                fetch_precedence=fetch_precedence,
                default_limit=default_limit,
                template_overwrite=template_overwrite,
            )
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
        return self.endpoints.context.if_match_mode

    @property
    def max_fetch(self) -> int | None:
        """EHRbase's ``max-fetch``, or None."""
        return self.endpoints.context.max_fetch

    @property
    def fetch_precedence(self) -> str:
        """``"reject"`` or ``"min-fetch"``."""
        return self.endpoints.context.fetch_precedence

    @property
    def default_limit(self) -> int | None:
        """EHRbase's ``default-limit``, or None (every row)."""
        return self.endpoints.context.default_limit

    @property
    def ehrbase_version(self) -> str:
        """What ``GET /ehrbase/rest/status`` reports."""
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
            return self.endpoints.template_routes.add_template(opt)
        except FormatError as exc:
            raise ValueError(exc.message) from None
        except BadRequest as exc:
            if exc.status == 409 and exist_ok:
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

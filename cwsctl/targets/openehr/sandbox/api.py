"""The openEHR flavour's endpoints (Starlette handlers), under ``BASE_PATH``, as EHRbase 2.x answers.

The routes and the behaviour table are in :mod:`.openehr` (and the sandbox README); the state in
:mod:`.openehr_store`; AQL in :mod:`.openehr_aql`; templates and the FLAT/STRUCTURED formats in
:mod:`.openehr_templates`. Every error is EHRbase's ``{"error": REASON_PHRASE, "message": TEXT}``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime, timezone
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cwsctl.sandbox.envelope import json_bytes
from cwsctl.targets.openehr.sandbox import aql
from cwsctl.targets.openehr.sandbox import templates as tpl
from cwsctl.targets.openehr.sandbox.store import (
    CHANGE_TYPE_CODES,
    AlreadyDeletedError,
    Content,
    Ehr,
    EhrExistsError,
    OpenEhrStore,
    StaleVersionError,
    StoredTemplate,
    Subject,
    SubjectTakenError,
    TemplateExistsError,
    Version,
)

#: Where the API lives on the sandbox, as on EHRbase: a profile URL is ``http://HOST:PORT`` + this.
BASE_PATH = "/ehrbase/rest/openehr/v1"
#: EHRbase's status endpoint (outside the openEHR API).
STATUS_PATH = "/ehrbase/rest/status"
#: The sandbox's system id: the middle part of every version uid ``object::system::n``.
SYSTEM_ID = "cwsctl-sandbox"
#: The ``If-Match`` modes: EHRbase 2.0–2.31 (quoted refused) or the specification (quoted).
IF_MATCH_MODES = ("ehrbase", "spec")
#: ``ehrbase.rest.aql.fetch-precedence``: REJECT (EHRbase's default) or MIN_FETCH.
FETCH_PRECEDENCES = ("reject", "min-fetch")
#: What ``GET /ehrbase/rest/status`` reports as ``ehrbase_version`` per If-Match mode.
EHRBASE_VERSIONS = {"ehrbase": "2.31.0", "spec": "2.32.0"}
#: The openEHR REST specification release the sandbox follows (the AQL meta's schema version).
SPECS_VERSION = "1.0.3"
JSON_TYPE = "application/json"
XML_TYPE = "application/xml"
FLAT_TYPE = "application/openehr.wt.flat.schema+json"
STRUCTURED_TYPE = "application/openehr.wt.structured.schema+json"
WEB_TEMPLATE_TYPE = "application/openehr.wt+json"
STATUS_ARCHETYPE = "openEHR-EHR-EHR_STATUS.generic.v1"
#: EHRbase answers every EHR and composition with this Last-Modified (123124442 ms).
FIXED_LAST_MODIFIED = formatdate(123124.442, usegmt=True)
#: EHRbase's subject namespace rule (``ValidationServiceImp``), matched against the whole value.
NAMESPACE_PATTERN = re.compile(r"[a-zA-Z][a-zA-Z0-9-_:/&+?]*")
NOT_MATCH_LATEST = "If-Match version_uid does not match latest version"
DELETE_NOT_FOUND = (
    "No EHR with the supplied ehr_id or no COMPOSITION with the supplied preceding_version_uid."
)
_FORMATS = ("XML", "JSON", "FLAT", "STRUCTURED")
_MEDIA_FORMATS = {
    JSON_TYPE: "JSON",
    XML_TYPE: "XML",
    FLAT_TYPE: "FLAT",
    STRUCTURED_TYPE: "STRUCTURED",
}
_FORMAT_TYPES = {v: k for k, v in _MEDIA_FORMATS.items()}
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_EXTENDED_ISO = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})?$"
)
_QUERY_RESERVED = {"q", "offset", "fetch", "query_parameters", "ehr_id"}
_MANDATORY = (
    ("name", "name"),
    ("archetype_node_id", "archetype_node_id"),
    ("language", "language"),
    ("category", "category"),
    ("composer", "composer"),
    ("archetype_details", "archetype details"),
)


class BadRequest(Exception):
    """A request the API refuses; becomes an error answer."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def error(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    """``{"error": "Not Found", "message": …}`` with ``status`` (EHRbase's error body)."""
    document = {"error": HTTPStatus(status).phrase, "message": message, **extra}
    return JSONResponse(document, status, headers=headers)


def json_answer(
    document: Any, status: int = 200, headers: dict[str, str] | None = None, media: str = JSON_TYPE
) -> Response:
    """Compact UTF-8 JSON."""
    body = json_bytes(document)
    return Response(body, status, headers=headers, media_type=media)


def version_uid(object_id: str, number: int) -> str:
    """``object_id::cwsctl-sandbox::number``."""
    return f"{object_id}::{SYSTEM_ID}::{number}"


def parse_version_uid(text: str) -> tuple[str, str, int] | None:
    """(object id, system id, version) of ``uuid::system::n``; None if it is not one."""
    parts = text.split("::")
    if len(parts) != 3 or not _UUID.match(parts[0]) or not parts[2].isdigit():
        return None
    number = int(parts[2])
    return (parts[0].lower(), parts[1], number) if number >= 1 else None


def http_date(iso: str) -> str:
    """An RFC 9110 date for a stored ISO 8601 time."""
    return formatdate(datetime.fromisoformat(iso).timestamp(), usegmt=True)


def parse_version_at_time(text: str) -> datetime:
    """``version_at_time`` as EHRbase decodes it: a space becomes ``+`` (a URL's ``+`` arrives
    as a space), then extended ISO 8601 is required — ``2024-05-01 10:00:00`` is a 400."""
    raw = text.replace(" ", "+")
    try:
        if not _EXTENDED_ISO.match(raw):
            raise ValueError(raw)
        when = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith("Z") else raw)
    except ValueError:
        raise BadRequest(
            400, f"Value '{raw[:64]}' is not a valid extended ISO 8601 date-time (version_at_time)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def wants_representation(request: Request) -> bool:
    """``Prefer: return=representation`` exactly, as EHRbase compares it; else minimal."""
    return request.headers.get("prefer") == "return=representation"


def media_type(request: Request, header: str = "content-type") -> str:
    """The bare media type of ``header`` (lower case, no parameters)."""
    return request.headers.get(header, "").split(";")[0].strip().lower()


def read_json(body: bytes, request: Request, *, what: str) -> Any:
    """The body as JSON; 415 unless it says application/json, 400 if it does not parse."""
    content_type = media_type(request)
    if content_type != JSON_TYPE:
        raise BadRequest(415, f"Content-Type '{content_type}' is not supported for {what}")
    return parse_json(body, what=what)


def parse_json(body: bytes, *, what: str) -> Any:
    """JSON (no NaN/Infinity); 400 if it does not parse."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(400, f"{what} is not valid JSON: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def status_content(document: Any) -> tuple[Content, Subject]:
    """An EHR_STATUS from a request body, completed with defaults; its subject.

    A subject namespace outside EHRbase's pattern ``[a-zA-Z][a-zA-Z0-9-_:/&+?]*`` is a 400.
    """
    if not isinstance(document, dict):
        raise BadRequest(400, "the body must be an EHR_STATUS JSON object")
    declared = document.get("_type")
    if declared is None and "ehr_status" in document:
        raise BadRequest(
            400,
            "the body must be the EHR_STATUS itself (the released API), not the v0.1 proposal's "
            '{"ehr_status": …} wrapper',
        )
    if declared not in (None, "EHR_STATUS"):
        raise BadRequest(400, f"_type must be EHR_STATUS, not {str(declared)[:40]!r}")
    status: dict[str, Any] = {
        "_type": "EHR_STATUS",
        "archetype_node_id": STATUS_ARCHETYPE,
        "name": {"value": "EHR Status"},
        "subject": {"_type": "PARTY_SELF"},
        "is_queryable": True,
        "is_modifiable": True,
        **{k: v for k, v in document.items() if k != "uid"},
    }
    status["_type"] = "EHR_STATUS"
    problems = []
    if not isinstance(status["archetype_node_id"], str):
        problems.append("archetype_node_id must be a string")
    if not isinstance(status["name"], dict) or not isinstance(status["name"].get("value"), str):
        problems.append("name must be {value: TEXT}")
    for flag in ("is_queryable", "is_modifiable"):
        if not isinstance(status[flag], bool):
            problems.append(f"{flag} must be true or false")
    subject = status["subject"]
    found = Subject(None, None)
    if not isinstance(subject, dict):
        problems.append("subject must be a PARTY_SELF object")
    else:
        status["subject"] = subject = {"_type": "PARTY_SELF", **subject}
    if isinstance(subject, dict) and subject.get("external_ref") is not None:
        ref = subject["external_ref"]
        ident = ref.get("id") if isinstance(ref, dict) else None
        value = ident.get("value") if isinstance(ident, dict) else None
        namespace = ref.get("namespace") if isinstance(ref, dict) else None
        if not (isinstance(value, str) and value and isinstance(namespace, str) and namespace):
            problems.append("subject.external_ref needs id.value and namespace (strings)")
        elif not NAMESPACE_PATTERN.fullmatch(namespace):
            problems.append(
                f"/subject/external_ref/namespace: namespace {namespace[:80]!r} does not match "
                f"pattern {NAMESPACE_PATTERN.pattern}"
            )
        else:
            found = Subject(value, namespace)
    if problems:
        raise BadRequest(400, "\n".join(problems))
    body = json_bytes(status)
    return Content(body, status["name"]["value"], None, status["archetype_node_id"]), found


def with_uid(version: Version) -> dict[str, Any]:
    """A stored EHR_STATUS or composition as answered: its ``uid`` is this version's uid."""
    document = json.loads(version.body)
    uid = {"_type": "OBJECT_VERSION_ID", "value": version_uid(version.object_id, version.version)}
    if "uid" in document:
        document["uid"] = uid
        return dict(document)
    first = {k: v for k, v in document.items() if k == "_type"}
    return {**first, "uid": uid, **document}


def _format_param(request: Request) -> str | None:
    value = request.query_params.get("format")
    if not value:
        return None
    if value not in _FORMATS:
        raise BadRequest(
            406,
            f"Invalid compositions format [{value[:40]}] only [XML, JSON, FLAT, STRUCTURED] are "
            "supported at the moment",
        )
    return value


def request_format(request: Request) -> str:
    """JSON, FLAT or STRUCTURED, from ``?format=`` or Content-Type; 415/406 otherwise."""
    content_type = media_type(request)
    by_type = _MEDIA_FORMATS.get(content_type)
    if by_type is None:
        raise BadRequest(415, f"Content-Type '{content_type[:80]}' is not supported")
    chosen = _format_param(request) or by_type
    if chosen == "XML":
        raise BadRequest(
            415,
            "canonical XML compositions: the sandbox cannot convert them (send canonical JSON, "
            "FLAT or STRUCTURED)",
        )
    return chosen


def response_format(request: Request) -> str:
    """JSON, FLAT or STRUCTURED, from ``?format=`` or Accept; 406 otherwise."""
    chosen = _format_param(request)
    if chosen is None:
        accepted = [
            part.split(";")[0].strip().lower()
            for part in request.headers.get("accept", "*/*").split(",")
        ]
        for media in accepted:
            chosen = "JSON" if media in ("*/*", "application/*", "") else _MEDIA_FORMATS.get(media)
            if chosen is not None:
                break
        else:
            raise BadRequest(406, f"No acceptable representation for Accept: {accepted[0][:80]}")
    if chosen == "XML":
        raise BadRequest(406, "canonical XML: the sandbox cannot produce it (ask for JSON, FLAT "
                         "or STRUCTURED)")  # fmt: skip
    assert chosen is not None
    return chosen


class OpenEhrEndpoints:
    """The handlers, over one :class:`OpenEhrStore`, with EHRbase's settings."""

    def __init__(
        self,
        store: OpenEhrStore,
        *,
        if_match: str = "ehrbase",
        max_fetch: int | None = None,
        fetch_precedence: str = "reject",
        default_limit: int | None = None,
        template_overwrite: bool = False,
    ) -> None:
        self.store = store
        self.if_match_mode = if_match
        self.max_fetch = max_fetch
        self.fetch_precedence = fetch_precedence
        self.default_limit = default_limit
        self.template_overwrite = template_overwrite
        self._parsed: dict[str, tuple[bytes, tpl.Template]] = {}

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def base(request: Request) -> str:
        """``http://host:port/ehrbase/rest/openehr/v1``."""
        return str(request.base_url).rstrip("/") + BASE_PATH

    def ehr_or_404(self, request: Request) -> Ehr:
        """The EHR named in the path; 400 if it is not a UUID, 404 if there is none."""
        ehr_id: str = request.path_params["ehr_id"]
        if not _UUID.match(ehr_id):
            raise BadRequest(400, f"EHR ID format not a UUID: {ehr_id[:64]}")
        ehr = self.store.ehr(ehr_id.lower())
        if ehr is None:
            raise BadRequest(404, f"EHR with id {ehr_id} not found")
        return ehr

    def ehr_document(self, ehr: Ehr) -> dict[str, Any]:
        """The EHR as EHRbase 2 answers it: ``ehr_status`` is an OBJECT_REF to the latest."""
        status = self.store.version(ehr.status_id)
        assert status is not None
        return {
            "system_id": {"value": SYSTEM_ID},
            "ehr_id": {"value": ehr.ehr_id},
            "ehr_status": {
                "id": {
                    "_type": "OBJECT_VERSION_ID",
                    "value": version_uid(status.object_id, status.version),
                },
                "namespace": "local",
                "type": "EHR_STATUS",
            },
            "time_created": {"value": ehr.time_created},
        }

    def aql_ehr_document(self, ehr: Ehr) -> dict[str, Any]:
        """The EHR as AQL sees it: the EHR_STATUS contained (``e/ehr_status/subject/…``)."""
        status = self.store.version(ehr.status_id)
        assert status is not None
        return {**self.ehr_document(ehr), "ehr_status": with_uid(status)}

    def ehr_headers(self, request: Request, ehr: Ehr) -> dict[str, str]:
        return {
            "ETag": f'"{ehr.ehr_id}"',
            "Location": f"{self.base(request)}/ehr/{ehr.ehr_id}",
            "Last-Modified": FIXED_LAST_MODIFIED,
        }

    def version_headers(
        self, request: Request, version: Version, where: str, *, object_location: bool = False
    ) -> dict[str, str]:
        uid = version_uid(version.object_id, version.version)
        located = version.object_id if object_location else uid
        modified = (
            http_date(version.time_committed) if where == "ehr_status" else FIXED_LAST_MODIFIED
        )
        return {
            "ETag": f'"{uid}"',
            "Location": f"{self.base(request)}/ehr/{version.ehr_id}/{where}/{located}",
            "Last-Modified": modified,
        }

    def if_match(self, request: Request) -> tuple[str, int]:
        """(object id, version number) named by ``If-Match``, read as the mode says.

        ``ehrbase`` (2.0–2.31): the raw value goes to ``UUID.fromString`` — a quoted value is a
        400 "UUID string too large". ``spec``: ``"uid"`` (or bare); ``W/``, ``*`` and unbalanced
        quotes are 400.
        """
        raw = request.headers.get("if-match")
        if raw is None or not raw.strip():
            raise BadRequest(
                400,
                "Required request header 'If-Match' for method parameter type String is not "
                "present",
            )
        text = raw.strip()
        if self.if_match_mode == "spec":
            if text == "*" or text.startswith("W/"):
                raise BadRequest(400, f"If-Match {text[:60]!r}: only a strong ETag is accepted")
            quoted = text.startswith('"') or text.endswith('"')
            if quoted:
                if len(text) < 2 or not (text.startswith('"') and text.endswith('"')):
                    raise BadRequest(400, f"If-Match {text[:60]!r}: unbalanced quotes")
                text = text[1:-1]
        object_part = text.split("::")[0]
        if len(object_part) > 36:
            raise BadRequest(400, "UUID string too large")
        parsed = parse_version_uid(text)
        if parsed is None:
            raise BadRequest(400, f"Invalid UUID string: {text[:100]}")
        return parsed[0], parsed[2]

    # -- EHR --------------------------------------------------------------------------------
    async def ehrs(self, request: Request) -> Response:
        """``POST /ehr`` creates; ``GET /ehr?subject_id=&subject_namespace=`` looks one up."""
        if request.method == "POST":
            return await self._create_ehr(request, None)
        subject_id = request.query_params.get("subject_id")
        namespace = request.query_params.get("subject_namespace")
        if not subject_id or not namespace:
            return error(
                400, "Required request parameters 'subject_id' and 'subject_namespace' are missing"
            )
        ehr = self.store.ehr_by_subject(subject_id, namespace)
        if ehr is None:
            return error(404, "No EHR with supplied subject parameters found")
        return json_answer(self.ehr_document(ehr), 200, self.ehr_headers(request, ehr))

    async def ehr(self, request: Request) -> Response:
        """``GET /ehr/{ehr_id}``; ``PUT /ehr/{ehr_id}`` creates it with that id."""
        if request.method == "PUT":
            ehr_id: str = request.path_params["ehr_id"]
            if not _UUID.match(ehr_id):
                return error(400, f"EHR ID format not a UUID: {ehr_id[:64]}")
            return await self._create_ehr(request, ehr_id.lower())
        ehr = self.ehr_or_404(request)
        return json_answer(self.ehr_document(ehr), 200, self.ehr_headers(request, ehr))

    async def _create_ehr(self, request: Request, ehr_id: str | None) -> Response:
        body = await request.body()
        document = read_json(body, request, what="the EHR_STATUS") if body.strip() else {}
        content, subject = status_content(document)
        try:
            ehr = self.store.create_ehr(ehr_id, subject, content)
        except EhrExistsError:
            return error(409, f"EHR with id {ehr_id} already exists")
        except SubjectTakenError:
            return error(
                409,
                f"Supplied partyId[{subject.subject_id}] is used by a different EHR in the same "
                f"partyNamespace[{subject.namespace}].",
            )
        headers = self.ehr_headers(request, ehr)
        if not wants_representation(request):
            return Response(None, 201, headers=headers)
        return json_answer(self.ehr_document(ehr), 201, headers)

    # -- EHR_STATUS -------------------------------------------------------------------------
    async def ehr_status(self, request: Request) -> Response:
        """``GET`` (latest or ``?version_at_time=``) and ``PUT`` (``If-Match``) the EHR_STATUS."""
        ehr = self.ehr_or_404(request)
        if request.method == "PUT":
            return await self._update_status(request, ehr)
        at_text = request.query_params.get("version_at_time")
        at = parse_version_at_time(at_text) if at_text else None
        version = self.store.version(ehr.status_id, at=at)
        if version is None:
            return error(404, f"No EHR_STATUS in EHR {ehr.ehr_id} at that time")
        return json_answer(
            with_uid(version), 200, self.version_headers(request, version, "ehr_status")
        )

    async def ehr_status_version(self, request: Request) -> Response:
        """``GET /ehr/{ehr_id}/ehr_status/{version_uid}``."""
        ehr = self.ehr_or_404(request)
        text: str = request.path_params["version_uid"]
        parsed = parse_version_uid(text)
        version = None
        if parsed is not None and parsed[0] == ehr.status_id:
            version = self.store.version(ehr.status_id, number=parsed[2])
        if version is None:
            return error(404, f"No EHR_STATUS with version uid {text[:100]} in this EHR")
        return json_answer(
            with_uid(version), 200, self.version_headers(request, version, "ehr_status")
        )

    async def _update_status(self, request: Request, ehr: Ehr) -> Response:
        content, subject = status_content(
            read_json(await request.body(), request, what="the EHR_STATUS")
        )
        object_id, preceding = self.if_match(request)
        try:
            if object_id != ehr.status_id:
                latest = self.store.version(ehr.status_id)
                assert latest is not None
                raise StaleVersionError(latest)
            version = self.store.update_status(ehr, preceding, subject, content)
        except StaleVersionError:
            return error(412, NOT_MATCH_LATEST)
        except SubjectTakenError:
            return error(
                409,
                f"Supplied partyId[{subject.subject_id}] is used by a different EHR in the same "
                f"partyNamespace[{subject.namespace}].",
            )
        return self._written(request, version, "ehr_status", 200, "JSON")

    def _written(
        self,
        request: Request,
        version: Version,
        where: str,
        status: int,
        answer_format: str,
        *,
        object_location: bool = False,
    ) -> Response:
        headers = self.version_headers(request, version, where, object_location=object_location)
        if not wants_representation(request):
            return Response(None, 204, headers=headers)
        return self._represent(version, status, headers, answer_format)

    def _represent(
        self, version: Version, status: int, headers: dict[str, str], answer_format: str
    ) -> Response:
        document = with_uid(version)
        if answer_format == "JSON":
            return json_answer(document, status, headers)
        template = self.template_or_422(version.template_id or "")
        flat = tpl.canonical_to_flat(template, document)
        if answer_format == "FLAT":
            return json_answer(flat, status, headers, FLAT_TYPE)
        return json_answer(tpl.flat_to_structured(flat), status, headers, STRUCTURED_TYPE)

    # -- templates ------------------------------------------------------------------------------
    def parsed_template(self, template_id: str) -> tpl.Template | None:
        """The uploaded template ``template_id``, parsed (cached by its stored bytes)."""
        stored = self.store.template(template_id)
        if stored is None:
            return None
        cached = self._parsed.get(template_id)
        if cached is None or cached[0] != stored.opt:
            cached = (stored.opt, tpl.parse_opt(stored.opt))
            self._parsed[template_id] = cached
        return cached[1]

    def template_or_422(self, template_id: str) -> tpl.Template:
        """The template, or 422 "Template with template_id 'X' does not exist" (EHRbase)."""
        template = self.parsed_template(template_id)
        if template is None:
            raise BadRequest(422, f"Template with template_id '{template_id}' does not exist")
        return template

    def add_template(self, opt: bytes, *, overwrite: bool | None = None) -> str:
        """Store an OPT (as an upload does); its template id. BadRequest 400/409 as EHRbase."""
        template = tpl.parse_opt(opt)
        created = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        stored = StoredTemplate(
            template.template_id, template.concept, template.archetype_id, created, template.xml
        )
        try:
            self.store.add_template(
                stored, overwrite=self.template_overwrite if overwrite is None else overwrite
            )
        except TemplateExistsError:
            raise BadRequest(
                409,
                "Operational template with this template ID already exists: "
                + template.template_id,
            ) from None
        return template.template_id

    async def templates(self, request: Request) -> Response:
        """``GET`` lists uploaded templates; ``POST`` uploads an OPT (XML in, XML out)."""
        if request.method == "GET":
            return json_answer(
                [
                    {
                        "template_id": t.template_id,
                        "concept": t.concept,
                        "archetype_id": t.archetype_id,
                        "created_timestamp": t.created,
                    }
                    for t in self.store.templates()
                ]
            )
        content_type = media_type(request)
        if content_type != XML_TYPE:
            return error(415, f"Content-Type '{content_type[:80]}' is not supported")
        accepted = [
            part.split(";")[0].strip().lower()
            for part in request.headers.get("accept", "*/*").split(",")
        ]
        if not any(a in (XML_TYPE, "application/*", "*/*", "") for a in accepted):
            return error(406, "No acceptable representation")
        try:
            template_id = self.add_template(await request.body())
        except tpl.FormatError as exc:
            return error(exc.status, exc.message)
        location = f"{self.base(request)}/definition/template/adl1.4/{template_id}"
        headers = {"Location": location, "ETag": f'"{template_id}"'}
        if not wants_representation(request):
            return Response(None, 201, headers=headers, media_type=XML_TYPE)
        template = self.parsed_template(template_id)
        assert template is not None
        return Response(template.xml, 201, headers=headers, media_type=XML_TYPE)

    async def template(self, request: Request) -> Response:
        """``GET …/adl1.4/{id}``: the OPT (XML) or a web template (JSON), by Accept."""
        template_id: str = request.path_params["template_id"]
        accepted = [
            part.split(";")[0].strip().lower()
            for part in request.headers.get("accept", "*/*").split(",")
        ]
        chosen = None
        for media in accepted:
            if media in (XML_TYPE, "*/*", "application/*", ""):
                chosen = XML_TYPE
            elif media in (JSON_TYPE, WEB_TEMPLATE_TYPE):
                chosen = media
            if chosen is not None:
                break
        if chosen is None:
            return error(406, "No acceptable representation")
        template = self.parsed_template(template_id)
        if template is None:
            return error(404, f"Template with template_id '{template_id}' does not exist")
        location = f"{self.base(request)}/definition/template/adl1.4/{template_id}"
        if chosen == XML_TYPE:
            return Response(template.xml, 200, headers={"Location": location}, media_type=chosen)
        return json_answer(tpl.web_template(template), 200, {"Location": location}, chosen)

    async def template_example(self, request: Request) -> Response:
        """``GET …/adl1.4/{id}/example[?format=]``: an example composition."""
        template_id: str = request.path_params["template_id"]
        answer_format = response_format(request)
        template = self.parsed_template(template_id)
        if template is None:
            return error(404, f"Template with template_id '{template_id}' does not exist")
        canonical = tpl.example(template)
        if answer_format == "JSON":
            return json_answer(canonical)
        flat = tpl.canonical_to_flat(template, canonical)
        if answer_format == "FLAT":
            return json_answer(flat, media=FLAT_TYPE)
        return json_answer(tpl.flat_to_structured(flat), media=STRUCTURED_TYPE)

    # -- compositions ---------------------------------------------------------------------------
    async def compositions(self, request: Request) -> Response:
        """``POST /ehr/{ehr_id}/composition``: minimal → 204, representation → 201 + body."""
        ehr = self.ehr_or_404(request)
        answer_format = response_format(request) if wants_representation(request) else "JSON"
        content, document = await self._composition_body(request)
        object_id = None
        given = document.get("uid")
        if isinstance(given, dict) and given.get("value") is not None:
            parsed = parse_version_uid(str(given.get("value")))
            if parsed is None or parsed[1] != SYSTEM_ID or parsed[2] != 1:
                return error(
                    412,
                    f"Provided composition uid {str(given.get('value'))[:100]} is not a version "
                    f"1 uid of system {SYSTEM_ID}",
                )
            object_id = parsed[0]
        try:
            version = self.store.create_composition(ehr.ehr_id, content, object_id)
        except EhrExistsError:
            return error(412, f"Provided composition uid {object_id} already exists")
        return self._written(
            request, version, "composition", 201, answer_format, object_location=True
        )

    async def composition(self, request: Request) -> Response:
        """``GET``, ``PUT`` (update) and ``DELETE`` one composition."""
        ehr = self.ehr_or_404(request)
        uid: str = request.path_params["uid"]
        if request.method == "PUT":
            return await self._update_composition(request, ehr, uid)
        if request.method == "DELETE":
            return self._delete_composition(request, ehr, uid)
        answer_format = response_format(request)
        at_text = request.query_params.get("version_at_time")
        parsed = parse_version_uid(uid)
        if parsed is not None:
            object_id, _system, number = parsed
            version = self.store.version(object_id, number=number, ehr_id=ehr.ehr_id)
        elif _UUID.match(uid):
            at = parse_version_at_time(at_text) if at_text else None
            version = self.store.version(uid.lower(), at=at, ehr_id=ehr.ehr_id)
        else:
            return error(400, f"Composition uid {uid[:100]} is neither a UUID nor a version uid")
        if version is None or version.kind != "COMPOSITION":
            return error(404, f"No composition with id {uid[:100]} found in EHR {ehr.ehr_id}")
        if version.deleted:  # EHRbase: 204, no ETag
            return Response(None, 204)
        headers = self.version_headers(request, version, "composition")
        return self._represent(version, 200, headers, answer_format)

    async def _composition_body(self, request: Request) -> tuple[Content, dict[str, Any]]:
        """The composition as canonical JSON bytes (converted from FLAT/STRUCTURED), checked
        as EHRbase checks it before storing."""
        body = await request.body()
        body_format = request_format(request)
        document = parse_json(body, what="the composition")
        if body_format != "JSON":
            template_id = request.query_params.get("templateId")
            if not template_id:
                raise BadRequest(
                    400, f"templateId (a query parameter) is required for format {body_format}"
                )
            template = self.template_or_422(template_id)
            try:
                flat = document
                if body_format == "STRUCTURED":
                    flat = tpl.normalise_flat(template, tpl.structured_to_flat(document))
                document = tpl.flat_to_canonical(template, flat)
            except tpl.FormatError as exc:
                raise BadRequest(exc.status, exc.message) from None
            body = json_bytes(document)
        return self._check_canonical(document, body), document

    def _check_canonical(self, document: Any, body: bytes) -> Content:
        if not isinstance(document, dict):
            raise BadRequest(400, "the body must be a COMPOSITION JSON object (canonical JSON)")
        declared = document.get("_type")
        if declared not in (None, "COMPOSITION"):
            raise BadRequest(400, f"_type must be COMPOSITION, not {str(declared)[:40]!r}")
        for key, label in _MANDATORY:
            if document.get(key) is None:
                raise BadRequest(400, f"Composition missing mandatory attribute: {label}")
        name = document["name"]
        if not isinstance(name, dict) or not isinstance(name.get("value"), str):
            raise BadRequest(400, "/name: must be a DV_TEXT {value: TEXT}")
        details = document["archetype_details"]
        template = details.get("template_id") if isinstance(details, dict) else None
        if template is None:
            raise BadRequest(
                400, "Composition missing mandatory attribute: archetype details/template_id"
            )
        template_id = template.get("value") if isinstance(template, dict) else None
        if not isinstance(template_id, str):
            raise BadRequest(400, "/archetype_details/template_id/value must be a string")
        parsed = self.template_or_422(template_id)
        node_id = document.get("archetype_node_id")
        if node_id != parsed.archetype_id:
            raise BadRequest(
                400,
                f"/: archetype_node_id {str(node_id)[:80]} is not the root archetype "
                f"{parsed.archetype_id} of template {template_id}",
            )
        return Content(body, name["value"], template_id, str(node_id))

    async def _update_composition(self, request: Request, ehr: Ehr, uid: str) -> Response:
        if not _UUID.match(uid):
            return error(400, f"Composition uid {uid[:100]} is not a versioned object UUID")
        object_id = uid.lower()
        answer_format = response_format(request) if wants_representation(request) else "JSON"
        content, document = await self._composition_body(request)
        given = document.get("uid")
        given_value = given.get("value") if isinstance(given, dict) else None
        if given_value is not None and str(given_value).split("::")[0].lower() != object_id:
            return error(
                412,
                "The UUID of the composition in the body does not match the versioned object "
                "id in the path",
            )
        named_object, preceding = self.if_match(request)
        latest = self.store.version(object_id, ehr_id=ehr.ehr_id)
        if latest is None or latest.kind != "COMPOSITION":
            return error(404, f"No composition with id {uid} found in EHR {ehr.ehr_id}")
        if named_object != object_id:
            return error(412, NOT_MATCH_LATEST)
        try:
            version = self.store.update_composition(ehr.ehr_id, object_id, preceding, content)
        except StaleVersionError:
            return error(412, NOT_MATCH_LATEST)
        except KeyError:
            return error(404, f"No composition with id {uid} found in EHR {ehr.ehr_id}")
        return self._written(request, version, "composition", 200, answer_format)

    def _delete_composition(self, request: Request, ehr: Ehr, uid: str) -> Response:
        parsed = parse_version_uid(uid)
        if parsed is None:
            return error(400, f"Composition uid {uid[:100]} is not a version uid (uuid::system::n)")
        object_id, _system, number = parsed
        try:
            version = self.store.update_composition(ehr.ehr_id, object_id, number, None)
        except (KeyError, AlreadyDeletedError):
            return error(404, DELETE_NOT_FOUND)
        except StaleVersionError:
            return error(409, NOT_MATCH_LATEST)
        return Response(None, 204, headers=self.version_headers(request, version, "composition"))

    async def versioned_composition(self, request: Request) -> Response:
        """``GET /ehr/{ehr_id}/versioned_composition/{uid}``: VERSIONED_COMPOSITION."""
        ehr = self.ehr_or_404(request)
        history = self._history(request, ehr)
        uid = history[0].object_id
        return json_answer(
            {
                "_type": "VERSIONED_COMPOSITION",
                "uid": {"_type": "HIER_OBJECT_ID", "value": uid},
                "owner_id": {
                    "id": {"_type": "HIER_OBJECT_ID", "value": ehr.ehr_id},
                    "namespace": "local",
                    "type": "EHR",
                },
                "time_created": {"value": history[0].time_committed},
            }
        )

    async def revision_history(self, request: Request) -> Response:
        """``GET …/versioned_composition/{uid}/revision_history``: ``{"items": [...]}``."""
        ehr = self.ehr_or_404(request)
        committer = request.scope.get("cwsctl.user") or "anonymous"
        return json_answer(
            {
                "items": [
                    {
                        "version_id": {"value": version_uid(v.object_id, v.version)},
                        "audits": [
                            {
                                "_type": "AUDIT_DETAILS",
                                "system_id": SYSTEM_ID,
                                "committer": {"_type": "PARTY_IDENTIFIED", "name": committer},
                                "time_committed": {"value": v.time_committed},
                                "change_type": {
                                    "value": v.change_type,
                                    "defining_code": {
                                        "terminology_id": {"value": "openehr"},
                                        "code_string": CHANGE_TYPE_CODES[v.change_type],
                                    },
                                },
                            }
                        ],
                    }
                    for v in self._history(request, ehr)
                ]
            }
        )

    def _history(self, request: Request, ehr: Ehr) -> list[Version]:
        uid: str = request.path_params["uid"]
        history = self.store.history(uid.lower(), ehr.ehr_id) if _UUID.match(uid) else []
        if not history or history[0].kind != "COMPOSITION":
            raise BadRequest(404, f"No VERSIONED_COMPOSITION with id {uid[:100]} in this EHR")
        return history

    # -- query ----------------------------------------------------------------------------------
    async def query(self, request: Request) -> Response:
        """``POST /query/aql`` (JSON) or ``GET /query/aql?q=…``, with EHRbase's limit rules."""
        if request.method == "POST":
            document = read_json(await request.body(), request, what="the query")
            if not isinstance(document, dict):
                return error(400, 'the body must be {"q": AQL, "query_parameters": {…}, …}')
            text = document.get("q")
            parameters = document.get("query_parameters") or {}
            offset, fetch = document.get("offset"), document.get("fetch")
        else:
            params = request.query_params
            text = params.get("q")
            parameters = _get_parameters(request)
            offset, fetch = params.get("offset"), params.get("fetch")
        if not isinstance(text, str) or not text.strip():
            return error(400, "q (the AQL text) is required")
        if not isinstance(parameters, dict):
            return error(400, "query_parameters must be an object of name: value")
        offset, fetch = _whole(offset, "offset"), _whole(fetch, "fetch")
        try:
            query = aql.parse(text)
        except aql.AqlError as exc:
            return error(400, str(exc))
        meta: dict[str, Any] = {
            "_href": f"{self.base(request)}/query/aql",
            "_type": "RESULTSET",
            "_schema_version": SPECS_VERSION,
            "_created": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        }
        if self.default_limit is not None:
            meta["default-limit"] = self.default_limit
        if self.max_fetch is not None:
            meta["max-fetch"] = self.max_fetch
        limit, start = self._limits(query, fetch, offset)
        try:
            unlimited = dataclasses.replace(query, limit=None, offset=None)  # applied below
            rows = aql.execute(
                unlimited, parameters, self._ehr_documents(), self._composition_documents()
            )
            executed = aql.substituted(query, text, parameters)
        except aql.AqlError as exc:
            return error(400, str(exc))
        meta["_executed_aql"] = executed
        if limit is not None:
            rows = rows[start : start + limit]
            meta["fetch"] = limit
            meta["offset"] = start
        elif start:
            rows = rows[start:]
        meta["resultsize"] = len(rows)
        return json_answer(
            {
                "meta": meta,
                "q": text,
                "columns": [{"name": c.name, "path": c.path.text} for c in query.columns],
                "rows": rows,
            }
        )

    def _limits(
        self, query: aql.Query, fetch: int | None, offset: int | None
    ) -> tuple[int | None, int]:
        """(limit, offset) as ``AqlLimitPostProcessor`` decides; BadRequest(422) otherwise."""
        if fetch is not None and self.max_fetch is not None and fetch > self.max_fetch:
            raise BadRequest(422, f"Fetch parameter {fetch} exceeds maximum fetch {self.max_fetch}")
        if fetch is None:
            if offset is not None:
                raise BadRequest(422, "Query parameter for offset provided, but no fetch parameter")
            limit = query.limit
        elif query.limit is None:
            limit = fetch
        elif self.fetch_precedence == "reject":
            raise BadRequest(
                422,
                "Query contains a LIMIT clause, fetch and offset parameters must not be used "
                "(with fetch precedence REJECT)",
            )
        else:
            if query.offset is not None:
                raise BadRequest(
                    422,
                    "Query contains a OFFSET clause, fetch parameter must not be used (with fetch "
                    "precedence MIN_FETCH)",
                )
            limit = min(query.limit, fetch)
        if limit is None:
            limit = self.default_limit
        start = offset if offset is not None else (query.offset or 0)
        return limit, start

    def _ehr_documents(self) -> list[tuple[str, dict[str, Any]]]:
        return [(e.ehr_id, self.aql_ehr_document(e)) for e in self.store.ehrs()]

    def _composition_documents(self) -> list[tuple[str, dict[str, Any]]]:
        return [(v.ehr_id, with_uid(v)) for v in self.store.latest_compositions()]

    # -- status ----------------------------------------------------------------------------------
    async def status(self, request: Request) -> Response:
        """``GET /ehrbase/rest/status``: versions, ``ehrbase_version`` per If-Match mode."""
        import platform

        return json_answer(
            {
                "ehrbase_version": EHRBASE_VERSIONS[self.if_match_mode],
                "openehr_sdk_version": "sandbox",
                "archie_version": "sandbox",
                "jvm_version": f"none (cwsctl sandbox, Python {platform.python_version()})",
                "os_version": platform.system(),
                "postgres_version": "none (SQLite)",
            }
        )


def _get_parameters(request: Request) -> dict[str, Any]:
    """Query parameters of a GET: each ``query_parameters`` value (a JSON object, or
    ``name=value&…`` URL-encoded), plus — as EHRbase does — every other URL parameter besides
    q, offset, fetch; ``ehr_id`` becomes ``$ehr_id``."""
    parameters: dict[str, Any] = {}
    for name, value in request.query_params.multi_items():
        if name == "query_parameters":
            if value.strip().startswith("{"):
                try:
                    decoded = json.loads(value)
                except ValueError:
                    raise BadRequest(400, "query_parameters is not valid JSON") from None
                if not isinstance(decoded, dict):
                    raise BadRequest(400, "query_parameters must be a JSON object")
                parameters.update(decoded)
            else:
                parameters.update(parse_qsl(value, keep_blank_values=True))
        elif name not in _QUERY_RESERVED or name == "ehr_id":
            parameters.setdefault(name, value)
    return parameters


def _whole(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not (
        isinstance(value, int) or (isinstance(value, str) and value.isdigit())
    ):
        raise BadRequest(400, f"{name} must be a whole number ≥ 0")
    return int(value)

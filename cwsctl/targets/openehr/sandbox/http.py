"""EHRbase's HTTP plumbing for the openEHR sandbox: its settings and constants, error answers,
JSON bodies, version uids, dates, format negotiation and the AQL request's parameters.

Every error is EHRbase's ``{"error": REASON_PHRASE, "message": TEXT}``.
"""

from __future__ import annotations

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
from cwsctl.targets.openehr.sandbox.store import Version

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


def with_uid(version: Version) -> dict[str, Any]:
    """A stored EHR_STATUS or composition as answered: its ``uid`` is this version's uid."""
    document = json.loads(version.body)
    uid = {"_type": "OBJECT_VERSION_ID", "value": version_uid(version.object_id, version.version)}
    if "uid" in document:
        document["uid"] = uid
        return dict(document)
    first = {k: v for k, v in document.items() if k == "_type"}
    return {**first, "uid": uid, **document}


def base(request: Request) -> str:
    """``http://host:port/ehrbase/rest/openehr/v1``."""
    return str(request.base_url).rstrip("/") + BASE_PATH


def version_headers(
    request: Request, version: Version, where: str, *, object_location: bool = False
) -> dict[str, str]:
    """``ETag``, ``Location`` and ``Last-Modified`` of a stored EHR_STATUS or composition."""
    uid = version_uid(version.object_id, version.version)
    located = version.object_id if object_location else uid
    modified = http_date(version.time_committed) if where == "ehr_status" else FIXED_LAST_MODIFIED
    return {
        "ETag": f'"{uid}"',
        "Location": f"{base(request)}/ehr/{version.ehr_id}/{where}/{located}",
        "Last-Modified": modified,
    }


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

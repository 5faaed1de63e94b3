"""The openEHR flavour's endpoints (Starlette handlers), under ``BASE_PATH``.

The routes and the list of seed-vs-release differences are in :mod:`.openehr`; the state in
:mod:`.openehr_store`; AQL in :mod:`.openehr_aql`. Every error is JSON
``{"error": REASON_PHRASE, "message": TEXT, …}`` (EHRbase's shape), with extra members where the
client needs them (``latest_version_uid`` on 412/409 for a stale version).
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

from cwsctl import __version__
from cwsctl.sandbox import openehr_aql as aql
from cwsctl.sandbox.openehr_store import (
    CHANGE_TYPE_CODES,
    AlreadyDeletedError,
    Content,
    Ehr,
    EhrExistsError,
    OpenEhrStore,
    StaleVersionError,
    Subject,
    SubjectTakenError,
    Version,
)

#: Where the API lives on the sandbox, as on EHRbase: a profile URL is ``http://HOST:PORT`` + this.
BASE_PATH = "/ehrbase/rest/openehr/v1"
#: The sandbox's system id: the middle part of every version uid ``object::system::n``.
SYSTEM_ID = "cwsctl-sandbox"
#: Rows a query answers when neither the request (fetch) nor the AQL (LIMIT) says how many.
DEFAULT_FETCH = 100
#: The openEHR REST specification release the sandbox follows.
SPECS_VERSION = "1.0.3"
JSON_TYPE = "application/json"
STATUS_ARCHETYPE = "openEHR-EHR-EHR_STATUS.generic.v1"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
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
    """``{"error": "Not Found", "message": …}`` with ``status``."""
    document = {"error": HTTPStatus(status).phrase, "message": message, **extra}
    return JSONResponse(document, status, headers=headers)


def json_answer(
    document: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """Compact UTF-8 JSON."""
    body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(body, status, headers=headers, media_type=JSON_TYPE)


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


def parse_time(text: str, name: str) -> datetime:
    """An ISO 8601 date-time (``Z`` allowed; no offset means UTC); BadRequest otherwise."""
    raw = text.strip()
    try:
        when = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw)
    except ValueError:
        raise BadRequest(400, f"{name} is not an ISO 8601 date-time: {text[:64]!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def wants_representation(request: Request) -> bool:
    """``Prefer: return=representation`` (the default is ``return=minimal``)."""
    prefer = ",".join(request.headers.getlist("prefer")).replace(" ", "").lower()
    return "return=representation" in prefer.split(",")


def read_json(body: bytes, request: Request, *, what: str) -> Any:
    """The body as JSON; 415 unless it says application/json, 400 if it does not parse."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != JSON_TYPE:
        raise BadRequest(415, f"{what} must be sent as Content-Type: {JSON_TYPE}")
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(400, f"{what} is not valid JSON: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def status_content(document: Any) -> tuple[Content, Subject]:
    """An EHR_STATUS from a request body, completed with defaults; its subject."""
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
        else:
            found = Subject(value, namespace)
    if problems:
        raise BadRequest(400, "invalid EHR_STATUS: " + "; ".join(problems))
    body = json.dumps(status, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Content(body, status["name"]["value"], None, status["archetype_node_id"]), found


def composition_content(document: Any, body: bytes, template_header: str | None) -> Content:
    """A composition as received (``body``) and what the sandbox reads from it."""
    if not isinstance(document, dict):
        raise BadRequest(400, "the body must be a COMPOSITION JSON object (canonical JSON)")
    declared = document.get("_type")
    if declared not in (None, "COMPOSITION"):
        raise BadRequest(400, f"_type must be COMPOSITION, not {str(declared)[:40]!r}")
    name = document.get("name")
    if not isinstance(name, dict) or not isinstance(name.get("value"), str):
        raise BadRequest(400, "invalid COMPOSITION: name must be {value: TEXT}")
    details = document.get("archetype_details")
    template = details.get("template_id") if isinstance(details, dict) else None
    template_id = template.get("value") if isinstance(template, dict) else None
    if template_id is not None and not isinstance(template_id, str):
        raise BadRequest(400, "invalid COMPOSITION: archetype_details.template_id.value")
    if template_header and template_id and template_header != template_id:
        raise BadRequest(
            422,
            f"openEHR-TEMPLATE_ID {template_header[:80]!r} is not the composition's "
            f"template_id {template_id[:80]!r}",
        )
    node_id = document.get("archetype_node_id")
    return Content(
        body,
        name["value"],
        template_id or template_header or None,
        node_id if isinstance(node_id, str) else None,
    )


def with_uid(version: Version) -> dict[str, Any]:
    """A stored EHR_STATUS or composition as answered: its ``uid`` is this version's uid."""
    document = json.loads(version.body)
    uid = {"_type": "OBJECT_VERSION_ID", "value": version_uid(version.object_id, version.version)}
    if "uid" in document:
        document["uid"] = uid
        return dict(document)
    first = {k: v for k, v in document.items() if k == "_type"}
    return {**first, "uid": uid, **document}


class OpenEhrEndpoints:
    """The handlers, over one :class:`OpenEhrStore`."""

    def __init__(self, store: OpenEhrStore, default_fetch: int = DEFAULT_FETCH) -> None:
        self.store = store
        self.default_fetch = default_fetch

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def base(request: Request) -> str:
        """``http://host:port/ehrbase/rest/openehr/v1``."""
        return str(request.base_url).rstrip("/") + BASE_PATH

    def ehr_or_404(self, request: Request) -> Ehr:
        """The EHR named in the path; BadRequest(404) if there is none."""
        ehr_id: str = request.path_params["ehr_id"]
        ehr = self.store.ehr(ehr_id.lower()) if _UUID.match(ehr_id) else None
        if ehr is None:
            raise BadRequest(404, f"no EHR with ehr_id {ehr_id[:64]!r}")
        return ehr

    def ehr_document(self, ehr: Ehr) -> dict[str, Any]:
        """The EHR as answered: system_id, ehr_id, the latest EHR_STATUS, time_created."""
        status = self.store.version(ehr.status_id)
        assert status is not None
        return {
            "system_id": {"value": SYSTEM_ID},
            "ehr_id": {"value": ehr.ehr_id},
            "ehr_status": with_uid(status),
            "time_created": {"value": ehr.time_created},
        }

    def ehr_headers(self, request: Request, ehr: Ehr) -> dict[str, str]:
        return {
            "ETag": f'"{ehr.ehr_id}"',
            "Location": f"{self.base(request)}/ehr/{ehr.ehr_id}",
            "Last-Modified": http_date(ehr.time_created),
        }

    def version_headers(self, request: Request, version: Version, where: str) -> dict[str, str]:
        uid = version_uid(version.object_id, version.version)
        return {
            "ETag": f'"{uid}"',
            "Location": f"{self.base(request)}/ehr/{version.ehr_id}/{where}/{uid}",
            "Last-Modified": http_date(version.time_committed),
        }

    def version_answer(
        self, request: Request, version: Version, where: str, status: int, *, representation: bool
    ) -> Response:
        headers = self.version_headers(request, version, where)
        if not representation:
            return Response(None, 204 if status == 200 else status, headers=headers)
        return json_answer(with_uid(version), status, headers)

    def stale(self, request: Request, latest: Version, where: str, status: int) -> Response:
        uid = version_uid(latest.object_id, latest.version)
        return error(
            status,
            f"If-Match does not name the latest version: the latest is {uid}",
            self.version_headers(request, latest, where),
            latest_version_uid=uid,
        )

    @staticmethod
    def if_match(request: Request, object_id: str) -> int | None:
        """The version number in ``If-Match`` (quotes optional); None if it names another system.

        BadRequest(400) when it is missing, not a version uid, or names another object.
        """
        raw = request.headers.get("if-match")
        if raw is None or not raw.strip():
            raise BadRequest(
                400,
                "If-Match is required: the version uid this change is based on ('uid::system::n')",
            )
        text = raw.strip().removeprefix("W/").strip('"')
        parsed = parse_version_uid(text)
        if parsed is None:
            raise BadRequest(
                400, f"If-Match is not a version uid (uuid::system::n): {text[:100]!r}"
            )
        found_object, system, number = parsed
        if found_object != object_id:
            raise BadRequest(400, f"If-Match names a version of another object: {text[:100]!r}")
        return number if system == SYSTEM_ID else None

    # -- EHR --------------------------------------------------------------------------------
    async def ehrs(self, request: Request) -> Response:
        """``POST /ehr`` creates; ``GET /ehr?subject_id=&subject_namespace=`` looks one up."""
        if request.method == "POST":
            return await self._create_ehr(request, None)
        subject_id = request.query_params.get("subject_id")
        namespace = request.query_params.get("subject_namespace")
        if not subject_id or not namespace:
            return error(400, "GET /ehr needs subject_id and subject_namespace")
        ehr = self.store.ehr_by_subject(subject_id, namespace)
        if ehr is None:
            return error(404, "no EHR for that subject")
        return json_answer(self.ehr_document(ehr), 200, self.ehr_headers(request, ehr))

    async def ehr(self, request: Request) -> Response:
        """``GET /ehr/{ehr_id}``; ``PUT /ehr/{ehr_id}`` creates it with that id."""
        if request.method == "PUT":
            ehr_id: str = request.path_params["ehr_id"]
            if not _UUID.match(ehr_id):
                return error(400, f"ehr_id must be a UUID, not {ehr_id[:64]!r}")
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
            return error(409, f"an EHR with ehr_id {ehr_id} exists already")
        except SubjectTakenError:
            return error(
                409,
                f"Specified party has already an EHR set (partyId={subject.subject_id}, "
                f"namespace={subject.namespace})",
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
        at = parse_time(at_text, "version_at_time") if at_text else None
        version = self.store.version(ehr.status_id, at=at)
        if version is None:
            return error(404, "no EHR_STATUS version at that time")
        return json_answer(
            with_uid(version), 200, self.version_headers(request, version, "ehr_status")
        )

    async def ehr_status_version(self, request: Request) -> Response:
        """``GET /ehr/{ehr_id}/ehr_status/{version_uid}``."""
        ehr = self.ehr_or_404(request)
        text: str = request.path_params["version_uid"]
        parsed = parse_version_uid(text)
        version = None
        if parsed is not None and parsed[0] == ehr.status_id and parsed[1] == SYSTEM_ID:
            version = self.store.version(ehr.status_id, number=parsed[2])
        if version is None:
            return error(404, f"no EHR_STATUS version {text[:100]!r} in this EHR")
        return json_answer(
            with_uid(version), 200, self.version_headers(request, version, "ehr_status")
        )

    async def _update_status(self, request: Request, ehr: Ehr) -> Response:
        preceding = self.if_match(request, ehr.status_id)
        content, subject = status_content(
            read_json(await request.body(), request, what="the EHR_STATUS")
        )
        try:
            version = self.store.update_status(ehr, preceding or 0, subject, content)
        except StaleVersionError as exc:
            return self.stale(request, exc.latest, "ehr_status", 412)
        except SubjectTakenError:
            return error(409, "Specified party has already an EHR set (another EHR)")
        return self.version_answer(
            request, version, "ehr_status", 200, representation=wants_representation(request)
        )

    # -- compositions ---------------------------------------------------------------------------
    async def compositions(self, request: Request) -> Response:
        """``POST /ehr/{ehr_id}/composition``."""
        ehr = self.ehr_or_404(request)
        content = await self._composition_body(request)
        version = self.store.create_composition(ehr.ehr_id, content)
        return self.version_answer(
            request, version, "composition", 201, representation=wants_representation(request)
        )

    async def composition(self, request: Request) -> Response:
        """``GET``, ``PUT`` (update) and ``DELETE`` one composition."""
        ehr = self.ehr_or_404(request)
        uid: str = request.path_params["uid"]
        if request.method == "PUT":
            return await self._update_composition(request, ehr, uid)
        if request.method == "DELETE":
            return self._delete_composition(request, ehr, uid)
        at_text = request.query_params.get("version_at_time")
        parsed = parse_version_uid(uid)
        if parsed is not None:
            if at_text:
                return error(
                    400, "version_at_time goes with a versioned object uid, not a version uid"
                )
            object_id, system, number = parsed
            version = (
                self.store.version(object_id, number=number, ehr_id=ehr.ehr_id)
                if system == SYSTEM_ID
                else None
            )
        elif _UUID.match(uid):
            at = parse_time(at_text, "version_at_time") if at_text else None
            version = self.store.version(uid.lower(), at=at, ehr_id=ehr.ehr_id)
        else:
            return error(400, f"not a composition uid (uuid or uuid::system::n): {uid[:100]!r}")
        if version is None or version.kind != "COMPOSITION":
            return error(
                404,
                f"no composition {uid[:100]!r} in this EHR" + (" at that time" if at_text else ""),
            )
        headers = self.version_headers(request, version, "composition")
        if version.deleted:  # the release: 204 for a (logically) deleted composition
            return Response(None, 204, headers=headers)
        return json_answer(with_uid(version), 200, headers)

    async def _composition_body(self, request: Request) -> Content:
        body = await request.body()
        document = read_json(body, request, what="the COMPOSITION")
        return composition_content(document, body, request.headers.get("openehr-template_id"))

    async def _update_composition(self, request: Request, ehr: Ehr, uid: str) -> Response:
        if not _UUID.match(uid):
            return error(
                400,
                "PUT takes the versioned object uid (a UUID) in the path and the preceding "
                "version uid in If-Match",
            )
        object_id = uid.lower()
        if self.store.version(object_id, ehr_id=ehr.ehr_id) is None:
            return error(404, f"no composition {uid} in this EHR")
        preceding = self.if_match(request, object_id)
        content = await self._composition_body(request)
        try:
            version = self.store.update_composition(ehr.ehr_id, object_id, preceding or 0, content)
        except StaleVersionError as exc:
            return self.stale(request, exc.latest, "composition", 412)
        except KeyError:
            return error(404, f"no composition {uid} in this EHR")
        return self.version_answer(
            request, version, "composition", 200, representation=wants_representation(request)
        )

    def _delete_composition(self, request: Request, ehr: Ehr, uid: str) -> Response:
        parsed = parse_version_uid(uid)
        if parsed is None:
            return error(
                400, "DELETE takes the preceding version uid (uuid::system::n) in the path"
            )
        object_id, system, number = parsed
        try:
            version = self.store.update_composition(
                ehr.ehr_id, object_id, number if system == SYSTEM_ID else 0, None
            )
        except KeyError:
            return error(404, f"no composition {uid[:100]!r} in this EHR")
        except StaleVersionError as exc:
            return self.stale(request, exc.latest, "composition", 409)
        except AlreadyDeletedError:
            return error(400, f"composition {object_id} is already deleted")
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
        """``GET …/versioned_composition/{uid}/revision_history``: one item per version."""
        ehr = self.ehr_or_404(request)
        return json_answer(
            [
                {
                    "version_id": {"value": version_uid(v.object_id, v.version)},
                    "audits": [
                        {
                            "_type": "AUDIT_DETAILS",
                            "system_id": SYSTEM_ID,
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
        )

    def _history(self, request: Request, ehr: Ehr) -> list[Version]:
        uid: str = request.path_params["uid"]
        history = self.store.history(uid.lower(), ehr.ehr_id) if _UUID.match(uid) else []
        if not history or history[0].kind != "COMPOSITION":
            raise BadRequest(404, f"no versioned composition {uid[:100]!r} in this EHR")
        return history

    # -- query ----------------------------------------------------------------------------------
    async def query(self, request: Request) -> Response:
        """``POST /query/aql`` (JSON) or ``GET /query/aql?q=…``: the AQL subset."""
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
        if fetch == 0:
            return error(400, "fetch must be at least 1")
        try:
            query = aql.parse(text)
            if (query.limit is not None or query.offset is not None) and (
                offset is not None or fetch is not None
            ):
                return error(
                    400,
                    "the AQL has LIMIT/OFFSET: offset and fetch parameters must not be used too",
                )
            rows = aql.execute(
                query, parameters, self._ehr_documents(), self._composition_documents()
            )
            executed = aql.substituted(query, text, parameters)
        except aql.AqlError as exc:
            return error(400, str(exc))
        meta: dict[str, Any] = {
            "_href": f"{self.base(request)}/query/aql",
            "_type": "RESULTSET",
            "_schema_version": "1.0.0",
            "_created": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "_generator": f"{SYSTEM_ID} {__version__}",
            "_executed_aql": executed,
        }
        if query.limit is None and query.offset is None:
            start = offset or 0
            count = fetch or self.default_fetch
            rows = rows[start : start + count]
            meta |= {"fetch": count, "offset": start}
        meta["resultsize"] = len(rows)
        return json_answer(
            {
                "meta": meta,
                "q": text,
                "columns": [{"name": c.name, "path": c.path.text} for c in query.columns],
                "rows": rows,
            }
        )

    def _ehr_documents(self) -> list[tuple[str, dict[str, Any]]]:
        return [(e.ehr_id, self.ehr_document(e)) for e in self.store.ehrs()]

    def _composition_documents(self) -> list[tuple[str, dict[str, Any]]]:
        return [(v.ehr_id, with_uid(v)) for v in self.store.latest_compositions()]

    # -- definitions and server -------------------------------------------------------------------
    async def templates(self, request: Request) -> Response:
        """``GET /definition/template/adl1.4``: the template ids seen in compositions."""
        return json_answer(
            [
                {
                    "template_id": template_id,
                    "concept": template_id,
                    "archetype_id": archetype_id,
                    "created_timestamp": first_seen,
                }
                for template_id, first_seen, archetype_id in self.store.templates()
            ]
        )

    async def options(self, request: Request) -> Response:
        """``OPTIONS {base}``: which server this is (no credentials needed)."""
        return json_answer(
            {
                "solution": "cwsctl-sandbox",
                "solution_version": __version__,
                "vendor": "cwsctl (a test stand-in, not EHRbase)",
                "restapi_specs_version": SPECS_VERSION,
                "conformance_profile": "CUSTOM",
                "endpoints": ["/ehr", "/query/aql", "/definition/template/adl1.4"],
            },
            headers={"Allow": "GET, POST, PUT, DELETE, OPTIONS"},
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

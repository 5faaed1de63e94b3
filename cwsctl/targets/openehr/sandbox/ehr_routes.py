"""The openEHR sandbox's EHR and EHR_STATUS endpoints, as EHRbase 2.x answers them, and the
reading of an EHR_STATUS body (:func:`status_content`)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cwsctl.sandbox.envelope import json_bytes
from cwsctl.targets.openehr.sandbox.context import OpenEhrContext
from cwsctl.targets.openehr.sandbox.http import (
    _UUID,
    FIXED_LAST_MODIFIED,
    NAMESPACE_PATTERN,
    NOT_MATCH_LATEST,
    STATUS_ARCHETYPE,
    BadRequest,
    base,
    error,
    json_answer,
    parse_version_at_time,
    parse_version_uid,
    read_json,
    version_headers,
    wants_representation,
    with_uid,
)
from cwsctl.targets.openehr.sandbox.store import (
    Content,
    Ehr,
    EhrExistsError,
    StaleVersionError,
    Subject,
    SubjectTakenError,
)


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


class EhrRoutes:
    """``/ehr``, ``/ehr/{ehr_id}`` and its ``ehr_status``, over one :class:`OpenEhrContext`."""

    def __init__(self, context: OpenEhrContext) -> None:
        self.context = context

    def ehr_headers(self, request: Request, ehr: Ehr) -> dict[str, str]:
        return {
            "ETag": f'"{ehr.ehr_id}"',
            "Location": f"{base(request)}/ehr/{ehr.ehr_id}",
            "Last-Modified": FIXED_LAST_MODIFIED,
        }

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
        ehr = self.context.store.ehr_by_subject(subject_id, namespace)
        if ehr is None:
            return error(404, "No EHR with supplied subject parameters found")
        return json_answer(self.context.ehr_document(ehr), 200, self.ehr_headers(request, ehr))

    async def ehr(self, request: Request) -> Response:
        """``GET /ehr/{ehr_id}``; ``PUT /ehr/{ehr_id}`` creates it with that id."""
        if request.method == "PUT":
            ehr_id: str = request.path_params["ehr_id"]
            if not _UUID.match(ehr_id):
                return error(400, f"EHR ID format not a UUID: {ehr_id[:64]}")
            return await self._create_ehr(request, ehr_id.lower())
        ehr = self.context.ehr_or_404(request)
        return json_answer(self.context.ehr_document(ehr), 200, self.ehr_headers(request, ehr))

    async def _create_ehr(self, request: Request, ehr_id: str | None) -> Response:
        body = await request.body()
        document = read_json(body, request, what="the EHR_STATUS") if body.strip() else {}
        content, subject = status_content(document)
        try:
            ehr = self.context.store.create_ehr(ehr_id, subject, content)
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
        return json_answer(self.context.ehr_document(ehr), 201, headers)

    # -- EHR_STATUS -------------------------------------------------------------------------
    async def ehr_status(self, request: Request) -> Response:
        """``GET`` (latest or ``?version_at_time=``) and ``PUT`` (``If-Match``) the EHR_STATUS."""
        ehr = self.context.ehr_or_404(request)
        if request.method == "PUT":
            return await self._update_status(request, ehr)
        at_text = request.query_params.get("version_at_time")
        at = parse_version_at_time(at_text) if at_text else None
        version = self.context.store.version(ehr.status_id, at=at)
        if version is None:
            return error(404, f"No EHR_STATUS in EHR {ehr.ehr_id} at that time")
        return json_answer(with_uid(version), 200, version_headers(request, version, "ehr_status"))

    async def ehr_status_version(self, request: Request) -> Response:
        """``GET /ehr/{ehr_id}/ehr_status/{version_uid}``."""
        ehr = self.context.ehr_or_404(request)
        text: str = request.path_params["version_uid"]
        parsed = parse_version_uid(text)
        version = None
        if parsed is not None and parsed[0] == ehr.status_id:
            version = self.context.store.version(ehr.status_id, number=parsed[2])
        if version is None:
            return error(404, f"No EHR_STATUS with version uid {text[:100]} in this EHR")
        return json_answer(with_uid(version), 200, version_headers(request, version, "ehr_status"))

    async def _update_status(self, request: Request, ehr: Ehr) -> Response:
        content, subject = status_content(
            read_json(await request.body(), request, what="the EHR_STATUS")
        )
        object_id, preceding = self.context.if_match(request)
        try:
            if object_id != ehr.status_id:
                latest = self.context.store.version(ehr.status_id)
                assert latest is not None
                raise StaleVersionError(latest)
            version = self.context.store.update_status(ehr, preceding, subject, content)
        except StaleVersionError:
            return error(412, NOT_MATCH_LATEST)
        except SubjectTakenError:
            return error(
                409,
                f"Supplied partyId[{subject.subject_id}] is used by a different EHR in the same "
                f"partyNamespace[{subject.namespace}].",
            )
        return self.context.written(request, version, "ehr_status", 200, "JSON")

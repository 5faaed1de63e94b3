"""The openEHR sandbox's composition endpoints: create, read, update and delete a composition
(canonical JSON, FLAT or STRUCTURED), its VERSIONED_COMPOSITION and revision history."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cwsctl.sandbox.envelope import json_bytes
from cwsctl.targets.openehr.sandbox.context import OpenEhrContext
from cwsctl.targets.openehr.sandbox.http import (
    _UUID,
    DELETE_NOT_FOUND,
    NOT_MATCH_LATEST,
    SYSTEM_ID,
    BadRequest,
    error,
    json_answer,
    parse_json,
    parse_version_at_time,
    parse_version_uid,
    request_format,
    response_format,
    version_headers,
    version_uid,
    wants_representation,
)
from cwsctl.targets.openehr.sandbox.opt import FormatError
from cwsctl.targets.openehr.sandbox.store import (
    CHANGE_TYPE_CODES,
    AlreadyDeletedError,
    Content,
    Ehr,
    EhrExistsError,
    StaleVersionError,
    Version,
)
from cwsctl.targets.openehr.sandbox.web_formats import (
    flat_to_canonical,
    normalise_flat,
    structured_to_flat,
)

_MANDATORY = (
    ("name", "name"),
    ("archetype_node_id", "archetype_node_id"),
    ("language", "language"),
    ("category", "category"),
    ("composer", "composer"),
    ("archetype_details", "archetype details"),
)


class CompositionRoutes:
    """``/ehr/{ehr_id}/composition`` and ``…/versioned_composition``, over one
    :class:`OpenEhrContext`."""

    def __init__(self, context: OpenEhrContext) -> None:
        self.context = context

    async def compositions(self, request: Request) -> Response:
        """``POST /ehr/{ehr_id}/composition``: minimal → 204, representation → 201 + body."""
        ehr = self.context.ehr_or_404(request)
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
            version = self.context.store.create_composition(ehr.ehr_id, content, object_id)
        except EhrExistsError:
            return error(412, f"Provided composition uid {object_id} already exists")
        return self.context.written(
            request, version, "composition", 201, answer_format, object_location=True
        )

    async def composition(self, request: Request) -> Response:
        """``GET``, ``PUT`` (update) and ``DELETE`` one composition."""
        ehr = self.context.ehr_or_404(request)
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
            version = self.context.store.version(object_id, number=number, ehr_id=ehr.ehr_id)
        elif _UUID.match(uid):
            at = parse_version_at_time(at_text) if at_text else None
            version = self.context.store.version(uid.lower(), at=at, ehr_id=ehr.ehr_id)
        else:
            return error(400, f"Composition uid {uid[:100]} is neither a UUID nor a version uid")
        if version is None or version.kind != "COMPOSITION":
            return error(404, f"No composition with id {uid[:100]} found in EHR {ehr.ehr_id}")
        if version.deleted:  # EHRbase: 204, no ETag
            return Response(None, 204)
        headers = version_headers(request, version, "composition")
        return self.context.represent(version, 200, headers, answer_format)

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
            template = self.context.template_or_422(template_id)
            try:
                flat = document
                if body_format == "STRUCTURED":
                    flat = normalise_flat(template, structured_to_flat(document))
                document = flat_to_canonical(template, flat)
            except FormatError as exc:
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
        parsed = self.context.template_or_422(template_id)
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
        named_object, preceding = self.context.if_match(request)
        latest = self.context.store.version(object_id, ehr_id=ehr.ehr_id)
        if latest is None or latest.kind != "COMPOSITION":
            return error(404, f"No composition with id {uid} found in EHR {ehr.ehr_id}")
        if named_object != object_id:
            return error(412, NOT_MATCH_LATEST)
        try:
            version = self.context.store.update_composition(
                ehr.ehr_id, object_id, preceding, content
            )
        except StaleVersionError:
            return error(412, NOT_MATCH_LATEST)
        except KeyError:
            return error(404, f"No composition with id {uid} found in EHR {ehr.ehr_id}")
        return self.context.written(request, version, "composition", 200, answer_format)

    def _delete_composition(self, request: Request, ehr: Ehr, uid: str) -> Response:
        parsed = parse_version_uid(uid)
        if parsed is None:
            return error(400, f"Composition uid {uid[:100]} is not a version uid (uuid::system::n)")
        object_id, _system, number = parsed
        try:
            version = self.context.store.update_composition(ehr.ehr_id, object_id, number, None)
        except (KeyError, AlreadyDeletedError):
            return error(404, DELETE_NOT_FOUND)
        except StaleVersionError:
            return error(409, NOT_MATCH_LATEST)
        return Response(None, 204, headers=version_headers(request, version, "composition"))

    async def versioned_composition(self, request: Request) -> Response:
        """``GET /ehr/{ehr_id}/versioned_composition/{uid}``: VERSIONED_COMPOSITION."""
        ehr = self.context.ehr_or_404(request)
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
        ehr = self.context.ehr_or_404(request)
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
        history = self.context.store.history(uid.lower(), ehr.ehr_id) if _UUID.match(uid) else []
        if not history or history[0].kind != "COMPOSITION":
            raise BadRequest(404, f"No VERSIONED_COMPOSITION with id {uid[:100]} in this EHR")
        return history

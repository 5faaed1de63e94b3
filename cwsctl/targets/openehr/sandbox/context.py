"""What the openEHR sandbox's route classes share: the store, EHRbase's settings, the parsed
templates, and the look-ups and answers more than one of them gives (an EHR by path, If-Match,
a written version's answer)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cwsctl.targets.openehr.sandbox.http import (
    _UUID,
    FLAT_TYPE,
    STRUCTURED_TYPE,
    SYSTEM_ID,
    BadRequest,
    json_answer,
    parse_version_uid,
    version_headers,
    version_uid,
    wants_representation,
    with_uid,
)
from cwsctl.targets.openehr.sandbox.opt import Template, parse_opt
from cwsctl.targets.openehr.sandbox.store import Ehr, OpenEhrStore, Version
from cwsctl.targets.openehr.sandbox.web_formats import canonical_to_flat, flat_to_structured


class OpenEhrContext:
    """One :class:`OpenEhrStore` with EHRbase's settings; every route class holds the same one."""

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
        self._parsed: dict[str, tuple[bytes, Template]] = {}

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

    def written(
        self,
        request: Request,
        version: Version,
        where: str,
        status: int,
        answer_format: str,
        *,
        object_location: bool = False,
    ) -> Response:
        """A write's answer: 204 and the version's headers, or (``Prefer: return=representation``)
        the version in ``answer_format`` with ``status``."""
        headers = version_headers(request, version, where, object_location=object_location)
        if not wants_representation(request):
            return Response(None, 204, headers=headers)
        return self.represent(version, status, headers, answer_format)

    def represent(
        self, version: Version, status: int, headers: dict[str, str], answer_format: str
    ) -> Response:
        """``version`` as canonical JSON, or FLAT/STRUCTURED through its template."""
        document = with_uid(version)
        if answer_format == "JSON":
            return json_answer(document, status, headers)
        template = self.template_or_422(version.template_id or "")
        flat = canonical_to_flat(template, document)
        if answer_format == "FLAT":
            return json_answer(flat, status, headers, FLAT_TYPE)
        return json_answer(flat_to_structured(flat), status, headers, STRUCTURED_TYPE)

    def parsed_template(self, template_id: str) -> Template | None:
        """The uploaded template ``template_id``, parsed (cached by its stored bytes)."""
        stored = self.store.template(template_id)
        if stored is None:
            return None
        cached = self._parsed.get(template_id)
        if cached is None or cached[0] != stored.opt:
            cached = (stored.opt, parse_opt(stored.opt))
            self._parsed[template_id] = cached
        return cached[1]

    def template_or_422(self, template_id: str) -> Template:
        """The template, or 422 "Template with template_id 'X' does not exist" (EHRbase)."""
        template = self.parsed_template(template_id)
        if template is None:
            raise BadRequest(422, f"Template with template_id '{template_id}' does not exist")
        return template

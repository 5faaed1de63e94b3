"""The openEHR sandbox's template endpoints (``/definition/template/adl1.4``): upload and list
OPTs, one as XML or web template, an example composition."""

from __future__ import annotations

from datetime import datetime, timezone

from starlette.requests import Request
from starlette.responses import Response

from cwsctl.targets.openehr.sandbox.context import OpenEhrContext
from cwsctl.targets.openehr.sandbox.http import (
    FLAT_TYPE,
    JSON_TYPE,
    STRUCTURED_TYPE,
    WEB_TEMPLATE_TYPE,
    XML_TYPE,
    BadRequest,
    base,
    error,
    json_answer,
    media_type,
    response_format,
    wants_representation,
)
from cwsctl.targets.openehr.sandbox.opt import FormatError, parse_opt, web_template
from cwsctl.targets.openehr.sandbox.store import StoredTemplate, TemplateExistsError
from cwsctl.targets.openehr.sandbox.web_formats import (
    canonical_to_flat,
    example,
    flat_to_structured,
)


class TemplateRoutes:
    """The template endpoints, over one :class:`OpenEhrContext` (its parsed templates)."""

    def __init__(self, context: OpenEhrContext) -> None:
        self.context = context

    def add_template(self, opt: bytes, *, overwrite: bool | None = None) -> str:
        """Store an OPT (as an upload does); its template id. BadRequest 400/409 as EHRbase."""
        template = parse_opt(opt)
        created = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        stored = StoredTemplate(
            template.template_id, template.concept, template.archetype_id, created, template.xml
        )
        try:
            self.context.store.add_template(
                stored,
                overwrite=self.context.template_overwrite if overwrite is None else overwrite,
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
                    for t in self.context.store.templates()
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
        except FormatError as exc:
            return error(exc.status, exc.message)
        location = f"{base(request)}/definition/template/adl1.4/{template_id}"
        headers = {"Location": location, "ETag": f'"{template_id}"'}
        if not wants_representation(request):
            return Response(None, 201, headers=headers, media_type=XML_TYPE)
        template = self.context.parsed_template(template_id)
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
        template = self.context.parsed_template(template_id)
        if template is None:
            return error(404, f"Template with template_id '{template_id}' does not exist")
        location = f"{base(request)}/definition/template/adl1.4/{template_id}"
        if chosen == XML_TYPE:
            return Response(template.xml, 200, headers={"Location": location}, media_type=chosen)
        return json_answer(web_template(template), 200, {"Location": location}, chosen)

    async def template_example(self, request: Request) -> Response:
        """``GET …/adl1.4/{id}/example[?format=]``: an example composition."""
        template_id: str = request.path_params["template_id"]
        answer_format = response_format(request)
        template = self.context.parsed_template(template_id)
        if template is None:
            return error(404, f"Template with template_id '{template_id}' does not exist")
        canonical = example(template)
        if answer_format == "JSON":
            return json_answer(canonical)
        flat = canonical_to_flat(template, canonical)
        if answer_format == "FLAT":
            return json_answer(flat, media=FLAT_TYPE)
        return json_answer(flat_to_structured(flat), media=STRUCTURED_TYPE)

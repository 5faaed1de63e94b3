"""openEHR operational templates (ADL 1.4 OPTs): list, upload, read, example compositions.

The calls are the release's ``/definition/template/adl1.4`` as EHRbase 2.x serves them:

- ``GET …/adl1.4`` lists ``[{template_id, concept, archetype_id, created_timestamp}]``;
- ``POST …/adl1.4`` takes the OPT as ``application/xml`` and also *produces* XML, so it needs
  ``Accept: application/xml`` (else 406). The template id is read from the OPT. A second upload
  of an id is a 409, identical or not (unless the server allows overwrites);
- ``GET …/adl1.4/{id}`` answers the OPT for ``Accept: application/xml`` — re-serialised by the
  server, so not byte-identical to the upload — and a web template for ``application/json``;
- ``GET …/adl1.4/{id}/example?format=JSON|FLAT|STRUCTURED`` builds an example composition.

Because of the 409, :func:`upload_template` reads the stored OPT back after a conflict and
compares the two as XML (:func:`same_xml`): the same template is "already uploaded", not an
error; a different one with the same id is :class:`TemplateConflictError` (exit 4).

XML from files and from servers is parsed by :func:`cwsctl.core.xml.parse_xml` (bounded, no DTD,
no entities).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode

from cwsctl.core.errors import ClientRequestError, CwsError, InputError
from cwsctl.core.jsondoc import loads_json
from cwsctl.core.xml import XmlNode, parse_xml
from cwsctl.targets.openehr.answers import fail
from cwsctl.targets.openehr.ids import TEMPLATES_PATH, template_path

if TYPE_CHECKING:
    from cwsctl.core.client import ApiClient, ApiResponse

#: The namespace of OPT elements (``<template xmlns="http://schemas.openehr.org/v1">``).
OPENEHR_NS = "http://schemas.openehr.org/v1"
XML = "application/xml"
JSON = "application/json"
#: The web template media type of the release (EHRbase also answers it for application/json).
WEB_TEMPLATE = "application/openehr.wt+json"

TemplateFormat = Literal["opt", "web"]
ExampleFormat = Literal["canonical", "flat", "structured"]
#: ``?format=`` of the example call, as EHRbase spells its CompositionFormat values.
EXAMPLE_FORMATS: dict[str, str] = {"canonical": "JSON", "flat": "FLAT", "structured": "STRUCTURED"}


# -- OPTs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OperationalTemplate:
    """An OPT read from a file or an answer: its id and concept, and the bytes as they were."""

    template_id: str
    concept: str | None
    data: bytes
    root: XmlNode = field(repr=False)


def read_opt(
    data: bytes, what: str = "the OPT", error: type[CwsError] = InputError
) -> OperationalTemplate:
    """Parse an operational template and read ``template_id/value`` (and ``concept``)."""
    root = parse_xml(data, what, error)
    if root.local_name != "template":
        raise error(
            f"{what} is not an operational template (its root is <{root.local_name}>, "
            "not <template>)",
            hint="export the template as an OPT (ADL 1.4 operational template, .opt)",
        )
    value = root.find("template_id", "value")
    template_id = value.text.strip() if value is not None else ""
    if not template_id:
        raise error(f"{what} has no template_id/value", hint="an OPT names its template id")
    concept = root.child("concept")
    return OperationalTemplate(template_id, concept.text if concept else None, data, root)


# -- calls ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateInfo:
    """One entry of the server's template list."""

    template_id: str
    concept: str | None
    archetype_id: str | None
    created_timestamp: str | None

    def as_dict(self) -> dict[str, str | None]:
        """The entry as a flat JSON object (EHRbase's field names)."""
        return {
            "template_id": self.template_id,
            "concept": self.concept,
            "archetype_id": self.archetype_id,
            "created_timestamp": self.created_timestamp,
        }


def _string(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("value")
    return value if isinstance(value, str) else None


def list_templates(client: ApiClient) -> list[TemplateInfo]:
    """``GET /definition/template/adl1.4``: the uploaded templates, as the server lists them."""
    response = client.request("GET", TEMPLATES_PATH, headers={"Accept": JSON})
    if not response.ok:
        raise fail(client, response)
    try:
        document = loads_json(response.body) if response.body.strip() else []
    except ValueError:
        document = None
    if isinstance(document, dict):  # some servers wrap the list
        document = document.get("templates", document.get("items"))
    if not isinstance(document, list):
        raise ClientRequestError(
            "the template list is not a JSON list",
            hint="check that the profile URL is the openEHR REST base (…/rest/openehr/v1)",
        )
    found = []
    for item in document:
        if not isinstance(item, dict):
            continue
        template_id = _string(item.get("template_id") or item.get("templateId"))
        if not template_id:
            continue
        found.append(
            TemplateInfo(
                template_id,
                _string(item.get("concept")),
                _string(item.get("archetype_id") or item.get("archetypeId")),
                _string(item.get("created_timestamp") or item.get("createdOn")),
            )
        )
    return found


class TemplateConflictError(ClientRequestError):
    """The server already holds a different template under the same id (exit 4)."""

    def __init__(self, template_id: str) -> None:
        super().__init__(
            f"template {template_id!r} is already on the server with different content",
            hint="the server keeps the first upload of an id (409): give the changed template a "
            "new template_id (e.g. a .v2 suffix), or have the server's administrators replace "
            "it (EHRbase: the admin API, or ehrbase.template.allow-overwrite)",
        )
        self.template_id = template_id


@dataclass(frozen=True)
class UploadResult:
    """What an upload did: ``uploaded`` (new), or ``already uploaded`` (the same OPT was there)."""

    template_id: str
    outcome: Literal["uploaded", "already uploaded"]
    response: ApiResponse


def upload_template(client: ApiClient, data: bytes, what: str = "the OPT") -> UploadResult:
    """``POST /definition/template/adl1.4`` with the OPT exactly as given.

    A 409 (the id is taken) reads the stored OPT (:func:`get_template`) and compares it with
    ``data`` as XML: the same → ``already uploaded``; different → :class:`TemplateConflictError`.
    """
    template = read_opt(data, what)
    headers = {"Content-Type": XML, "Accept": XML}
    response = client.request("POST", TEMPLATES_PATH, data, headers)
    if response.ok:
        return UploadResult(template.template_id, "uploaded", response)
    if response.status != 409:
        hint = None
        if response.status in (400, 422):
            hint = "the server refused the OPT: check it was exported as an ADL 1.4 OPT"
        elif response.status == 406:
            hint = "the server refused the Accept header (it must allow application/xml)"
        elif response.status == 415:
            hint = "the server does not take OPTs as application/xml"
        raise fail(client, response, hint=hint)
    try:
        stored = get_template(client, template.template_id, "opt")
    except CwsError as exc:
        raise ClientRequestError(
            f"template {template.template_id!r} is already on the server (409), and reading "
            f"it back to compare failed: {exc.message}",
            hint=exc.hint,
        ) from None
    stored_opt = read_opt(
        stored.body, f"the server's OPT {template.template_id!r}", ClientRequestError
    )
    if stored_opt.root == template.root:
        return UploadResult(template.template_id, "already uploaded", response)
    raise TemplateConflictError(template.template_id)


def get_template(client: ApiClient, template_id: str, fmt: TemplateFormat = "opt") -> ApiResponse:
    """``GET /definition/template/adl1.4/{id}``: the OPT (``Accept: application/xml``) or the
    web template (``Accept: application/json``); a 404 is "no template …" (exit 4)."""
    accept = XML if fmt == "opt" else JSON
    response = client.request("GET", template_path(template_id), headers={"Accept": accept})
    return _template_answer(client, response, template_id)


def template_example(
    client: ApiClient, template_id: str, fmt: ExampleFormat = "canonical"
) -> ApiResponse:
    """``GET /definition/template/adl1.4/{id}/example?format=JSON|FLAT|STRUCTURED``: an example
    composition the server builds from the template (JSON in every format)."""
    query = urlencode({"format": EXAMPLE_FORMATS[fmt]})
    path = f"{template_path(template_id, 'example')}?{query}"
    response = client.request("GET", path, headers={"Accept": JSON})
    return _template_answer(client, response, template_id)


def _template_answer(client: ApiClient, response: ApiResponse, template_id: str) -> ApiResponse:
    """``response`` when it has a body; else the error, a 404 saying the template is missing."""
    if response.ok and response.status != 204:
        return response
    raise fail(
        client,
        response,
        not_found=f"no template {template_id!r} on the server",
        hint="list them with: cwsctl template list; upload one with: cwsctl template upload FILE.opt",
    )

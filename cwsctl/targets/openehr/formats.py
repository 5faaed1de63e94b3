"""Composition formats: canonical (JSON or XML), FLAT and STRUCTURED, as EHRbase reads them.

FLAT (``{"vital_signs/body_temperature:0/any_event:0/temperature|magnitude": 37.1, …}``) and
STRUCTURED (``{"ctx": {…}, "vital_signs": {…}}``) are the web-template formats most EHRbase users
write. EHRbase 2.x takes them as

- ``?format=FLAT|STRUCTURED`` (``application/json`` would do with it) or the media types
  ``application/openehr.wt.flat.schema+json`` / ``application/openehr.wt.structured.schema+json``
  — cwsctl sends both the parameter and the media type, as ``Content-Type`` and ``Accept``;
- the template named by ``?templateId=`` — FLAT and STRUCTURED carry no template id of their own
  (the first path segment of a FLAT key is the web template's *tree id*, not the template id).

The ``format`` parameter also picks the answer's format, so ``composition get --format flat``
reads ``?format=FLAT``. The specification (ITS-REST 1.0.3) names other media types
(``application/openehr.wt.flat+json``) and a header, ``openEHR-TEMPLATE_ID``, that EHRbase never
reads; cwsctl sends that header too, with the same id, whenever it knows the template id, so a
server that follows the specification finds it — never alone.

The template id comes from the composition when it names one — canonical JSON
``archetype_details.template_id.value``, canonical XML ``archetype_details/template_id/value``,
FLAT ``ctx/template_id``, STRUCTURED ``ctx.template_id`` — else from ``--template-id``, which
FLAT and STRUCTURED then require (InputError, exit 2). Both, differing, is an InputError too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode

from cwsctl.core.errors import ClientRequestError, InputError
from cwsctl.targets.openehr.ids import check_template_id

if TYPE_CHECKING:
    from cwsctl.core.client import ApiResponse

CompositionFormat = Literal["canonical", "flat", "structured"]
FORMATS: tuple[str, ...] = ("canonical", "flat", "structured")
JSON = "application/json"
XML = "application/xml"
#: EHRbase's media types of the web-template formats (``OpenEHRMediaType``).
MEDIA_TYPES: dict[str, str] = {
    "flat": "application/openehr.wt.flat.schema+json",
    "structured": "application/openehr.wt.structured.schema+json",
}
#: ``?format=`` values (EHRbase's ``CompositionFormat``, upper case).
SERVER_FORMATS: dict[str, str] = {"flat": "FLAT", "structured": "STRUCTURED"}
#: The specification's template header (EHRbase ignores it).
TEMPLATE_HEADER = "openEHR-TEMPLATE_ID"

_NAMES = {"canonical": "canonical", "flat": "FLAT", "structured": "STRUCTURED"}


@dataclass(frozen=True)
class FormatRequest:
    """What a composition call adds for its format: query parameters and headers."""

    query: dict[str, str]
    headers: dict[str, str]
    template_id: str | None = None

    def path(self, path: str) -> str:
        """``path`` with the query parameters added (after any it already has)."""
        if not self.query:
            return path
        return f"{path}{'&' if '?' in path else '?'}{urlencode(self.query)}"


def check_format(fmt: str) -> CompositionFormat:
    """``fmt`` if it is a composition format cwsctl knows, else InputError."""
    if fmt not in FORMATS:
        raise InputError(
            f"unknown composition format {fmt!r}", hint="use canonical, flat or structured"
        )
    return fmt  # type: ignore[return-value]


def _is_xml(body: bytes) -> bool:
    return body.lstrip()[:1] == b"<"


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _looks_like(document: dict[str, Any]) -> CompositionFormat | None:
    """The format a composition document plainly is, else None (undecided)."""
    if document.get("_type") == "COMPOSITION" or (
        "archetype_node_id" in document and "archetype_details" in document
    ):
        return "canonical"
    keys = list(document)
    if keys and all("/" in key for key in keys):
        return "flat"
    if isinstance(document.get("ctx"), dict | list) and not any("/" in key for key in keys):
        return "structured"
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        value = value.get("value", value.get("|value"))
    return value.strip() if isinstance(value, str) and value.strip() else None


def template_id_in(body: bytes, fmt: CompositionFormat) -> str | None:
    """The template id the composition names itself, if any (see the module's docstring)."""
    if _is_xml(body):
        if fmt != "canonical":
            return None
        from cwsctl.core.xml import parse_xml

        root = parse_xml(body, "the composition")
        node = root.find("archetype_details", "template_id", "value")
        return (node.text.strip() or None) if node is not None else None
    document = _json_object(body)
    if document is None:
        return None
    if fmt == "canonical":
        details = document.get("archetype_details")
        return _text(details.get("template_id")) if isinstance(details, dict) else None
    if fmt == "flat":
        return _text(document.get("ctx/template_id"))
    ctx = document.get("ctx")
    ctx = ctx[0] if isinstance(ctx, list) and len(ctx) == 1 else ctx
    return _text(ctx.get("template_id")) if isinstance(ctx, dict) else None


def write_request(
    body: bytes, fmt: CompositionFormat = "canonical", template_id: str | None = None
) -> FormatRequest:
    """The query and headers that send ``body`` (a composition in ``fmt``) to create or update.

    canonical: ``Content-Type`` JSON or XML (by the body's first character), no parameters.
    flat/structured: ``?format=…&templateId=ID``, EHRbase's media type as ``Content-Type`` and
    ``Accept``. ``openEHR-TEMPLATE_ID`` whenever the template id is known. InputError (exit 2)
    when FLAT/STRUCTURED has no template id, when ``template_id`` contradicts the body's, and
    when the body is plainly in another format than ``fmt``.
    """
    fmt = check_format(fmt)
    given = check_template_id(template_id, "--template-id") if template_id is not None else None
    name = _NAMES[fmt]
    if _is_xml(body):
        if fmt != "canonical":
            raise InputError(
                f"a {name} composition is JSON, and this file is XML",
                hint=f"send canonical XML without --format, or the JSON of the {name} composition",
            )
    else:
        document = _json_object(body)
        if document is None and fmt != "canonical":
            raise InputError(f"a {name} composition is a JSON object, and this file is not one")
        seen = _looks_like(document) if document is not None else None
        if seen is not None and seen != fmt:
            raise InputError(
                f"the file looks like a {_NAMES[seen]} composition, not {name}",
                hint=f"pass --format {seen}",
            )
    named = template_id_in(body, fmt)
    if given is not None and named is not None and given != named:
        raise InputError(
            f"the composition names template {named!r}, but --template-id is {given!r}",
            hint="drop --template-id, or give the composition's own template id",
        )
    chosen = named or given
    headers: dict[str, str] = {}
    query: dict[str, str] = {}
    if fmt == "canonical":
        headers["Content-Type"] = XML if _is_xml(body) else JSON
    else:
        if chosen is None:
            raise InputError(
                f"a {name} composition does not name its template: pass --template-id ID",
                hint="the template ids the server holds: cwsctl template list",
            )
        query = {"format": SERVER_FORMATS[fmt], "templateId": chosen}
        headers["Content-Type"] = headers["Accept"] = MEDIA_TYPES[fmt]
    if chosen is not None:
        headers[TEMPLATE_HEADER] = chosen
    return FormatRequest(query, headers, chosen)


def read_request(fmt: CompositionFormat = "canonical") -> FormatRequest:
    """The query and headers that ask for a composition in ``fmt``: nothing for canonical (the
    client's JSON), ``?format=FLAT|STRUCTURED`` and EHRbase's media type as ``Accept`` else."""
    fmt = check_format(fmt)
    if fmt == "canonical":
        return FormatRequest({}, {})
    return FormatRequest({"format": SERVER_FORMATS[fmt]}, {"Accept": MEDIA_TYPES[fmt]})


def template_missing(response: ApiResponse, template_id: str | None) -> ClientRequestError | None:
    """The error for a composition refused because the server lacks its template (EHRbase: 422
    "Template with template_id 'X' does not exist"), with the upload as the hint; else None."""
    if response.status != 422:
        return None
    message = response.error_message()
    lowered = message.lower()
    if "template" not in lowered or not any(
        word in lowered for word in ("does not exist", "not found", "unknown")
    ):
        return None
    which = f" {template_id!r}" if template_id else ""
    return ClientRequestError(
        f"{response.status} {response.reason}: {message}",
        hint=f"upload the template{which} first: cwsctl template upload FILE.opt "
        "(cwsctl template list shows what the server holds)",
    )

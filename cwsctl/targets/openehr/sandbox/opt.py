"""Operational templates (ADL 1.4 OPT XML) for the openEHR sandbox: reading one, its web template.

What EHRbase does with an OPT, as far as the sandbox needs it: read the template id
(``template_id/value``), ``concept`` and the root archetype id from the XML (never from a file
name or a header), refuse one without concept, language, description or definition (400), and
serve it back re-serialised (:attr:`Template.xml`: no XML declaration, the root element
``template`` in the openEHR namespace — the same document, not the same bytes).

From the OPT's definition the sandbox builds a small tree (:class:`Node`) like the SDK's web
template: one node per LOCATABLE with an id made from its name (``Blood pressure`` →
``blood_pressure``); the structural HISTORY and ITEM_* nodes are kept for the canonical form but
do not appear in paths. That tree drives :func:`web_template` — ``GET …/adl1.4/{id}`` as
``application/openehr.wt+json``: the sandbox's own minimal shape (``templateId``,
``defaultLanguage``, ``languages``, ``tree`` of ``id``, ``name``, ``rmType``, ``nodeId``, ``min``,
``max``, ``aqlPath``, ``children``), not the SDK's full document — and the example and the
FLAT/STRUCTURED formats of :mod:`.web_formats`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

NS = "http://schemas.openehr.org/v1"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
_N = f"{{{NS}}}"
_XSI_TYPE = f"{{{XSI}}}type"
#: Structural classes the web template leaves out of paths.
_STRUCTURAL = {"HISTORY", "ITEM_TREE", "ITEM_LIST", "ITEM_SINGLE", "ITEM_TABLE"}
_ENTRIES = {"OBSERVATION", "EVALUATION", "INSTRUCTION", "ACTION", "ADMIN_ENTRY"}
_LOCATABLE = {"COMPOSITION", "SECTION", "CLUSTER", "ELEMENT", "EVENT", "POINT_EVENT"}
_LOCATABLE |= _ENTRIES | _STRUCTURAL

ET.register_namespace("", NS)
ET.register_namespace("xsi", XSI)


class FormatError(ValueError):
    """A template or composition the sandbox refuses: ``status`` and EHRbase-like ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Node:
    """One LOCATABLE of the template (a web template node)."""

    id: str
    name: str
    rm_type: str
    node_id: str  # an archetype id for archetype roots, else an at-code
    attribute: str  # the RM attribute of the parent holding it ("" for the root)
    min: int
    max: int  # -1: unbounded
    aql_path: str
    archetype_root: bool = False
    value_types: tuple[str, ...] = ()  # ELEMENT: the DV_* types its value may have
    units: str | None = None
    magnitude: tuple[float | None, float | None] = (None, None)
    children: list[Node] = field(default_factory=list)

    @property
    def structural(self) -> bool:
        """Left out of FLAT paths (HISTORY, ITEM_TREE, …)."""
        return self.rm_type in _STRUCTURAL

    def path_children(self) -> list[Node]:
        """Children as FLAT paths see them (structural nodes looked through)."""
        found: list[Node] = []
        for child in self.children:
            found.extend(child.path_children() if child.structural else [child])
        return found


@dataclass
class Template:
    """An uploaded OPT: what the sandbox read from it."""

    template_id: str
    concept: str
    archetype_id: str
    language: str
    root: Node
    xml: bytes  # re-serialised

    def find(self, node_id: str) -> Node | None:
        """The root node when ``node_id`` is its FLAT id."""
        return self.root if node_id == self.root.id else None


# -- reading an OPT ---------------------------------------------------------------------------------
def parse_opt(body: bytes) -> Template:
    """The template in ``body`` (OPT XML); FormatError(400) for what EHRbase would refuse."""
    from cwsctl.core.errors import InputError
    from cwsctl.core.xml import parse_xml

    try:  # refuses a DTD or entity in any encoding (UTF-16 too), and size, depth and count bombs
        parse_xml(body, "the template")
    except InputError as exc:
        raise FormatError(400, f"Could not parse input template: {exc.message}") from None
    try:
        root = ET.fromstring(body)  # noqa: S314 - checked above: no DOCTYPE, no entities
    except ET.ParseError as exc:
        raise FormatError(400, f"Could not parse input template: {exc}") from None
    if root.tag not in (f"{_N}template", f"{_N}operational_template"):
        raise FormatError(400, "Could not parse input template: the root element must be "
                          f"template in namespace {NS}")  # fmt: skip
    template_id = _text(root, "template_id/value")
    if not template_id:
        raise FormatError(400, "Could not parse input template: no template_id/value")
    concept = _text(root, "concept")
    if not concept:
        raise FormatError(400, "Supplied template has nil or empty concept")
    language = _text(root, "language/code_string")
    if not language:
        raise FormatError(400, "Supplied template has nil or empty language")
    if root.find(f"{_N}description") is None:
        raise FormatError(400, "Supplied template has nil or empty description")
    definition = root.find(f"{_N}definition")
    if definition is None:
        raise FormatError(400, "Supplied template has nil or empty definition")
    archetype_id = _text(definition, "archetype_id/value")
    if _text(definition, "rm_type_name") != "COMPOSITION" or not archetype_id:
        raise FormatError(400, "Supplied template's definition is not a COMPOSITION archetype")
    tree = _build(definition, "", {}, "")
    assert tree is not None
    root.tag = f"{_N}template"
    xml = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return Template(template_id, concept, archetype_id, language, tree, xml)


def _text(element: ET.Element, path: str) -> str:
    found = element.find("/".join(f"{_N}{p}" for p in path.split("/")))
    return (found.text or "").strip() if found is not None else ""


def _interval(element: ET.Element | None) -> tuple[int, int]:
    if element is None:
        return 1, 1
    lower = _text(element, "lower")
    upper = _text(element, "upper")
    unbounded = _text(element, "upper_unbounded") == "true"
    return int(lower or 0), -1 if unbounded or not upper else int(upper)


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "node"


def _build(
    element: ET.Element, attribute: str, terms: dict[str, str], parent_path: str
) -> Node | None:
    rm_type = _text(element, "rm_type_name")
    if rm_type not in _LOCATABLE:
        return None
    is_root = element.get(_XSI_TYPE) == "C_ARCHETYPE_ROOT" or not attribute
    node_id = _text(element, "node_id")
    if is_root:
        node_id = _text(element, "archetype_id/value")
        terms = {
            t.get("code", ""): _text_item(t)
            for t in element.findall(f"{_N}term_definitions")
        }  # fmt: skip
        name = terms.get("at0000", node_id)
    else:
        name = terms.get(node_id, node_id)
    name = _name_constraint(element) or name
    low, high = _interval(element.find(f"{_N}occurrences"))
    aql = parent_path if not attribute else f"{parent_path}/{attribute}[{node_id}]"
    node = Node(_snake(name), name, rm_type, node_id, attribute, low, high, aql or "/", is_root)
    for attr in element.findall(f"{_N}attributes"):
        attr_name = _text(attr, "rm_attribute_name")
        for child in attr.findall(f"{_N}children"):
            if rm_type == "ELEMENT" and attr_name == "value":
                _value_constraint(node, child)
                continue
            built = _build(child, attr_name, terms, aql)
            if built is not None:
                node.children.append(built)
    return node


def _text_item(term: ET.Element) -> str:
    for item in term.findall(f"{_N}items"):
        if item.get("id") == "text":
            return (item.text or "").strip()
    return ""


def _name_constraint(element: ET.Element) -> str | None:
    for attr in element.findall(f"{_N}attributes"):
        if _text(attr, "rm_attribute_name") != "name":
            continue
        for item in attr.iter(f"{_N}list"):
            if item.text and item.text.strip():
                return item.text.strip()
    return None


def _value_constraint(node: Node, child: ET.Element) -> None:
    rm_type = _text(child, "rm_type_name")
    node.value_types += (rm_type,)
    if rm_type == "DV_QUANTITY":
        item = child.find(f"{_N}list")
        if item is not None:
            node.units = _text(item, "units") or None
            magnitude = item.find(f"{_N}magnitude")
            if magnitude is not None:
                lower, upper = _text(magnitude, "lower"), _text(magnitude, "upper")
                node.magnitude = (
                    float(lower) if lower else None,
                    float(upper) if upper else None,
                )


# -- web template ---------------------------------------------------------------------------------
def web_template(template: Template) -> dict[str, Any]:
    """The sandbox's minimal web template (not the SDK's full document)."""

    def render(node: Node) -> dict[str, Any]:
        document: dict[str, Any] = {
            "id": node.id,
            "name": node.name,
            "localizedName": node.name,
            "rmType": node.rm_type,
            "nodeId": node.node_id,
            "min": node.min,
            "max": node.max,
            "aqlPath": node.aql_path,
        }
        if node.value_types:
            document["valueTypes"] = list(node.value_types)
            if node.units:
                document["units"] = node.units
        children = [render(c) for c in node.path_children()]
        if children:
            document["children"] = children
        return document

    return {
        "templateId": template.template_id,
        "semVer": None,
        "version": "2.3",
        "defaultLanguage": template.language,
        "languages": [template.language],
        "tree": render(template.root),
    }

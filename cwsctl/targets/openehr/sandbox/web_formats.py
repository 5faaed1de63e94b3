"""An example composition and the simplified formats of the openEHR sandbox, driven by a
template's :class:`~.opt.Node` tree.

- :func:`example` — a canonical example composition;
- FLAT ↔ canonical (:func:`flat_to_canonical`, :func:`canonical_to_flat`) and STRUCTURED ↔ FLAT
  (:func:`structured_to_flat`, :func:`flat_to_structured`) for templates made of COMPOSITION →
  ENTRY (OBSERVATION, EVALUATION, INSTRUCTION, ACTION, ADMIN_ENTRY) / SECTION → HISTORY → EVENT →
  ITEM_TREE/ITEM_LIST → CLUSTER → ELEMENT whose values are DV_QUANTITY (``|magnitude``,
  ``|unit``), DV_TEXT, DV_COUNT, DV_BOOLEAN or DV_DATE_TIME. Context fields: ``ctx/language``,
  ``ctx/territory``, ``ctx/composer_name``, ``ctx/time``, and the composition's own
  ``category``, ``language``, ``territory``, ``composer|name``, ``context/start_time``,
  ``context/setting``; an entry's ``language``/``encoding``, an event's ``time``.

A FLAT path the template does not have → :class:`~.opt.FormatError` 400 "Could not consume Parts
[…]" (EHRbase's words); something the template has but the sandbox cannot convert (another data
type, a canonical composition whose content does not follow the template) → 422 "… the sandbox
cannot convert …".
"""

from __future__ import annotations

import re
from typing import Any

from cwsctl.targets.openehr.sandbox.opt import _ENTRIES, FormatError, Node, Template

RM_VERSION = "1.0.4"
_VALUE_TYPES = {"DV_QUANTITY", "DV_TEXT", "DV_COUNT", "DV_BOOLEAN", "DV_DATE_TIME"}
_SAMPLE_TIME = "2024-01-01T12:00:00Z"


# -- example --------------------------------------------------------------------------------------
def example(template: Template) -> dict[str, Any]:
    """A canonical composition with one of everything and sample values."""
    flat = {"ctx/language": template.language, "ctx/territory": "US",
            "ctx/composer_name": "cwsctl sandbox", "ctx/time": _SAMPLE_TIME}  # fmt: skip

    def walk(node: Node, prefix: str) -> None:
        for child in node.path_children():
            here = f"{prefix}/{child.id}" + (":0" if child.max != 1 else "")
            if child.rm_type == "ELEMENT":
                flat.update(_sample_value(child, here))
            else:
                walk(child, here)

    walk(template.root, template.root.id)
    return flat_to_canonical(template, flat)


def _sample_value(node: Node, path: str) -> dict[str, Any]:
    kind = node.value_types[0] if node.value_types else "DV_TEXT"
    if kind == "DV_QUANTITY":
        low, high = node.magnitude
        base = low or 0.0
        magnitude = base + (high - base) * 0.12 if high is not None else base + 1
        return {f"{path}|magnitude": magnitude, f"{path}|unit": node.units or "1"}
    if kind == "DV_COUNT":
        return {path: 1}
    if kind == "DV_BOOLEAN":
        return {path: True}
    if kind == "DV_DATE_TIME":
        return {path: _SAMPLE_TIME}
    return {path: f"Lorem ipsum ({node.name})"}


# -- FLAT → canonical ---------------------------------------------------------------------------
def _code(value: str, code: str, terminology: str) -> dict[str, Any]:
    return {
        "_type": "DV_CODED_TEXT",
        "value": value,
        "defining_code": {
            "_type": "CODE_PHRASE",
            "terminology_id": {"_type": "TERMINOLOGY_ID", "value": terminology},
            "code_string": code,
        },
    }


def _phrase(code: str, terminology: str) -> dict[str, Any]:
    return {
        "_type": "CODE_PHRASE",
        "terminology_id": {"_type": "TERMINOLOGY_ID", "value": terminology},
        "code_string": code,
    }


def _locatable(node: Node, template: Template, context: dict[str, Any]) -> dict[str, Any]:
    rm_type = "POINT_EVENT" if node.rm_type == "EVENT" else node.rm_type
    document: dict[str, Any] = {
        "_type": rm_type,
        "name": {"_type": "DV_TEXT", "value": node.name},
        "archetype_node_id": node.node_id,
    }
    if node.archetype_root:
        document["archetype_details"] = {
            "_type": "ARCHETYPED",
            "archetype_id": {"_type": "ARCHETYPE_ID", "value": node.node_id},
            "rm_version": RM_VERSION,
        }
    if node.rm_type in _ENTRIES:
        document["language"] = _phrase(context["language"], "ISO_639-1")
        document["encoding"] = _phrase("UTF-8", "IANA_character-sets")
        document["subject"] = {"_type": "PARTY_SELF"}
    if node.rm_type == "HISTORY":
        document["origin"] = {"_type": "DV_DATE_TIME", "value": context["time"]}
    if node.rm_type == "EVENT":
        document["time"] = {"_type": "DV_DATE_TIME", "value": context["time"]}
    return document


_CTX = {"ctx/language", "ctx/territory", "ctx/composer_name", "ctx/time"}
_COMPOSITION_FIELDS = {
    "category|code", "category|value", "category|terminology", "language|code",
    "language|terminology", "territory|code", "territory|terminology", "composer|name",
    "context/start_time", "context/setting|code", "context/setting|value",
    "context/setting|terminology",
}  # fmt: skip
_ENTRY_FIELDS = {"language|code", "language|terminology", "encoding|code", "encoding|terminology"}
_SEGMENT = re.compile(r"^([a-z0-9_]+)(?::(\d+))?$")


def flat_to_canonical(template: Template, flat: Any) -> dict[str, Any]:
    """A canonical COMPOSITION from a FLAT document (``{path: value}``)."""
    if not isinstance(flat, dict):
        raise FormatError(400, "a FLAT composition is a JSON object of path: value")
    root = template.root
    context = {
        "language": str(flat.get("ctx/language") or template.language),
        "territory": str(flat.get("ctx/territory") or "US"),
        "composer": str(flat.get("ctx/composer_name") or "cwsctl sandbox"),
        "time": str(flat.get("ctx/time") or _SAMPLE_TIME),
    }
    fields: dict[str, Any] = {}
    objects: dict[str, dict[str, Any]] = {}
    composition = _locatable(root, template, context)
    unknown: list[str] = []
    for key, value in flat.items():
        if key in _CTX:
            continue
        if key.startswith("ctx/"):
            raise FormatError(422, f"FLAT {key}: the sandbox cannot convert this context field")
        head, _, rest = key.partition("/")
        if _SEGMENT.match(head) is None or _SEGMENT.match(head).group(1) != root.id:  # type: ignore[union-attr]
            unknown.append(key)
            continue
        if rest in _COMPOSITION_FIELDS:
            fields[rest] = value
            continue
        if not _place(template, composition, objects, rest, value, context, root.id):
            unknown.append(key)
    if unknown:
        raise FormatError(400, f"Could not consume Parts {unknown}")
    lang = str(fields.get("language|code") or context["language"])
    composition.update(
        {
            "language": _phrase(lang, str(fields.get("language|terminology") or "ISO_639-1")),
            "territory": _phrase(
                str(fields.get("territory|code") or context["territory"]),
                str(fields.get("territory|terminology") or "ISO_3166-1"),
            ),
            "category": _code(
                str(fields.get("category|value") or "event"),
                str(fields.get("category|code") or "433"),
                str(fields.get("category|terminology") or "openehr"),
            ),
            "composer": {
                "_type": "PARTY_IDENTIFIED",
                "name": str(fields.get("composer|name") or context["composer"]),
            },
            "context": {
                "_type": "EVENT_CONTEXT",
                "start_time": {
                    "_type": "DV_DATE_TIME",
                    "value": str(fields.get("context/start_time") or context["time"]),
                },
                "setting": _code(
                    str(fields.get("context/setting|value") or "other care"),
                    str(fields.get("context/setting|code") or "238"),
                    str(fields.get("context/setting|terminology") or "openehr"),
                ),
            },
        }
    )
    composition["archetype_details"]["template_id"] = {
        "_type": "TEMPLATE_ID",
        "value": template.template_id,
    }
    composition.setdefault("content", [])
    return composition


def _place(
    template: Template,
    composition: dict[str, Any],
    objects: dict[str, dict[str, Any]],
    rest: str,
    value: Any,
    context: dict[str, Any],
    prefix: str,
) -> bool:
    """Put one FLAT ``rest`` (below the root) into ``composition``; False if it is unknown."""
    path, bar, suffix = rest.partition("|")
    segments = path.split("/")
    node = template.root
    parent = composition
    key = prefix
    for position, segment in enumerate(segments):
        match = _SEGMENT.match(segment)
        child = None
        if match is not None:
            child = next((c for c in node.path_children() if c.id == match.group(1)), None)
        if child is None:
            remainder = "/".join(segments[position:]) + (bar + suffix)
            return _entry_field(node, parent, remainder, value)
        index = int(match.group(2) or 0) if match is not None else 0
        if child.max == 1 and index != 0:
            return False
        key = f"{key}/{child.id}:{index}"
        if key not in objects:
            objects[key] = _attach(template, node, parent, child, context)
        node, parent = child, objects[key]
    if node.rm_type != "ELEMENT":
        return False
    _set_value(node, parent, suffix if bar else "", value, rest)
    return True


def _entry_field(node: Node, parent: dict[str, Any], remainder: str, value: Any) -> bool:
    if node.rm_type in _ENTRIES and remainder in _ENTRY_FIELDS:
        name, _, part = remainder.partition("|")
        phrase = parent[name]
        if part == "code":
            phrase["code_string"] = str(value)
        else:
            phrase["terminology_id"]["value"] = str(value)
        return True
    if node.rm_type == "EVENT" and remainder == "time":
        parent["time"]["value"] = str(value)
        return True
    return False


def _attach(
    template: Template, node: Node, parent: dict[str, Any], child: Node, context: dict[str, Any]
) -> dict[str, Any]:
    """Create ``child``'s object under ``parent``, with the structural nodes between them."""
    chain = _chain(node, child)
    holder = parent
    for step in chain[:-1]:  # structural nodes: one object each, shared
        existing = holder.get(step.attribute)
        if isinstance(existing, dict) and existing.get("archetype_node_id") == step.node_id:
            holder = existing
            continue
        created = _locatable(step, template, context)
        holder[step.attribute] = created
        holder = created
    document = _locatable(child, template, context)
    if child.attribute in ("content", "events", "items", "activities") or child.max != 1:
        holder.setdefault(child.attribute, []).append(document)
    else:
        holder[child.attribute] = document
    return document


def _chain(node: Node, target: Node) -> list[Node]:
    for child in node.children:
        if child is target:
            return [child]
        if child.structural:
            below = _chain(child, target)
            if below:
                return [child, *below]
    return []


def _set_value(node: Node, element: dict[str, Any], suffix: str, value: Any, key: str) -> None:
    kinds = node.value_types or ("DV_TEXT",)
    kind = kinds[0]
    if kind not in _VALUE_TYPES:
        raise FormatError(422, f"FLAT {key}: the sandbox cannot convert {kind} values")
    current = element.get("value") or {"_type": kind}
    if kind == "DV_QUANTITY":
        if suffix == "magnitude":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise FormatError(422, f"FLAT {key}: magnitude must be a number")
            current["magnitude"] = value
        elif suffix == "unit":
            current["units"] = str(value)
        else:
            raise FormatError(400, f"Could not consume Parts [{key}]")
    elif suffix:
        raise FormatError(400, f"Could not consume Parts [{key}]")
    elif kind == "DV_COUNT":
        current["magnitude"] = value
    elif kind == "DV_BOOLEAN":
        current["value"] = bool(value)
    else:
        current["value"] = str(value)
    element["value"] = current


# -- canonical → FLAT ---------------------------------------------------------------------------
def canonical_to_flat(template: Template, composition: Any) -> dict[str, Any]:
    """The FLAT form of a canonical composition of ``template``; FormatError(422) if the
    composition holds something the sandbox cannot express in FLAT."""
    root = template.root
    if not isinstance(composition, dict) or composition.get("archetype_node_id") != root.node_id:
        raise FormatError(422, "the sandbox cannot convert this composition to FLAT: its "
                          f"archetype_node_id is not {root.node_id}")  # fmt: skip
    flat: dict[str, Any] = {}
    p = root.id

    def code(name: str, document: Any, prefix: str, value: bool = True) -> None:
        if not isinstance(document, dict):
            return
        phrase = document.get("defining_code", document)
        if not isinstance(phrase, dict):
            return
        flat[f"{prefix}/{name}|code"] = phrase.get("code_string")
        if value and "value" in document:
            flat[f"{prefix}/{name}|value"] = document.get("value")
        flat[f"{prefix}/{name}|terminology"] = (phrase.get("terminology_id") or {}).get("value")

    code("category", composition.get("category"), p)
    code("language", composition.get("language"), p, value=False)
    code("territory", composition.get("territory"), p, value=False)
    composer = composition.get("composer")
    if isinstance(composer, dict) and "name" in composer:
        flat[f"{p}/composer|name"] = composer["name"]
    context = composition.get("context")
    if isinstance(context, dict):
        start = context.get("start_time")
        if isinstance(start, dict):
            flat[f"{p}/context/start_time"] = start.get("value")
        code("context/setting", context.get("setting"), p)
    _flatten(root, composition, p, flat)
    return {k: v for k, v in flat.items() if v is not None}


def _flatten(node: Node, document: dict[str, Any], prefix: str, flat: dict[str, Any]) -> None:
    for child in node.path_children():
        items = _find(node, document, child)
        for index, item in enumerate(items):
            here = f"{prefix}/{child.id}" + (f":{index}" if child.max != 1 else "")
            if child.rm_type in _ENTRIES:
                for name in ("language", "encoding"):
                    phrase = item.get(name)
                    if isinstance(phrase, dict):
                        flat[f"{here}/{name}|code"] = phrase.get("code_string")
                        terminology = (phrase.get("terminology_id") or {}).get("value")
                        flat[f"{here}/{name}|terminology"] = terminology
            if child.rm_type == "EVENT" and isinstance(item.get("time"), dict):
                flat[f"{here}/time"] = item["time"].get("value")
            if child.rm_type == "ELEMENT":
                flat.update(_flat_value(child, item.get("value"), here))
            else:
                _flatten(child, item, here, flat)
    known = {c.node_id for c in node.children}
    for attribute in {c.attribute for c in node.children}:
        for item in _as_list(document.get(attribute)):
            if isinstance(item, dict) and item.get("archetype_node_id") not in known:
                raise FormatError(
                    422,
                    "the sandbox cannot convert this composition to FLAT: "
                    f"{attribute} holds {str(item.get('archetype_node_id'))[:80]!r}, which the "
                    "template does not have there",
                )


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def _find(node: Node, document: dict[str, Any], target: Node) -> list[dict[str, Any]]:
    """The objects in ``document`` (an object of ``node``) that are ``target``."""
    holders = [document]
    for step in _chain(node, target)[:-1]:
        holders = [
            item
            for holder in holders
            for item in _as_list(holder.get(step.attribute))
            if isinstance(item, dict) and item.get("archetype_node_id") == step.node_id
        ]
    return [
        item
        for holder in holders
        for item in _as_list(holder.get(target.attribute))
        if isinstance(item, dict) and item.get("archetype_node_id") == target.node_id
    ]


def _flat_value(node: Node, value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    kind = value.get("_type") if isinstance(value, dict) else None
    if kind == "DV_QUANTITY":
        return {f"{path}|magnitude": value.get("magnitude"), f"{path}|unit": value.get("units")}
    if kind == "DV_COUNT":
        return {path: value.get("magnitude")}
    if kind in ("DV_TEXT", "DV_BOOLEAN", "DV_DATE_TIME"):
        return {path: value.get("value")}
    raise FormatError(
        422, f"the sandbox cannot convert this composition to FLAT: {path} holds {kind!r}"
    )


# -- STRUCTURED ↔ FLAT -------------------------------------------------------------------------
def structured_to_flat(structured: Any) -> dict[str, Any]:
    """FLAT paths of a STRUCTURED document: nested objects, every node below the root a list."""
    if not isinstance(structured, dict):
        raise FormatError(400, "a STRUCTURED composition is a JSON object")
    flat: dict[str, Any] = {}
    for key, value in structured.items():
        if key == "ctx" and isinstance(value, dict):
            flat.update({f"ctx/{k}": v for k, v in value.items()})
        elif isinstance(value, dict):
            _unnest(value, key, flat)
        else:
            raise FormatError(400, f"Could not consume Parts [{key}]")
    return flat


def _unnest(document: dict[str, Any], prefix: str, flat: dict[str, Any]) -> None:
    for key, value in document.items():
        if key.startswith("|"):
            flat[f"{prefix}{key}"] = value
            continue
        for index, item in enumerate(value if isinstance(value, list) else [value]):
            here = f"{prefix}/{key}:{index}"
            if isinstance(item, dict):
                _unnest(item, here, flat)
            else:
                flat[here] = item


def flat_to_structured(flat: dict[str, Any]) -> dict[str, Any]:
    """The STRUCTURED form of FLAT paths (the inverse of :func:`structured_to_flat`)."""
    structured: dict[str, Any] = {}
    for key, value in flat.items():
        path, bar, attribute = key.partition("|")
        head, *segments = path.split("/")
        holder = structured.setdefault(head, {})
        for position, segment in enumerate(segments):
            name, _, index_text = segment.partition(":")
            items = holder.setdefault(name, [])
            index = int(index_text or 0)
            last = position == len(segments) - 1
            while len(items) <= index:
                items.append({} if not last or bar else None)
            if last and not bar:
                items[index] = value
            else:
                if items[index] is None:
                    items[index] = {}
                holder = items[index]
        if bar:
            holder[f"|{attribute}"] = value
    return structured


def normalise_flat(template: Template, flat: dict[str, Any]) -> dict[str, Any]:
    """FLAT paths with ``:0`` dropped except on multiple-valued nodes (STRUCTURED input)."""
    multiples: set[str] = set()

    def walk(node: Node) -> None:
        for child in node.path_children():
            if child.max != 1:
                multiples.add(child.id)
            walk(child)

    walk(template.root)
    normal: dict[str, Any] = {}
    for key, value in flat.items():
        path, bar, attribute = key.partition("|")
        parts = []
        for position, segment in enumerate(path.split("/")):
            name, colon, index = segment.partition(":")
            keep = bool(colon) and position > 0 and name in multiples
            if colon and not keep and index not in ("", "0"):
                raise FormatError(400, f"Could not consume Parts [{key}]")
            parts.append(segment if keep else name)
        normal["/".join(parts) + bar + attribute] = value
    return normal

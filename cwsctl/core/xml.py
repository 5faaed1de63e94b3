"""Safe XML: a bounded expat parser into a small immutable tree, and a comparison of two documents.

At most :data:`MAX_XML_BYTES`, :data:`MAX_XML_ELEMENTS` elements nested at most
:data:`MAX_XML_DEPTH` deep (so a hostile document cannot exhaust memory; the comparison walks the
tree without recursion), and a document with a DTD (``<!DOCTYPE``) or an entity declaration is
refused before anything is expanded (refusing them rules out entity-expansion bombs). Python's
expat never fetches external entities. defusedxml would do the same as a dependency; this is the
few lines cwsctl needs of it. Used by clients and sandboxes alike.
"""

from __future__ import annotations

import xml.parsers.expat as expat
from dataclasses import dataclass, field
from typing import Any

from cwsctl.core.errors import CwsError, InputError

#: An ``xsi:type`` attribute in Clark notation; its value is compared without its prefix.
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
#: The largest document cwsctl parses; real OPTs are a few MB at most.
MAX_XML_BYTES = 32 * 1024 * 1024
#: The most elements cwsctl reads from one document (a large OPT has a few hundred thousand).
MAX_XML_ELEMENTS = 1_000_000
#: The deepest nesting cwsctl reads (OPTs nest a few dozen levels).
MAX_XML_DEPTH = 1000


@dataclass(frozen=True, eq=False)
class XmlNode:
    """An element as compared: ``{namespace}name``, attributes sorted (an ``xsi:type`` value by
    its local name: a re-serialiser may write ``v1:C_ATTRIBUTE`` for ``C_ATTRIBUTE``), and its
    content — child elements and non-blank text pieces, stripped — in order. Prefixes, the
    declaration, comments and layout whitespace are gone."""

    name: str
    attributes: tuple[tuple[str, str], ...]
    content: tuple[XmlNode | str, ...]

    @property
    def local_name(self) -> str:
        """The name without its namespace."""
        return self.name.rsplit("}", 1)[-1]

    def child(self, local_name: str) -> XmlNode | None:
        """The first child element with this local name."""
        for item in self.content:
            if isinstance(item, XmlNode) and item.local_name == local_name:
                return item
        return None

    def find(self, *path: str) -> XmlNode | None:
        """The element at ``path`` (local names, one per level), else None."""
        node: XmlNode | None = self
        for step in path:
            node = node.child(step) if node is not None else None
        return node

    @property
    def text(self) -> str:
        """The element's own text pieces, joined."""
        return "".join(item for item in self.content if isinstance(item, str))

    def __eq__(self, other: object) -> bool:
        """Same name, attributes and content, all the way down; walked with a list, not
        recursion, so nesting depth cannot exhaust the stack."""
        if not isinstance(other, XmlNode):
            return NotImplemented
        pending: list[tuple[XmlNode, XmlNode]] = [(self, other)]
        while pending:
            first, second = pending.pop()
            if (
                first.name != second.name
                or first.attributes != second.attributes
                or len(first.content) != len(second.content)
            ):
                return False
            for mine, theirs in zip(first.content, second.content, strict=True):
                if isinstance(mine, XmlNode) and isinstance(theirs, XmlNode):
                    pending.append((mine, theirs))
                elif isinstance(mine, XmlNode) or isinstance(theirs, XmlNode) or mine != theirs:
                    return False
        return True

    __hash__ = None  # type: ignore[assignment]


class _Refused(Exception):
    """Raised from an expat handler to stop at a construct cwsctl does not accept."""

    def __init__(self, what: str, why: str = "an OPT has none") -> None:
        super().__init__(what)
        self.why = why


@dataclass
class _Open:
    name: str
    attributes: tuple[tuple[str, str], ...]
    content: list[XmlNode | str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def flush(self) -> None:
        piece = "".join(self.text).strip()
        self.text.clear()
        if piece:
            self.content.append(piece)


def _clark(expat_name: str) -> str:
    uri, sep, local = expat_name.rpartition(" ")
    return f"{{{uri}}}{local}" if sep else local


def parse_xml(data: bytes, what: str, error: type[CwsError] = InputError) -> XmlNode:
    """Parse ``data`` into an :class:`XmlNode` tree, safely; ``error`` names ``what`` is wrong.

    Refused: more than :data:`MAX_XML_BYTES`, :data:`MAX_XML_ELEMENTS` elements or
    :data:`MAX_XML_DEPTH` levels, a DTD or entity declaration, and anything that is not
    well-formed XML.
    """
    if len(data) > MAX_XML_BYTES:
        raise error(f"{what} is larger than {MAX_XML_BYTES // (1024 * 1024)} MiB")
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[_Open] = []
    roots: list[XmlNode] = []
    elements = 0

    def refuse_dtd(*_: Any) -> None:
        raise _Refused("a DTD (<!DOCTYPE …>)")

    def refuse_entity(*_: Any) -> None:
        raise _Refused("an entity declaration (<!ENTITY …>)")

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal elements
        elements += 1
        if elements > MAX_XML_ELEMENTS:
            raise _Refused(f"more than {MAX_XML_ELEMENTS} elements", "no OPT is that large")
        if len(stack) >= MAX_XML_DEPTH:
            raise _Refused(f"elements nested more than {MAX_XML_DEPTH} deep", "no OPT is that deep")
        if stack:
            stack[-1].flush()
        attributes = []
        for key, value in attrs.items():
            clark = _clark(key)
            local_type = value.strip().rpartition(":")[2]
            attributes.append((clark, local_type if clark == XSI_TYPE else value))
        stack.append(_Open(_clark(name), tuple(sorted(attributes))))

    def end(_name: str) -> None:
        done = stack.pop()
        done.flush()
        node = XmlNode(done.name, done.attributes, tuple(done.content))
        (stack[-1].content if stack else roots).append(node)

    def text(data: str) -> None:
        if stack:
            stack[-1].text.append(data)

    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_entity
    parser.UnparsedEntityDeclHandler = refuse_entity
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(data, True)
    except _Refused as exc:
        raise error(f"{what} contains {exc}: refused ({exc.why})") from None
    except expat.ExpatError as exc:
        raise error(f"{what} is not well-formed XML: {exc}") from None
    if len(roots) != 1:
        raise error(f"{what} has no root element")
    return roots[0]


def same_xml(first: bytes, second: bytes, what: str = "XML") -> bool:
    """True when both documents are the same XML: same elements, attributes and text, whatever
    their prefixes, declaration, attribute order, comments and indentation."""
    return parse_xml(first, what) == parse_xml(second, what)

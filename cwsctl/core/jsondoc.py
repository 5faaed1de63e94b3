"""Parsing JSON a server sent, safely: a document nested too deeply is "not JSON".

``json.loads`` recurses once per level and raises RecursionError on a document nested past the
interpreter's limit (``[[[[…]]]]``, a few hundred kilobytes from any server), and a document just
under it still breaks whatever walks it afterwards (pretty printing, error-text extraction). Every
answer cwsctl reads as JSON goes through :func:`loads_json`, which refuses both with ValueError,
so callers treat such an answer as non-JSON.
"""

from __future__ import annotations

import json
from typing import Any

#: Deepest nesting accepted in a server's JSON (FHIR and openEHR documents stay far below it).
MAX_JSON_DEPTH = 200


class JsonTooDeepError(ValueError):
    """The document is nested deeper than :data:`MAX_JSON_DEPTH`."""


def loads_json(data: bytes | str) -> Any:
    """``json.loads(data)``, raising ValueError (never RecursionError) for a document nested
    deeper than :data:`MAX_JSON_DEPTH` levels."""
    if isinstance(data, str):
        brackets = data.count("[") + data.count("{")
    else:
        brackets = data.count(b"[") + data.count(b"{")
    try:
        document = json.loads(data)
    except RecursionError:
        raise JsonTooDeepError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    if brackets > MAX_JSON_DEPTH and _depth_exceeds(document, MAX_JSON_DEPTH):
        raise JsonTooDeepError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return document


def _depth_exceeds(document: Any, limit: int) -> bool:
    """True when containers in ``document`` nest deeper than ``limit`` (iterative walk)."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False

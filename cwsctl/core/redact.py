"""Keep patient data (PHI) out of logs and verbose output."""

from __future__ import annotations

import json
from typing import Any

MASK = "***"


def mask_values(value: Any) -> Any:
    """Replace every scalar in a JSON value with a mask, keeping keys and structure."""
    if isinstance(value, dict):
        return {key: mask_values(item) for key, item in value.items()}
    if isinstance(value, list):
        return [mask_values(item) for item in value]
    return MASK


def masked_body(body: bytes) -> str:
    """A body for display with its field values masked; non-JSON bodies are summarised."""
    if not body:
        return "(empty body)"
    from cwsctl.core.jsondoc import loads_json

    try:
        document = loads_json(body)
    except ValueError:
        return f"({len(body)} bytes, not JSON; hidden)"
    return json.dumps(mask_values(document), ensure_ascii=False)

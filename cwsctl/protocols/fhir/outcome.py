"""What an error answer says (an OperationOutcome's text, :func:`outcome_text`), the error for a
refused request, a streamed answer's head, and ``Retry-After`` within the poll bounds."""

from __future__ import annotations

import contextlib

import httpx

from cwsctl.core.errors import ClientRequestError, CwsError, ServerFailureError
from cwsctl.core.jsondoc import loads_json
from cwsctl.core.text import printable
from cwsctl.core.transport.bounded import retry_after_seconds

#: The longest ``Retry-After`` honoured as given (longer ones are cut to it), and the shortest
#: (a server answering 0 again and again is not polled in a tight loop).
MAX_RETRY_AFTER_S = 300.0
MIN_RETRY_AFTER_S = 1.0
CHUNK_SIZE = 1 << 16


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the answer's ``Retry-After`` asks for, within the poll bounds; None if none."""
    seconds = retry_after_seconds(response.headers.get("retry-after"))
    if seconds is None:
        return None
    return min(max(seconds, MIN_RETRY_AFTER_S), MAX_RETRY_AFTER_S)


def outcome_text(content: bytes) -> str:
    """What an error answer says, on one safe line: an OperationOutcome's diagnostics or
    details, OpenEMR's ``message``/``error``, else nothing."""
    try:
        document = loads_json(content) if content.strip() else None
    except (ValueError, UnicodeDecodeError):
        return printable(content[:200].decode("utf-8", "replace")) if content.strip() else ""
    texts: list[str] = []
    if isinstance(document, dict):
        issues = document.get("issue")
        for issue in issues if isinstance(issues, list) else []:
            if not isinstance(issue, dict):
                continue
            details = issue.get("details")
            text = issue.get("diagnostics") or (
                details.get("text") if isinstance(details, dict) else None
            )
            if isinstance(text, str) and text:
                texts.append(text)
        for name in ("message", "error_description", "error"):
            value = document.get(name)
            if not texts and isinstance(value, str) and value:
                texts.append(value)
    return printable("; ".join(texts))


def status_error(
    what: str, response: httpx.Response, content: bytes, hint: str | None = None
) -> CwsError:
    text = outcome_text(content)
    reason = printable(response.reason_phrase)
    message = f"{what}: HTTP {response.status_code} {reason}".rstrip() + (
        f": {text}" if text else ""
    )
    if response.status_code >= 500:
        return ServerFailureError(message, hint)
    return ClientRequestError(message, hint)


def head_of(response: httpx.Response, limit: int = 1 << 16) -> bytes:
    """At most ``limit`` bytes of a streamed error answer (its text is all that is shown)."""
    head = bytearray()
    with contextlib.suppress(httpx.HTTPError):
        for chunk in response.iter_raw(CHUNK_SIZE):
            head += chunk
            if len(head) >= limit:
                break
    return bytes(head[:limit])

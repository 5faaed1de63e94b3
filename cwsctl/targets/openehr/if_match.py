"""EHRbase 2.0–2.31's bare ``If-Match``: a write goes quoted as the specification says, bare once
the server refused the quotes — remembered per client, so per run.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cwsctl.core.transport.http_auth import quoted_etag

if TYPE_CHECKING:
    from cwsctl.core.client import ApiClient, ApiResponse


#: Clients whose server refused a quoted If-Match ("UUID string too large", EHRbase 2.0–2.31):
#: their later writes send the bare version uid at once. Per client object, so per run.
_BARE_IF_MATCH: weakref.WeakSet[Any] = weakref.WeakSet()


def refuses_quoted_if_match(response: ApiResponse) -> bool:
    """Whether the answer is EHRbase 2.0–2.31's 400 for a quoted If-Match (nothing written)."""
    return response.status == 400 and "UUID string" in response.error_message()


def sends_bare_if_match(client: ApiClient) -> bool:
    """Whether ``client`` learnt that its server refuses a quoted If-Match (EHRbase 2.0–2.31)."""
    return client in _BARE_IF_MATCH


def send_with_if_match(
    client: ApiClient,
    method: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    version: str,
) -> ApiResponse:
    """Send a write with ``If-Match: "version"`` — or the bare uid where quotes are refused.

    The specification (ITS-REST 1.0.2+) quotes the version uid; EHRbase 2.0–2.31 parses the raw
    header as a uid and answers 400 "UUID string too large" before writing anything. So the
    quoted form goes first; on that 400 the write is sent once more with the bare uid, and the
    client remembers it: later writes through it go bare at once. The header is always sent.
    ``version`` may be given quoted or weak (``W/"…"``); it is sent quoted.
    """
    bare_value = version.strip().removeprefix("W/").strip('"')
    quoted = quoted_etag(version)
    bare = client in _BARE_IF_MATCH
    response = client.request(
        method, path, body, {**headers, "If-Match": bare_value if bare else quoted}
    )
    if not bare and refuses_quoted_if_match(response):
        _BARE_IF_MATCH.add(client)
        response = client.request(method, path, body, {**headers, "If-Match": bare_value})
    return response

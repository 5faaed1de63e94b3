"""Reading openEHR answers: the JSON document and version uid an answer carries, the one-line error
for a refusal (:func:`fail`), a stale version (:class:`StaleVersionError`), and what a write made.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cwsctl.core.errors import ClientRequestError, CwsError, InputError, ServerFailureError
from cwsctl.core.transport.http_auth import challenge_reason
from cwsctl.targets.openehr.ids import VersionUid

if TYPE_CHECKING:
    from cwsctl.core.client import ApiClient, ApiResponse


def json_document(response: ApiResponse) -> Any:
    """The answer's body as JSON; None when it has none or it is not JSON."""
    if not response.body:
        return None
    from cwsctl.core.jsondoc import loads_json

    try:
        return loads_json(response.body)
    except ValueError:
        return None


def version_uid_of(response: ApiResponse) -> VersionUid | None:
    """The version uid an answer names: its ``ETag``, ``Location``, ``Content-Location``, or body
    ``uid.value`` (in that order)."""
    for header in ("etag", "location", "content-location"):
        found = VersionUid.from_header(response.headers.get(header))
        if found is not None:
            return found
    document = json_document(response)
    if isinstance(document, dict):
        uid = document.get("uid")
        value = uid.get("value") if isinstance(uid, dict) else uid
        if isinstance(value, str):
            try:
                return VersionUid.parse(value)
            except InputError:
                return None
    return None


def _unauthorized_hint(client: ApiClient) -> str:
    return client.unauthorized_hint()


def fail(
    client: ApiClient,
    response: ApiResponse,
    *,
    not_found: str | None = None,
    conflict: str | None = None,
    hint: str | None = None,
) -> CwsError:
    """The one-line error for an answer that is not a success.

    ``not_found`` replaces the message of a 404, ``conflict`` the one of a 409, and ``hint`` goes
    with them (or, when neither is given, with any 4xx); 401 gets the client's hint; 5xx is a
    ServerFailureError (exit 5), the rest ClientRequestError (exit 4).
    """
    detail = response.error_message()
    base = f"{response.status} {response.reason}"
    if response.status >= 500:
        return ServerFailureError(
            f"{base}: {detail}" if detail else base,
            hint="the server failed; retry later or contact its administrators",
        )
    if response.status == 401:
        reason = challenge_reason(response)
        if reason:
            detail = f"{detail}; {reason}" if detail else reason
        return ClientRequestError(
            f"{base}: {detail}" if detail else base, _unauthorized_hint(client)
        )
    if response.status == 404 and not_found:
        return ClientRequestError(not_found, hint)
    if response.status == 409 and conflict:
        return ClientRequestError(conflict, hint)
    if 200 <= response.status < 400:  # an unexpected success (e.g. 204 where a body was due)
        return ClientRequestError(
            f"unexpected answer {base}", "the server's answer does not follow the openEHR REST API"
        )
    general = hint if not_found is None and conflict is None else None
    if response.status == 403:
        general = (
            "the credentials were accepted but may not do this: ask the server's administrators"
        )
    return ClientRequestError(f"{base}: {detail}" if detail else base, general)


class StaleVersionError(ClientRequestError):
    """The object changed since the version the caller read (412 on an update, 409 or 412 on a
    delete); ``latest`` is its latest version, from the answer or read once more."""

    def __init__(
        self,
        latest: VersionUid | None,
        ehr_id: str,
        object_id: str,
        *,
        read_again: str | None = None,
    ) -> None:
        latest_text = str(latest) if latest is not None else "unknown (the server did not say)"
        read = read_again or f"cwsctl composition get {ehr_id} {object_id}"
        super().__init__(
            f"changed since it was read: latest is {latest_text}",
            hint=f"read it again ({read}), apply your change to that version and retry"
            + (f" with --if-match {latest}" if latest is not None else ""),
        )
        self.latest = latest


def stale_latest(response: ApiResponse) -> VersionUid | None:
    """The latest version a stale answer names (ETag, Location, body or message), if any.

    EHRbase 2.x names none: its 412 and 409 carry only ``{"error", "message"}``."""
    found = version_uid_of(response)
    if found is not None:
        return found
    document = json_document(response)
    if isinstance(document, dict) and isinstance(document.get("latest_version_uid"), str):
        named = VersionUid.from_header(document["latest_version_uid"])
        if named is not None:
            return named
    # Some servers only say it in the error text.
    match = re.search(r"[A-Za-z0-9._\-]+::[A-Za-z0-9._\-]+::[0-9.]+", response.error_message())
    return VersionUid.from_header(match.group(0)) if match else None


@dataclass(frozen=True)
class CompositionVersion:
    """A composition version written or read: its uid and the server's answer."""

    ehr_id: str
    version_uid: VersionUid | None
    response: ApiResponse
    preceding: VersionUid | None = None
    read_first: bool = False

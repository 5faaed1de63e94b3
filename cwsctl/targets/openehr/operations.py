"""openEHR REST operations (the released EHR and Query APIs): EHRs, versioned compositions, AQL.

Each operation is a function over an :class:`~cwsctl.core.client.ApiClient` (an openehr profile's
client brings the credentials) that builds the request, sends it, and reads the answer into a
small result, or raises the one-line :class:`~cwsctl.core.errors.CwsError` that says what went
wrong. Where the v0.1 proposal in the seed differs from the release, the release wins:

- optimistic locking uses ``If-Match: {preceding_version_uid}`` (the proposal's ``Match-If``);
- compositions live at ``/ehr/{ehr_id}/composition[/{uid}]`` (not ``…/compositions``), a version
  is read with ``?version_at_time=`` (not ``versionSelector``) and a composition is deleted with
  ``DELETE /ehr/{ehr_id}/composition/{preceding_version_uid}``;
- revision history is ``GET /ehr/{ehr_id}/versioned_composition/{uid}/revision_history``;
- queries are ``POST /query/aql`` with ``{"q", "query_parameters", "offset", "fetch"}`` (not
  ``aql``/``aqlParameters``) answering ``{"columns": [{"name", "path"}], "rows": [[…]]}``.

No update is blind: :func:`update_composition` and :func:`delete_composition` read the latest
version first when the caller names none, and a stale one is refused by the server (412, or 409
for a delete) — reported as "changed since it was read: latest is <version uid>".

Version uids are :class:`VersionUid` everywhere: ``object_id::system_id::version``.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlencode

from cwsctl.core.errors import ClientRequestError, CwsError, InputError, ServerFailureError
from cwsctl.core.transport.http_auth import challenge_reason, quoted_etag

if TYPE_CHECKING:
    from cwsctl.core.client import ApiClient, ApiResponse
    from cwsctl.targets.openehr.formats import CompositionFormat

#: A versioned object's id: a UUID on every server we know, but any HIER_OBJECT_ID root is valid.
_OBJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")
#: A creating system's id: usually a host name, e.g. ``local.ehrbase.org``.
_SYSTEM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")
#: A version tree id: a trunk version, or ``trunk.branch.version``; each an openEHR Integer, so
#: at most 18 digits (a server naming a longer one would otherwise break ``int()``: exit 1).
_VERSION = re.compile(r"[1-9][0-9]{0,17}(?:\.[1-9][0-9]{0,17}\.[1-9][0-9]{0,17})?")
#: An AQL parameter name (written ``$name`` in the query).
_PARAM_NAME = re.compile(r"\$?([A-Za-z_][A-Za-z0-9_]*)")

#: An example version uid for hints.
VERSION_UID_EXAMPLE = "8849182c-82ad-4088-a07f-48ead4180515::local.ehrbase.org::1"
#: Rows per page for ``query --all`` without ``--limit``.
DEFAULT_PAGE_SIZE = 1000
#: Rows ``query --all`` writes at most unless ``--max-rows`` says otherwise.
DEFAULT_MAX_ROWS = 100_000
JSON = "application/json"


# -- identifiers ---------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class VersionUid:
    """A VERSION's unique id, ``object_id::system_id::version`` (an OBJECT_VERSION_ID)."""

    object_id: str
    system_id: str
    version: str

    @classmethod
    def parse(cls, text: str, what: str = "version uid") -> VersionUid:
        """Parse ``object_id::system_id::version``; InputError (exit 2) names what is wrong."""
        value = text.strip()
        parts = value.split("::")
        if len(parts) != 3:
            raise InputError(
                f"{what} {text!r} is not object_id::system_id::version",
                hint=f"e.g. {VERSION_UID_EXAMPLE}",
            )
        object_id, system_id, version = parts
        for part, rule, name in (
            (object_id, _OBJECT_ID, "object id"),
            (system_id, _SYSTEM_ID, "system id"),
            (version, _VERSION, "version"),
        ):
            if not rule.fullmatch(part):
                raise InputError(
                    f"{what} {text!r} has an invalid {name} {part!r} "
                    "(object_id::system_id::version)",
                    hint=f"e.g. {VERSION_UID_EXAMPLE}",
                )
        return cls(object_id, system_id, version)

    @classmethod
    def from_header(cls, value: str | None) -> VersionUid | None:
        """The version uid in an ``ETag`` (``"uid"`` or ``W/"uid"``) or a ``Location`` URL."""
        if not value:
            return None
        text = value.strip().removeprefix("W/").strip('"')
        text = unquote(text.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])
        try:
            return cls.parse(text)
        except InputError:
            return None

    @property
    def trunk(self) -> int:
        """The trunk version number (``3`` in ``…::3`` and in ``…::3.1.1``)."""
        return int(self.version.split(".", 1)[0])

    def __str__(self) -> str:
        return f"{self.object_id}::{self.system_id}::{self.version}"


def object_id_of(text: str, what: str = "composition uid") -> tuple[str, VersionUid | None]:
    """A composition named by its versioned object uid, or by a version uid.

    Returns the object id, and the version uid when one was given.
    """
    value = text.strip()
    if "::" in value:
        version = VersionUid.parse(value, what)
        return version.object_id, version
    if not _OBJECT_ID.fullmatch(value):
        raise InputError(
            f"{what} {text!r} is not a versioned object uid (a UUID) or a version uid",
            hint=f"use the uid printed by 'cwsctl composition create', e.g. {VERSION_UID_EXAMPLE}",
        )
    return value, None


def check_ehr_id(text: str) -> str:
    """An EHR id as given, if it can name a path segment (a UUID on every known server)."""
    value = text.strip()
    if not _OBJECT_ID.fullmatch(value):
        raise InputError(
            f"EHR id {text!r} is not valid",
            hint="use the ehr_id printed by 'cwsctl ehr create' (a UUID)",
        )
    return value


def check_timestamp(text: str) -> str:
    """An ISO 8601 date-time as the server wants it: extended format, ``T``, and an offset.

    Accepts ``2024-05-01T10:00:00Z``, ``…+02:00`` and ``2024-05-01 10:00:00`` (a space for the
    ``T``); a time without an offset is the local time of this machine and is sent with its
    offset. EHRbase parses ``version_at_time`` as an offset date-time and turns a space into ``+``,
    so ``2024-05-01 10:00:00`` as typed would be refused (400). Else InputError (exit 2).
    """
    value = text.strip()
    candidate = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        moment = datetime.fromisoformat(candidate)
    except ValueError:
        raise InputError(
            f"{text!r} is not an ISO 8601 date-time",
            hint="use e.g. 2024-05-01T10:00:00Z, 2024-05-01T12:00:00.000+02:00 or "
            "'2024-05-01 10:00:00' (local time)",
        ) from None
    if "T" not in value.upper() and " " not in value:
        raise InputError(
            f"{text!r} is a date without a time", hint="add a time, e.g. 2024-05-01T00:00:00Z"
        )
    if moment.tzinfo is None:
        moment = moment.astimezone()  # the machine's zone, as a person typing a time means it
    if value.endswith(("Z", "z")) and "T" in value:
        return value[:-1] + "Z"
    return moment.isoformat()


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


def _segment(value: str) -> str:
    return quote(value, safe=":")


# -- answers -------------------------------------------------------------------------------------


def _document(response: ApiResponse) -> Any:
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
    document = _document(response)
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


def _stale_latest(response: ApiResponse) -> VersionUid | None:
    """The latest version a stale answer names (ETag, Location, body or message), if any.

    EHRbase 2.x names none: its 412 and 409 carry only ``{"error", "message"}``."""
    found = version_uid_of(response)
    if found is not None:
        return found
    document = _document(response)
    if isinstance(document, dict) and isinstance(document.get("latest_version_uid"), str):
        named = VersionUid.from_header(document["latest_version_uid"])
        if named is not None:
            return named
    # Some servers only say it in the error text.
    match = re.search(r"[A-Za-z0-9._\-]+::[A-Za-z0-9._\-]+::[0-9.]+", response.error_message())
    return VersionUid.from_header(match.group(0)) if match else None


# -- EHR -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ehr:
    """An EHR as the server answered: its id and, when returned, the EHR document."""

    ehr_id: str
    document: dict[str, Any] | None
    response: ApiResponse


def _ehr_from(response: ApiResponse) -> Ehr:
    from cwsctl.targets.openehr.kind import ehr_id_of

    ehr_id = ehr_id_of(response)
    if not ehr_id:
        raise ClientRequestError(
            f"the server answered {response.status} {response.reason} without an ehr_id",
            hint="check that the profile URL is the openEHR REST base (…/rest/openehr/v1)",
        )
    document = _document(response)
    return Ehr(ehr_id, document if isinstance(document, dict) else None, response)


def create_ehr(client: ApiClient, subject_id: str, namespace: str) -> Ehr:
    """``POST /ehr`` with an EHR_STATUS for the subject (PARTY_SELF, queryable, modifiable).

    A subject that already has an EHR is refused by the server: 409, ClientRequestError.
    """
    from cwsctl.targets.openehr.kind import ehr_create_request

    _check_subject(subject_id, namespace)
    response = client.request(*ehr_create_request(subject_id, namespace))
    if response.status == 201 or (response.ok and response.body):
        return _ehr_from(response)
    raise fail(
        client,
        response,
        conflict=f"subject {subject_id!r} in namespace {namespace!r} already has an EHR",
        hint=f"find it with: cwsctl ehr show --subject-id {subject_id} --namespace {namespace}"
        if response.status == 409
        else None,
    )


def get_ehr(client: ApiClient, ehr_id: str) -> Ehr:
    """``GET /ehr/{ehr_id}``; a 404 is "no EHR …" (exit 4)."""
    ehr_id = check_ehr_id(ehr_id)
    response = client.request("GET", f"/ehr/{_segment(ehr_id)}")
    if response.ok and response.status != 204:
        return _ehr_from(response)
    raise fail(client, response, not_found=f"no EHR {ehr_id}")


def find_ehr(client: ApiClient, subject_id: str, namespace: str) -> Ehr:
    """``GET /ehr?subject_id=…&subject_namespace=…``; a 404 is "no EHR for …" (exit 4)."""
    from cwsctl.targets.openehr.kind import ehr_lookup_path

    _check_subject(subject_id, namespace)
    response = client.request("GET", ehr_lookup_path(subject_id, namespace))
    if response.ok and response.status != 204:
        return _ehr_from(response)
    raise fail(
        client,
        response,
        not_found=f"no EHR for subject {subject_id!r} in namespace {namespace!r}",
        hint=f"create one with: cwsctl ehr create --subject-id {subject_id} --namespace {namespace}",
    )


def _check_subject(subject_id: str, namespace: str) -> None:
    from cwsctl.targets.openehr.kind import NAMESPACE_RULE, namespace_problem

    for value, what in ((subject_id, "--subject-id"), (namespace, "--namespace")):
        if not value.strip() or any(ord(c) < 32 or c == "\x7f" for c in value):
            raise InputError(f"{what} must be non-empty text without control characters")
    problem = namespace_problem(namespace)
    if problem is not None:
        # EHRbase checks the namespace of every EHR_STATUS subject (400); refused before sending.
        raise InputError(
            f"--namespace {namespace!r} is not a subject namespace EHRbase accepts: {problem}",
            hint=f"a subject namespace must match {NAMESPACE_RULE} (letters, digits and "
            "- _ : / & + ?, starting with a letter)",
        )


@dataclass(frozen=True)
class EhrStatus:
    """One version of an EHR's EHR_STATUS."""

    ehr_id: str
    version_uid: VersionUid | None
    document: Any
    response: ApiResponse


def get_ehr_status(
    client: ApiClient, ehr_id: str, *, version: VersionUid | None = None, at: str | None = None
) -> EhrStatus:
    """The EHR_STATUS: latest, a given version (``/ehr_status/{version_uid}``), or the version at a
    time (``?version_at_time=``)."""
    ehr_id = check_ehr_id(ehr_id)
    path = f"/ehr/{_segment(ehr_id)}/ehr_status"
    if version is not None and at is not None:
        raise InputError("give a version uid or a time, not both")
    if version is not None:
        path += f"/{_segment(str(version))}"
    elif at is not None:
        path += "?" + urlencode({"version_at_time": check_timestamp(at)})
    response = client.request("GET", path)
    if response.ok and response.status != 204:
        return EhrStatus(ehr_id, version_uid_of(response) or version, _document(response), response)
    which = f" version {version}" if version else f" at {at}" if at else ""
    raise fail(client, response, not_found=f"no EHR_STATUS{which} for EHR {ehr_id}")


def update_ehr_status(
    client: ApiClient, ehr_id: str, body: bytes, *, if_match: VersionUid | None = None
) -> CompositionVersion:
    """``PUT /ehr/{ehr_id}/ehr_status`` with ``If-Match`` — never blind, as compositions.

    The preceding version is ``if_match``, else the latest EHR_STATUS, read first. ``If-Match``
    goes quoted, or bare where the server refuses quotes (:func:`send_with_if_match`); a 412 raises
    :class:`StaleVersionError` naming the latest (read once more when the answer does not say).
    """
    ehr_id = check_ehr_id(ehr_id)
    if not body.strip():
        raise InputError("the EHR_STATUS file is empty")
    read_first = if_match is None
    preceding = if_match
    if preceding is None:
        preceding = get_ehr_status(client, ehr_id).version_uid
        if preceding is None:
            raise ClientRequestError(
                f"the server did not say which EHR_STATUS version of {ehr_id} is the latest",
                hint="pass the version you read with --if-match VERSION_UID",
            )
    headers = {"Content-Type": _content_type(body), "Prefer": "return=representation"}
    path = f"/ehr/{_segment(ehr_id)}/ehr_status"
    response = send_with_if_match(client, "PUT", path, body, headers, str(preceding))
    if response.ok:
        return CompositionVersion(ehr_id, version_uid_of(response), response, preceding, read_first)
    read_again = f"cwsctl ehr status {ehr_id}"
    if response.status == 412:
        latest = _stale_latest(response)
        if latest is None:
            try:
                latest = get_ehr_status(client, ehr_id).version_uid
            except CwsError:
                latest = None
        raise StaleVersionError(latest, ehr_id, preceding.object_id, read_again=read_again)
    raise fail(client, response, not_found=f"no EHR {ehr_id}", hint=None)


# -- compositions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompositionVersion:
    """A composition version written or read: its uid and the server's answer."""

    ehr_id: str
    version_uid: VersionUid | None
    response: ApiResponse
    preceding: VersionUid | None = None
    read_first: bool = False


def _content_type(body: bytes) -> str:
    return "application/xml" if body.lstrip()[:1] == b"<" else JSON


def _composition_path(ehr_id: str, uid: str | VersionUid) -> str:
    return f"/ehr/{_segment(ehr_id)}/composition/{_segment(str(uid))}"


def create_composition(
    client: ApiClient,
    ehr_id: str,
    body: bytes,
    *,
    template_id: str | None = None,
    fmt: CompositionFormat = "canonical",
) -> CompositionVersion:
    """``POST /ehr/{ehr_id}/composition`` with ``body`` exactly as given, in ``fmt``: canonical
    (JSON, or XML when it starts with ``<``), FLAT or STRUCTURED (``?format=…&templateId=…``, see
    :func:`~cwsctl.targets.openehr.formats.write_request`)."""
    from cwsctl.targets.openehr.formats import template_missing, write_request

    ehr_id = check_ehr_id(ehr_id)
    if not body.strip():
        raise InputError("the composition file is empty")
    sent = write_request(body, fmt, template_id)
    headers = {**sent.headers, "Prefer": "return=representation"}
    path = sent.path(f"/ehr/{_segment(ehr_id)}/composition")
    response = client.request("POST", path, body, headers)
    if response.ok:
        return CompositionVersion(ehr_id, version_uid_of(response), response)
    missing = template_missing(response, sent.template_id)
    if missing is not None:
        raise missing
    raise fail(
        client,
        response,
        not_found=f"no EHR {ehr_id}",
        hint="check the EHR id (cwsctl ehr show EHR_ID)",
    )


def get_composition(
    client: ApiClient,
    ehr_id: str,
    uid: str,
    *,
    version: VersionUid | None = None,
    at: str | None = None,
    fmt: CompositionFormat = "canonical",
) -> CompositionVersion:
    """A composition: the latest version, a given version uid, or the version at a time.

    A version uid given as ``uid`` reads that version. A deleted composition (the release's 204)
    is a ClientRequestError naming the deletion. ``fmt`` asks for canonical JSON, FLAT or
    STRUCTURED (:func:`~cwsctl.targets.openehr.formats.read_request`).
    """
    from cwsctl.targets.openehr.formats import read_request

    wanted = read_request(fmt)
    ehr_id = check_ehr_id(ehr_id)
    object_id, named = object_id_of(uid)
    if version is not None and at is not None:
        raise InputError("give --version or --at, not both")
    if version is not None and version.object_id != object_id:
        raise InputError(
            f"version {version} is not a version of composition {object_id}",
            hint="the version uid starts with the composition's uid",
        )
    target: str | VersionUid = version or named or object_id
    path = _composition_path(ehr_id, target)
    if at is not None:
        path = (
            _composition_path(ehr_id, object_id)
            + "?"
            + urlencode({"version_at_time": check_timestamp(at)})
        )
    response = client.request("GET", wanted.path(path), headers=wanted.headers)
    which = f" version {target}" if isinstance(target, VersionUid) else f" at {at}" if at else ""
    if response.status == 204:
        deleted = version_uid_of(response)
        raise ClientRequestError(
            f"composition {object_id}{which} is deleted"
            + (f" (deletion is version {deleted})" if deleted else ""),
            hint=f"see its versions: cwsctl composition history {ehr_id} {object_id}",
        )
    if response.ok:
        return CompositionVersion(ehr_id, version_uid_of(response) or version or named, response)
    raise fail(
        client,
        response,
        not_found=f"no composition {object_id}{which} in EHR {ehr_id}",
        hint=f"list its versions: cwsctl composition history {ehr_id} {object_id}",
    )


def latest_version(client: ApiClient, ehr_id: str, object_id: str) -> VersionUid:
    """The uid of the composition's latest version, read from the server (its ETag)."""
    current = get_composition(client, ehr_id, object_id)
    if current.version_uid is None:
        raise ClientRequestError(
            f"the server did not say which version of {object_id} is the latest (no ETag)",
            hint="pass the version you read with --if-match VERSION_UID",
        )
    return current.version_uid


def _preceding(
    client: ApiClient, ehr_id: str, uid: str, if_match: VersionUid | None
) -> tuple[str, VersionUid, bool]:
    """The object id, the version the change is based on, and whether it had to be read first."""
    object_id, named = object_id_of(uid)
    preceding = if_match or named
    if preceding is not None and preceding.object_id != object_id:
        raise InputError(
            f"--if-match {preceding} is not a version of composition {object_id}",
            hint="the version uid starts with the composition's uid",
        )
    if named is not None and if_match is not None and named != if_match:
        raise InputError(f"the composition uid names version {named} but --if-match {if_match}")
    if preceding is not None:
        return object_id, preceding, False
    return object_id, latest_version(client, ehr_id, object_id), True


def update_composition(
    client: ApiClient,
    ehr_id: str,
    uid: str,
    body: bytes,
    *,
    if_match: VersionUid | None = None,
    template_id: str | None = None,
    fmt: CompositionFormat = "canonical",
) -> CompositionVersion:
    """``PUT /ehr/{ehr_id}/composition/{uid}`` with ``If-Match`` — never blind. ``body`` is in
    ``fmt``, sent as :func:`~cwsctl.targets.openehr.formats.write_request` says.

    The preceding version is ``if_match``, else the version named by ``uid`` (when it is a version
    uid), else the latest version, read first. ``If-Match`` goes quoted, or bare where the server
    refuses quotes (:func:`send_with_if_match`). A 412 raises :class:`StaleVersionError` naming
    the latest version: from the answer, or read once more when the answer does not say (EHRbase).
    """
    ehr_id = check_ehr_id(ehr_id)
    if not body.strip():
        raise InputError("the composition file is empty")
    from cwsctl.targets.openehr.formats import write_request

    sent = write_request(body, fmt, template_id)
    object_id, preceding, read_first = _preceding(client, ehr_id, uid, if_match)
    headers = {**sent.headers, "Prefer": "return=representation"}
    path = sent.path(_composition_path(ehr_id, object_id))
    response = send_with_if_match(client, "PUT", path, body, headers, str(preceding))
    if response.ok:
        written = version_uid_of(response)
        return CompositionVersion(ehr_id, written, response, preceding, read_first)
    if response.status == 412 or (response.status == 409 and _stale_latest(response)):
        latest = _stale_latest(response) or _latest_after_refusal(client, ehr_id, object_id)
        raise StaleVersionError(latest, ehr_id, object_id)
    raise fail(
        client,
        response,
        not_found=f"no composition {object_id} in EHR {ehr_id}",
        hint="create it first: cwsctl composition create EHR_ID FILE",
    )


def _latest_after_refusal(client: ApiClient, ehr_id: str, object_id: str) -> VersionUid | None:
    """The composition's latest version, read once (the ETag of ``GET …/composition/{uid}``),
    for a refusal that did not name it; a deletion (204, no ETag on EHRbase) is found in the
    revision history. None when it cannot be read."""
    try:
        response = client.request("GET", _composition_path(ehr_id, object_id))
        if response.ok and response.status != 204:
            found = version_uid_of(response)
            if found is not None:
                return found
        if response.status == 204 or response.ok:
            versions = [
                VersionUid.from_header(r.version_uid)
                for r in composition_history(client, ehr_id, object_id)
            ]
            known = [v for v in versions if v is not None]
            return max(known, key=lambda v: v.trunk) if known else None
    except CwsError:
        return None
    return None


def delete_composition(
    client: ApiClient, ehr_id: str, uid: str, *, if_match: VersionUid | None = None
) -> CompositionVersion:
    """``DELETE /ehr/{ehr_id}/composition/{preceding_version_uid}`` — never blind, as update.

    The server keeps the deletion as a new version. The precondition is the version uid in the
    path (the release defines no If-Match for DELETE, EHRbase reads none). A stale preceding
    version — 409 in the release and on EHRbase ("If-Match version_uid does not match latest
    version", no ETag), 412 on some servers — raises :class:`StaleVersionError` naming the
    latest, read once more when the answer does not say. Deleting a deleted or unknown
    composition is 404 on EHRbase (400 in the release): one read says which.
    """
    ehr_id = check_ehr_id(ehr_id)
    object_id, preceding, read_first = _preceding(client, ehr_id, uid, if_match)
    response = client.request("DELETE", _composition_path(ehr_id, preceding))
    if response.ok:
        return CompositionVersion(ehr_id, version_uid_of(response), response, preceding, read_first)
    if response.status in (409, 412):
        latest = _stale_latest(response) or _latest_after_refusal(client, ehr_id, object_id)
        if response.status == 412 or (latest is not None and latest != preceding):
            raise StaleVersionError(latest, ehr_id, object_id)
    history = f"see its versions: cwsctl composition history {ehr_id} {object_id}"
    if response.status in (400, 404):
        current = _current_state(client, ehr_id, object_id)
        if current == "deleted":
            raise ClientRequestError(f"composition {object_id} is already deleted", history)
    raise fail(
        client,
        response,
        not_found=f"no composition version {preceding} in EHR {ehr_id}",
        conflict=f"composition {object_id} cannot be deleted: {response.error_message()}",
        hint=history,
    )


def _current_state(client: ApiClient, ehr_id: str, object_id: str) -> str | None:
    """``"deleted"`` when the composition's latest version is a deletion (its GET is 204),
    ``"present"`` when it reads, None when unknown or unreadable."""
    try:
        response = client.request("GET", _composition_path(ehr_id, object_id))
    except CwsError:
        return None
    if response.status == 204:
        return "deleted"
    return "present" if response.ok else None


@dataclass(frozen=True)
class Revision:
    """One entry of a composition's revision history."""

    version_uid: str
    time_committed: str | None
    change_type: str | None
    committer: str | None
    description: str | None

    def as_dict(self) -> dict[str, str | None]:
        """The entry as a flat JSON object."""
        return {
            "version_uid": self.version_uid,
            "time_committed": self.time_committed,
            "change_type": self.change_type,
            "committer": self.committer,
            "description": self.description,
        }


def _text(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in ("value", "name"):
            if isinstance(value.get(key), str):
                return str(value[key])
        return None
    return value if isinstance(value, str) else None


def composition_history(client: ApiClient, ehr_id: str, uid: str) -> list[Revision]:
    """``GET /ehr/{ehr_id}/versioned_composition/{uid}/revision_history``, oldest first."""
    ehr_id = check_ehr_id(ehr_id)
    object_id, _ = object_id_of(uid)
    path = f"/ehr/{_segment(ehr_id)}/versioned_composition/{_segment(object_id)}/revision_history"
    response = client.request("GET", path)
    if not response.ok:
        raise fail(client, response, not_found=f"no composition {object_id} in EHR {ehr_id}")
    document = _document(response)
    items = document.get("items") if isinstance(document, dict) else document
    if not isinstance(items, list):
        raise ClientRequestError(
            f"the revision history of {object_id} is not a list of versions",
            hint="the server's answer does not follow the openEHR REST API",
        )
    revisions = []
    for item in items:
        if not isinstance(item, dict):
            continue
        audits = item.get("audits") or []
        audit = audits[-1] if isinstance(audits, list) and audits else {}
        audit = audit if isinstance(audit, dict) else {}
        revisions.append(
            Revision(
                version_uid=_text(item.get("version_id")) or "?",
                time_committed=_text(audit.get("time_committed")),
                change_type=_text(audit.get("change_type")),
                committer=_text(audit.get("committer")),
                description=_text(audit.get("description")),
            )
        )
    return revisions


# -- AQL -----------------------------------------------------------------------------------------


def parse_query_parameter(text: str) -> tuple[str, Any]:
    """``name=value`` (a string, always) or ``name:=JSON`` (a typed value: ``n:=5``, ``ok:=true``).

    A leading ``$`` on the name is dropped (AQL writes ``$name``).
    """
    name, sep, value = text.partition("=")
    if not sep:
        raise InputError(f"bad --param {text!r}", hint="use --param name=value or name:=JSON")
    typed = name.endswith(":")
    name = name.removesuffix(":")
    match = _PARAM_NAME.fullmatch(name.strip())
    if not match:
        raise InputError(
            f"bad --param name {name!r}",
            hint="a parameter name is letters, digits and _, as $name in the query",
        )
    if not typed:
        return match.group(1), value
    try:
        return match.group(1), json.loads(value)
    except ValueError:
        raise InputError(
            f"--param {name}:= needs a JSON value, not {value!r}",
            hint='e.g. --param n:=5, --param flag:=true, --param ids:=\'["a","b"]\'',
        ) from None


@dataclass
class ResultPage:
    """One page of an AQL result set."""

    offset: int
    columns: list[dict[str, Any]]
    rows: list[list[Any]]
    document: dict[str, Any] = field(repr=False)
    response: ApiResponse = field(repr=False)

    @property
    def column_names(self) -> list[str]:
        """:func:`column_names` of this page's columns."""
        return column_names(self.columns, len(self.rows[0]) if self.rows else 0)


def column_names(columns: list[dict[str, Any]], width: int = 0) -> list[str]:
    """Unique names for the result columns: each column's ``name``, else its ``path``, else
    ``#n``; a repeated name gets ``_2``, ``_3``… (they become CSV headers and JSON keys)."""
    names: list[str] = []
    seen: set[str] = set()
    count = max(len(columns), width)
    for index in range(count):
        column = columns[index] if index < len(columns) else {}
        base = str(column.get("name") or column.get("path") or f"#{index + 1}")
        name, n = base, 1
        while name in seen:
            n += 1
            name = f"{base}_{n}"
        seen.add(name)
        names.append(name)
    return names


def query_body(
    q: str, parameters: Mapping[str, Any] | None, offset: int | None, fetch: int | None
) -> bytes:
    """The ``POST /query/aql`` body; absent fields are left out."""
    document: dict[str, Any] = {"q": q}
    if parameters:
        document["query_parameters"] = dict(parameters)
    if offset is not None:
        document["offset"] = offset
    if fetch is not None:
        document["fetch"] = fetch
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def query_page(
    client: ApiClient,
    q: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    offset: int | None = None,
    fetch: int | None = None,
) -> ResultPage:
    """Run ``q`` once (``POST /query/aql``) and read one page of its result set.

    An ``offset`` needs a ``fetch`` (EHRbase answers 422 to an offset alone): InputError.
    """
    response = _query_response(client, q, parameters, offset, fetch)
    if not response.ok:
        raise fail(client, response, hint=_query_hint(response))
    return _result_page(response, offset)


def _query_response(
    client: ApiClient,
    q: str,
    parameters: Mapping[str, Any] | None,
    offset: int | None,
    fetch: int | None,
) -> ApiResponse:
    if not q.strip():
        raise InputError("the AQL query is empty")
    check_paging(q, offset, fetch)
    body = query_body(q, parameters, offset, fetch)
    return client.request("POST", "/query/aql", body, {"Content-Type": JSON})


def _result_page(response: ApiResponse, offset: int | None) -> ResultPage:
    document = _document(response)
    if response.status == 204 or document is None:
        document = {"columns": [], "rows": []}
    rows = document.get("rows") if isinstance(document, dict) else None
    columns = document.get("columns") if isinstance(document, dict) else None
    if not isinstance(rows, list) or not isinstance(columns or [], list):
        raise ClientRequestError(
            "the query answer is not a result set (no 'rows' list)",
            hint="the server's answer does not follow the openEHR Query API",
        )
    clean_rows = [row if isinstance(row, list) else [row] for row in rows]
    clean_columns = [c if isinstance(c, dict) else {"name": str(c)} for c in columns or []]
    assert isinstance(document, dict)
    return ResultPage(offset or 0, clean_columns, clean_rows, document, response)


_MAX_FETCH = re.compile(r"exceeds maximum fetch (\d+)", re.IGNORECASE)
_MAX_LIMIT = re.compile(r"exceeds maximum limit (\d+)", re.IGNORECASE)


def max_fetch_of(response: ApiResponse) -> int | None:
    """M in EHRbase's 422 "Fetch parameter N exceeds maximum fetch M" (``max-fetch`` is set)."""
    if response.status != 422:
        return None
    match = _MAX_FETCH.search(response.error_message())
    return int(match.group(1)) if match else None


def _query_hint(response: ApiResponse) -> str | None:
    if response.status == 400:
        return "the server rejected the query: check the AQL and its --param values"
    if response.status != 422:
        return None
    text = response.error_message()
    allowed = max_fetch_of(response)
    if allowed is not None:
        return (
            f"the server returns at most {allowed} rows per request: use --limit {allowed} or "
            "less, or --all (which pages within that)"
        )
    match = _MAX_LIMIT.search(text)
    if match:
        return f"the server allows at most LIMIT {match.group(1)} in the AQL: lower it"
    lowered = text.lower()
    if "limit clause" in lowered or ("offset" in lowered and "aql" in lowered):
        return (
            "the AQL has its own LIMIT/OFFSET: drop --limit/--offset, or drop the clause and "
            "page with --limit/--offset or --all"
        )
    if "offset" in lowered and "fetch" in lowered:
        return "an offset needs a fetch: give --limit with --offset"
    return "the server refused the query as unprocessable: see its message"


_STRINGS_AND_COMMENTS = re.compile(
    r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|--[^\n]*|/\*.*?\*/", re.DOTALL
)
_PAGING_CLAUSE = re.compile(
    r"(?<![\w/.\[$])(LIMIT|OFFSET)\s+(?:\d|\$)|\bSELECT\s+(?:DISTINCT\s+)?(TOP)\s+\d",
    re.IGNORECASE,
)


def check_paging(
    q: str, offset: int | None, fetch: int | None, *, all_pages: bool = False
) -> list[str]:
    """The AQL's own paging clauses (:func:`paging_clauses`), once what no server takes is
    refused (InputError, exit 2): an ``offset`` without a ``fetch`` (EHRbase: 422) unless
    ``all_pages`` (which sends one), and a ``fetch`` or ``offset`` next to the AQL's own
    LIMIT/OFFSET/TOP (EHRbase refuses them with a LIMIT, 422, or silently takes the smaller)."""
    if offset is not None and fetch is None and not all_pages:
        raise InputError(
            "--offset needs --limit: openEHR servers refuse an offset without a fetch",
            hint="give --offset N --limit M, or --all (which pages from --offset)",
        )
    clauses = paging_clauses(q)
    if clauses and (offset is not None or fetch is not None):
        raise InputError(
            f"the AQL has its own {'/'.join(clauses)}: --limit and --offset do not go with it",
            hint="drop --limit/--offset (the query runs as written), or drop the clause from "
            "the AQL and page with --limit/--offset or --all",
        )
    return clauses


def paging_clauses(q: str) -> list[str]:
    """The AQL's own paging clauses (``LIMIT``, ``OFFSET``, ``TOP``), upper case, in order;
    words inside string literals and comments do not count."""
    bare = _STRINGS_AND_COMMENTS.sub(" ", q)
    found: list[str] = []
    for match in _PAGING_CLAUSE.finditer(bare):
        word = (match.group(1) or match.group(2)).upper()
        if word not in found:
            found.append(word)
    return found


class RowCapError(ClientRequestError):
    """``query --all`` stopped at its row cap with more rows to come (exit 4): the rows written
    are complete, the result set is not."""


def query_pages(
    client: ApiClient,
    q: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    offset: int = 0,
    page_size: int | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    notice: Callable[[str], None] | None = None,
) -> Iterator[ResultPage]:
    """Every page of ``q``'s result set, from ``offset``, ``page_size`` rows at a time, and at
    most ``max_rows`` rows in all.

    Pages are requested one after another (each a bounded request of its own) and yielded as they
    come; nothing is kept from one page to the next. Paging stops after a page shorter than the
    fetch the server applied (``meta.fetch`` when it says, else the fetch asked), or an empty one.
    A server that refuses the page size with EHRbase's 422 "Fetch parameter N exceeds maximum
    fetch M" is asked again with pages of M (``notice`` is told). When ``max_rows`` rows are
    yielded and the server has more (the last page asks for one row beyond the cap to know),
    :class:`RowCapError` is raised after the last page: a server that always answers a full
    page cannot keep a job running forever. A server that answers for another offset than asked
    (``meta.offset``) is an error rather than an endless loop.

    ``page_size`` None is :data:`DEFAULT_PAGE_SIZE`. A query with its own LIMIT/OFFSET/TOP
    (:func:`paging_clauses`) is never paged past the user's limit: it runs once, as written,
    without fetch or offset (EHRbase refuses both next to a LIMIT, or would take the smaller),
    still within ``max_rows``; with a ``page_size`` or ``offset`` it is an InputError.
    """
    if page_size is not None and page_size < 1:
        raise InputError("the page size must be at least 1")
    if max_rows < 1:
        raise InputError("--max-rows must be at least 1")
    if check_paging(q, offset or None, page_size, all_pages=True):
        page = query_page(client, q, parameters)
        more = len(page.rows) > max_rows
        page.rows = page.rows[:max_rows]
        yield page
        if more:
            raise RowCapError(
                f"stopped at {max_rows} rows (--max-rows): the result set has more",
                hint="raise --max-rows, or lower the query's own LIMIT",
            )
        return
    page_size = page_size or DEFAULT_PAGE_SIZE
    written = 0
    while True:
        left = max_rows - written
        fetch = min(page_size, left + 1)
        response = _query_response(client, q, parameters, offset, fetch)
        allowed = max_fetch_of(response)
        if allowed is not None and 0 < allowed < fetch:
            page_size = allowed
            if notice is not None:
                notice(f"the server returns at most {allowed} rows per request: pages of {allowed}")
            continue
        if not response.ok:
            raise fail(client, response, hint=_query_hint(response))
        page = _result_page(response, offset)
        applied = fetch
        meta = page.document.get("meta")
        meta = meta if isinstance(meta, dict) else {}
        if isinstance(meta.get("fetch"), int) and meta["fetch"] > 0:
            applied = min(applied, int(meta["fetch"]))
        if isinstance(meta.get("offset"), int) and meta["offset"] != offset:
            raise ClientRequestError(
                f"asked for rows from offset {offset}, the server answered from {meta['offset']}",
                hint="run the query without --all, with --offset and --limit",
            )
        more = len(page.rows) > left
        if more:
            page.rows = page.rows[:left]
        yield page
        written += len(page.rows)
        if more:
            raise RowCapError(
                f"stopped at {max_rows} rows (--max-rows): the result set has more",
                hint=f"raise --max-rows, narrow the query, or go on with --offset "
                f"{offset + len(page.rows)} (add ORDER BY for a stable order)",
            )
        if len(page.rows) < applied or not page.rows:
            return
        offset += len(page.rows)

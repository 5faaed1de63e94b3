"""openEHR EHRs (one per subject) and their EHR_STATUS: create, find, read, update."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from cwsctl.core.errors import ClientRequestError, CwsError, InputError
from cwsctl.targets.openehr.answers import (
    CompositionVersion,
    StaleVersionError,
    fail,
    json_document,
    stale_latest,
    version_uid_of,
)
from cwsctl.targets.openehr.ids import VersionUid, check_ehr_id, check_timestamp, path_segment
from cwsctl.targets.openehr.if_match import send_with_if_match
from cwsctl.targets.openehr.subject import (
    NAMESPACE_RULE,
    ehr_create_request,
    ehr_id_of,
    ehr_lookup_path,
    namespace_problem,
)

if TYPE_CHECKING:
    from cwsctl.core.client import ApiClient, ApiResponse

JSON = "application/json"


@dataclass(frozen=True)
class Ehr:
    """An EHR as the server answered: its id and, when returned, the EHR document."""

    ehr_id: str
    document: dict[str, Any] | None
    response: ApiResponse


def _ehr_from(response: ApiResponse) -> Ehr:
    ehr_id = ehr_id_of(response)
    if not ehr_id:
        raise ClientRequestError(
            f"the server answered {response.status} {response.reason} without an ehr_id",
            hint="check that the profile URL is the openEHR REST base (…/rest/openehr/v1)",
        )
    document = json_document(response)
    return Ehr(ehr_id, document if isinstance(document, dict) else None, response)


def create_ehr(client: ApiClient, subject_id: str, namespace: str) -> Ehr:
    """``POST /ehr`` with an EHR_STATUS for the subject (PARTY_SELF, queryable, modifiable).

    A subject that already has an EHR is refused by the server: 409, ClientRequestError.
    """
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
    response = client.request("GET", f"/ehr/{path_segment(ehr_id)}")
    if response.ok and response.status != 204:
        return _ehr_from(response)
    raise fail(client, response, not_found=f"no EHR {ehr_id}")


def find_ehr(client: ApiClient, subject_id: str, namespace: str) -> Ehr:
    """``GET /ehr?subject_id=…&subject_namespace=…``; a 404 is "no EHR for …" (exit 4)."""
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
    path = f"/ehr/{path_segment(ehr_id)}/ehr_status"
    if version is not None and at is not None:
        raise InputError("give a version uid or a time, not both")
    if version is not None:
        path += f"/{path_segment(str(version))}"
    elif at is not None:
        path += "?" + urlencode({"version_at_time": check_timestamp(at)})
    response = client.request("GET", path)
    if response.ok and response.status != 204:
        return EhrStatus(
            ehr_id, version_uid_of(response) or version, json_document(response), response
        )
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
    path = f"/ehr/{path_segment(ehr_id)}/ehr_status"
    response = send_with_if_match(client, "PUT", path, body, headers, str(preceding))
    if response.ok:
        return CompositionVersion(ehr_id, version_uid_of(response), response, preceding, read_first)
    read_again = f"cwsctl ehr status {ehr_id}"
    if response.status == 412:
        latest = stale_latest(response)
        if latest is None:
            try:
                latest = get_ehr_status(client, ehr_id).version_uid
            except CwsError:
                latest = None
        raise StaleVersionError(latest, ehr_id, preceding.object_id, read_again=read_again)
    raise fail(client, response, not_found=f"no EHR {ehr_id}", hint=None)


def _content_type(body: bytes) -> str:
    return "application/xml" if body.lstrip()[:1] == b"<" else JSON

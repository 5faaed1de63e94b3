"""Versioned openEHR compositions: create, read (any version), update, delete, revision history.

Each operation is a function over an :class:`~cwsctl.core.client.ApiClient` (an openehr profile's
client brings the credentials) that builds the request, sends it, and reads the answer into a
small result, or raises the one-line :class:`~cwsctl.core.errors.CwsError` that says what went
wrong. Where the v0.1 proposal in the seed differs from the release, the release wins:

- optimistic locking uses ``If-Match: {preceding_version_uid}`` (the proposal's ``Match-If``);
- compositions live at ``/ehr/{ehr_id}/composition[/{uid}]`` (not ``…/compositions``), a version
  is read with ``?version_at_time=`` (not ``versionSelector``) and a composition is deleted with
  ``DELETE /ehr/{ehr_id}/composition/{preceding_version_uid}``;
- revision history is ``GET /ehr/{ehr_id}/versioned_composition/{uid}/revision_history``.

No update is blind: :func:`update_composition` and :func:`delete_composition` read the latest
version first when the caller names none, and a stale one is refused by the server (412, or 409
for a delete) — reported as "changed since it was read: latest is <version uid>".
"""

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
from cwsctl.targets.openehr.formats import (
    CompositionFormat,
    read_request,
    template_missing,
    write_request,
)
from cwsctl.targets.openehr.ids import (
    VersionUid,
    check_ehr_id,
    check_timestamp,
    object_id_of,
    path_segment,
)
from cwsctl.targets.openehr.if_match import send_with_if_match

if TYPE_CHECKING:
    from cwsctl.core.client import ApiClient


def _composition_path(ehr_id: str, uid: str | VersionUid) -> str:
    return f"/ehr/{path_segment(ehr_id)}/composition/{path_segment(str(uid))}"


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
    ehr_id = check_ehr_id(ehr_id)
    if not body.strip():
        raise InputError("the composition file is empty")
    sent = write_request(body, fmt, template_id)
    headers = {**sent.headers, "Prefer": "return=representation"}
    path = sent.path(f"/ehr/{path_segment(ehr_id)}/composition")
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
    sent = write_request(body, fmt, template_id)
    object_id, preceding, read_first = _preceding(client, ehr_id, uid, if_match)
    headers = {**sent.headers, "Prefer": "return=representation"}
    path = sent.path(_composition_path(ehr_id, object_id))
    response = send_with_if_match(client, "PUT", path, body, headers, str(preceding))
    if response.ok:
        written = version_uid_of(response)
        return CompositionVersion(ehr_id, written, response, preceding, read_first)
    if response.status == 412 or (response.status == 409 and stale_latest(response)):
        latest = stale_latest(response) or _latest_after_refusal(client, ehr_id, object_id)
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
        latest = stale_latest(response) or _latest_after_refusal(client, ehr_id, object_id)
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
    path = (
        f"/ehr/{path_segment(ehr_id)}/versioned_composition/"
        f"{path_segment(object_id)}/revision_history"
    )
    response = client.request("GET", path)
    if not response.ok:
        raise fail(client, response, not_found=f"no composition {object_id} in EHR {ehr_id}")
    document = json_document(response)
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

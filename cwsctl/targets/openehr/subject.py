"""An EHR's subject: the namespace of a facility's external ids (as EHRbase accepts it), the
EHR_STATUS of a new EHR, and the requests that create and find a subject's EHR.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from cwsctl.core.kind import PatientRequest, json_field

if TYPE_CHECKING:
    from cwsctl.core.client import ApiResponse


#: The subject namespace holding CorEMR's external ids of one facility (as on OpenEMR).
SUBJECT_NAMESPACE = "urn:cwsctl:external-id:facility:{facility}"
#: The namespace of a facility code that holds characters EHRbase refuses, escaped.
ENCODED_SUBJECT_NAMESPACE = "urn:cwsctl:external-id:facility-enc:{facility}"
#: What EHRbase accepts as a subject namespace (``ValidationServiceImp``; else 400).
NAMESPACE_RULE = "[a-zA-Z][a-zA-Z0-9-_:/&+?]*"
_NAMESPACE = re.compile(r"[a-zA-Z][a-zA-Z0-9\-_:/&+?]*")
#: Characters kept as they are in an encoded facility code (the rule's, less the escape ``+``).
_KEPT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_:/&?")


def subject_namespace(facility: str) -> str:
    """The EHR subject namespace for external ids of ``facility``.

    ``urn:cwsctl:external-id:facility:FACILITY`` when that is a namespace EHRbase accepts (every
    integer facility, and codes of letters, digits and ``- _ : / & + ?``). A code holding any
    other character (``.``, a space, ``#``, non-ASCII…) would make every row a 400, so it is
    escaped instead: ``urn:cwsctl:external-id:facility-enc:`` followed by the code with each
    such byte of its UTF-8, and ``+`` itself, written ``+XX`` (upper-case hex) — ``MAIN.NORTH``
    becomes ``…:facility-enc:MAIN+2ENORTH``. The two prefixes differ, so no two facilities share
    a namespace, and codes that were valid keep the namespace they always had.
    """
    plain = SUBJECT_NAMESPACE.format(facility=facility)
    if _NAMESPACE.fullmatch(plain):
        return plain
    escaped = "".join(
        chr(byte) if chr(byte) in _KEPT else f"+{byte:02X}" for byte in facility.encode("utf-8")
    )
    return ENCODED_SUBJECT_NAMESPACE.format(facility=escaped)


def namespace_problem(namespace: str) -> str | None:
    """Why EHRbase would refuse ``namespace`` as a subject namespace (400), or None."""
    if _NAMESPACE.fullmatch(namespace):
        return None
    if not namespace:
        return "it is empty"
    if not namespace[0].isascii() or not namespace[0].isalpha():
        return f"it must start with a letter, not {namespace[0]!r}"
    position, char = next(
        (i, c) for i, c in enumerate(namespace) if not _NAMESPACE.fullmatch("a" + c)
    )
    return f"{char!r} (at position {position + 1}) is not allowed"


def ehr_status(subject_id: str, namespace: str) -> dict[str, Any]:
    """An EHR_STATUS for a new EHR: a PARTY_SELF subject, queryable and modifiable."""
    return {
        "_type": "EHR_STATUS",
        "archetype_node_id": "openEHR-EHR-EHR_STATUS.generic.v1",
        "name": {"value": "EHR Status"},
        "subject": {
            "_type": "PARTY_SELF",
            "external_ref": {
                "_type": "PARTY_REF",
                "id": {"_type": "GENERIC_ID", "value": subject_id, "scheme": "id_scheme"},
                "namespace": namespace,
                "type": "PERSON",
            },
        },
        "is_queryable": True,
        "is_modifiable": True,
    }


def ehr_create_request(subject_id: str, namespace: str) -> PatientRequest:
    """``POST /ehr`` with the subject's EHR_STATUS, asking for the EHR back."""
    body = json.dumps(ehr_status(subject_id, namespace), separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "Prefer": "return=representation"}
    return PatientRequest("POST", "/ehr", body, headers)


def ehr_lookup_path(subject_id: str, namespace: str) -> str:
    """``/ehr?subject_id=…&subject_namespace=…``: the EHR of a subject."""
    return f"/ehr?{urlencode({'subject_id': subject_id, 'subject_namespace': namespace})}"


def ehr_id_of(response: ApiResponse) -> str | None:
    """The ehr_id in an EHR answer's body, else its ETag or Location."""
    value = json_field(response.body, "ehr_id", "value")
    if isinstance(value, str) and value:
        return value
    etag = response.headers.get("etag", "").strip().removeprefix("W/").strip('"')
    if etag:
        return etag
    location = response.headers.get("location", "").rstrip("/")
    return location.rsplit("/", 1)[-1] or None if "/ehr/" in location else None

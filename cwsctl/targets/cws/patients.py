"""A patient on CorEMR: the walkthrough's JSON body, 201 created, 409 already there."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from cwsctl.core.kind import PatientMapping, PatientRequest, Verdict, json_field

if TYPE_CHECKING:
    from cwsctl.core.client import ApiResponse


PATIENTS_PATH = "/ws/patients/"


class CwsPatients(PatientMapping):
    """A patient is the walkthrough's JSON body; 201 created, 409 already there."""

    def create_request(self, record: dict[str, Any]) -> PatientRequest:
        """``POST /ws/patients/`` with the record as CWS JSON."""
        return PatientRequest("POST", PATIENTS_PATH, patient_body(record), {})

    def verdict(self, response: ApiResponse) -> Verdict:
        """201 created, 409 exists (both with the id CorEMR gives), else rejected or failed."""
        if response.status == 201:
            return Verdict("created", json_field(response.body, "id"))
        if response.status == 409:
            return Verdict("exists", json_field(response.body, "id"), response.error_message())
        outcome = "failed" if response.status >= 500 or response.status < 200 else "rejected"
        return Verdict(outcome, None, response.error_message())

    def lookup_path(self, external_id: str, facility: str) -> str:
        """``GET /ws/patients/?external_id=…&facility=…``."""
        return f"{PATIENTS_PATH}?{urlencode({'external_id': external_id, 'facility': facility})}"

    def found_id(self, response: ApiResponse) -> Any:
        """The first match's id (True when CorEMR gives none), or None."""
        patients = json_field(response.body, "patients") or []
        return patients[0].get("id", True) if patients else None


def patient_body(record: Mapping[str, Any]) -> bytes:
    """The exact bytes sent for a record: compact UTF-8 JSON, fields in schema order."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

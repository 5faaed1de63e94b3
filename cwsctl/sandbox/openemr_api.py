"""The OpenEMR flavour's API endpoints: Standard REST ``/apis/{site}/api/patient`` and FHIR R4.

Both work on one patient table (:mod:`.openemr_store`): a FHIR Patient's id is the Standard
API's ``uuid``, and its pubpid is an identifier. Bearer tokens are checked before these run (the
envelope in :mod:`.openemr`); FHIR ``metadata`` needs none.

Standard API answers use OpenEMR's envelope ``{"validationErrors", "internalErrors", "data"}``;
FHIR answers are ``application/fhir+json`` resources, errors an ``OperationOutcome``.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cwsctl.sandbox import openemr_patients as patients
from cwsctl.sandbox.openemr_oauth import OpenEmrState
from cwsctl.sandbox.openemr_store import MultipleMatchesError

FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.0.1"
SOFTWARE_NAME = "cwsctl sandbox (OpenEMR flavour)"
#: Standard API search fields (OpenEMR ignores any other query parameter).
SEARCH_FIELDS = ("fname", "lname", "pubpid", "DOB", "sex", "city", "state", "postal_code", "email")
#: FHIR Patient search parameters served; others are ignored, as FHIR allows (see Bundle.link).
FHIR_SEARCH_PARAMS = ("_id", "identifier", "name", "family", "given", "birthdate")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def envelope(data: Any, status: int = 200, validation_errors: Any = None) -> Response:
    """OpenEMR's Standard API answer."""
    return JSONResponse(
        {"validationErrors": validation_errors or [], "internalErrors": [], "data": data}, status
    )


def fhir(
    resource: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A FHIR answer."""
    return JSONResponse(resource, status, headers=headers, media_type=FHIR_JSON)


def outcome(status: int, diagnostics: str, code: str = "invalid") -> Response:
    """A FHIR OperationOutcome with one error issue."""
    return fhir(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
        },
        status,
    )


class ApiEndpoints:
    """``/apis/{site}/api/patient…`` and ``/apis/{site}/fhir/…`` over one :class:`OpenEmrState`."""

    def __init__(self, state: OpenEmrState) -> None:
        self.state = state
        self.store = state.store

    # -- Standard API ---------------------------------------------------------------------------
    async def patients(self, request: Request) -> Response:
        if request.method == "POST":
            return await self._create_standard(request)
        filters = {k: v for k, v in request.query_params.items() if k in SEARCH_FIELDS}
        if "pubpid" in filters:
            candidates = self.store.patients_by_pubpid(filters["pubpid"])
        else:
            candidates = self.store.patients()
        found = [patients.standard_view(p) for p in candidates if patients.matches(p, filters)]
        return envelope(found)

    async def _create_standard(self, request: Request) -> Response:
        try:
            data = json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return envelope(None, 400, {"body": {"Json::INVALID": "the body is not valid JSON"}})
        record, errors = patients.validate_record(data)
        if errors:
            return envelope(None, 400, errors)
        patient, _ = self.store.create_patient(record)
        return envelope({"pid": patient.pid, "uuid": patient.uuid}, 201)

    async def patient(self, request: Request) -> Response:
        patient_uuid: str = request.path_params["uuid"]
        if not _UUID.match(patient_uuid):
            return envelope(None, 400, {"uuid": {"Uuid::INVALID": "uuid is not a valid UUID"}})
        patient = self.store.patient(patient_uuid.lower())
        if patient is None:
            return envelope(None, 404)
        return envelope(patients.standard_view(patient))

    # -- FHIR -----------------------------------------------------------------------------------
    async def metadata(self, request: Request) -> Response:
        base = self._fhir_base(request)
        return fhir(
            {
                "resourceType": "CapabilityStatement",
                "status": "active",
                "date": "2024-01-01",
                "kind": "instance",
                "fhirVersion": FHIR_VERSION,
                "format": [FHIR_JSON, "json"],
                "software": {"name": SOFTWARE_NAME},
                "implementation": {"description": SOFTWARE_NAME, "url": base},
                "rest": [
                    {
                        "mode": "server",
                        "security": {
                            "service": [
                                {"coding": [{"code": "SMART-on-FHIR"}], "text": "OAuth2 bearer"}
                            ],
                            "extension": [_oauth_uris(request, self.state.site)],
                        },
                        "resource": [
                            {
                                "type": "Patient",
                                "interaction": [
                                    {"code": "create"},
                                    {"code": "read"},
                                    {"code": "search-type"},
                                ],
                                "conditionalCreate": True,
                                "searchParam": [
                                    {"name": "_id", "type": "token"},
                                    {"name": "identifier", "type": "token"},
                                    {"name": "name", "type": "string"},
                                    {"name": "family", "type": "string"},
                                    {"name": "given", "type": "string"},
                                    {"name": "birthdate", "type": "date"},
                                ],
                            }
                        ],
                    }
                ],
            }
        )

    async def fhir_patients(self, request: Request) -> Response:
        if request.method == "POST":
            return await self._create_fhir(request)
        used = [(k, v) for k, v in request.query_params.multi_items() if k in FHIR_SEARCH_PARAMS]
        candidates = self.store.patients()
        found = [p for p in candidates if all(patients.fhir_matches(p, {k: v}) for k, v in used)]
        base = self._fhir_base(request)
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "link": [{"relation": "self", "url": f"{base}/Patient?{urlencode(used)}".rstrip("?")}],
        }
        if found:  # FHIR JSON has no empty arrays: no match, no entry
            bundle["entry"] = [
                {
                    "fullUrl": f"{base}/Patient/{p.uuid}",
                    "resource": patients.fhir_resource(p),
                    "search": {"mode": "match"},
                }
                for p in found
            ]
        return fhir(bundle)

    async def _create_fhir(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in (FHIR_JSON, "application/json"):
            return outcome(415, f"Content-Type must be {FHIR_JSON}", "not-supported")
        try:
            resource = json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return outcome(400, "the body is not valid JSON", "structure")
        record, identifiers, problems = patients.record_from_fhir(resource)
        if problems:
            return outcome(400, "; ".join(problems))
        condition = None
        header = request.headers.get("if-none-exist")
        if header is not None:
            pairs = parse_qsl(header.strip().lstrip("?"), keep_blank_values=True)
            if len(pairs) != 1 or pairs[0][0] != "identifier" or not pairs[0][1]:
                return outcome(
                    400,
                    "If-None-Exist must be one search parameter: identifier=SYSTEM|VALUE",
                    "not-supported",
                )
            condition = patients.parse_token(pairs[0][1])
        try:
            patient, created = self.store.create_patient(
                record, identifiers, if_none_exist=condition
            )
        except MultipleMatchesError:
            return outcome(
                412, "If-None-Exist matches more than one Patient: nothing created", "duplicate"
            )
        location = f"{self._fhir_base(request)}/Patient/{patient.uuid}"
        headers = {"Location": location, "ETag": 'W/"1"'}
        return fhir(patients.fhir_resource(patient), 201 if created else 200, headers)

    async def fhir_patient(self, request: Request) -> Response:
        patient_id: str = request.path_params["id"]
        patient = self.store.patient(patient_id.lower()) if _FHIR_ID.match(patient_id) else None
        if patient is None:
            return outcome(404, f"no Patient with id {patient_id[:64]!r}", "not-found")
        return fhir(patients.fhir_resource(patient), headers={"ETag": 'W/"1"'})

    def _fhir_base(self, request: Request) -> str:
        return str(request.base_url).rstrip("/") + f"/apis/{self.state.site}/fhir"


def _oauth_uris(request: Request, site: str) -> dict[str, Any]:
    base = str(request.base_url).rstrip("/") + f"/oauth2/{site}"
    return {
        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
        "extension": [
            {"url": name, "valueUri": f"{base}/{path}"}
            for name, path in (
                ("token", "token"),
                ("authorize", "authorize"),
                ("register", "registration"),
            )
        ],
    }

"""The OpenEMR flavour's API: the Standard API's ``/apis/{site}/api/patient`` and FHIR R4 Patient.

Both work on one patient table (:mod:`.store`): a FHIR Patient's id is the Standard API's
``uuid``. The bearer token has been checked before these run (:mod:`.openemr`), which leaves its
grant in ``request.state.grant``; each route then checks the token's role and scopes as the
version does (:mod:`.scopes`):

- Standard API: the token must hold ``api:oemr`` and be a user's (7.0.4+ 403 with OpenEMR's
  message; 7.0.3 401, empty), then ``user/patient.read|write`` (7.0.3 exact; 7.0.4+ the ``r``,
  ``s`` or ``c`` permission) → else 401;
- FHIR Patient: ``{role}/Patient.read|write`` likewise → else 401 (7.0.3 empty body, 7.0.4+
  ``{"error":"An error occurred","message":"Unauthorized","code":0}``).

FHIR create reads a Patient as OpenEMR does (:mod:`.patients`), ignores
``If-None-Exist`` (every POST creates) and answers 201 ``{"pid", "uuid"}`` with no Location and
no ETag; validation errors are 400 ``{"validationErrors": {...}}``, structural errors a 400
OperationOutcome.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cwsctl.targets.openemr.sandbox import patients
from cwsctl.targets.openemr.sandbox.scopes import V703, allows
from cwsctl.targets.openemr.sandbox.state import PHP_DEFAULT_TYPE, OpenEmrState
from cwsctl.targets.openemr.sandbox.store import SYSTEM, Grant

FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.0.1"
SOFTWARE_NAME = "cwsctl sandbox (OpenEMR flavour)"
#: Standard API search fields (OpenEMR ignores any other query parameter).
SEARCH_FIELDS = ("fname", "lname", "pubpid", "DOB", "sex", "city", "state", "postal_code", "email")
#: FHIR Patient search parameters served; others are ignored.
FHIR_SEARCH_PARAMS = ("_id", "identifier", "name", "family", "given", "birthdate")
FORBIDDEN_MESSAGE = (
    "OpenEMR Error: API call failed due to insufficient permissions for the requested resource."
)
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def envelope(data: Any, status: int = 200, validation_errors: Any = None) -> Response:
    """OpenEMR's Standard API answer."""
    return JSONResponse(
        {
            "validationErrors": validation_errors or [],
            "internalErrors": [],
            "data": data,
            "links": [],
        },
        status,
    )


def fhir(resource: dict[str, Any], status: int = 200) -> Response:
    """A FHIR answer."""
    return JSONResponse(resource, status, media_type=FHIR_JSON)


def fhir_outcome(diagnostics: str, code: str = "invalid") -> dict[str, Any]:
    """A FHIR OperationOutcome document with one error issue."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }


def outcome(status: int, diagnostics: str, code: str = "invalid") -> Response:
    """A FHIR OperationOutcome answer with one error issue."""
    return fhir(fhir_outcome(diagnostics, code), status)


def kernel_body(message: str, code: int = 0) -> bytes:
    """7.0.4+'s ExceptionHandlerListener body: ``{"error":"An error occurred",…}``."""
    document = {"error": "An error occurred", "message": message, "code": code}
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def kernel_error(status: int, message: str, code: int = 0) -> Response:
    """7.0.4+'s ExceptionHandlerListener answer (a Symfony Response: no JSON content type)."""
    return Response(kernel_body(message, code), status, media_type=PHP_DEFAULT_TYPE)


def unauthorized(version: str) -> Response:
    """A missing scope: 401, empty on 7.0.3, ``Unauthorized`` on 7.0.4+."""
    if version == V703:
        return Response(b"", 401, media_type=PHP_DEFAULT_TYPE)
    return kernel_error(401, "Unauthorized")


class ApiEndpoints:
    """``/apis/{site}/api/patient…`` and ``/apis/{site}/fhir/…`` over one :class:`OpenEmrState`."""

    def __init__(self, state: OpenEmrState) -> None:
        self.state = state
        self.store = state.store

    # -- checks ---------------------------------------------------------------------------------
    def _refusal(self, request: Request, resource: str, need: str) -> Response | None:
        grant: Grant = request.state.grant
        version = self.state.version
        standard_api = resource == "patient"
        if standard_api and ("api:oemr" not in grant.scope.split() or grant.role == SYSTEM):
            if version == V703:
                return unauthorized(version)
            return kernel_error(403, FORBIDDEN_MESSAGE)
        if not allows(version, grant.role, grant.scope, resource, need):
            return unauthorized(version)
        return None

    # -- Standard API ---------------------------------------------------------------------------
    async def patients(self, request: Request) -> Response:
        refusal = self._refusal(request, "patient", "c" if request.method == "POST" else "s")
        if refusal is not None:
            return refusal
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
            data = None
        record, errors = patients.validate_record(data)
        if errors:
            return envelope([], 400, errors)
        patient = self.store.create_patient(record)
        return envelope({"pid": patient.pid, "uuid": patient.uuid}, 201)

    async def patient(self, request: Request) -> Response:
        refusal = self._refusal(request, "patient", "r")
        if refusal is not None:
            return refusal
        patient_uuid: str = request.path_params["uuid"]
        patient = self.store.patient(patient_uuid.lower()) if _UUID.match(patient_uuid) else None
        if patient is None:
            return envelope([], 404)
        return envelope(patients.standard_view(patient))

    # -- FHIR -----------------------------------------------------------------------------------
    async def metadata(self, request: Request) -> Response:
        base = self.state.fhir_base(request)
        oauth = f"{self.state.base(request)}/oauth2/{self.state.site}"
        return fhir(
            {
                "resourceType": "CapabilityStatement",
                "status": "active",
                "date": "2024-01-01",
                "kind": "instance",
                "fhirVersion": FHIR_VERSION,
                "format": ["application/json"],
                "software": {"name": SOFTWARE_NAME},
                "implementation": {"description": SOFTWARE_NAME, "url": base},
                "rest": [
                    {
                        "mode": "server",
                        "security": {
                            "service": [{"coding": [{"code": "SMART-on-FHIR"}]}],
                            "extension": [
                                {
                                    "url": "http://fhir-registry.smarthealthit.org/"
                                    "StructureDefinition/oauth-uris",
                                    "extension": [
                                        {"url": "token", "valueUri": f"{oauth}/token"},
                                        {"url": "authorize", "valueUri": f"{oauth}/authorize"},
                                        {"url": "register", "valueUri": f"{oauth}/registration"},
                                    ],
                                }
                            ],
                        },
                        "resource": [
                            {
                                "type": "Patient",
                                "interaction": [
                                    {"code": "create"},
                                    {"code": "read"},
                                    {"code": "search-type"},
                                ],
                                "searchParam": [
                                    {"name": name, "type": kind}
                                    for name, kind in (
                                        ("_id", "token"),
                                        ("identifier", "token"),
                                        ("name", "string"),
                                        ("family", "string"),
                                        ("given", "string"),
                                        ("birthdate", "date"),
                                    )
                                ],
                            }
                        ],
                    }
                ],
            }
        )

    async def fhir_patients(self, request: Request) -> Response:
        refusal = self._refusal(request, "Patient", "c" if request.method == "POST" else "s")
        if refusal is not None:
            return refusal
        if request.method == "POST":
            return await self._create_fhir(request)
        used = [(k, v) for k, v in request.query_params.multi_items() if k in FHIR_SEARCH_PARAMS]
        identifiers = [v for k, v in used if k == "identifier"]
        if identifiers:  # ss = VALUE OR pubpid = VALUE, whatever the system
            candidates = self.store.patients_by_identifier(identifiers[0].split("|", 1)[-1])
        else:
            candidates = self.store.patients()
        found = [p for p in candidates if all(patients.fhir_matches(p, k, v) for k, v in used)]
        base = self.state.fhir_base(request)
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "collection",
            "total": len(found),
            "link": [{"relation": "self", "url": f"{base}/Patient?{urlencode(used)}".rstrip("?")}],
        }
        if found:
            bundle["entry"] = [
                {"fullUrl": f"{base}/Patient/{p.uuid}", "resource": patients.fhir_resource(p)}
                for p in found
            ]
        return fhir(bundle)

    async def _create_fhir(self, request: Request) -> Response:
        # If-None-Exist is not read: OpenEMR has no conditional create, every POST creates.
        try:
            resource = json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return outcome(400, "the body is not valid JSON", "structure")
        problem = patients.structure_problem(resource)
        if problem is not None:
            return outcome(400, problem, "structure")
        record, errors = patients.validate_record(patients.record_from_fhir(resource))
        if errors:
            return JSONResponse({"validationErrors": errors}, 400)
        patient = self.store.create_patient(record)
        return JSONResponse({"pid": patient.pid, "uuid": patient.uuid}, 201)

    async def fhir_patient(self, request: Request) -> Response:
        refusal = self._refusal(request, "Patient", "r")
        if refusal is not None:
            return refusal
        patient_id: str = request.path_params["id"]
        patient = self.store.patient(patient_id.lower()) if _FHIR_ID.match(patient_id) else None
        if patient is None:
            return outcome(404, f"no Patient with id {patient_id[:64]!r}", "not-found")
        return fhir(patients.fhir_resource(patient))

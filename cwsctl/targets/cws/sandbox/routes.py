"""The CWS endpoints the sandbox serves, as a Starlette app over the store.

What CorEMR's API answers — service info, patient create/lookup/get, 404/405 in CWS's JSON error
shape — and nothing else: body limits, signatures and faults are the envelope
(:mod:`cwsctl.sandbox.envelope`, signatures in :mod:`.app`), which calls this router with the
body already read and checked, and signs whatever it answers.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cwsctl.core.bulk.rows import PatientValidationError, parse_patient_body
from cwsctl.targets.cws.sandbox.store import DuplicatePatientError, SandboxStore

SERVICE_INFO = {"service": "CWS sandbox", "version": 2}
_MAX_SQLITE_INT = 2**63 - 1


def cws_routes(store: SandboxStore) -> Starlette:
    """``/ws/`` and ``/ws/patients…``, with and without the trailing slash, never redirecting."""
    endpoints = _PatientEndpoints(store)
    router = Starlette(
        routes=[
            Route("/ws/", _service_info, methods=["GET"]),
            Route("/ws", _service_info, methods=["GET"]),
            Route("/ws/patients/", endpoints.patients, methods=["GET", "POST"]),
            Route("/ws/patients", endpoints.patients, methods=["GET", "POST"]),
            Route("/ws/patients/{patient_id:int}", endpoints.patient, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_exception},
    )
    router.router.redirect_slashes = False  # a redirect would drop the signed body
    return router


class _PatientEndpoints:
    def __init__(self, store: SandboxStore) -> None:
        self.store = store

    async def patients(self, request: Request) -> Response:
        if request.method == "POST":
            return await self._create_patient(request)
        params = request.query_params
        unknown = sorted(set(params) - {"external_id", "facility"})
        if unknown:
            return JSONResponse({"error": f"unknown query parameter {unknown[0][:40]!r}"}, 422)
        external_id = params.get("external_id")
        if not external_id:
            return JSONResponse(
                {"error": "query parameter 'external_id' is required", "field": "external_id"},
                400,
            )
        found = self.store.find_patients(external_id, params.get("facility"))
        return JSONResponse({"patients": found})

    async def _create_patient(self, request: Request) -> Response:
        try:
            record = parse_patient_body(await request.body())
        except PatientValidationError as exc:
            return JSONResponse(exc.to_json(), exc.status)
        try:
            patient = self.store.insert_patient(record)
        except DuplicatePatientError as exc:
            return JSONResponse(
                {
                    "error": "a patient with this external_id already exists in this facility",
                    "field": "external_id",
                    "id": exc.existing_id,
                },
                409,
            )
        return JSONResponse(patient, 201, headers={"Location": f"/ws/patients/{patient['id']}"})

    async def patient(self, request: Request) -> Response:
        patient_id: int = request.path_params["patient_id"]
        patient = self.store.get_patient(patient_id) if patient_id <= _MAX_SQLITE_INT else None
        if patient is None:
            return JSONResponse({"error": f"no patient with id {patient_id}"}, 404)
        return JSONResponse(patient)


async def _service_info(request: Request) -> Response:
    return JSONResponse(SERVICE_INFO)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = "no such endpoint"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed here"
    else:  # pragma: no cover - the router raises only 404 and 405
        message = str(exc.detail)
    return JSONResponse({"error": message}, exc.status_code, headers=exc.headers)

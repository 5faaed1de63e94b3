"""The bulk export's jobs: planning a kick-off per mode (:class:`ExportJobs`) and running it,
NDJSON files written from SQLite; the HTTP handlers are in :mod:`.export_routes`.

``EXP:n`` is line n of OpenEMR's ``FhirOperationExportRestController.php`` (see
:mod:`.export_routes`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cwsctl.core.files import ensure_private_dir
from cwsctl.targets.openemr.sandbox import patients
from cwsctl.targets.openemr.sandbox.api import FHIR_JSON, fhir_outcome, kernel_error
from cwsctl.targets.openemr.sandbox.export_store import ExportStore, Job, Plan
from cwsctl.targets.openemr.sandbox.export_support import (
    ACCEPT,
    EXPORTABLE,
    KNOWN_TYPES,
    NO_EXPORT_OPERATION,
    OPENEMR_MODE,
    OUTPUT_FORMATS,
    PREFER,
    SPEC_MODE,
    SYSTEM_ONLY,
    TYPE_FILTER_PARAMS,
    ExportFaults,
    emr_outcome,
    instant_utc,
    openemr_since,
)
from cwsctl.targets.openemr.sandbox.scopes import V703, allows
from cwsctl.targets.openemr.sandbox.state import PHP_DEFAULT_TYPE, OpenEmrState
from cwsctl.targets.openemr.sandbox.store import Grant, Patient


class ExportJobs:
    """Planning and running export jobs: the half of :class:`~.export_routes.ExportService`
    that answers no route (the service sets these attributes up)."""

    state: OpenEmrState
    store: ExportStore
    mode: str
    ttl: float
    faults: ExportFaults
    group_id: str
    _cancelled: set[str]

    # -- shared checks --------------------------------------------------------------------------
    def _outcome(self, status: int, text: str, code: str = "processing") -> Response:
        """An error as the mode words it: OpenEMR's OperationOutcome (``details.text``,
        ``application/json``) or a FHIR one (``diagnostics``, ``application/fhir+json``)."""
        if self.mode == OPENEMR_MODE:
            return JSONResponse(emr_outcome(text), status)
        return JSONResponse(fhir_outcome(text, code), status, media_type=FHIR_JSON)

    def _readable(self, grant: Grant, resource: str) -> bool:
        """``hasAccessToResource``: the token holds ``system/<R>.read``."""
        return allows(self.state.version, grant.role, grant.scope, resource, "r")

    # -- planning -------------------------------------------------------------------------------
    def _openemr_plan(
        self, request: Request, grant: Grant, kind: str, group: str | None
    ) -> Plan | Response:
        query = request.query_params
        since = None
        if "_since" in query:  # parsed before the controller's try (EXP:173)
            since = openemr_since(query["_since"])
            if since is None:
                message = f"Date format invalid: {query['_since'][:64]}"
                if self.state.version == V703:
                    return Response(message, 500, media_type=PHP_DEFAULT_TYPE)
                return kernel_error(500, message)
        accept, prefer = request.headers.get("accept"), request.headers.get("prefer")
        if accept != ACCEPT:
            return self._outcome(400, "'Accept' header invalid")
        if prefer != PREFER:
            return self._outcome(400, "'Prefer' header invalid")
        output_format = query.get("_outputFormat", OUTPUT_FORMATS[0])
        if output_format not in OUTPUT_FORMATS:
            text = f"Invalid output format {output_format[:64]}"
            if self.state.version == V703:
                return Response(text, 500, media_type=PHP_DEFAULT_TYPE)
            return self._outcome(400, text)
        named = [t.strip() for t in query.get("type", "").split(",") if t.strip()]
        denied_status = 400 if self.state.version == V703 else 401
        if named:
            for resource in named:
                if not self._readable(grant, resource):
                    return self._outcome(
                        denied_status, f"AccessToken does not grant access to resource {resource}"
                    )
            resources = named
        else:
            resources = [r for r in EXPORTABLE if self._readable(grant, r)]
            if not resources:
                return self._outcome(
                    denied_status,
                    "AccessToken does grant access to any supported system resources",
                )
        return Plan(kind, resources, [], since, group, {})

    def _spec_plan(
        self, request: Request, grant: Grant, kind: str, group: str | None
    ) -> Plan | Response:
        query = request.query_params
        if request.headers.get("accept") != ACCEPT:
            return self._outcome(400, f"Accept must be {ACCEPT}", "invalid")
        if request.headers.get("prefer") != PREFER:
            return self._outcome(400, f"Prefer must be {PREFER}", "invalid")
        output_format = query.get("_outputFormat", OUTPUT_FORMATS[0])
        if output_format not in OUTPUT_FORMATS:
            return self._outcome(400, f"unsupported _outputFormat {output_format[:64]}", "invalid")
        since = None
        if "_since" in query:
            since = instant_utc(query["_since"])
            if since is None:
                return self._outcome(400, "_since must be a FHIR instant", "invalid")
        named: list[str] = []
        for value in query.getlist("_type"):
            named += [t.strip() for t in value.split(",") if t.strip()]
        unknown = [t for t in named if t not in KNOWN_TYPES]
        if unknown:
            return self._outcome(400, f"unsupported _type {unknown[0][:64]}", "not-supported")
        wanted = list(dict.fromkeys(named)) or list(EXPORTABLE)
        resources, denied = [], []
        for resource in wanted:
            supported = resource in EXPORTABLE and (kind == "system" or resource not in SYSTEM_ONLY)
            if supported and self._readable(grant, resource):
                resources.append(resource)
            elif named:  # asked for by name: say why it is missing
                denied.append(resource)
        filters: dict[str, list[list[tuple[str, str]]]] = {}
        for value in query.getlist("_typeFilter"):
            resource, _, search = value.partition("?")
            params = [tuple(p.split("=", 1)) for p in search.split("&") if p]
            if resource != "Patient" or not params or any(len(p) != 2 for p in params):
                return self._outcome(
                    400, f"the sandbox cannot apply _typeFilter {value[:80]}", "not-supported"
                )
            pairs = [(k, v) for k, v in params]
            if any(k not in TYPE_FILTER_PARAMS for k, _ in pairs):
                return self._outcome(
                    400, f"the sandbox cannot apply _typeFilter {value[:80]}", "not-supported"
                )
            filters.setdefault(resource, []).append(pairs)
        return Plan(kind, resources, denied, since, group, filters)

    # -- the job --------------------------------------------------------------------------------
    def _run(self, job: Job, plan: Plan) -> None:
        """Write every file of ``job`` and record its output (in a worker thread)."""
        ensure_private_dir(self.store.files)
        expires = job.started + self.ttl
        output: list[dict[str, Any]] = []
        errors: list[Any] = []
        for resource in plan.resources:
            if job.uuid in self._cancelled:
                return
            if self.mode == OPENEMR_MODE and not _supports(resource, plan.kind):
                errors.append(emr_outcome(NO_EXPORT_OPERATION))  # the object itself (EXP:418)
                continue
            name = f"{resource}-{job.uuid}.ndjson"
            path = self.store.files / name
            lines = self._records(resource, plan) if resource == "Patient" else iter(())
            if self.faults.wrong_type == resource:
                other = "Observation" if resource != "Observation" else "Patient"
                lines = _prepend(json.dumps({"resourceType": other, "id": "wrong-type"}), lines)
            written = _write_ndjson(path, lines, lambda: job.uuid in self._cancelled)
            if written is None:
                path.unlink(missing_ok=True)
                return
            size, count = written
            if self.mode == SPEC_MODE and count == 0:
                path.unlink(missing_ok=True)  # spec mode lists only files that hold something
                continue
            doc = self.store.add_document(job.uuid, name, resource, path, size, count, expires)
            output.append({"type": resource, "doc": doc, "count": count})
        if plan.denied:
            name = f"OperationOutcome-{job.uuid}-{uuid.uuid4()}.ndjson"
            path = self.store.files / name
            texts = (
                json.dumps(
                    fhir_outcome(f"{r} not exported: no system/{r}.read or no export", "processing")
                )
                for r in plan.denied
            )
            written = _write_ndjson(path, texts, lambda: False)
            assert written is not None
            doc = self.store.add_document(
                job.uuid, name, "OperationOutcome", path, written[0], written[1], expires
            )
            errors.append({"type": "OperationOutcome", "doc": doc, "count": written[1]})
        if not self.store.finish_job(job.uuid, output, errors):
            for entry in output + [e for e in errors if "doc" in e]:
                doc_row = self.store.document(int(entry["doc"]))
                if doc_row is not None:
                    doc_row.path.unlink(missing_ok=True)

    def _records(self, resource: str, plan: Plan) -> Iterator[str]:
        """The stored patients as NDJSON lines, read with a connection of their own."""
        if plan.kind == "group" and plan.group != self.group_id:
            return
        db = sqlite3.connect(f"file:{self.store.db_path}?mode=ro", uri=True)
        try:
            sql = "SELECT pid, uuid, record FROM patient_data"
            args: tuple[str, ...] = ()
            if plan.since is not None:
                sql += " WHERE created_at >= ?"
                args = (plan.since,)
            cursor = db.execute(sql + " ORDER BY pid", args)
            cursor.arraysize = 1000
            alternatives = plan.filters.get(resource)
            while rows := cursor.fetchmany():
                for pid, patient_uuid, record in rows:
                    patient = Patient(int(pid), str(patient_uuid), json.loads(record))
                    if alternatives and not any(
                        all(_matches(patient, k, v) for k, v in params) for params in alternatives
                    ):
                        continue
                    yield json.dumps(
                        patients.fhir_resource(patient), ensure_ascii=False, separators=(",", ":")
                    )
        finally:
            db.close()


def _supports(resource: str, kind: str) -> bool:
    """Whether OpenEMR's export service for ``resource`` supports this export operation."""
    return resource in EXPORTABLE and (kind == "system" or resource not in SYSTEM_ONLY)


def _matches(patient: Patient, name: str, value: str) -> bool:
    if name == "gender":
        return patients.fhir_resource(patient).get("gender") == value
    return patients.fhir_matches(patient, name, value)


def _prepend(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def _write_ndjson(path: Path, lines: Iterator[str], cancelled: Any) -> tuple[int, int] | None:
    """Write ``lines`` joined by ``\\n`` (none after the last) to a new owner-only file; return
    (bytes, lines), or None when ``cancelled()`` turned true on the way."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    size = count = 0
    with open(fd, "wb", buffering=1024 * 1024) as out:
        for line in lines:
            data = line.encode("utf-8")
            if count:
                out.write(b"\n")
                size += 1
            out.write(data)
            size += len(data)
            count += 1
            if count % 5000 == 0 and cancelled():
                return None
    return size, count

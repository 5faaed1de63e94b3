"""Bulk FHIR export for the OpenEMR flavour: the ``$export``, ``$bulkdata-status`` and ``Binary``
routes (:class:`ExportService`); jobs in :mod:`.export_jobs`, their records in
:mod:`.export_store`, constants, faults and time helpers in :mod:`.export_support`.

Two modes (``export_mode``):

- ``openemr``: OpenEMR as its source shows it (``../shared/servers/OPENEMR.md``, "Bulk FHIR
  export"; ``EXP`` = ``FhirOperationExportRestController.php``). The whole export runs inside
  the kick-off request, then 202 with ``Content-Location`` and nothing else; types come from
  ``type`` (``_type`` and ``_typeFilter`` are never read); the status answers 200 at once with a
  manifest whose ``transactionTime`` is a serialised PHP ``DateTime`` and whose ``output``
  entries carry no ``count``; every requested type gets a document, empty ones too (EXP
  ``processResourceExportForJob`` writes one per resource whatever it holds); files expire an
  hour after the job started;
- ``spec``: the FHIR Bulk Data Access IG. The kick-off answers 202 at once and the files are
  written by a thread; the status answers 202 with ``X-Progress`` and ``Retry-After`` until
  ``export_delay`` seconds have passed (429 with ``Retry-After`` when polled sooner than told),
  then 200 with an instant ``transactionTime`` and ``count`` per file; types from ``_type``,
  ``_typeFilter`` for simple Patient searches; types the token cannot read are reported in an
  ``error`` file; empty files are not listed.

Both modes share the routes and their scopes (``system/*.$export``, ``system/Patient.$export``,
``system/Group.$export``, ``system/*.$bulkdata-status``, ``system/Binary.read`` and
``system/<R>.read`` per exported type), 501 with no body while system scopes are off, the
``Accept``/``Prefer`` checks, jobs kept per client, DELETE, and the files: NDJSON written to
``data_dir/openemr-exports`` when the job runs (streamed from SQLite, never held in memory), one
``\\n`` between records and none after the last, served from disk with ``Content-Length``.

Only patients are stored: the Patient file holds every stored patient (as the FHIR read shows
it, filtered by ``_since`` and the Group); other exportable types the token may read are empty.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from email.utils import formatdate
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cwsctl.sandbox.envelope import Answer
from cwsctl.targets.openemr.sandbox.api import (
    FHIR_JSON,
    fhir_outcome,
    kernel_body,
    kernel_error,
    unauthorized,
)
from cwsctl.targets.openemr.sandbox.export_jobs import ExportJobs
from cwsctl.targets.openemr.sandbox.export_store import DONE, RUNNING, ExportStore, Job
from cwsctl.targets.openemr.sandbox.export_support import (
    DEFAULT_EXPORT_TTL_S,
    EXPORT_MODES,
    EXPORTS_DIR,
    NOT_FOUND_703,
    NOT_FOUND_704,
    OPENEMR_MODE,
    SPEC_MODE,
    ExportFaults,
    FileAnswer,
    php_datetime,
)
from cwsctl.targets.openemr.sandbox.scopes import V703, allows, allows_operation
from cwsctl.targets.openemr.sandbox.state import PHP_DEFAULT_TYPE, OpenEmrState
from cwsctl.targets.openemr.sandbox.store import Grant


class ExportService(ExportJobs):
    """The export routes over one :class:`OpenEmrState` and :class:`ExportStore`."""

    def __init__(
        self,
        state: OpenEmrState,
        data_dir: Path,
        *,
        mode: str = OPENEMR_MODE,
        delay: float = 0.0,
        ttl: float = DEFAULT_EXPORT_TTL_S,
        faults: ExportFaults | None = None,
    ) -> None:
        if mode not in EXPORT_MODES:
            raise ValueError(f"export_mode must be one of {', '.join(EXPORT_MODES)}, not {mode!r}")
        if not (math.isfinite(delay) and delay >= 0):
            raise ValueError(f"export_delay must be a number of seconds ≥ 0, not {delay!r}")
        if not (math.isfinite(ttl) and ttl > 0):
            raise ValueError(f"export_ttl must be a number of seconds > 0, not {ttl!r}")
        self.state = state
        self.mode = mode
        self.delay = delay
        self.ttl = ttl
        self.faults = faults if faults is not None else ExportFaults()
        files = data_dir / EXPORTS_DIR
        self.store = ExportStore(state.store.path, files)
        self.group_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"cwsctl-sandbox:{state.site}:panel"))
        self._cancelled: set[str] = set()
        self._threads: list[threading.Thread] = []

    def close(self) -> None:
        """Wait for running spec-mode jobs (briefly) and close the store."""
        self._cancelled.update(t.name for t in self._threads)
        for thread in self._threads:
            thread.join(timeout=5)
        self.store.close()

    def clear(self) -> None:
        """Cancel running jobs, forget every job and document, delete the files."""
        self._cancelled.update(t.name for t in self._threads if t.is_alive())
        self.store.clear()

    # -- shared checks --------------------------------------------------------------------------
    def _off(self) -> Response | None:
        """501, no body, while system scopes are off (EXP:167)."""
        if self.state.system_scopes:
            return None
        return Response(b"", 501, media_type=PHP_DEFAULT_TYPE)

    # -- kick-off -------------------------------------------------------------------------------
    async def kickoff_system(self, request: Request) -> Response:
        return await self._kickoff(request, "system", "*")

    async def kickoff_patient(self, request: Request) -> Response:
        return await self._kickoff(request, "patient", "Patient")

    async def kickoff_group(self, request: Request) -> Response:
        return await self._kickoff(request, "group", "Group")

    async def _kickoff(self, request: Request, kind: str, resource: str) -> Response:
        off = self._off()
        if off is not None:
            return off
        grant: Grant = request.state.grant
        if not allows_operation(grant.role, grant.scope, resource, "$export"):
            return unauthorized(self.state.version)
        group = request.path_params.get("id") if kind == "group" else None
        if self.mode == OPENEMR_MODE:
            plan_or_refusal = self._openemr_plan(request, grant, kind, group)
        else:
            plan_or_refusal = self._spec_plan(request, grant, kind, group)
        if isinstance(plan_or_refusal, Response):
            return plan_or_refusal
        plan = plan_or_refusal
        now = time.time()
        self.store.purge_expired(now)
        base = self.state.base(request)
        job = Job(
            uuid=str(uuid.uuid4()),
            client_id=grant.client_id,
            role=grant.role,
            mode=self.mode,
            request=self._request_text(request),
            base=base,
            started=math.floor(now) if self.mode == OPENEMR_MODE else now,
            ready_at=now + (self.delay if self.mode == SPEC_MODE else 0.0),
            status=RUNNING,
            output=[],
            errors=[],
            next_poll=0.0,
        )
        self.store.add_job(job)
        if self.mode == OPENEMR_MODE:
            await asyncio.to_thread(self._run, job, plan)  # inside the kick-off (EXP:216)
        else:
            thread = threading.Thread(target=self._run, args=(job, plan), name=job.uuid)
            thread.daemon = True
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()
        location = f"{base}/apis/{self.state.site}/fhir/$bulkdata-status?job={job.uuid}"
        return Response(
            b"", 202, headers={"Content-Location": location}, media_type="application/json"
        )

    def _request_text(self, request: Request) -> str:
        """The manifest's ``request``: 7.0.4+ openemr the path and query as sent (Symfony
        ``getRequestUri``); 7.0.3 and spec mode the full URL."""
        raw = request.scope.get("raw_path") or request.url.path.encode("utf-8")
        query = request.scope.get("query_string", b"")
        path = bytes(raw).decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")
        if self.mode == OPENEMR_MODE and self.state.version != V703:
            return path
        return f"{self.state.base(request)}{path}"

    # -- status, cancel -------------------------------------------------------------------------
    async def status(self, request: Request) -> Response:
        off = self._off()
        if off is not None:
            return off
        grant: Grant = request.state.grant
        if not allows_operation(grant.role, grant.scope, "*", "$bulkdata-status"):
            return unauthorized(self.state.version)
        job_uuid = request.query_params.get("job", "")
        job = self.store.job(job_uuid, grant.client_id, grant.role) if job_uuid else None
        if request.method == "DELETE":
            return self._cancel(job)
        if job is None:
            if self.mode == OPENEMR_MODE and self.state.version == V703:
                return self._outcome(400, NOT_FOUND_703)
            return self._outcome(404, NOT_FOUND_704, "not-found")
        if self.faults.take_status_error():
            if self.mode == OPENEMR_MODE:
                return kernel_error(500, "injected fault: status lookup failed")
            return self._outcome(500, "injected fault: try again", "transient")
        if self.mode == SPEC_MODE and job.status != DONE and time.time() >= job.ready_at:
            job = await self._settle(job)  # a job about to end: a moment's wait, not a 202
        if self.mode == OPENEMR_MODE:
            if job.status != DONE:  # unreachable in OpenEMR: the job ends before its id is out
                return Response(b"", 202, media_type="application/json")
            return JSONResponse(self._manifest(job))
        return self._spec_status(job)

    async def _settle(self, job: Job, wait: float = 0.5) -> Job:
        """``job`` again once its thread has finished, or after ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while job.status != DONE and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            again = self.store.job(job.uuid, job.client_id, job.role)
            if again is None:
                break
            job = again
        return job

    def _spec_status(self, job: Job) -> Response:
        now = time.time()
        if now < job.next_poll - 0.05:
            wait = max(1, math.ceil(job.next_poll - now))
            response = self._outcome(429, f"polled too early: retry after {wait} s", "throttled")
            response.headers["Retry-After"] = str(wait)
            return response
        if job.status != DONE or now < job.ready_at:
            remaining = max(job.ready_at - now, 0.0)
            wait = max(1, math.ceil(remaining))
            self.store.set_next_poll(job.uuid, now + wait)
            span = max(job.ready_at - job.started, 1e-9)
            percent = min(99, int(100 * (now - job.started) / span))
            headers = {"X-Progress": f"{percent}% done", "Retry-After": str(wait)}
            return Response(b"", 202, headers=headers, media_type="application/json")
        expires = formatdate(job.started + self.ttl, usegmt=True)
        return JSONResponse(self._manifest(job), headers={"Expires": expires})

    def _manifest(self, job: Job) -> dict[str, Any]:
        binary = f"{job.base}/apis/{self.state.site}/fhir/Binary"
        spec = job.mode == SPEC_MODE
        extra = 1 if spec and self.faults.wrong_count else 0

        def entry(item: dict[str, Any], *, error: bool) -> Any:
            if "doc" not in item:
                return item  # an OperationOutcome placed directly (openemr mode)
            document: dict[str, Any] = {"url": f"{binary}/{item['doc']}", "type": item["type"]}
            if spec:
                document["count"] = int(item["count"]) + (0 if error else extra)
            return document

        if spec:
            stamp = datetime.fromtimestamp(job.started, timezone.utc)
            transaction_time: Any = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        else:
            transaction_time = php_datetime(job.started)
        return {
            "transactionTime": transaction_time,
            "request": job.request,
            "requiresAccessToken": True,
            "output": [entry(item, error=False) for item in job.output],
            "error": [entry(item, error=True) for item in job.errors],
        }

    def _cancel(self, job: Job | None) -> Response:
        if job is None:
            if self.mode == OPENEMR_MODE and self.state.version == V703:
                return Response(b"", 404, media_type=PHP_DEFAULT_TYPE)
            return self._outcome(404, NOT_FOUND_704, "not-found")
        self._cancelled.add(job.uuid)
        self.store.delete_job(job.uuid)
        return Response(b"", 202, media_type="application/json")

    # -- files ----------------------------------------------------------------------------------
    async def binary_route(self, request: Request) -> Response:
        """Never reached for GET (the app streams those, :meth:`binary`)."""
        return Response(b"", 405)

    def binary(self, grant: Grant | None, document_id: str) -> Answer:
        """``GET /fhir/Binary/{id}``: the file, streamed, or 404 with no body (openemr)."""
        if grant is None:
            return Answer(500, b"")
        if not allows(self.state.version, grant.role, grant.scope, "Binary", "r"):
            if self.state.version == V703:
                return Answer(401, b"", content_type=PHP_DEFAULT_TYPE.encode("ascii"))
            body = kernel_body("Unauthorized")
            return Answer(401, body, content_type=PHP_DEFAULT_TYPE.encode("ascii"))
        document = self.store.document(int(document_id)) if document_id.isdigit() else None
        if document is None or document.expires_at <= time.time():
            return self._gone()
        try:
            file = document.path.open("rb")
        except OSError:
            return self._gone()
        size = os.fstat(file.fileno()).st_size
        headers = [
            (b"content-description", b"File Transfer"),
            (b"content-disposition", f"attachment; filename={document.name}".encode()),
            (b"expires", formatdate(document.expires_at, usegmt=True).encode("ascii")),
            (b"cache-control", b"must-revalidate; post-check=0; pre-check=0"),
            (b"pragma", b"public"),
        ]
        return FileAnswer(file, size, headers, self.faults.take_cut(size))

    def _gone(self) -> Answer:
        if self.mode == OPENEMR_MODE:
            return Answer(404, b"", content_type=PHP_DEFAULT_TYPE.encode("ascii"))
        document = fhir_outcome("no such file, or it has expired", "not-found")
        return Answer(404, json.dumps(document).encode(), content_type=FHIR_JSON.encode("ascii"))


__all__ = ["ExportService"]

"""The generic Bulk Data client (:class:`Exporter`): run, show or cancel the export kept in a
directory — kick-off, polling, the manifest, downloads and the final ``manifest.json``.

One export is one job, and its state lives in the output directory, so that a cron job can be
killed at any moment and simply run again:

- **Kick-off** (``GET {fhir}/$export``, ``/Patient/$export`` or ``/Group/{id}/$export`` with
  ``Accept: application/fhir+json`` and ``Prefer: respond-async``): the resource types go in both
  ``_type`` (the specification) and ``type`` (what OpenEMR reads), ``_typeFilter`` only when
  given. A server may run the whole export inside this request, so it gets the target's
  :attr:`~ExportServer.kickoff_timeout`. The answer is 202 with a ``Content-Location``: the
  status URL.
- **Status**: polled as the server asks (``Retry-After``, capped at
  :data:`.outcome.MAX_RETRY_AFTER_S`; without one, from 1 s growing to 30 s), 429 backs off, a
  5xx is retried :data:`STATUS_RETRIES` times in a row with backoff, all within one budget per
  run (``wait``, default :data:`.export_result.DEFAULT_WAIT_S`). 202 means running
  (``X-Progress`` shown on a terminal); 200 carries the manifest; another 4xx/5xx means the job
  failed, with the OperationOutcome's text.
- **Files**: every ``output``, ``error`` and ``deleted`` file is streamed to ``DIR/<name>.part``
  (memory flat in file size, SHA-256 computed while streaming) by at most ``parallel`` threads,
  each capped at ``max_file_size`` (the bounded transport's cap, raised per file), checked —
  every line parses as a JSON object whose ``resourceType`` is the entry's ``type``, and the
  line count equals the manifest's ``count`` when it has one — and only then renamed. A bearer
  token is sent only when ``requiresAccessToken`` is true, and only to the profile's own server
  (where the target's :attr:`~ExportServer.home_url` says, as for OAuth endpoints).
- **Tokens**: from the target's :class:`TokenSupply`, shared by the threads, renewed after any
  401 (then the request is sent again; a download restarts its file).
- **State**: ``DIR/.cwsctl-export.json`` (0600, replaced atomically after every change): the
  request, the status URL, the manifest, the transaction time as given and as an instant, and
  each finished file with its size, line count and SHA-256. Running the same command again
  continues the job: no second kick-off, finished files kept, partial files restarted.
- **Manifest**: ``DIR/manifest.json`` is written last: the server's manifest with, on every
  file entry, the local ``path``, ``bytes``, ``lines`` and ``sha256``.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

from cwsctl.core.audit import AuditLog
from cwsctl.core.errors import InputError, NetworkError, ServerFailureError
from cwsctl.core.profile import Profile
from cwsctl.core.text import printable
from cwsctl.core.transport.bounded import ResponseTooLargeError
from cwsctl.protocols.fhir.export_download import Downloads
from cwsctl.protocols.fhir.export_manifest import finish, take_manifest
from cwsctl.protocols.fhir.export_request import STATUS_SCOPE, ExportRequest
from cwsctl.protocols.fhir.export_result import Events, ExportOptions, ExportResult
from cwsctl.protocols.fhir.export_session import ExportServer, ExportSession, TokenSupply
from cwsctl.protocols.fhir.export_state import (
    ENDED_STATES,
    MANIFEST_FILE,
    RUNNING_STATES,
    STATE_VERSION,
    ExportState,
    status_document,
)
from cwsctl.protocols.fhir.instant import now_instant
from cwsctl.protocols.fhir.outcome import outcome_text, retry_after, status_error

#: Polling interval without ``Retry-After``: from the first value, times 1.5, up to the second.
POLL_START_S, POLL_MAX_S = 1.0, 30.0
#: Consecutive 5xx answers (or lost answers) of the status URL retried before the job counts as
#: failed.
STATUS_RETRIES = 5
FHIR_JSON = "application/fhir+json"


class Exporter:
    """Runs, shows or cancels the export kept in one directory for one profile."""

    def __init__(
        self,
        profile: Profile,
        server: ExportServer,
        tokens: TokenSupply,
        directory: Path,
        options: ExportOptions | None = None,
        events: Events | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.profile = profile
        self.server = server
        self.directory = directory
        self.options = options or ExportOptions()
        self.events = events or Events()
        self.fhir_base = server.fhir_base.rstrip("/")
        self.session = ExportSession(tokens, server, self.options, audit)
        self.downloads = Downloads(self.session, directory, self.events)

    # -- plumbing --

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP clients."""
        self.session.close()

    # -- public entry points --

    def run(self, request: ExportRequest) -> ExportResult:
        """Kick off (or continue) the export into the directory and download every file."""
        started = time.monotonic()
        self._prepare_directory()
        state = ExportState.load(self.directory)
        result = ExportResult(self.directory, state="running")
        if state is not None and state.state == "done" and not self.options.new:
            return self._done_result(state, result, already=True)
        if state is not None and state.state in RUNNING_STATES and state.data.get("status_url"):
            saved = ExportRequest.from_json(state.data.get("request"))
            if saved != request:
                raise InputError(
                    f"{self.directory} holds an unfinished export of another request "
                    f"({saved.describe()})",
                    hint="run the same command to continue it, or --cancel it first",
                )
            result.resumed = True
            self.events.note(
                f"continuing the export started at {state.data.get('kicked_off_at')}"
                + (" (--new starts one only once it is finished)" if self.options.new else "")
            )
        else:
            if state is not None and state.state in ENDED_STATES[1:] and not self.options.new:
                raise InputError(
                    f"{self.directory} holds a {state.state} export",
                    hint="start a new one with --new",
                )
            state = self._kick_off(request, state, result)
        result.status_url = state.data.get("status_url")
        if state.state == "running":
            self._poll(state)
        self.downloads.run(state, result)
        finish(state)
        result.seconds = time.monotonic() - started
        return self._done_result(state, result, already=False)

    def status(self, *, poll: bool = True) -> dict[str, Any]:
        """The job's state from the directory; a running job's status URL is asked once."""
        state = self._require_state()
        document = status_document(state)
        if poll and state.state == "running" and state.data.get("status_url"):
            response = self.session.send(
                self.session.api,
                "GET",
                self.session.home_url(str(state.data["status_url"])),
                {"Accept": "application/json"},
                deadline=self.options.timeout,
            )
            content = response.read()
            response.close()
            document["server_status"] = response.status_code
            if response.status_code == 202:
                progress = response.headers.get("x-progress")
                document["progress"] = printable(progress) if progress else None
            elif response.status_code == 429:
                document["progress"] = "polled too soon (429)"
                document["retry_after"] = retry_after(response)
            elif response.status_code == 200:
                take_manifest(state, content, self.server.transaction_instant, self.events)
                document = status_document(state)
                document["server_status"] = 200
            else:
                document["server_error"] = outcome_text(content) or None
        return document

    def cancel(self) -> dict[str, Any]:
        """DELETE the status URL and mark the directory cancelled."""
        state = self._require_state()
        url = state.data.get("status_url")
        document: dict[str, Any] = {"directory": str(self.directory), "previous": state.state}
        if not isinstance(url, str) or not url:
            raise InputError(
                f"the export in {self.directory} has no status URL (it never got past the "
                "kick-off): nothing to cancel"
            )
        response = self.session.send(
            self.session.api,
            "DELETE",
            self.session.home_url(url),
            {"Accept": FHIR_JSON},
            deadline=self.options.timeout,
        )
        content = response.read()
        response.close()
        status = response.status_code
        if status in (404, 410):
            document["server"] = "the server no longer knows the job"
        elif status == 401:
            raise self.session.unauthorized("the server refused the cancel", STATUS_SCOPE, content)
        elif not 200 <= status < 300:
            raise status_error("the server refused the cancel", response, content)
        else:
            document["server"] = f"HTTP {status}"
        self.downloads.remove_parts(state)
        state.update(state="cancelled", cancelled_at=now_instant())
        document["state"] = "cancelled"
        return document

    # -- steps --

    def _prepare_directory(self) -> None:
        path = self.directory
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise InputError(f"--out {path} is not a directory")
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot make {path}: {exc.strerror or exc}") from None

    def _require_state(self) -> ExportState:
        state = ExportState.load(self.directory)
        if state is None:
            raise InputError(
                f"no export in {self.directory}",
                hint="start one: cwsctl -p PROFILE export --out DIR",
            )
        return state

    def _since_value(self, request: ExportRequest, previous: ExportState | None) -> str | None:
        if request.since != "last":
            return request.since
        last = previous.data.get("last_done") if previous is not None else None
        instant = last.get("transaction_instant") if isinstance(last, dict) else None
        if not isinstance(instant, str) or not instant:
            raise InputError(
                f"--since last: {self.directory} holds no finished export with a transaction "
                "time to continue from",
                hint="run a full export into it first (without --since)",
            )
        return instant

    def _kick_off(
        self, request: ExportRequest, previous: ExportState | None, result: ExportResult
    ) -> ExportState:
        since = self._since_value(request, previous)
        self.server.check_scopes(request)
        url = f"{self.fhir_base}/{request.path}"
        query = request.query(since)
        if query:
            url += "?" + urlencode(query, quote_via=quote, safe=",")
        old_files = list(previous.files) if previous is not None else []
        last_done = previous.data.get("last_done") if previous is not None else None
        state = ExportState(
            self.directory,
            {
                "version": STATE_VERSION,
                "state": "kicking-off",
                "profile": self.profile.name,
                "server": self.profile.url,
                "request": request.to_json(),
                "since_sent": since,
                "kickoff_url": url,
                "kicked_off_at": now_instant(),
                "last_done": last_done,
                "files": [],
            },
        )
        state.save()
        self.events.progress(f"kicking off {request.describe()}")
        response = self.session.send(
            self.session.api,
            "GET",
            url,
            {"Accept": FHIR_JSON, "Prefer": "respond-async"},
            timeout=self.server.kickoff_timeout,
        )
        content = response.read()
        response.close()
        status = response.status_code
        what = "the server refused the export"
        if status == 401:
            state.update(state="failed")
            raise self.session.unauthorized(what, request.scope, content)
        refused = self.server.kickoff_refusal(status, what) if status != 202 else None
        if refused is not None:
            state.update(state="failed")
            raise refused
        if status != 202:
            state.update(state="failed")
            if status < 400:
                raise ServerFailureError(
                    f"the kick-off answered HTTP {status}, not 202 Accepted with a status URL"
                )
            raise status_error(what, response, content)
        location = response.headers.get("content-location", "").strip()
        if not location:
            state.update(state="failed")
            raise ServerFailureError("the kick-off answered 202 without a Content-Location")
        status_url = urljoin(str(response.url), location)
        if urlsplit(status_url).scheme not in ("http", "https"):
            state.update(state="failed")
            raise ServerFailureError("the kick-off's Content-Location is not an http(s) URL")
        # A new export replaces the previous one's files only once the server took it.
        for entry in old_files:
            with contextlib.suppress(OSError):
                (self.directory / str(entry.get("path"))).unlink()
        with contextlib.suppress(OSError):
            (self.directory / MANIFEST_FILE).unlink()
        state.update(state="running", status_url=status_url)
        result.kicked_off = True
        return state

    def _poll(self, state: ExportState) -> None:
        url = self.session.home_url(str(state.data["status_url"]))
        give_up = time.monotonic() + self.options.wait
        interval = POLL_START_S
        failures = 0
        while True:
            delay: float
            try:
                response = self.session.send(
                    self.session.api,
                    "GET",
                    url,
                    {"Accept": "application/json"},
                    deadline=self.options.timeout,
                )
                content = response.read()
                response.close()
            except NetworkError as exc:
                if isinstance(exc.__cause__, ResponseTooLargeError) or failures >= STATUS_RETRIES:
                    raise
                failures += 1
                delay = min(2.0 ** (failures - 1), POLL_MAX_S)
                self.events.progress(f"status URL unreachable; again in {delay:.0f} s")
            else:
                status = response.status_code
                asked = retry_after(response)
                if status == 200:
                    take_manifest(state, content, self.server.transaction_instant, self.events)
                    return
                if status == 202:
                    failures = 0
                    progress = response.headers.get("x-progress")
                    shown = printable(progress) if progress else "running"
                    delay = asked if asked is not None else interval
                    interval = min(interval * 1.5, POLL_MAX_S)
                    self.events.progress(f"export {shown}; next poll in {delay:.0f} s")
                elif status == 429:
                    interval = min(interval * 2, POLL_MAX_S)
                    delay = asked if asked is not None else interval
                    self.events.progress(f"asked to slow down (429); next poll in {delay:.0f} s")
                elif status >= 500 and failures < STATUS_RETRIES:
                    failures += 1
                    delay = asked if asked is not None else min(2.0 ** (failures - 1), POLL_MAX_S)
                    self.events.progress(
                        f"status URL answered {status}; retry {failures} in {delay:.0f} s"
                    )
                elif status in (404, 410):
                    state.update(state="expired")
                    raise status_error(
                        "the server no longer knows the export job",
                        response,
                        content,
                        hint="it was cancelled or has expired; start a new one with --new",
                    )
                elif status == 401:
                    raise self.session.unauthorized(
                        "the server refused the status request", STATUS_SCOPE, content
                    )
                else:
                    state.update(state="failed")
                    raise status_error(
                        "the export job failed",
                        response,
                        content,
                        hint="start a new one with --new once the cause is fixed",
                    )
            if time.monotonic() + delay > give_up:
                raise NetworkError(
                    f"the export did not finish within {self.options.wait:g} s (--wait)",
                    hint="its state is kept: run the same command again to keep waiting",
                )
            self.options.sleep(delay)

    def _done_result(
        self, state: ExportState, result: ExportResult, *, already: bool
    ) -> ExportResult:
        result.state = state.state
        result.already_done = already
        result.status_url = state.data.get("status_url")
        result.transaction_time = state.data.get("transaction_time")
        result.transaction_instant = state.data.get("transaction_instant")
        result.files = list(state.files)
        result.token_renewals = self.session.token_renewals
        inline = state.data.get("inline_errors")
        result.inline_errors = [str(i) for i in inline] if isinstance(inline, list) else []
        return result

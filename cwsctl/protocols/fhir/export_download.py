"""The download engine: a manifest's files fetched in parallel threads into ``DIR/<name>.part``,
streamed, checked, retried, and only then renamed into place (:class:`Downloads`)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from cwsctl.core.errors import ClientRequestError, CwsError, NetworkError
from cwsctl.core.transport.bounded import ResponseTooLargeError, format_size
from cwsctl.core.transport.errors import network_error
from cwsctl.protocols.fhir.export_request import BINARY_SCOPE
from cwsctl.protocols.fhir.export_result import Events, ExportResult
from cwsctl.protocols.fhir.export_session import ExportSession
from cwsctl.protocols.fhir.export_state import ExportState
from cwsctl.protocols.fhir.ndjson import FileCheckError, NdjsonCheck
from cwsctl.protocols.fhir.outcome import CHUNK_SIZE, head_of, retry_after, status_error

#: Attempts per file (a cut download, a 5xx, a lost connection, a 401 after renewal).
FILE_ATTEMPTS = 4
#: Seconds an interrupted run waits for its download threads to stop before it exits anyway.
STOP_GRACE_S = 2.0
NDJSON = "application/fhir+ndjson"


class _Stopped(Exception):
    """A download thread stops because the run is ending (Ctrl-C, or another file failed)."""


class FileGoneError(ClientRequestError):
    """The server no longer has an export file (OpenEMR deletes them an hour after the job)."""


class _Retry(Exception):
    """One download attempt failed in a way another attempt may mend."""

    def __init__(self, error: CwsError, delay: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.delay = delay


class Downloads:
    """Fetches the files of the export kept in one directory, through the exporter's session."""

    def __init__(self, session: ExportSession, directory: Path, events: Events) -> None:
        self.session = session
        self.directory = directory
        self.options = session.options
        self.events = events
        self._stop = threading.Event()

    def remove_parts(self, state: ExportState) -> None:
        """Remove the partial files of the job's downloads."""
        for entry in state.files:
            with contextlib.suppress(OSError):
                (self.directory / f"{entry['path']}.part").unlink()

    def run(self, state: ExportState, result: ExportResult) -> None:
        """Download every file not yet accepted (FileCheckError for files that fail the check)."""
        self.remove_parts(state)  # a partial file is restarted (OpenEMR serves no ranges)
        pending = []
        for entry in state.files:
            local = self.directory / entry["path"]
            if entry.get("done") and local.is_file() and local.stat().st_size == entry.get("bytes"):
                continue
            entry["done"] = False
            pending.append(entry)
        if not pending:
            return
        total = len(state.files)
        done_count = [total - len(pending)]
        self.events.progress(f"downloading {len(pending)} of {total} files")
        bad: list[str] = []
        fatal: list[BaseException] = []
        work: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        for entry in pending:
            work.put(entry)
        results: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()

        def worker() -> None:
            while not self._stop.is_set():
                try:
                    entry = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    self._fetch_file(state, entry)
                except BaseException as exc:  # handed to the main thread
                    results.put(exc)
                else:
                    results.put(None)

        # Daemon threads, not an executor: on Ctrl-C a thread stuck in a stalled read must not
        # keep the process (an executor's threads are joined at exit).
        threads = [
            threading.Thread(target=worker, name=f"cwsctl-export-{number}", daemon=True)
            for number in range(min(max(1, self.options.parallel), len(pending)))
        ]
        for thread in threads:
            thread.start()
        outstanding = len(pending)
        try:
            while outstanding:
                try:
                    error = results.get(timeout=0.5)
                except queue.Empty:
                    if results.empty() and not any(t.is_alive() for t in threads):
                        break  # stopped by a fatal error: the rest were never started
                    continue
                outstanding -= 1
                if error is None:
                    result.fetched += 1
                    done_count[0] += 1
                    self.events.progress(f"{done_count[0]} of {total} files downloaded")
                elif isinstance(error, FileCheckError):
                    bad.append(error.message)
                elif not isinstance(error, _Stopped):
                    fatal.append(error)
                    self._stop.set()
        except BaseException:
            self._stop.set()
            give_up = time.monotonic() + STOP_GRACE_S
            for thread in threads:
                thread.join(max(0.0, give_up - time.monotonic()))
            self.remove_parts(state)  # a thread still stuck in a read leaves its .part
            raise
        for thread in threads:
            thread.join()
        if fatal:
            first = fatal[0]
            if isinstance(first, FileGoneError):
                state.update(state="expired")
            raise first
        if bad:
            raise FileCheckError(
                bad[0] + (f" (and {len(bad) - 1} more files)" if len(bad) > 1 else ""),
                hint="the file was not kept; running the same command again fetches only the "
                "files not yet accepted",
            )

    def _fetch_file(self, state: ExportState, entry: dict[str, Any]) -> None:
        name = entry["path"]
        requires = bool(state.data.get("requires_access_token", True))
        url = self.session.home_url(entry["url"]) if requires else entry["url"]
        last_error: CwsError | None = None
        for attempt in range(FILE_ATTEMPTS):
            if self._stop.is_set():
                raise _Stopped
            if attempt and self._stop.wait(min(2.0 ** (attempt - 1), 8.0)):
                raise _Stopped
            try:
                self._fetch_once(state, entry, url, requires)
                return
            except FileCheckError:
                raise
            except _Retry as retry:
                last_error = retry.error
                if retry.delay and self._stop.wait(retry.delay):
                    raise _Stopped from None
        assert last_error is not None
        raise type(last_error)(
            f"{name}: {last_error.message} (after {FILE_ATTEMPTS} attempts)",
            hint="its state is kept: run the same command again to continue",
        )

    def _fetch_once(
        self, state: ExportState, entry: dict[str, Any], url: str, requires: bool
    ) -> None:
        name = entry["path"]
        part = self.directory / f"{name}.part"
        started = time.perf_counter()
        try:
            response = self.session.send(
                self.session.files_client,
                "GET",
                url,
                {"Accept": NDJSON},
                authorize=requires,
                stream=True,
            )
        except NetworkError as exc:
            raise _Retry(exc) from None
        try:
            status = response.status_code
            if status != 200:
                content = head_of(response)
                if status in (404, 410):
                    raise FileGoneError(
                        f"{name}: the server no longer has it (HTTP {status}; {entry['url']})",
                        hint=self.session.server.file_gone_hint,
                    )
                if status == 401:
                    raise self.session.unauthorized(
                        f"{name}: the download was refused", BINARY_SCOPE, content
                    )
                if status == 429 or status >= 500:
                    raise _Retry(status_error(f"{name}", response, content), retry_after(response))
                raise status_error(f"{name}: the download was refused", response, content)
            check = NdjsonCheck(entry["type"])
            digest = hashlib.sha256()
            size = 0
            fd = os.open(
                part,
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0),
                0o600,
            )
            try:
                try:
                    for chunk in response.iter_raw(CHUNK_SIZE):
                        if self._stop.is_set():
                            raise _Stopped
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view) :]
                        digest.update(chunk)
                        check.feed(chunk)
                        size += len(chunk)
                except ResponseTooLargeError:
                    raise NetworkError(
                        f"{name}: larger than {format_size(self.options.max_file_size)} "
                        "(--max-file-size); stopped",
                        hint="raise --max-file-size if the file is legitimately this large",
                    ) from None
                except httpx.HTTPError as exc:
                    raise _Retry(network_error(exc, "GET", url)) from None
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as exc:
            response.close()
            with contextlib.suppress(OSError):
                part.unlink()
            cause = exc.error if isinstance(exc, _Retry) else exc
            failed = None if response.status_code != 200 else type(cause).__name__.lstrip("_")
            self.session.record("GET", url, response.status_code, started, error=failed)
            raise
        response.close()
        self.session.record("GET", url, 200, started, digest.hexdigest())
        length = response.headers.get("content-length", "")
        if re.fullmatch(r"[0-9]{1,20}", length) and int(length) != size:
            part.unlink()
            raise _Retry(NetworkError(f"{name}: got {size} of {length} bytes"))
        check.finish()
        problem = check.problem
        count = entry.get("count")
        if problem is None and isinstance(count, int) and count != check.lines:
            problem = f"{check.lines} resources, the manifest says {count}"
        if problem is not None:
            part.unlink()
            raise FileCheckError(f"{name} ({entry['type']}, {entry['url']}): {problem}")
        os.replace(part, self.directory / name)
        with state.lock:
            entry.update(done=True, bytes=size, lines=check.lines, sha256=digest.hexdigest())
            state.save()

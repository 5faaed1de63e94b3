"""Bulk patient loads: validate, send concurrently, journal every step, never send a patient twice.

``BulkLoad.run`` reads rows lazily, validates each locally (the same schema the sandbox uses),
and keeps at most ``2 × concurrency`` rows in flight, so memory is flat in the number of rows.
Each row goes through ``_send_row``: look it up first if an earlier attempt may have taken effect,
journal ``sending``, POST, journal the outcome. A response that fails verification stops the run
at once (the row stays "in doubt" and is looked up on the next run).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cwsctl.core.client import ApiClient, ApiResponse, OutcomeUnknownError
from cwsctl.core.errors import CwsError, ExitStatus, NetworkError, SignatureError
from cwsctl.core.exchange import exchange_deadline
from cwsctl.core.journal import Journal
from cwsctl.core.kinds import PatientMapping
from cwsctl.core.patients import PatientValidationError, patient_key, prepare_patient
from cwsctl.core.readers import InputRow

#: Every outcome a row can have, in the order summaries list them.
OUTCOMES = ("created", "exists", "skipped", "valid", "invalid", "rejected", "failed", "unknown")
#: The outcomes of rows that need nothing more: created (now or earlier), or valid in a dry run.
DONE_OUTCOMES = frozenset({"created", "exists", "skipped", "valid"})


class RowResult(NamedTuple):
    """What happened to one input row (the report holds one of these per row)."""

    number: int
    external_id: str | None
    facility: str | None
    outcome: str
    status: int | None = None
    patient_id: Any = None
    message: str = ""

    @property
    def done(self) -> bool:
        """True when the row needs nothing more (see DONE_OUTCOMES)."""
        return self.outcome in DONE_OUTCOMES


class _ToSend(NamedTuple):
    """A valid row not finished by an earlier run: what ``_send_row`` needs."""

    record: dict[str, Any]
    external_id: str
    facility: str
    journal_key: str  # "" without a journal


@dataclass
class Summary:
    """Counts per outcome, and how the run ended."""

    counts: Counter[str] = field(default_factory=Counter)
    interrupted: bool = False
    server_failures: int = 0  # failed rows whose last answer was a 5xx (the rest: network)
    security_error: SignatureError | None = None

    def add(self, result: RowResult) -> None:
        """Count one row."""
        self.counts[result.outcome] += 1
        if result.outcome == "failed" and result.status is not None and result.status >= 500:
            self.server_failures += 1

    @property
    def total(self) -> int:
        """Rows seen."""
        return sum(self.counts.values())

    @property
    def not_done(self) -> int:
        """Rows that were not created (and, in a dry run, not valid)."""
        return self.total - sum(self.counts[name] for name in DONE_OUTCOMES)

    def exit_status(self) -> ExitStatus:
        """7 forged answer, 130 interrupted, 6/5 failures left, 4 bad rows, else 0."""
        if self.security_error is not None:
            return ExitStatus.SIGNATURE
        if self.interrupted:
            return ExitStatus.INTERRUPTED
        network = self.counts["failed"] - self.server_failures + self.counts["unknown"]
        if network:
            return ExitStatus.NETWORK
        if self.server_failures:
            return ExitStatus.HTTP_5XX
        if self.counts["invalid"] or self.counts["rejected"]:
            return ExitStatus.HTTP_4XX
        return ExitStatus.OK

    def to_json(self) -> dict[str, Any]:
        """The stable ``--json`` shape."""
        return {
            "total": self.total,
            **{name: self.counts[name] for name in OUTCOMES},
            "interrupted": self.interrupted,
            "exit_status": int(self.exit_status()),
        }


class BulkLoad:
    """One bulk load of patient rows through a profile kind's client and patient mapping."""

    def __init__(
        self,
        client: ApiClient | None,
        journal: Journal | None,
        mapping: PatientMapping,
        *,
        concurrency: int = 8,
        retries: int = 3,
        stop_on_error: bool = False,
        backoff: float = 0.5,
    ) -> None:
        """``client=None`` is a dry run: rows are validated, nothing is sent."""
        self.client = client
        self.journal = journal
        self.mapping = mapping
        self.concurrency = max(1, concurrency)
        self.retries = max(0, retries)
        self.stop_on_error = stop_on_error
        self.backoff = backoff
        self._stop = threading.Event()

    def run(self, rows: Iterable[InputRow], on_result: Callable[[RowResult], None]) -> Summary:
        """Process every row; call ``on_result`` (in this thread) as each one finishes.

        Ctrl-C stops taking new rows, lets the rows in flight finish and be journaled, and
        returns with ``interrupted`` set. A file-level input error is raised after the same
        draining, so nothing already done is lost.
        """
        summary = Summary()
        seen: dict[tuple[str, str], int] = {}
        pending: set[Future[RowResult]] = set()

        def finish(result: RowResult) -> None:
            summary.add(result)
            on_result(result)
            if self.stop_on_error and not result.done:
                self._stop.set()

        def collect(block_until_below: int) -> None:
            nonlocal pending
            while len(pending) > block_until_below:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        finish(future.result())
                    except SignatureError as exc:
                        summary.security_error = summary.security_error or exc
                        self._stop.set()

        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="cwsctl-bulk") as pool:
            try:
                for row in rows:
                    if self._stop.is_set():
                        break
                    checked = self._check(row, seen)
                    if isinstance(checked, RowResult):
                        finish(checked)
                        continue
                    pending.add(pool.submit(self._send_row, row.number, checked))
                    collect(2 * self.concurrency - 1)
                collect(0)
            except KeyboardInterrupt:
                self._stop.set()
                summary.interrupted = True
                collect(0)
            except CwsError:
                self._stop.set()
                collect(0)
                raise
        return summary

    # -- per row -----------------------------------------------------------------------------
    def _check(self, row: InputRow, seen: dict[tuple[str, str], int]) -> RowResult | _ToSend:
        """Validate a row locally; return a final result for it, or what to send."""
        fields = row.fields or {}
        ext = str(fields.get("external_id")) if fields.get("external_id") is not None else None
        fac = str(fields.get("facility")) if fields.get("facility") is not None else None
        if row.error is not None:
            return RowResult(row.number, ext, fac, "invalid", message=row.error)
        try:
            record = prepare_patient(fields)
        except PatientValidationError as exc:
            return RowResult(row.number, ext, fac, "invalid", exc.status, message=exc.message)
        key = patient_key(record)
        if key in seen:
            message = f"duplicate of row {seen[key]} (same external_id and facility)"
            return RowResult(row.number, *key, "invalid", message=message)
        seen[key] = row.number
        if self.client is None:
            return RowResult(row.number, *key, "valid")
        journal_key = self.journal.key_for(*key) if self.journal is not None else ""
        if self.journal is not None and self.journal.is_done(journal_key):
            entry = self.journal.state(journal_key) or {}
            message = f"{entry.get('outcome')} in an earlier run"
            return RowResult(
                row.number, *key, "skipped", patient_id=entry.get("id"), message=message
            )
        return _ToSend(record, *key, journal_key)

    def _send_row(self, number: int, row: _ToSend) -> RowResult:
        """Send one patient, with lookups before any re-send; journal every step."""
        assert self.client is not None
        external_id, facility, key = row.external_id, row.facility, row.journal_key
        create = self.mapping.create_request(row.record)
        in_doubt = bool(self.journal and self.journal.in_doubt(key))
        last = RowResult(number, external_id, facility, "failed", message="not sent")
        for attempt in range(self.retries + 1):
            if attempt and (self._stop.is_set() or not self._pause(attempt)):
                break
            try:
                # One deadline per attempt: its look-up and its send share the --timeout budget.
                with exchange_deadline(self.client.timeout):
                    if in_doubt:
                        found = self._lookup(external_id, facility)
                        if found is not None:
                            self._journal(key, number, "exists", id=found, via="lookup")
                            return RowResult(
                                number,
                                external_id,
                                facility,
                                "exists",
                                200,
                                found,
                                "found by lookup",
                            )
                    self._journal(key, number, "sending")
                    response = self.client.request(*create)
            except _LookupFailed as exc:  # the state stays in doubt; nothing was sent
                last = RowResult(
                    number, external_id, facility, "failed", exc.status, message=exc.message
                )
                continue
            except SignatureError:
                self._journal(key, number, "unknown", verified=False)
                raise
            except NetworkError as exc:
                # "unknown": the request went out and its answer was lost; "failed": it never did.
                outcome = "unknown" if isinstance(exc, OutcomeUnknownError) else "failed"
                self._journal(key, number, outcome)
                last = RowResult(number, external_id, facility, outcome, message=exc.message)
                in_doubt = True
                continue
            result = self._outcome(number, external_id, facility, response)
            if result.outcome == "exists" and result.patient_id is None:
                # Some servers refuse a duplicate without naming the existing record (openEHR's
                # 409): look it up so the report still maps the row to its server id.
                result = result._replace(patient_id=self._existing_id(external_id, facility))
            self._journal(
                key,
                number,
                result.outcome,
                status=response.status,
                id=result.patient_id,
                body_sha256=response.body_sha256,
                verified=response.verification is not None and response.verification.verified,
            )
            if result.outcome != "failed":
                return result
            last, in_doubt = result, True
        return last

    def _outcome(
        self, number: int, external_id: str, facility: str, response: ApiResponse
    ) -> RowResult:
        verdict = self.mapping.verdict(response)
        return RowResult(
            number,
            external_id,
            facility,
            verdict.outcome,
            response.status,
            verdict.patient_id,
            verdict.message,
        )

    def _lookup(self, external_id: str, facility: str) -> Any:
        """The server id of an existing patient, or None (raises on network/signature failure)."""
        assert self.client is not None
        response = self.client.request("GET", self.mapping.lookup_path(external_id, facility))
        if response.status >= 500:
            raise _LookupFailed(response.status, f"lookup failed: {response.error_message()}")
        if response.status != 200:
            return None
        return self.mapping.found_id(response)

    def _existing_id(self, external_id: str, facility: str) -> Any:
        """The id of a patient the server says exists, or None if the look-up fails."""
        try:
            return self._lookup(external_id, facility)
        except (CwsError, _LookupFailed):
            return None

    def _journal(self, key: str, number: int, outcome: str, **facts: Any) -> None:
        if self.journal is not None:
            self.journal.record(key, number, outcome, **facts)

    def _pause(self, attempt: int) -> bool:
        """Back off before a retry; False if the run is being stopped meanwhile."""
        return not self._stop.wait(self.backoff * (2 ** (attempt - 1)))


class _LookupFailed(Exception):
    """The server failed (5xx) to say whether a patient exists."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

"""Bulk patient loads: validate, send concurrently, journal every step, never send a patient twice.

``BulkLoad.run`` reads rows lazily, validates each locally (the same schema the sandbox uses,
then the kind's own rules), and hands at most ``2 × concurrency`` rows at a time to its worker
threads, so memory is flat in the number of rows. Each row goes through ``_send_row``: look it up
first if an earlier attempt may have taken effect (or always, for kinds whose server cannot refuse
a duplicate), journal ``sending``, POST, journal the outcome. A response that fails verification
stops the run at once (the row stays "in doubt" and is looked up on the next run), and so does a
local key or login problem (exit 3, e.g. a revoked login): every later row would fail the same way.

How many requests are in flight is set by :class:`InFlightLimit`, which adapts like TCP's
congestion window: it grows while the server answers and the limit is the bottleneck, halves on a
busy signal (429, 503, a lost or late answer), and every request waits out a ``Retry-After``.
Without an explicit ``concurrency`` it starts at 8 and may grow to 32; an explicit value is the
most it ever uses (and where it starts).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cwsctl.core.bulk.journal import Journal
from cwsctl.core.bulk.readers import InputRow
from cwsctl.core.bulk.rows import PatientValidationError, patient_key, prepare_patient
from cwsctl.core.client import ApiClient, ApiResponse
from cwsctl.core.errors import CwsError, ExitStatus, NetworkError, SignatureError
from cwsctl.core.kind import PatientMapping
from cwsctl.core.transport.bounded import retry_after_seconds
from cwsctl.core.transport.deadline import exchange_deadline
from cwsctl.core.transport.errors import OutcomeUnknownError

#: Every outcome a row can have, in the order summaries list them.
OUTCOMES = ("created", "exists", "skipped", "valid", "invalid", "rejected", "failed", "unknown")
#: The outcomes of rows that need nothing more: created (now or earlier), or valid in a dry run.
DONE_OUTCOMES = frozenset({"created", "exists", "skipped", "valid"})
#: In-flight limit without an explicit ``concurrency``: where it starts, and the most it grows to.
DEFAULT_CONCURRENCY = 8
DEFAULT_MAX_CONCURRENCY = 32
#: Answers that mean "too much, slow down": nothing was processed, the row is sent again later.
BUSY_STATUSES = frozenset({429, 503})
#: Busy answers a row may get before it is given up (they do not use up ``retries``).
BUSY_RETRIES = 10
#: The longest ``Retry-After`` honoured; a server asking for more fails the row instead.
MAX_RETRY_AFTER = 120.0


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
    server_failures: int = 0  # failed rows whose last answer was a 5xx
    refused_failures: int = 0  # failed rows whose last answer was a 4xx (429: still too busy)
    security_error: SignatureError | None = None
    throttled: int = 0  # busy answers (429/503) that were waited out and retried
    lowest_limit: int | None = None  # the fewest requests in flight the load dropped to

    def add(self, result: RowResult) -> None:
        """Count one row."""
        self.counts[result.outcome] += 1
        if result.outcome == "failed" and result.status is not None:
            if result.status >= 500:
                self.server_failures += 1
            elif result.status >= 400:
                self.refused_failures += 1

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
        answered = self.server_failures + self.refused_failures
        network = self.counts["failed"] - answered + self.counts["unknown"]
        if network:
            return ExitStatus.NETWORK
        if self.server_failures:
            return ExitStatus.HTTP_5XX
        if self.counts["invalid"] or self.counts["rejected"] or self.refused_failures:
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


class InFlightLimit:
    """How many requests may be in flight at once: additive increase, multiplicative decrease.

    ``acquire`` takes a slot (waiting for one, and for any ``Retry-After`` in force) and returns a
    ticket; ``release`` gives it back with what the answer said. The limit starts at ``initial``
    and never passes ``maximum``: it doubles per window of good answers until the first busy
    signal (slow start), then grows by one per window; a window counts only answers that came
    back while every slot was taken, so an idle limit does not creep up. A busy signal halves it,
    once per round trip: answers to requests sent before the last decrease do not decrease it
    again.
    """

    def __init__(self, initial: int, maximum: int) -> None:
        self.maximum = max(1, maximum)
        self.limit = max(1, min(initial, self.maximum))
        self.lowest = self.limit
        self.busy_signals = 0
        self._active = 0
        self._good = 0
        self._slow_start = True
        self._generation = 0  # bumped by each decrease
        self._resume_at = 0.0  # time.monotonic() before which nothing is sent (Retry-After)
        self._closed = False
        self._cond = threading.Condition(threading.Lock())

    def acquire(self, stop: threading.Event) -> int | None:
        """Wait for a slot; a ticket for ``release``, or None once the run is stopping (see
        ``wake``)."""
        with self._cond:
            while True:
                if stop.is_set() or self._closed:
                    return None  # stopping: start nothing new
                pause = self._resume_at - time.monotonic()
                if pause > 0:
                    self._cond.wait(pause)
                    continue
                if self._active < self.limit:
                    self._active += 1
                    return self._generation
                self._cond.wait()

    def release(self, ticket: int, *, busy: bool = False, retry_after: float | None = None) -> None:
        """Give a slot back; ``busy`` when the answer said to slow down."""
        with self._cond:
            saturated = self._active >= self.limit
            self._active -= 1
            if busy:
                self.busy_signals += 1
                self._slow_start = False
                self._good = 0
                if ticket == self._generation:
                    self._generation += 1
                    self.limit = max(1, self.limit // 2)
                    self.lowest = min(self.lowest, self.limit)
                if retry_after:
                    wait = min(retry_after, MAX_RETRY_AFTER)
                    self._resume_at = max(self._resume_at, time.monotonic() + wait)
                    self._cond.notify_all()
                    return
            elif saturated and self.limit < self.maximum:
                self._good += 1
                if self._good >= self.limit:
                    self._good = 0
                    grow = self.limit if self._slow_start else 1
                    self.limit = min(self.maximum, self.limit + grow)
            free = self.limit - self._active
            if free > 0:
                self._cond.notify(free)

    def wake(self) -> None:
        """End every Retry-After wait at once: the run is stopping (``stop`` is set)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class BulkLoad:
    """One bulk load of patient rows through a profile kind's client and patient mapping."""

    def __init__(
        self,
        client: ApiClient | None,
        journal: Journal | None,
        mapping: PatientMapping,
        *,
        concurrency: int | None = None,
        retries: int = 3,
        stop_on_error: bool = False,
        backoff: float = 0.5,
    ) -> None:
        """``client=None`` is a dry run: rows are validated, nothing is sent.

        ``concurrency``: the most requests in flight (None: adaptive, from
        DEFAULT_CONCURRENCY up to DEFAULT_MAX_CONCURRENCY).
        """
        self.client = client
        self.journal = journal
        self.mapping = mapping
        if concurrency is None:
            self.limiter = InFlightLimit(DEFAULT_CONCURRENCY, DEFAULT_MAX_CONCURRENCY)
        else:
            self.limiter = InFlightLimit(concurrency, concurrency)
        self.concurrency = self.limiter.maximum
        self.retries = max(0, retries)
        self.stop_on_error = stop_on_error
        self.backoff = backoff
        self._stop = threading.Event()

    def run(self, rows: Iterable[InputRow], on_result: Callable[[RowResult], None]) -> Summary:
        """Process every row; call ``on_result`` (in this thread) as each one finishes.

        Ctrl-C stops taking new rows, lets the rows handed out finish and be journaled, and
        returns with ``interrupted`` set. A file-level input error is raised after the same
        draining, so nothing already done is lost.
        """
        summary = Summary()
        seen: dict[tuple[str, str], int] = {}
        # Worker threads take rows from `tasks` and put each row's result (or the exception it
        # raised) on `results`; only this thread reads `results`, so on_result runs here.
        tasks: queue.SimpleQueue[tuple[int, _ToSend] | None] = queue.SimpleQueue()
        results: queue.SimpleQueue[RowResult | BaseException | None] = queue.SimpleQueue()
        workers: list[threading.Thread] = []
        fatal: list[BaseException] = []  # the first error that stops the run (a token refused…)
        outstanding = 0
        window = 2 * self.concurrency

        def finish(result: RowResult) -> None:
            summary.add(result)
            on_result(result)
            if self.stop_on_error and not result.done:
                self._halt()

        def take(block: bool) -> bool:
            nonlocal outstanding
            try:
                item = results.get(block)
            except queue.Empty:
                return False
            outstanding -= 1
            if item is None:  # a row left unsent because the run is stopping
                pass
            elif isinstance(item, SignatureError):
                summary.security_error = summary.security_error or item
                self._halt()
            elif isinstance(item, BaseException):
                # Stop, but let the rows still in flight finish and be reported first.
                fatal.append(item)
                self._halt()
            else:
                finish(item)
            return True

        def collect(block_until_below: int) -> None:
            while outstanding > block_until_below:
                take(True)
            while take(False):
                pass

        def wind_down() -> None:
            """Wait for the workers themselves, not for a count of results: a Ctrl-C may land
            between handing a row out and counting it. Rows not started are left for the next
            run; rows in flight finish (within --timeout) and are reported."""
            for _ in workers:
                tasks.put(None)
            for worker in workers:
                worker.join()
            workers.clear()
            while take(False):
                pass

        def hand_out(number: int, row: _ToSend) -> None:
            nonlocal outstanding
            if len(workers) < self.concurrency:
                worker = threading.Thread(
                    target=self._work,
                    args=(tasks, results),
                    name=f"cwsctl-bulk-{len(workers)}",
                    daemon=True,
                )
                worker.start()
                workers.append(worker)
            outstanding += 1
            tasks.put((number, row))

        try:
            try:
                for row in rows:
                    if self._stop.is_set():
                        break
                    checked = self._check(row, seen)
                    if isinstance(checked, RowResult):
                        finish(checked)
                        continue
                    hand_out(row.number, checked)
                    collect(window - 1)
                collect(0)
                if fatal:
                    raise fatal[0]
            except KeyboardInterrupt:
                self._halt()
                summary.interrupted = True
                wind_down()
            except CwsError:
                self._halt()
                collect(0)
                raise
        finally:
            for _ in workers:
                tasks.put(None)
            for worker in workers:
                worker.join()
        summary.throttled = self.limiter.busy_signals
        summary.lowest_limit = self.limiter.lowest
        return summary

    def _halt(self) -> None:
        """Take no more rows, retry nothing more, and cut every Retry-After wait short."""
        self._stop.set()
        self.limiter.wake()

    def _work(
        self,
        tasks: queue.SimpleQueue[tuple[int, _ToSend] | None],
        results: queue.SimpleQueue[RowResult | BaseException | None],
    ) -> None:
        while (task := tasks.get()) is not None:
            if self._stop.is_set():
                results.put(None)  # not started: left for the next run (nothing was sent)
                continue
            try:
                results.put(self._send_row(*task))
            except BaseException as exc:  # handed to run(), which raises it in its thread
                results.put(exc)

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
            self.mapping.check(record)
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

    def _send_row(self, number: int, row: _ToSend) -> RowResult | None:
        """Send one patient, with lookups before any re-send; journal every step. None: the run
        stopped before anything was sent for it (the row is left for the next run, unreported)."""
        assert self.client is not None
        external_id, facility, key = row.external_id, row.facility, row.journal_key
        create = self.mapping.create_request(row.record)
        in_doubt = self.mapping.lookup_first or bool(self.journal and self.journal.in_doubt(key))
        last = RowResult(number, external_id, facility, "failed", message="not sent")
        failures = busy = 0
        last_busy = False
        while failures <= self.retries and busy <= BUSY_RETRIES:
            if (failures or busy) and (
                self._stop.is_set() or not self._pause(busy if last_busy else failures, last_busy)
            ):
                break
            ticket = self.limiter.acquire(self._stop)
            if ticket is None:
                if not (failures or busy):
                    return None  # stopping before its first attempt: nothing happened to it
                break
            congested, retry_after = False, None
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
                if response.status in BUSY_STATUSES:
                    congested = True
                    retry_after = retry_after_seconds(response.headers.get("retry-after"))
            except _LookupFailed as exc:  # the state stays in doubt; nothing was sent
                last = RowResult(
                    number, external_id, facility, "failed", exc.status, message=exc.message
                )
                congested, retry_after = exc.status in BUSY_STATUSES, exc.retry_after
                if 400 <= exc.status < 500 and exc.status != 408 and not congested:
                    return last  # refused (scope, rights): asking again in this run changes nothing
                last_busy = congested
                busy, failures = (busy + 1, failures) if congested else (busy, failures + 1)
                continue
            except SignatureError:
                self._journal(key, number, "unknown", verified=False)
                raise
            except NetworkError as exc:
                # "unknown": the request went out and its answer was lost; "failed": it never did.
                outcome = "unknown" if isinstance(exc, OutcomeUnknownError) else "failed"
                self._journal(key, number, outcome)
                last = RowResult(number, external_id, facility, outcome, message=exc.message)
                in_doubt = congested = True  # a lost or late answer may mean an overloaded server
                last_busy = False
                failures += 1
                continue
            finally:
                self.limiter.release(ticket, busy=congested, retry_after=retry_after)
            if congested:
                # Refused unprocessed (too many requests, unavailable): slow down, send again.
                self._journal(key, number, "failed", status=response.status)
                message = f"server busy ({response.status}): {response.error_message()}"
                last = RowResult(
                    number, external_id, facility, "failed", response.status, message=message
                )
                in_doubt = in_doubt or response.status >= 500  # as after any 5xx: look up first
                last_busy = True
                busy += 1
                if retry_after is not None and retry_after > MAX_RETRY_AFTER:
                    waited = f"; it asked to wait {retry_after:.0f} s (more than cwsctl waits)"
                    return last._replace(message=message + waited)
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
            last, in_doubt, last_busy = result, True, False
            failures += 1
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
        response, found = lookup_patient(self.client, self.mapping, external_id, facility)
        if response.status >= 500 or response.status in BUSY_STATUSES:
            raise _LookupFailed(
                response.status,
                f"lookup failed: {response.error_message()}",
                retry_after_seconds(response.headers.get("retry-after")),
            )
        if response.status == 404:
            return None
        if response.status != 200:
            # A refused search (400/401/403) says nothing about whether the patient exists:
            # the row stays in doubt rather than being sent again blind.
            raise _LookupFailed(
                response.status, f"lookup refused: {response.status} {response.error_message()}"
            )
        return found

    def _existing_id(self, external_id: str, facility: str) -> Any:
        """The id of a patient the server says exists, or None if the look-up fails."""
        try:
            return self._lookup(external_id, facility)
        except _LookupFailed:
            return None
        except CwsError as exc:
            if exc.exit_status is ExitStatus.LOCAL_KEY:
                raise  # a key or login problem stops the run, as it does anywhere else
            return None

    def _journal(self, key: str, number: int, outcome: str, **facts: Any) -> None:
        if self.journal is not None:
            self.journal.record(key, number, outcome, **facts)

    def _pause(self, attempt: int, busy: bool = False) -> bool:
        """Back off before a retry; False if the run is being stopped meanwhile.

        After a busy answer the pause stops doubling at 8 s: the limiter (and any Retry-After)
        already slows the whole load down.
        """
        pause = self.backoff * (2 ** (attempt - 1))
        return not self._stop.wait(min(pause, 8.0) if busy else pause)


def lookup_patient(
    client: ApiClient, mapping: PatientMapping, external_id: str, facility: str
) -> tuple[ApiResponse, Any]:
    """Search the server for patient ``external_id`` of ``facility``: the answer, and the id of
    the patient it holds (None unless a 200 answer holds that very patient, see
    :meth:`PatientMapping.match`). Network, signature and login failures raise."""
    response = client.request("GET", mapping.lookup_path(external_id, facility))
    found = mapping.match(response, external_id, facility) if response.status == 200 else None
    return response, found


class _LookupFailed(Exception):
    """The server failed (5xx), was too busy (429) or refused (4xx) to say whether a patient
    exists."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after

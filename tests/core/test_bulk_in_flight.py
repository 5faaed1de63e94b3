"""The bulk load's in-flight limit: backs off on 429/503, waits out Retry-After, recovers, and
never passes an explicit --concurrency. Against the real sandbox, whose max_in_flight fault
answers 429 (Retry-After: 1) to requests beyond a cap; the limiter's own rules are checked
directly, without clocks."""

from __future__ import annotations

import json
import threading
from email.utils import formatdate

import pytest

from cwsctl.core.bulk.journal import Journal
from cwsctl.core.bulk.readers import InputRow
from cwsctl.core.bulk.runner import BulkLoad, InFlightLimit, retry_after_seconds
from cwsctl.sandbox.faults import Faults
from cwsctl.targets.cws.patients import CwsPatients
from tests.cli.test_patients_bulk import all_patients, patient, write_csv

pytestmark = pytest.mark.timing  # the adaptive in-flight limit reacts to real time


def _rows(n: int):
    for i in range(n):
        yield InputRow(i + 1, {k: str(v) for k, v in patient(i).items()})


def _load(tmp_path, rows: int, concurrency: int | None):
    from cwsctl.cli.common import open_client
    from cwsctl.cli.output import Settings

    results = []
    with (
        open_client(Settings(), allow_http=True, max_connections=32) as client,
        Journal(tmp_path / "load.journal") as journal,
    ):
        loader = BulkLoad(client, journal, CwsPatients(), concurrency=concurrency, backoff=0.05)
        summary = loader.run(_rows(rows), results.append)
    return loader, summary, results


@pytest.mark.slow
def test_busy_server_slows_the_load_down_and_every_row_is_created_once(
    sandbox, sandbox_profile, tmp_path
):
    sandbox.faults = Faults(max_in_flight=2, latency_ms=30, seed=5)
    _, summary, results = _load(tmp_path, 40, None)
    assert summary.exit_status() == 0, [r for r in results if not r.done]
    assert summary.counts["created"] == 40
    assert summary.throttled > 0  # the sandbox did answer 429s
    assert summary.lowest_limit is not None and summary.lowest_limit <= 2
    assert len(all_patients(sandbox, 40)) == 40
    assert sandbox.store.count_patients() == 40


def test_an_explicit_concurrency_is_never_passed(sandbox, sandbox_profile, tmp_path):
    # The sandbox refuses a third request in progress: a client that keeps to 2 never sees a 429.
    sandbox.faults = Faults(max_in_flight=2, latency_ms=20, seed=6)
    loader, summary, _ = _load(tmp_path, 30, 2)
    assert loader.concurrency == 2
    assert summary.throttled == 0
    assert summary.counts["created"] == 30


@pytest.mark.slow
def test_cli_default_settings_ride_out_429s(cli, sandbox, sandbox_profile, tmp_path):
    source = write_csv(tmp_path / "in.csv", [patient(i) for i in range(30)])
    sandbox.faults = Faults(max_in_flight=3, latency_ms=20, seed=8)
    result = cli("patients", "create", "--from", str(source), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["created"] == 30
    assert sandbox.store.count_patients() == 30


def _steady(limit: InFlightLimit, answers: int) -> None:
    """A load that always has a request ready: every answer is followed by new requests up to
    the limit, so each answer comes back while every slot is taken."""
    stop = threading.Event()
    held = [limit.acquire(stop) for _ in range(limit.limit)]
    for _ in range(answers):
        limit.release(held.pop(0))  # type: ignore[arg-type]
        held += [limit.acquire(stop) for _ in range(limit.limit - len(held))]
    for ticket in held:
        limit.release(ticket)  # type: ignore[arg-type]


def test_limit_halves_once_per_round_trip_then_grows_back():
    limit = InFlightLimit(8, 8)
    stop = threading.Event()
    tickets = [limit.acquire(stop) for _ in range(8)]
    assert None not in tickets and limit.limit == 8
    # Eight answers to requests sent in the same round: one halving, not eight.
    for ticket in tickets[:4]:
        limit.release(ticket, busy=True)  # type: ignore[arg-type]
    assert limit.limit == 4 and limit.lowest == 4
    for ticket in tickets[4:]:
        limit.release(ticket)  # type: ignore[arg-type]
    # A busy answer to a request sent after the decrease halves it again.
    limit.release(limit.acquire(stop), busy=True)  # type: ignore[arg-type]
    assert limit.limit == 2
    # Good answers while every slot is taken grow it by one per window (no slow start now):
    # 2 answers take it to 3, 3 more to 4.
    _steady(limit, 5)
    assert limit.limit == 4
    assert limit.lowest == 2


def test_limit_grows_only_while_it_is_the_bottleneck_and_never_past_its_maximum():
    limit = InFlightLimit(2, 5)
    stop = threading.Event()
    for _ in range(20):  # one request at a time: the limit is never full, so it stays put
        limit.release(limit.acquire(stop))  # type: ignore[arg-type]
    assert limit.limit == 2
    _steady(limit, 2)  # one full window: slow start doubles
    assert limit.limit == 4
    _steady(limit, 20)  # capped at the maximum
    assert limit.limit == 5


def test_retry_after_holds_every_request_back_until_the_run_stops():
    limit = InFlightLimit(4, 4)
    stop = threading.Event()
    limit.release(limit.acquire(stop), busy=True, retry_after=60)  # type: ignore[arg-type]
    outcome: list[object] = []
    waiter = threading.Thread(target=lambda: outcome.append(limit.acquire(stop)))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # a free slot, but the server asked for 60 s: still waiting
    stop.set()
    limit.wake()
    waiter.join(10)
    assert outcome == [None]  # released by the stop, not given a slot


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3.0), (" 120 ", 120.0), ("", None), (None, None), ("soon", None), ("-1", None)],
)
def test_retry_after_seconds(value, expected):
    assert retry_after_seconds(value) == expected


def test_retry_after_as_an_http_date():
    import time

    seconds = retry_after_seconds(formatdate(time.time() + 30, usegmt=True))
    assert seconds is not None and 25 <= seconds <= 31
    assert retry_after_seconds(formatdate(time.time() - 30, usegmt=True)) == 0.0

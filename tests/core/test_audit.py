"""The audit log: one line per request, no patient data, rotation by size."""

from __future__ import annotations

import json
import logging
import os
import threading

import pytest

from cwsctl.core.audit import AuditLog
from cwsctl.core.errors import LocalKeyError
from cwsctl.sandbox.faults import Faults
from tests.cli.test_request import BODY


def test_every_request_appends_one_line_without_phi(
    cli, sandbox, sandbox_profile, cwsctl_home, tmp_path
):
    body = tmp_path / "body.json"
    body.write_bytes(BODY)
    assert cli("request", "POST", "/ws/patients/", str(body)).exit_code == 0
    assert cli("request", "GET", "/ws/patients/?external_id=FakeExternalID").exit_code == 0
    sandbox.faults = Faults(corrupt_rate=1.0)
    assert cli("request", "GET", "/ws/patients/?external_id=FakeExternalID").exit_code == 7
    log = cwsctl_home / "audit" / "default.jsonl"
    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 3
    first = lines[0]
    assert set(first) >= {
        "time",
        "profile",
        "method",
        "path",
        "status",
        "request_sha256",
        "response_sha256",
        "verified",
        "signer",
        "key_fingerprint",
        "duration_ms",
    }
    assert first["method"] == "POST" and first["status"] == 201 and first["verified"] is True
    assert lines[1]["path"] == "/ws/patients/"  # the query string (PHI) is not logged
    assert lines[2]["verified"] is False and lines[2]["error"] == "SignatureError"
    for secret in ("FakeExternalID", "First", "EthanBooking14", "Signature="):
        assert secret not in text
    assert (log.stat().st_mode & 0o777) == 0o600


def test_audit_command_with_since_and_json(cli, sandbox, sandbox_profile):
    cli("request", "GET", "/ws/")
    cli("request", "GET", "/ws/")
    shown = cli("audit")
    assert shown.exit_code == 0 and shown.stdout.count("GET    /ws/") == 2
    document = json.loads(cli("audit", "--since", "1h", "--json").stdout)
    assert len(document["entries"]) == 2
    assert cli("audit", "--since", "yesterday").exit_code == 2


def _record(log: AuditLog, path: str) -> None:
    log.record(
        method="GET",
        url=f"https://x{path}?external_id=secret",
        status=200,
        request_sha256="a" * 64,
        response_sha256="b" * 64,
        verified=True,
        signer="coremr",
        key_fingerprint="SHA256:x",
        duration_ms=1.0,
    )


def _numbers(entries: list[dict]) -> list[int]:
    return [int(e["path"].rsplit("/", 1)[1]) for e in entries]


@pytest.fixture
def open_umask():
    """Umask 000, so a file created with the default mode would be 0666 (world-readable)."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def test_rotation_by_size_keeps_a_bounded_number_of_private_files(tmp_path, open_umask):
    log = AuditLog(tmp_path, "p", max_bytes=2000, keep=3)
    for i in range(100):
        _record(log, f"/ws/{i}")
    log.close()
    folder = tmp_path / "audit"
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["p.jsonl", "p.jsonl.1", "p.jsonl.2", "p.jsonl.3"]
    line = len((folder / "p.jsonl").read_text().splitlines()[0]) + 1
    for name in files:
        size = (folder / name).stat().st_size
        assert size < 2000  # rotated before the size was reached…
        if name != "p.jsonl":
            assert size > 2000 - 2 * line  # …and not much earlier
        assert (folder / name).stat().st_mode & 0o777 == 0o600, name  # backups too
    assert folder.stat().st_mode & 0o777 == 0o700
    entries = list(log.entries())
    numbers = _numbers(entries)
    assert numbers == list(range(100 - len(numbers), 100))  # the newest, oldest first, no gap
    assert "secret" not in "".join((folder / name).read_text() for name in files)


def test_lines_from_many_threads_are_whole_and_all_kept(tmp_path):
    log = AuditLog(tmp_path, "p", max_bytes=20_000, keep=100)

    def write(thread: int) -> None:
        for i in range(200):
            _record(log, f"/ws/{thread * 1000 + i}")

    threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    folder = tmp_path / "audit"
    assert len(list(folder.iterdir())) > 10  # it rotated many times under contention
    raw = b"".join(path.read_bytes() for path in folder.iterdir())
    assert all(json.loads(line)["method"] == "GET" for line in raw.splitlines())  # no torn line
    assert sorted(_numbers(list(log.entries()))) == sorted(
        t * 1000 + i for t in range(8) for i in range(200)
    )


def test_entries_reach_no_logger_and_other_records_not_the_file(tmp_path):
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    root = logging.getLogger()
    collector, level = Collect(), root.level
    root.addHandler(collector)
    root.setLevel(logging.DEBUG)
    try:
        log = AuditLog(tmp_path, "p")
        _record(log, "/ws/1")
        logging.getLogger("cwsctl").warning("not an audit entry")
        _record(log, "/ws/2")
        log.close()
    finally:
        root.removeHandler(collector)
        root.setLevel(level)
    assert [r.getMessage() for r in seen] == ["not an audit entry"]
    text = (tmp_path / "audit" / "p.jsonl").read_text()
    assert "not an audit entry" not in text and _numbers(list(log.entries())) == [1, 2]


def test_a_write_that_fails_raises_instead_of_printing(tmp_path, capsys):
    (tmp_path / "audit").write_text("a file where the directory should be")
    log = AuditLog(tmp_path, "p")
    with pytest.raises(LocalKeyError, match=r"cannot use .*audit as a directory"):
        _record(log, "/ws/1")
    assert capsys.readouterr().err == ""  # logging's "--- Logging error ---" would land here


def test_close_then_record_appends_to_the_same_file(tmp_path):
    log = AuditLog(tmp_path, "p")
    _record(log, "/ws/1")
    log.close()
    _record(log, "/ws/2")
    log.close()
    assert _numbers(list(AuditLog(tmp_path, "p").entries())) == [1, 2]

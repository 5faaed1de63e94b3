"""The audit log: one line per request, no patient data, rotation by size."""

from __future__ import annotations

import json

from cwsctl.core.audit import AuditLog
from cwsctl.sandbox.faults import Faults
from tests.test_request import BODY


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


def test_rotation_by_size_keeps_a_bounded_number_of_files(tmp_path):
    log = AuditLog(tmp_path, "p", max_bytes=2000, keep=3)
    for i in range(100):
        log.record(
            method="GET",
            url=f"https://x/ws/{i}?external_id=secret",
            status=200,
            request_sha256="a",
            response_sha256="b",
            verified=True,
            signer="coremr",
            key_fingerprint="SHA256:x",
            duration_ms=1.0,
        )
    files = sorted(p.name for p in (tmp_path / "audit").iterdir())
    assert files == ["p.jsonl", "p.jsonl.1", "p.jsonl.2", "p.jsonl.3"]
    assert all((tmp_path / "audit" / f).stat().st_size <= 2000 for f in files)
    entries = list(log.entries())
    assert entries[-1]["path"] == "/ws/99"
    assert [int(e["path"].rsplit("/", 1)[1]) for e in entries] == sorted(
        int(e["path"].rsplit("/", 1)[1]) for e in entries
    )

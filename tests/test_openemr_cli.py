"""The openemr kind end to end through the real CLI, against the OpenEMR flavour of the sandbox.

A profile is made the way a user makes one (profile init --kind openemr, keys import, oauth
register); then request, patients create (single and bulk, killed and resumed), doctor, audit and
demo run as subprocesses, as cron runs them.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from cwsctl.core.kinds.openemr import external_id_system
from tests.conftest import write_private
from tests.test_patients_bulk import _spawn, _wait_for_progress, patient, write_csv

pytest.importorskip("jwt")


@pytest.fixture
def emr(make_openemr_sandbox, rsa2048, tmp_path, run_cwsctl):
    """An OpenEMR sandbox and a registered ``emr`` profile (the default) pointing at it."""
    server = make_openemr_sandbox()
    key_file = write_private(tmp_path / "rsa.private", rsa2048)
    for args in (
        ("profile", "init", "emr", "--kind", "openemr", "--url", server.url, "--default"),
        ("-p", "emr", "keys", "import", str(key_file)),
        ("-p", "emr", "oauth", "register", "--client-name", "tests", "--contact", "it@example.org"),
    ):
        result = run_cwsctl(*args)
        assert result.returncode == 0, (args, result.stderr)
    return server


def test_request_on_openemr_gets_a_token_and_says_answers_are_unsigned(emr, run_cwsctl):
    result = run_cwsctl("request", "GET", "/apis/default/fhir/Patient?name=Nobody")
    assert result.returncode == 0, result.stderr
    bundle = json.loads(result.stdout)
    assert bundle["resourceType"] == "Bundle" and bundle["total"] == 0
    assert "TLS only (OpenEMR does not sign answers)" in result.stderr.decode()


def test_openemr_error_bodies_become_the_one_line_error(emr, run_cwsctl, tmp_path):
    body = tmp_path / "bad.json"
    body.write_text('{"fname": "A", "lname": "B", "sex": "Male", "DOB": "2000-01-01"}')
    result = run_cwsctl("request", "POST", "/apis/default/api/patient", str(body))
    assert result.returncode == 4
    errors = [line for line in result.stderr.decode().splitlines() if "error:" in line]
    assert len(errors) == 1
    assert errors[0].startswith("cwsctl: error: 400 Bad Request: lname: ")
    assert b"Traceback" not in result.stderr


def test_single_patient_is_created_once(emr, run_cwsctl):
    args = ["patients", "create", "--external-id", "X1", "--facility", "10000"]
    args += ["--agency", "2", "--billing-agency", "1", "--fname", "Ann", "--lname", "Lee"]
    args += ["--dob", "1990-01-02", "--sex", "F", "--booking-no", "B1"]
    args += ["--booking-date", "2023-04-07"]
    first = run_cwsctl(*args)
    assert first.returncode == 0, first.stderr
    assert "201 Created" in first.stderr.decode()
    again = run_cwsctl(*args)
    assert again.returncode == 0, again.stderr
    assert "200 OK" in again.stderr.decode()  # OpenEMR found it: conditional create
    assert emr.count_patients() == 1
    stored = emr.store.patients_by_identifier(external_id_system("10000"), "X1")
    assert len(stored) == 1


def test_bulk_killed_and_resumed_holds_each_patient_once(emr, tmp_path, cwsctl_home, run_cwsctl):
    n = 60
    source = write_csv(tmp_path / "in.csv", [patient(i) for i in range(n)])
    emr.faults = type(emr.faults)(latency_ms=60, seed=5)
    process = _spawn(cwsctl_home, "patients", "create", "--from", str(source), "--concurrency", "4")
    _wait_for_progress(emr.count_patients, 10)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert 0 < emr.count_patients() < n
    emr.faults = type(emr.faults)()
    report = tmp_path / "report.json"
    resumed = run_cwsctl("-q", "patients", "create", "--from", str(source), "--report", str(report))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == b"" and resumed.stderr == b""
    assert emr.count_patients() == n
    for i in range(n):
        found = emr.store.patients_by_identifier(external_id_system("10000"), f"EXT{i:05d}")
        assert len(found) == 1, f"EXT{i:05d} stored {len(found)} times"
    rows = json.loads(report.read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert {r["outcome"] for r in rows} <= {"created", "exists", "skipped"}


def test_bulk_names_the_columns_openemr_has_no_place_for(emr, tmp_path, run_cwsctl):
    source = write_csv(tmp_path / "in.csv", [patient(0)])
    result = run_cwsctl("patients", "create", "--from", str(source))
    assert result.returncode == 0, result.stderr
    assert "not sent (this kind has no place for them): agency, billing_agency" in (
        result.stderr.decode()
    )


def test_a_revoked_token_is_renewed_once_and_the_request_retried(emr, run_cwsctl):
    assert run_cwsctl("request", "GET", "/apis/default/fhir/Patient?name=X").returncode == 0
    emr.revoke_tokens()
    result = run_cwsctl("request", "GET", "/apis/default/fhir/Patient?name=X")
    assert result.returncode == 0, result.stderr


def test_doctor_passes_on_openemr_and_says_answers_are_unsigned(emr, run_cwsctl):
    result = run_cwsctl("doctor")
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "✓ token and API" in out and "OpenEMR does not sign its answers" in out


def test_audit_records_openemr_requests_without_tokens(emr, run_cwsctl, cwsctl_home):
    assert run_cwsctl("request", "GET", "/apis/default/fhir/Patient?name=Y").returncode == 0
    audit = run_cwsctl("audit", "--json")
    assert audit.returncode == 0, audit.stderr
    assert "/apis/default/fhir/Patient" in audit.stdout.decode()
    token_file = json.loads((cwsctl_home / "tokens" / "emr.json").read_text())
    secrets = [v for v in json.dumps(token_file).split('"') if len(v) >= 20]
    logged = "".join(p.read_text() for p in (cwsctl_home / "audit").iterdir())
    assert secrets and not any(secret in logged for secret in secrets)


def test_demo_openemr_runs_clean_and_leaves_nothing(run_cwsctl, cwsctl_home):
    result = run_cwsctl("demo", "--kind", "openemr", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] and document["kind"] == "openemr"
    steps = {s["step"]: s for s in document["steps"]}
    create = next(s for title, s in steps.items() if title.startswith("Create"))
    again = next(s for title, s in steps.items() if title.startswith("Send the same"))
    assert create["status"] == "201 Created" and again["patients_stored"] == 1
    assert not cwsctl_home.exists()


def test_the_token_never_goes_to_another_host(emr, run_cwsctl):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.5)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/steal"
        result = run_cwsctl("request", "GET", url)
        assert result.returncode == 2
        assert "refusing to send this profile's credentials" in result.stderr.decode()
        with pytest.raises(TimeoutError):
            listener.accept()


def test_openehr_commands_refuse_an_openemr_profile(emr, run_cwsctl):
    result = run_cwsctl("query", "SELECT e/ehr_id/value FROM EHR e")
    assert result.returncode == 3
    assert "is of kind openemr; ehr, composition and query work on openehr" in (
        result.stderr.decode()
    )


def test_a_stuck_token_lock_holder_cannot_hold_a_job_past_its_timeout(emr, run_cwsctl, cwsctl_home):
    import fcntl
    import os

    lock = cwsctl_home / "tokens" / "emr.lock"
    lock.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a stopped cron job holding the lock
        started = time.monotonic()
        result = run_cwsctl("request", "GET", "/apis/default/fhir/Patient?name=Z", "--timeout", "1")
        took = time.monotonic() - started
    finally:
        os.close(fd)
    assert result.returncode == 6
    assert "timed out waiting for the token lock" in result.stderr.decode()
    assert took < 10  # the 1-second deadline (plus start-up), not forever


def test_one_journal_cannot_be_resumed_against_another_server(
    emr, make_openemr_sandbox, tmp_path, run_cwsctl, rsa2048
):
    source = write_csv(tmp_path / "in.csv", [patient(0)])
    assert run_cwsctl("patients", "create", "--from", str(source)).returncode == 0
    other = make_openemr_sandbox()
    init = ("profile", "init", "emr2", "--kind", "openemr", "--url", other.url)
    key = write_private(tmp_path / "k2.pem", rsa2048)
    for args in (
        init,
        ("-p", "emr2", "keys", "import", str(key)),
        ("-p", "emr2", "oauth", "register"),
    ):
        assert run_cwsctl(*args).returncode == 0
    result = run_cwsctl("-p", "emr2", "patients", "create", "--from", str(source))
    assert result.returncode == 2
    assert "is the journal of a load into openemr " + emr.url in result.stderr.decode()
    assert other.count_patients() == 0
    own = run_cwsctl(
        "-p", "emr2", "patients", "create", "--from", str(source), "--journal", str(tmp_path / "j2")
    )
    assert own.returncode == 0 and other.count_patients() == 1

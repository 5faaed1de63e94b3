"""The openemr kind end to end through the real CLI, against the OpenEMR flavour of the sandbox.

A profile is made the way a user makes one (``make_openemr_login``: key, profile init --kind
openemr, oauth register, the administrator enabling the client, oauth login); then request,
patients create (single and bulk, killed and resumed, revoked), doctor and audit run as
subprocesses, as cron runs them. The patient flows run against both OpenEMR versions the sandbox
models. OpenEMR creates a patient on every POST, so every test counts the patients the sandbox
holds afterwards.
"""

from __future__ import annotations

import csv
import json
import re
import signal
import time

import pytest

from cwsctl.targets.openemr.kind import pubpid
from tests.cli.test_patients_bulk import _spawn, _wait_for_progress, patient, write_csv
from tests.targets.openemr.conftest import complete_oauth_login

pytest.importorskip("jwt")

VERSIONS = ["7.0.3", "7.0.4"]
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
SINGLE = [
    "patients", "create", "--external-id", "X1", "--facility", "10000", "--agency", "2",
    "--billing-agency", "1", "--fname", "Ann", "--lname", "Lee", "--dob", "1990-01-02",
    "--sex", "F", "--booking-no", "B1", "--booking-date", "2023-04-07",
]  # fmt: skip


@pytest.fixture(params=VERSIONS)
def emr(request, make_openemr_login):
    """A logged-in ``emr`` profile (the default) at a sandbox of each OpenEMR version."""
    return make_openemr_login(version=request.param).server


@pytest.fixture
def emr_latest(make_openemr_login):
    """A logged-in ``emr`` profile at a 7.0.4 sandbox (for what does not differ by version)."""
    return make_openemr_login().server


def stored(server, external_id: str, facility: str = "10000") -> list:
    """The sandbox's patients whose pubpid is this facility's external id."""
    return [p for p in server.patients() if p.pubpid == pubpid(external_id, facility)]


def single(external_id: str = "X1", facility: str = "10000", **changes: str) -> list[str]:
    args = list(SINGLE)
    args[args.index("--external-id") + 1] = external_id
    args[args.index("--facility") + 1] = facility
    for name, value in changes.items():
        args[args.index(f"--{name}") + 1] = value
    return args


def read_report(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# -- patients exist once ------------------------------------------------------------------------
@pytest.mark.slow
def test_single_create_then_the_same_row_is_found_by_lookup(emr, run_cwsctl):
    first = run_cwsctl(*single())
    assert first.returncode == 0, first.stderr
    assert "201 Created" in first.stderr.decode()
    created = json.loads(first.stdout)
    assert UUID.match(created["uuid"])  # OpenEMR's answer: {"pid", "uuid"}, no Location
    (patient_row,) = stored(emr, "X1")
    assert patient_row.uuid == created["uuid"]
    # OpenEMR read the official name (it reads no other) and the PT identifier as pubpid
    assert (patient_row.record["fname"], patient_row.record["lname"]) == ("Ann", "Lee")
    again = run_cwsctl(*single())
    assert again.returncode == 0, again.stderr
    assert f"exists: found by look-up as {created['uuid']}; nothing created" in (
        again.stderr.decode()
    )
    assert emr.count_patients() == 1


@pytest.mark.slow
def test_bulk_twice_with_two_journals_holds_each_patient_once(emr, tmp_path, run_cwsctl):
    n = 8
    source = write_csv(tmp_path / "in.csv", [patient(i) for i in range(n)])
    first_report, second_report = tmp_path / "r1.csv", tmp_path / "r2.csv"
    first = run_cwsctl(
        "patients", "create", "--from", str(source), "--journal", str(tmp_path / "j1"),
        "--report", str(first_report),
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    second = run_cwsctl(
        "patients", "create", "--from", str(source), "--journal", str(tmp_path / "j2"),
        "--report", str(second_report),
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert f"created 0 · already existed {n}" in second.stderr.decode()
    assert emr.count_patients() == n
    uuids = {p.pubpid: p.uuid for p in emr.patients()}
    for report, outcome in ((first_report, "created"), (second_report, "exists")):
        rows = read_report(report)
        assert [r["outcome"] for r in rows] == [outcome] * n
        for row in rows:  # the report's id column holds OpenEMR's uuids
            assert UUID.match(row["id"]), row
            assert row["id"] == uuids[pubpid(row["external_id"], row["facility"])]


@pytest.mark.slow
def test_a_single_row_of_a_loaded_patient_creates_nothing(emr, tmp_path, run_cwsctl):
    source = write_csv(tmp_path / "in.csv", [patient(i) for i in range(3)])
    assert run_cwsctl("patients", "create", "--from", str(source)).returncode == 0
    result = run_cwsctl(*single("EXT00001", lname="Name, Jr"))
    assert result.returncode == 0, result.stderr
    assert "nothing created" in result.stderr.decode()
    assert emr.count_patients() == 3
    assert len(stored(emr, "EXT00001")) == 1


@pytest.mark.slow
def test_the_same_external_id_in_two_facilities_is_two_patients(emr, run_cwsctl, tmp_path):
    # Another patient whose SSN happens to be this pubpid: OpenEMR's identifier search matches
    # `ss = V OR pubpid = V`, and cwsctl must not take it for facility 10000's X1.
    other = {
        "resourceType": "Patient",
        "name": [{"use": "official", "family": "Other", "given": ["Sam"]}],
        "gender": "male",
        "birthDate": "1980-05-06",
        "identifier": [
            {
                "type": {"coding": [{"code": "SS"}]},
                "system": "http://hl7.org/fhir/sid/us-ssn",
                "value": pubpid("X1", "10000"),
            }
        ],
    }
    body = tmp_path / "other.json"
    body.write_text(json.dumps(other))
    made = run_cwsctl("request", "POST", f"/apis/{emr.site}/fhir/Patient", str(body))
    assert made.returncode == 0, made.stderr
    for facility in ("10000", "20000", "10000", "20000"):
        result = run_cwsctl(*single("X1", facility))
        assert result.returncode == 0, result.stderr
    assert len(stored(emr, "X1", "10000")) == 1
    assert len(stored(emr, "X1", "20000")) == 1
    assert emr.count_patients() == 3  # the SSN holder and one X1 per facility


@pytest.mark.slow
def test_a_one_letter_last_name_is_refused_before_sending(emr, run_cwsctl, tmp_path):
    result = run_cwsctl(*single(lname="L"))
    assert result.returncode == 2
    first_line = result.stderr.decode().splitlines()[0]
    assert first_line == (
        "cwsctl: error: invalid patient: field 'lname' must be at least 2 characters for OpenEMR"
    )
    assert emr.count_patients() == 0
    rows = [patient(i) for i in range(3)]
    rows[1]["lname"] = "L"
    report = tmp_path / "report.csv"
    source = write_csv(tmp_path / "in.csv", rows)
    bulk = run_cwsctl("patients", "create", "--from", str(source), "--report", str(report))
    assert bulk.returncode == 4  # rows not created: the exit status of an invalid row
    assert "created 2 · " in bulk.stderr.decode() and "invalid 1" in bulk.stderr.decode()
    outcomes = {r["row"]: (r["outcome"], r["message"]) for r in read_report(report)}
    assert outcomes["2"] == (
        "invalid",
        "field 'lname' must be at least 2 characters for OpenEMR",
    )
    assert emr.count_patients() == 2 and not stored(emr, "EXT00001")


@pytest.mark.slow
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
        assert len(stored(emr, f"EXT{i:05d}")) == 1, f"EXT{i:05d}"
    rows = json.loads(report.read_text())
    assert {r["outcome"] for r in rows} <= {"created", "exists", "skipped"}


@pytest.mark.slow
def test_a_revoked_login_stops_the_bulk_run_with_the_login_hint(
    emr, tmp_path, cwsctl_home, run_cwsctl
):
    n = 40
    source = write_csv(tmp_path / "in.csv", [patient(i) for i in range(n)])
    half = write_csv(tmp_path / "half.csv", [patient(i) for i in range(n // 2)])
    journal = tmp_path / "load.journal"
    args = ["patients", "create", "--journal", str(journal)]
    assert run_cwsctl(*args, "--from", str(half)).returncode == 0
    assert emr.logout() >= 1  # the user's OpenEMR session ends: every token of it is refused
    report = tmp_path / "report.csv"
    result = run_cwsctl(*args, "--from", str(source), "--report", str(report))
    assert result.returncode == 3, result.stderr
    lines = result.stderr.decode().splitlines()
    errors = [line for line in lines if line.startswith("cwsctl: error:")]
    assert len(errors) == 1, lines
    assert "cwsctl -p emr oauth login" in result.stderr.decode()
    # the rows done earlier, and nothing else: no row "rejected" or "failed" for the lost login
    assert [r["outcome"] for r in read_report(report)] == ["skipped"] * (n // 2)
    assert emr.count_patients() == n // 2
    # log in again: the same command continues, and nobody is created twice
    complete_oauth_login(cwsctl_home, "emr")
    resumed = run_cwsctl(*args, "--from", str(source))
    assert resumed.returncode == 0, resumed.stderr
    assert emr.count_patients() == n
    assert all(len(stored(emr, f"EXT{i:05d}")) == 1 for i in range(n))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.slow
def test_a_missing_scope_renews_the_token_once_per_run_not_per_row(
    make_openemr_login, tmp_path, run_cwsctl, capfd, version
):
    scope = "openid offline_access api:fhir user/Patient.read"  # no user/Patient.write
    login = make_openemr_login(scope=scope, version=version)
    n = 6
    source = write_csv(tmp_path / "in.csv", [patient(i) for i in range(n)])
    capfd.readouterr()  # the sandbox's access log so far (registration, login)
    result = run_cwsctl("patients", "create", "--from", str(source), "--concurrency", "1")
    log = capfd.readouterr().err
    assert result.returncode == 4, result.stderr
    assert login.server.count_patients() == 0
    creates = log.count(f"POST /apis/{login.server.site}/fhir/Patient 401")
    assert creates >= n  # every row was refused for the missing scope …
    assert log.count(f"POST /oauth2/{login.server.site}/token ") <= 1  # … one renewal at most


# -- the rest of the kind, end to end -----------------------------------------------------------
def test_request_on_openemr_gets_a_token_and_says_answers_are_unsigned(emr_latest, run_cwsctl):
    result = run_cwsctl("request", "GET", "/apis/default/fhir/Patient?name=Nobody")
    assert result.returncode == 0, result.stderr
    bundle = json.loads(result.stdout)
    assert bundle["resourceType"] == "Bundle" and not bundle.get("entry")
    assert "TLS only (OpenEMR does not sign answers)" in result.stderr.decode()


@pytest.mark.slow
def test_openemr_validation_errors_become_the_one_line_error(emr_latest, run_cwsctl, tmp_path):
    body = tmp_path / "bad.json"  # a name without "use": "official": OpenEMR reads none
    body.write_text(
        '{"resourceType": "Patient", "name": [{"family": "Lee", "given": ["Ann"]}],'
        ' "gender": "female", "birthDate": "1990-01-02"}'
    )
    result = run_cwsctl("request", "POST", "/apis/default/fhir/Patient", str(body))
    assert result.returncode == 4
    errors = [line for line in result.stderr.decode().splitlines() if "error:" in line]
    assert len(errors) == 1
    assert errors[0].startswith("cwsctl: error: 400 Bad Request: ")
    assert "lname" in errors[0]
    assert b"Traceback" not in result.stderr
    assert emr_latest.count_patients() == 0


def test_bulk_names_the_columns_openemr_has_no_place_for(emr_latest, tmp_path, run_cwsctl):
    source = write_csv(tmp_path / "in.csv", [patient(0)])
    result = run_cwsctl("patients", "create", "--from", str(source))
    assert result.returncode == 0, result.stderr
    assert "not sent (this kind has no place for them): agency, billing_agency" in (
        result.stderr.decode()
    )


def test_a_revoked_access_token_is_renewed_once_and_the_request_retried(emr_latest, run_cwsctl):
    assert run_cwsctl("request", "GET", "/apis/default/fhir/Patient?name=X").returncode == 0
    emr_latest.revoke_tokens()
    result = run_cwsctl("request", "GET", "/apis/default/fhir/Patient?name=X")
    assert result.returncode == 0, result.stderr


def test_doctor_passes_on_openemr_and_says_answers_are_unsigned(emr_latest, run_cwsctl):
    result = run_cwsctl("doctor")
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "✓ token and API" in out and "OpenEMR does not sign its answers" in out


@pytest.mark.slow
def test_audit_records_openemr_requests_without_tokens(emr_latest, run_cwsctl, cwsctl_home):
    assert run_cwsctl("request", "GET", "/apis/default/fhir/Patient?name=Y").returncode == 0
    audit = run_cwsctl("audit", "--json")
    assert audit.returncode == 0, audit.stderr
    assert "/apis/default/fhir/Patient" in audit.stdout.decode()
    token_file = json.loads((cwsctl_home / "tokens" / "emr.json").read_text())
    secrets = [v for v in json.dumps(token_file).split('"') if len(v) >= 20]
    logged = "".join(p.read_text() for p in (cwsctl_home / "audit").iterdir())
    assert secrets and not any(secret in logged for secret in secrets)


def test_the_token_never_goes_to_another_host(emr_latest, run_cwsctl):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.5)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/steal"
        result = run_cwsctl("request", "GET", url)
        assert result.returncode == 2
        assert "refusing to send this profile's credentials" in result.stderr.decode()
        with pytest.raises(TimeoutError):
            listener.accept()


def test_openehr_commands_refuse_an_openemr_profile(emr_latest, run_cwsctl):
    result = run_cwsctl("query", "SELECT e/ehr_id/value FROM EHR e")
    assert result.returncode == 3
    assert "is of kind openemr; ehr, composition and query work on openehr" in (
        result.stderr.decode()
    )


@pytest.mark.timing
@pytest.mark.slow
def test_a_stuck_token_lock_holder_cannot_hold_a_job_past_its_timeout(
    emr_latest, run_cwsctl, cwsctl_home
):
    import fcntl
    import os

    emr_latest.revoke_tokens()  # the next request needs the token lock
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


@pytest.mark.slow
def test_one_journal_cannot_be_resumed_against_another_server(
    make_openemr_login, tmp_path, run_cwsctl
):
    emr = make_openemr_login().server
    source = write_csv(tmp_path / "in.csv", [patient(0)])
    assert run_cwsctl("patients", "create", "--from", str(source)).returncode == 0
    other = make_openemr_login(name="emr2").server
    result = run_cwsctl("-p", "emr2", "patients", "create", "--from", str(source))
    assert result.returncode == 2
    assert "is the journal of a load into openemr " + emr.url in result.stderr.decode()
    assert other.count_patients() == 0
    own = run_cwsctl(
        "-p", "emr2", "patients", "create", "--from", str(source), "--journal", str(tmp_path / "j2")
    )
    assert own.returncode == 0 and other.count_patients() == 1


def test_demo_openemr_tells_the_real_servers_story_and_leaves_nothing(run_cwsctl, cwsctl_home):
    result = run_cwsctl("demo", "--kind", "openemr", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] and document["kind"] == "openemr"
    steps = [s["step"] for s in document["steps"]]
    order = [
        "Register",
        "An OpenEMR administrator enables",
        "Sign in once",
        "Create",
        "Send the same",
    ]
    positions = [next(i for i, s in enumerate(steps) if s.startswith(p)) for p in order]
    assert positions == sorted(positions)
    again = next(s for s in document["steps"] if s["step"].startswith("Send the same"))
    assert again["patients_stored"] == 1
    created = next(s for s in document["steps"] if s["step"].startswith("Create"))
    assert set(json.loads(created["answer"])) == {"pid", "uuid"}
    assert again["found"] == json.loads(created["answer"])["uuid"]
    assert not cwsctl_home.exists()

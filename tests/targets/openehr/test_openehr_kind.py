"""The openehr kind end to end: profiles, secrets, patients create (one EHR per subject), doctor.

The commands that only openEHR has (ehr, composition, query) are in test_openehr_commands.py.
"""

from __future__ import annotations

import csv
import json
import signal
from collections import Counter

import pytest

from cwsctl.targets.openehr.data import vital_signs_opt
from cwsctl.targets.openehr.kind import OpenEhrPatients
from cwsctl.targets.openehr.subject import namespace_problem, subject_namespace
from tests.cli.test_patients_bulk import _spawn, _wait_for_progress, patient, write_csv
from tests.targets.openehr.test_openehr_commands import MODES

PASSWORD = "correct horse battery staple"


@pytest.fixture
def mode() -> str:
    """The sandbox's mode: EHRbase 2.0-2.31 unless a test runs in each (parametrize "mode")."""
    return "ehrbase"


EVERY_MODE = pytest.mark.parametrize("mode", list(MODES))


@pytest.fixture
def cdr(make_openehr_sandbox, tmp_path, run_cwsctl, mode):
    """An openEHR sandbox in ``mode`` with basic auth, holding the vital signs template, and a
    ``cdr`` profile whose password is stored."""
    server = make_openehr_sandbox(
        basic_auth=("loader", PASSWORD), templates=[vital_signs_opt()], **MODES[mode]
    )
    password_file = tmp_path / "pw.txt"
    password_file.write_text(PASSWORD + "\n")
    result = run_cwsctl(
        "profile",
        "init",
        "cdr",
        "--kind",
        "openehr",
        "--url",
        server.base_url,
        "--auth",
        "basic",
        "--username",
        "loader",
        "--password-file",
        str(password_file),
        "--store-secret",
    )
    assert result.returncode == 0, result.stderr
    return server


def _subjects(server) -> Counter:
    return Counter((e.subject_id, e.subject_namespace) for e in server.ehrs())


def test_the_secret_is_kept_0600_and_never_in_config(cdr, cwsctl_home):
    secret = cwsctl_home / "secrets" / "cdr.json"
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    assert oct(secret.parent.stat().st_mode & 0o777) == "0o700"
    assert PASSWORD not in (cwsctl_home / "config.toml").read_text()


def test_bulk_provisions_one_ehr_per_subject_and_reports_ehr_ids(
    cdr, tmp_path, run_cwsctl, cwsctl_home
):
    rows = [patient(i) for i in range(5)]
    source = write_csv(tmp_path / "in.csv", rows)
    report = tmp_path / "report.csv"
    first = run_cwsctl("patients", "create", "--from", str(source), "--report", str(report))
    assert first.returncode == 0, first.stderr
    err = first.stderr.decode()
    assert "not sent (this kind has no place for them): fname, lname, dob, sex" in err
    ehr_ids = {ehr.subject_id: ehr.ehr_id for ehr in cdr.ehrs()}
    with open(report, newline="") as handle:
        reported = {row["external_id"]: row for row in csv.DictReader(handle)}
    assert {k: v["id"] for k, v in reported.items()} == ehr_ids
    # A second load of the same subjects (new journal) finds them: 409 → "exists" with the ehr_id.
    again_report = tmp_path / "again.csv"
    again = run_cwsctl(
        "patients",
        "create",
        "--from",
        str(source),
        "--journal",
        str(tmp_path / "other.journal"),
        "--report",
        str(again_report),
    )
    assert again.returncode == 0, again.stderr
    with open(again_report, newline="") as handle:
        second = list(csv.DictReader(handle))
    assert {r["outcome"] for r in second} == {"exists"}
    assert {r["external_id"]: r["id"] for r in second} == ehr_ids
    assert set(_subjects(cdr).values()) == {1} and cdr.count_ehrs() == 5
    for audit in (cwsctl_home / "audit").iterdir():
        assert PASSWORD not in audit.read_text()


@pytest.mark.slow
def test_bulk_killed_and_resumed_holds_one_ehr_per_subject(cdr, tmp_path, cwsctl_home, run_cwsctl):
    n = 60
    source = write_csv(tmp_path / "in.csv", [patient(i) for i in range(n)])
    cdr.faults = type(cdr.faults)(latency_ms=60, seed=7)
    process = _spawn(cwsctl_home, "patients", "create", "--from", str(source), "--concurrency", "4")
    _wait_for_progress(cdr.count_ehrs, 10)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert 0 < cdr.count_ehrs() < n
    cdr.faults = type(cdr.faults)()
    resumed = run_cwsctl("-q", "patients", "create", "--from", str(source))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == b"" and resumed.stderr == b""
    subjects = _subjects(cdr)
    assert cdr.count_ehrs() == n and set(subjects.values()) == {1}
    namespace = subject_namespace("10000")
    assert set(subjects) == {(f"EXT{i:05d}", namespace) for i in range(n)}


def test_wrong_password_is_exit_4_and_never_echoed(cdr, run_cwsctl):
    result = run_cwsctl(
        "request", "GET", "/definition/template/adl1.4", env={"CWSCTL_PASSWORD": "wrong-one"}
    )
    assert result.returncode == 4
    err = result.stderr.decode()
    assert "401" in err and "refused the credentials" in err
    assert "wrong-one" not in err and PASSWORD not in err


def test_verbose_and_json_never_show_credentials(cdr, run_cwsctl):
    verbose = run_cwsctl("-v", "request", "GET", "/definition/template/adl1.4")
    assert verbose.returncode == 0, verbose.stderr
    as_json = run_cwsctl("request", "GET", "/definition/template/adl1.4", "--json")
    assert json.loads(as_json.stdout)["status"] == 200
    for output in (verbose.stdout, verbose.stderr, as_json.stdout, as_json.stderr):
        text = output.decode()
        assert PASSWORD not in text and "Basic " not in text


def test_no_secret_anywhere_names_how_to_give_one(make_openehr_sandbox, run_cwsctl):
    server = make_openehr_sandbox(basic_auth=("loader", PASSWORD))
    args = ["profile", "init", "x", "--kind", "openehr", "--url", server.base_url]
    assert run_cwsctl(*args, "--auth", "basic", "--username", "loader").returncode == 0
    result = run_cwsctl("-p", "x", "request", "GET", "/definition/template/adl1.4")
    assert result.returncode == 3
    assert "no password for profile 'x'" in result.stderr.decode()
    assert "CWSCTL_PASSWORD" in result.stderr.decode()


def test_doctor_passes_on_openehr(cdr, run_cwsctl):
    result = run_cwsctl("doctor")
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "✓ credentials and server" in out and "do not sign their answers" in out


def test_demo_openehr_runs_clean_and_leaves_nothing(run_cwsctl, cwsctl_home):
    result = run_cwsctl("demo", "--kind", "openehr", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] and document["kind"] == "openehr"
    stale = next(s for s in document["steps"] if s["step"].startswith("A stale update"))
    assert stale["result"].startswith("refused (exit 4): changed since it was read: latest is ")
    assert stale["result"].endswith("::3")
    steps = [s["step"] for s in document["steps"]]
    assert steps.index(next(s for s in steps if s.startswith("Upload the operational"))) < (
        steps.index(next(s for s in steps if s.startswith("Write a composition in FLAT")))
    )
    updates = [s for s in document["steps"] if s["step"].startswith("Update it")]
    assert "sent again bare" in updates[0]["if_match"]  # the sandbox refused the quoted form
    assert updates[1]["if_match"].startswith("sent bare at once")
    assert not cwsctl_home.exists()


@EVERY_MODE
@pytest.mark.slow
def test_request_if_match_works_on_every_server_and_a_stale_one_is_412(
    cdr, run_cwsctl, tmp_path, mode
):
    from tests.targets.openehr.test_openehr_commands import composition

    ehr = run_cwsctl("ehr", "create", "--subject-id", "R1", "--namespace", "ns")
    assert ehr.returncode == 0, ehr.stderr
    ehr_id = ehr.stdout.decode().strip()
    body = tmp_path / "c.json"
    body.write_bytes(composition(120))
    created = run_cwsctl(
        "request", "POST", f"/ehr/{ehr_id}/composition", str(body), "--prefer", "minimal", "--json"
    )
    document = json.loads(created.stdout)
    # EHRbase answers a minimal create with 204 (the specification says 201), no body.
    assert created.returncode == 0 and document["status"] in (201, 204)
    assert document["body"] is None
    v1 = document["etag"].strip('"')
    assert v1.endswith("::1")
    object_id = v1.split("::")[0]
    path = f"/ehr/{ehr_id}/composition/{object_id}"
    updated = run_cwsctl("-v", "request", "PUT", path, str(body), "--if-match", v1)
    assert updated.returncode == 0, updated.stderr
    sent = [
        line.split(":", 1)[1].strip()
        for line in updated.stderr.decode().splitlines()
        if line.lower().startswith("> if-match:")
    ]
    # -v shows the exchange that counted: bare after EHRbase 2.0-2.31 refused the quotes.
    assert sent == ([v1] if MODES[mode]["if_match"] == "ehrbase" else [f'"{v1}"'])
    stale = run_cwsctl("request", "PUT", path, str(body), "--if-match", v1)
    assert stale.returncode == 4
    error = next(line for line in stale.stderr.decode().splitlines() if "error:" in line)
    assert error.startswith("cwsctl: error: 412 ")
    assert "does not match latest version" in error


def test_credentials_never_go_to_another_host(cdr, run_cwsctl):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.5)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/steal"
        result = run_cwsctl("request", "GET", url)
        assert result.returncode == 2
        assert "refusing to send this profile's credentials" in result.stderr.decode()
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing connected: the password never left


# -- item 6: subject namespaces EHRbase accepts, for every facility cwsctl accepts -----------------


@pytest.mark.parametrize(
    ("facility", "namespace"),
    [
        (10000, "urn:cwsctl:external-id:facility:10000"),
        ("NORTH-1", "urn:cwsctl:external-id:facility:NORTH-1"),
        ("x+y", "urn:cwsctl:external-id:facility:x+y"),
        ("MAIN.NORTH", "urn:cwsctl:external-id:facility-enc:MAIN+2ENORTH"),
        ("Main Street", "urn:cwsctl:external-id:facility-enc:Main+20Street"),
        ("a.b+c", "urn:cwsctl:external-id:facility-enc:a+2Eb+2Bc"),
        ("Zürich", "urn:cwsctl:external-id:facility-enc:Z+C3+BCrich"),
    ],
)
def test_facility_namespaces_are_valid_and_unchanged_where_they_were(facility, namespace):
    assert subject_namespace(str(facility)) == namespace
    assert namespace_problem(namespace) is None
    OpenEhrPatients().check(patient(1) | {"facility": facility})  # nothing to refuse


def test_every_facility_code_gives_a_distinct_valid_namespace():
    """Every printable ASCII character, alone and inside a code, and 64-character codes."""
    codes = {chr(c) for c in range(33, 127)} | {f"A{chr(c)}B" for c in range(32, 127)}
    codes |= {"x" * 63 + chr(c) for c in range(32, 127)} | {"ü", "ß.1", "a b"}
    namespaces = {subject_namespace(code) for code in codes}
    assert len(namespaces) == len(codes)
    assert [n for n in namespaces if namespace_problem(n)] == []


def test_namespace_problems_say_what_is_wrong():
    assert namespace_problem("urn:oid:2.16") == "'.' (at position 10) is not allowed"
    assert namespace_problem("9ns") == "it must start with a letter, not '9'"
    assert namespace_problem("") == "it is empty"
    assert namespace_problem("urn:a-b_c/d&e+f?g") is None


@EVERY_MODE
def test_bulk_rows_whose_facility_ehrbase_would_refuse_are_loaded_and_found_again(
    cdr, tmp_path, run_cwsctl
):
    facilities = [10000, "MAIN.NORTH", "Main Street", "x+y"]
    rows = [patient(i) | {"facility": f} for i, f in enumerate(facilities)]
    source = write_csv(tmp_path / "in.csv", rows)
    report = tmp_path / "report.csv"
    first = run_cwsctl("patients", "create", "--from", str(source), "--report", str(report))
    assert first.returncode == 0, first.stderr
    with open(report, newline="") as handle:
        assert {r["outcome"] for r in csv.DictReader(handle)} == {"created"}
    assert set(_subjects(cdr)) == {
        (f"EXT{i:05d}", subject_namespace(str(f))) for i, f in enumerate(facilities)
    }
    again_report = tmp_path / "again.csv"
    again = run_cwsctl(
        "patients", "create", "--from", str(source), "--journal", str(tmp_path / "j2"),
        "--report", str(again_report),
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    with open(again_report, newline="") as handle:
        assert {r["outcome"] for r in csv.DictReader(handle)} == {"exists"}
    assert cdr.count_ehrs() == len(facilities)


@pytest.mark.slow
def test_a_token_that_expires_mid_run_shows_the_servers_reason(make_openehr_sandbox, run_cwsctl):
    token = "tok-" + "a1b2c3d4" * 4
    server = make_openehr_sandbox(bearer_tokens={token})
    init = ("profile", "init", "jwt", "--kind", "openehr", "--url", server.base_url)
    assert run_cwsctl(*init, "--auth", "bearer").returncode == 0
    env = {"CWSCTL_TOKEN": token}
    created = run_cwsctl(
        "-p", "jwt", "ehr", "create", "--subject-id", "T1", "--namespace", "ns", env=env
    )
    assert created.returncode == 0, created.stderr
    ehr_id = created.stdout.decode().strip()

    server.expire_token(token)
    for args in (("ehr", "show", ehr_id), ("request", "GET", f"/ehr/{ehr_id}")):
        refused = run_cwsctl("-p", "jwt", *args, env=env)
        assert refused.returncode == 4
        lines = refused.stderr.decode().splitlines()
        [error] = [line for line in lines if line.startswith("cwsctl: error:")]
        assert error.startswith("cwsctl: error: 401 ")
        assert "the server says invalid_token: " in error and "Jwt expired at " in error, error
        assert "refused the credentials" in refused.stderr.decode()  # the hint follows
        assert token not in refused.stderr.decode()

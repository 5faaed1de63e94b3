"""`cwsctl patients create`: single and bulk loads against the real sandbox, with faults.

After every run the sandbox's database must hold exactly the expected patients: none lost,
none twice.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

import pytest

from cwsctl.core.bulk.journal import Journal
from cwsctl.core.bulk.rows import REQUIRED_FIELDS
from cwsctl.sandbox.faults import Faults
from tests.conftest import default_sigint

COLUMNS = list(REQUIRED_FIELDS)


def patient(i: int) -> dict:
    return {
        "external_id": f"EXT{i:05d}",
        "facility": 10000,
        "agency": 2,
        "billing_agency": 1,
        "fname": f"First{i}",
        "lname": "Name, Jr",  # a comma inside a quoted CSV cell
        "dob": "2000-04-12",
        "sex": "M",
        "booking_no": f"BK{i}",
        "booking_date": "2023-04-07T10:00:00",
    }


def write_csv(path, rows, *, newline="\n", bom=False):
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator=newline)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path


def write_json(path, rows):
    path.write_text(json.dumps(rows, indent=2))
    return path


def write_ndjson(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def all_patients(sandbox, n):
    """Look every expected patient up; assert each is stored exactly once; return the records."""
    found = {}
    for i in range(n):
        matches = sandbox.store.find_patients(f"EXT{i:05d}")
        assert len(matches) <= 1, f"EXT{i:05d} stored {len(matches)} times"
        if matches:
            record = dict(matches[0])
            record.pop("id", None)
            record.pop("created_at", None)
            found[record["external_id"]] = record
    return found


def test_single_create_from_options_normalises_dates(cli, sandbox, sandbox_profile):
    args = []
    for name, value in patient(1).items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    result = cli("patients", "create", *args, "--field", "mname=Middle", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["status"] == 201 and document["verified"] is True
    body = document["body"]
    assert (
        body["dob"] == "2000-04-12 00:00:00.000"
        and body["booking_date"] == "2023-04-07 10:00:00.000"
    )
    assert body["mname"] == "Middle" and body["facility"] == 10000
    assert sandbox.store.count_patients() == 1


def test_single_create_from_body_file_and_invalid_is_exit_2_and_sends_nothing(
    cli, sandbox, sandbox_profile, tmp_path
):
    good = tmp_path / "p.json"
    good.write_text(json.dumps(patient(2)))
    assert cli("patients", "create", "--body", str(good)).exit_code == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**patient(3), "sex": "male"}))
    result = cli("patients", "create", "--body", str(bad))
    assert result.exit_code == 2 and "'sex'" in result.stderr
    assert "male" not in result.stderr.split("hint")[0].replace(
        "'sex'", ""
    )  # values are not echoed
    assert sandbox.store.count_patients() == 1


def test_single_create_duplicate_is_exit_4(cli, sandbox, sandbox_profile, tmp_path):
    good = tmp_path / "p.json"
    good.write_text(json.dumps(patient(2)))
    assert cli("patients", "create", "--body", str(good)).exit_code == 0
    result = cli("patients", "create", "--body", str(good))
    assert result.exit_code == 4 and "409" in result.stderr


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson"])
def test_bulk_formats_give_identical_results(cli, sandbox, sandbox_profile, tmp_path, fmt):
    rows = [patient(i) for i in range(30)]
    writer = {"csv": write_csv, "json": write_json, "ndjson": write_ndjson}[fmt]
    source = writer(tmp_path / f"in.{fmt}", rows)
    result = cli("patients", "create", "--from", str(source), "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["created"] == 30 and summary["total"] == 30
    records = all_patients(sandbox, 30)
    assert len(records) == 30
    assert records["EXT00007"]["lname"] == "Name, Jr"
    assert records["EXT00007"]["dob"] == "2000-04-12 00:00:00.000"


def test_rerun_skips_confirmed_rows(cli, sandbox, sandbox_profile, tmp_path):
    source = write_csv(tmp_path / "in.csv", [patient(i) for i in range(10)])
    assert cli("patients", "create", "--from", str(source)).exit_code == 0
    again = cli("patients", "create", "--from", str(source), "--json")
    assert again.exit_code == 0
    assert json.loads(again.stdout)["skipped"] == 10
    assert sandbox.store.count_patients() == 10


def test_server_errors_then_resume(cli, sandbox, sandbox_profile, tmp_path):
    source = write_csv(tmp_path / "in.csv", [patient(i) for i in range(12)])
    sandbox.faults = Faults(error_rate=1.0)
    failed = cli("patients", "create", "--from", str(source), "--retries", "1")
    assert failed.exit_code == 5
    assert "0 of" not in failed.stderr and "resumes" in failed.stderr
    assert sandbox.store.count_patients() == 0
    sandbox.faults = Faults()
    assert cli("patients", "create", "--from", str(source)).exit_code == 0
    assert len(all_patients(sandbox, 12)) == 12


def test_dropped_answers_are_looked_up_not_resent(cli, sandbox, sandbox_profile, tmp_path):
    source = write_csv(tmp_path / "in.csv", [patient(i) for i in range(10)])
    sandbox.faults = Faults(drop_rate=1.0)
    first = cli("patients", "create", "--from", str(source), "--retries", "0", "--json")
    assert first.exit_code == 6
    assert json.loads(first.stdout)["unknown"] == 10
    assert sandbox.store.count_patients() == 10  # the server did create them
    sandbox.faults = Faults()
    second = cli("patients", "create", "--from", str(source), "--json")
    assert second.exit_code == 0
    assert json.loads(second.stdout)["exists"] == 10
    assert len(all_patients(sandbox, 10)) == 10


@pytest.mark.slow
def test_mixed_faults_with_retries_lose_nothing_and_duplicate_nothing(
    cli, sandbox, sandbox_profile, tmp_path
):
    n = 60
    source = write_ndjson(tmp_path / "in.ndjson", [patient(i) for i in range(n)])
    sandbox.faults = Faults(drop_rate=0.2, error_rate=0.2, latency_ms=20, seed=7)
    codes = []
    for _ in range(6):
        result = cli(
            "patients", "create", "--from", str(source), "--retries", "2", "--concurrency", "6"
        )
        codes.append(result.exit_code)
        if result.exit_code == 0:
            break
    assert codes[-1] == 0, codes
    assert set(codes) <= {0, 5, 6}
    assert len(all_patients(sandbox, n)) == n
    assert sandbox.store.count_patients() == n


def test_forged_answer_stops_the_run_with_exit_7_and_resume_confirms(
    cli, sandbox, sandbox_profile, tmp_path
):
    n = 40
    source = write_csv(tmp_path / "in.csv", [patient(i) for i in range(n)])
    sandbox.faults = Faults(corrupt_rate=1.0)
    result = cli("patients", "create", "--from", str(source), "--concurrency", "2", "--json")
    assert result.exit_code == 7
    assert "signature" in result.stderr
    assert json.loads(result.stdout)["total"] < n  # it stopped instead of ploughing on
    sandbox.faults = Faults()
    resumed = cli("patients", "create", "--from", str(source), "--json")
    assert resumed.exit_code == 0
    assert len(all_patients(sandbox, n)) == n


def test_bad_rows_are_reported_others_created(cli, sandbox, sandbox_profile, tmp_path):
    rows = [patient(i) for i in range(5)]
    rows[1] = {**rows[1], "dob": "12/04/2000"}
    rows[3] = {**rows[3], "external_id": rows[0]["external_id"]}  # duplicate within the file
    source = write_csv(tmp_path / "in.csv", rows, newline="\r\n", bom=True)
    report = tmp_path / "report.json"
    result = cli("patients", "create", "--from", str(source), "--report", str(report))
    assert result.exit_code == 4
    lines = {entry["row"]: entry for entry in json.loads(report.read_text())}
    assert lines[2]["outcome"] == "invalid" and "'dob'" in lines[2]["message"]
    assert lines[4]["outcome"] == "invalid" and "duplicate of row 1" in lines[4]["message"]
    assert {lines[i]["outcome"] for i in (1, 3, 5)} == {"created"}
    assert sandbox.store.count_patients() == 3


def test_blank_and_mixed_line_endings_and_csv_report(cli, sandbox, sandbox_profile, tmp_path):
    path = tmp_path / "in.csv"
    write_csv(path, [patient(0), patient(1)])
    text = path.read_text()
    header, first, second = text.strip("\n").split("\n")
    path.write_text(f"{header}\r\n\r\n{first}\n\n{second}\r\n\n")
    report = tmp_path / "report.csv"
    assert cli("patients", "create", "--from", str(path), "--report", str(report)).exit_code == 0
    with open(report, newline="") as handle:
        entries = list(csv.DictReader(handle))
    assert sorted(e["row"] for e in entries) == ["1", "2"]
    assert {e["outcome"] for e in entries} == {"created"}
    assert sandbox.store.count_patients() == 2


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.csv", "external_id,facility\nA,1\n", "lacks required column"),
        ("unknown.csv", ",".join([*COLUMNS, "ssn"]) + "\n", "unknown column"),
        ("empty.csv", "", "empty"),
        ("bad.json", '{"not": "an array"}', "JSON array"),
        ("truncated.json", '[{"external_id": "A"', "not valid JSON"),
        ("data.txt", "whatever", "extension"),
    ],
)
def test_bad_files_are_exit_2_and_send_nothing(
    cli, sandbox, sandbox_profile, tmp_path, name, content, message
):
    path = tmp_path / name
    path.write_text(content)
    result = cli("patients", "create", "--from", str(path))
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr
    assert sandbox.store.count_patients() == 0
    assert "Traceback" not in result.stderr


def test_missing_input_file_is_exit_2(cli, sandbox_profile, tmp_path):
    assert cli("patients", "create", "--from", str(tmp_path / "nope.csv")).exit_code == 2


def test_dry_run_validates_reports_and_sends_nothing(cli, sandbox, tmp_path):
    rows = [patient(i) for i in range(4)]
    rows[2] = {**rows[2], "sex": "X"}
    source = write_ndjson(tmp_path / "in.ndjson", rows)
    report = tmp_path / "r.csv"
    result = cli(
        "patients", "create", "--from", str(source), "--dry-run", "--report", str(report), "--json"
    )
    assert result.exit_code == 4
    summary = json.loads(result.stdout)
    assert summary["valid"] == 3 and summary["invalid"] == 1
    assert not (tmp_path / "in.ndjson.journal").exists()
    assert report.read_text().count("\n") == 5
    assert sandbox.store.count_patients() == 0


def test_stop_on_error(cli, sandbox, sandbox_profile, tmp_path):
    rows = [{**patient(0), "sex": "X"}] + [patient(i) for i in range(1, 20)]
    source = write_csv(tmp_path / "in.csv", rows)
    result = cli("patients", "create", "--from", str(source), "--stop-on-error", "--json")
    assert result.exit_code == 4
    assert json.loads(result.stdout)["total"] == 1
    assert sandbox.store.count_patients() == 0


def test_second_run_on_a_locked_journal_refuses(cli, sandbox, sandbox_profile, tmp_path):
    source = write_csv(tmp_path / "in.csv", [patient(0)])
    with Journal(tmp_path / "in.csv.journal"):
        result = cli("patients", "create", "--from", str(source))
    assert result.exit_code == 2
    assert "another cwsctl run" in result.stderr
    assert cli("patients", "create", "--from", str(source)).exit_code == 0


def _spawn(cwsctl_home, *args):
    import os

    return subprocess.Popen(
        [sys.executable, "-m", "cwsctl", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "CWSCTL_HOME": str(cwsctl_home)},
        preexec_fn=default_sigint,
    )


def _wait_for_progress(count, minimum, timeout=30):
    """Wait until ``count()`` (patients or EHRs stored by the server) reaches ``minimum``."""
    deadline = time.monotonic() + timeout
    while count() < minimum:
        assert time.monotonic() < deadline, "the load made no progress"
        time.sleep(0.02)


def test_sigkill_mid_run_then_resume(sandbox, sandbox_profile, cwsctl_home, tmp_path, run_cwsctl):
    n = 150
    source = write_csv(tmp_path / "in.csv", [patient(i) for i in range(n)])
    sandbox.faults = Faults(latency_ms=40, seed=3)
    process = _spawn(cwsctl_home, "patients", "create", "--from", str(source))
    _wait_for_progress(sandbox.store.count_patients, 20)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert 0 < sandbox.store.count_patients() < n
    sandbox.faults = Faults()
    resumed = run_cwsctl("-q", "patients", "create", "--from", str(source))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == b"" and resumed.stderr == b""
    assert len(all_patients(sandbox, n)) == n
    assert sandbox.store.count_patients() == n


@pytest.mark.slow
def test_ctrl_c_finishes_in_flight_rows_and_exits_130(
    sandbox, sandbox_profile, cwsctl_home, tmp_path, run_cwsctl
):
    n = 150
    source = write_csv(tmp_path / "in.csv", [patient(i) for i in range(n)])
    sandbox.faults = Faults(latency_ms=40, seed=4)
    process = _spawn(cwsctl_home, "patients", "create", "--from", str(source))
    _wait_for_progress(sandbox.store.count_patients, 20)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert b"interrupted" in err and b"Traceback" not in err
    done = sandbox.store.count_patients()
    journal_lines = (tmp_path / "in.csv.journal").read_text().splitlines()
    created = sum(1 for line in journal_lines if '"outcome":"created"' in line)
    assert created == done  # every row that reached the server was journaled as created
    sandbox.faults = Faults()
    assert run_cwsctl("patients", "create", "--from", str(source)).returncode == 0
    assert len(all_patients(sandbox, n)) == n

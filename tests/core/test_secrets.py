"""No private key material, passphrase or patient field value reaches any log, audit line,
journal, error message or -v output."""

from __future__ import annotations

import json

import pytest

from cwsctl.core import keys
from cwsctl.sandbox.faults import Faults
from tests.cli.test_patients_bulk import write_csv

PASSPHRASE = "Pass-Phrase-Do-Not-Leak-91"
PATIENT = {
    "external_id": "EXTSECRET77",
    "facility": 10000,
    "agency": 2,
    "billing_agency": 1,
    "fname": "Zebediah",
    "lname": "Quillfeather",
    "dob": "1971-02-03",
    "sex": "M",
    "booking_no": "BKSECRET55",
    "booking_date": "2023-04-07",
}
PHI = ("EXTSECRET77", "Zebediah", "Quillfeather", "BKSECRET55", "1971-02-03")


@pytest.mark.slow
def test_no_secrets_or_phi_in_logs_audit_journal_errors_or_verbose_output(
    cli, sandbox, sandbox_profile, cwsctl_home, tmp_path, capfd
):
    pass_file = tmp_path / "pass.txt"
    pass_file.write_text(PASSPHRASE + "\n")
    stderr_seen: list[str] = []

    def run(*args, **kwargs):
        result = cli(*args, **kwargs)
        stderr_seen.append(result.stderr)
        return result

    # keys: an encrypted next key, shown and listed
    run("keygen", "--next", "--bits", "2048", "--passphrase-file", str(pass_file), "-v")
    private_pem = (cwsctl_home / "keys" / "default.pem").read_text()
    key_material = [line for line in private_pem.splitlines() if "-----" not in line][1:4]
    run("keys", "show", "-v")
    run("keys", "list", "-v")

    body = tmp_path / "patient.json"
    body.write_text(
        json.dumps(
            {**PATIENT, "dob": "1971-02-03 00:00:00.000", "booking_date": "2023-04-07 00:00:00.000"}
        )
    )
    run("sign", str(body), "--explain", "-v")
    run("request", "POST", "/ws/patients/", str(body), "-v")  # created, shown masked
    run("request", "POST", "/ws/patients/", str(body), "-v")  # 409: the error message
    run("request", "GET", "/ws/patients/?external_id=EXTSECRET77", "-v")
    run("patients", "create", "--body", str(body), "-v")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**PATIENT, "sex": "Zebediah"}))
    run("patients", "create", "--body", str(bad), "-v")  # validation error must not echo values

    rows = write_csv(
        tmp_path / "rows.csv", [{**PATIENT, "external_id": f"EXTSECRET77-{i}"} for i in range(20)]
    )
    sandbox.faults = Faults(drop_rate=0.3, error_rate=0.2, corrupt_rate=0.1, seed=5)
    for _ in range(4):
        run("patients", "create", "--from", str(rows), "-v")
    sandbox.faults = Faults()
    run("doctor", "-v")
    run("audit", "-v")

    captured = capfd.readouterr()  # whatever the in-process sandbox logged
    texts = {
        "stderr": "\n".join(stderr_seen),
        "sandbox log": captured.err + captured.out,
        "audit": "\n".join(p.read_text() for p in (cwsctl_home / "audit").iterdir()),
        "journal": (tmp_path / "rows.csv.journal").read_text(),
        "config": (cwsctl_home / "config.toml").read_text(),
    }
    for where, text in texts.items():
        for secret in (*PHI, PASSPHRASE, *key_material):
            assert secret not in text, f"{secret!r} leaked into the {where}"
    assert (
        keys.fingerprint(keys.load_private_key(cwsctl_home / "keys" / "default.pem").public_key())
        in texts["stderr"]
    )

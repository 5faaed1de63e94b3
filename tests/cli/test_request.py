"""`cwsctl request` against the real sandbox: every exit code, fail-closed verification, byte exactness."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess

import pytest

from cwsctl.core import keys
from cwsctl.core.bulk.rows import WALKTHROUGH_EXAMPLE as EXAMPLE_PATIENT
from cwsctl.core.profile import Store
from cwsctl.protocols.cws_signature import TrustedKey
from cwsctl.sandbox.faults import Faults
from tests.conftest import needs_openssl

BODY = json.dumps(EXAMPLE_PATIENT, indent=2).encode() + b"\n"


@pytest.fixture
def body_file(tmp_path):
    path = tmp_path / "body.json"
    path.write_bytes(BODY)
    return path


def test_post_creates_patient_and_verifies(cli, sandbox, sandbox_profile, body_file):
    result = cli("request", "POST", "/ws/patients/", str(body_file))
    assert result.exit_code == 0, result.stderr
    created = json.loads(result.stdout_bytes)
    assert created["external_id"] == "FakeExternalID" and isinstance(created["id"], int)
    assert f"201 Created · verified by coremr ({sandbox.fingerprint})" in result.stderr
    assert sandbox.store.count_patients() == 1


def test_output_is_byte_exact_and_verifiable_later_by_cwsctl_and_openssl(
    cli, sandbox, sandbox_profile, body_file, tmp_path
):
    out_file = tmp_path / "response.json"
    result = cli("request", "POST", "/ws/patients/", str(body_file), "--output", str(out_file))
    assert result.exit_code == 0 and result.stdout == ""
    patient_id = json.loads(out_file.read_bytes())["id"]
    header = (tmp_path / "response.json.sig").read_text()
    assert header.startswith("CWS-SHA256 Access=coremr, Signature=") and header.endswith("\n")

    again = cli("verify", str(out_file))
    assert again.exit_code == 0 and again.stdout == "Verified OK\n"

    got = cli("request", "GET", f"/ws/patients/{patient_id}", "-o", str(tmp_path / "get.json"))
    assert got.exit_code == 0
    assert cli("verify", str(tmp_path / "get.json")).exit_code == 0

    if shutil.which("openssl"):
        pem = tmp_path / "coremr.pem"
        pem.write_text(sandbox.public_key_pem)
        raw = tmp_path / "response_sign.sha256"
        raw.write_bytes(base64.b64decode(header.split("Signature=")[1]))
        check = subprocess.run(
            [
                "openssl",
                "dgst",
                "-sha256",
                "-verify",
                str(pem),
                "-signature",
                str(raw),
                str(out_file),
            ],
            capture_output=True,
        )
        assert check.stdout == b"Verified OK\n"


def test_json_envelope(cli, sandbox, sandbox_profile, body_file):
    result = cli("request", "POST", "/ws/patients/", str(body_file), "--json")
    document = json.loads(result.stdout)
    assert set(document) == {
        "status",
        "reason",
        "headers",
        "verified",
        "signer",
        "key_fingerprint",
        "body_sha256",
        "etag",
        "location",
        "content_location",
        "last_modified",
        "body",
    }
    assert document["status"] == 201 and document["verified"] is True
    assert document["etag"] is None and document["last_modified"] is None
    assert document["signer"] == "coremr" and document["key_fingerprint"] == sandbox.fingerprint
    assert document["body"]["fname"] == "First"


def test_stdin_body_and_get_query(cli, sandbox, sandbox_profile):
    assert cli("request", "POST", "/ws/patients/", "-", input=BODY).exit_code == 0
    found = cli("request", "GET", "/ws/patients/?external_id=FakeExternalID", "--json")
    assert found.exit_code == 0
    assert len(json.loads(found.stdout)["body"]["patients"]) == 1


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/ws/patients/999999", b"", 404),
        ("POST", "/ws/patients/", b"{not json", 400),
        (
            "POST",
            "/ws/patients/",
            json.dumps({**EXAMPLE_PATIENT, "dob": "yesterday"}).encode(),
            422,
        ),
        ("DELETE", "/ws/patients/", b"", 405),
        ("GET", "/ws/nothing-here", b"", 404),
    ],
)
def test_4xx_is_exit_4_with_server_message(
    cli, sandbox, sandbox_profile, tmp_path, method, path, body, status
):
    args = ["request", method, path]
    if body:
        (tmp_path / "b.json").write_bytes(body)
        args.append(str(tmp_path / "b.json"))
    result = cli(*args)
    assert result.exit_code == 4, result.stderr
    assert f"cwsctl: error: {status} " in result.stderr
    assert "verified by coremr" in result.stderr  # error answers are verified too
    assert json.loads(result.stdout_bytes)["error"]  # the verified error body still goes to stdout


def test_duplicate_is_409(cli, sandbox, sandbox_profile, body_file):
    assert cli("request", "POST", "/ws/patients/", str(body_file)).exit_code == 0
    result = cli("request", "POST", "/ws/patients/", str(body_file))
    assert result.exit_code == 4 and "409" in result.stderr
    assert sandbox.store.count_patients() == 1


def test_401_hint_names_username_and_fingerprint(cli, sandbox, sandbox_profile, body_file, rsa2048):
    sandbox.store.clear(patients=False, client_keys=True)  # our key is not registered any more
    result = cli("request", "POST", "/ws/patients/", str(body_file))
    assert result.exit_code == 4
    assert "401" in result.stderr
    assert "'tester'" in result.stderr and keys.fingerprint(rsa2048.public_key()) in result.stderr


def test_500_is_exit_5(cli, sandbox, sandbox_profile, body_file):
    sandbox.faults = Faults(error_rate=1.0)
    result = cli("request", "POST", "/ws/patients/", str(body_file))
    assert result.exit_code == 5
    assert sandbox.store.count_patients() == 0


@pytest.mark.parametrize("fault", ["corrupt_rate", "unsigned_rate"])
def test_forged_or_missing_signature_is_exit_7_and_body_withheld(
    cli, sandbox, sandbox_profile, body_file, tmp_path, fault
):
    sandbox.faults = Faults(**{fault: 1.0})
    out_file = tmp_path / "r.json"
    result = cli("request", "POST", "/ws/patients/", str(body_file))
    assert result.exit_code == 7
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    sandbox.store.clear(patients=True, client_keys=False)
    result = cli("request", "POST", "/ws/patients/", str(body_file), "-o", str(out_file))
    assert result.exit_code == 7 and not out_file.exists()


def test_signer_not_pinned_is_exit_7(cli, sandbox, sandbox_profile, body_file, rsa2048_other):
    store = Store()
    config = store.load()
    config.profiles["default"].settings.trusted = [
        TrustedKey("coremr", keys.public_key_pem(rsa2048_other.public_key()).decode())
    ]
    store.save(config)
    result = cli("request", "GET", "/ws/")
    assert result.exit_code == 7
    assert result.stdout == ""


def test_no_pinned_key_is_exit_3_with_trust_hint(cli, sandbox, sandbox_profile):
    store = Store()
    config = store.load()
    config.profiles["default"].settings.trusted = []
    store.save(config)
    result = cli("request", "GET", "/ws/")
    assert result.exit_code == 3
    assert "cwsctl profile trust" in result.stderr


def test_insecure_skip_verify_warns_loudly(cli, sandbox, sandbox_profile):
    sandbox.faults = Faults(corrupt_rate=1.0)
    result = cli("request", "GET", "/ws/patients/?external_id=x", "--insecure-skip-verify")
    assert result.exit_code == 0
    assert "NOT verified" in result.stderr and "NOT VERIFIED" in result.stderr


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_refused_is_exit_6(cli, sandbox_profile):
    port = _closed_port()
    result = cli("request", "GET", f"http://127.0.0.1:{port}/ws/", "--allow-other-host")
    assert result.exit_code == 6
    assert "cannot connect" in result.stderr


def test_post_timeout_after_sending_is_exit_6_outcome_unknown(
    cli, sandbox, sandbox_profile, body_file
):
    sandbox.faults = Faults(latency_ms=3000, seed=2)  # seed 2: the first delay drawn is 2.87 s
    result = cli("request", "POST", "/ws/patients/", str(body_file), "--timeout", "0.5")
    assert result.exit_code == 6
    assert "outcome is unknown" in result.stderr


def test_dropped_post_is_not_resent(cli, sandbox, sandbox_profile, body_file):
    sandbox.faults = Faults(drop_rate=1.0)
    result = cli("request", "POST", "/ws/patients/", str(body_file))
    assert result.exit_code == 6 and "outcome is unknown" in result.stderr
    assert sandbox.store.count_patients() == 1  # it was applied once, and sent once


def test_plain_http_to_remote_host_is_refused_before_connecting(cli, sandbox_profile):
    result = cli("request", "GET", "http://cws.example.org/ws/")
    assert result.exit_code == 2
    assert "--allow-http" in result.stderr


def test_dry_run_sends_nothing_and_shows_exact_request(cli, sandbox, sandbox_profile, body_file):
    result = cli("request", "POST", "/ws/patients/", str(body_file), "--dry-run")
    assert result.exit_code == 0
    assert result.stdout_bytes.startswith(f"POST {sandbox.url}/ws/patients/\n".encode())
    assert (
        b"authorization: CWS-SHA256 Access=tester, Signature="
        in result.stdout_bytes.lower().replace(
            b"authorization: cws-sha256 access=tester, signature=",
            b"authorization: CWS-SHA256 Access=tester, Signature=",
        )
    )
    assert result.stdout_bytes.endswith(b"\n\n" + BODY)
    assert sandbox.store.count_patients() == 0


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_command_is_accepted_by_the_sandbox(cli, sandbox, sandbox_profile, body_file):
    result = cli("request", "POST", "/ws/patients/", str(body_file), "--curl")
    assert result.stdout.startswith("curl ")
    assert sandbox.store.count_patients() == 0
    replay = subprocess.run(
        ["sh", "-c", result.stdout.strip() + " -w '%{http_code}' -o /dev/null"],
        capture_output=True,
        text=True,
    )
    assert replay.stdout == "201"
    assert sandbox.store.count_patients() == 1


def test_verbose_masks_patient_values_unless_show_body(cli, sandbox, sandbox_profile, body_file):
    masked = cli("request", "POST", "/ws/patients/", str(body_file), "-v")
    assert masked.exit_code == 0
    assert '"fname": "***"' in masked.stderr
    assert "First" not in masked.stderr and "FakeExternalID" not in masked.stderr
    shown = cli("request", "GET", "/ws/patients/?external_id=FakeExternalID", "-v", "--show-body")
    assert "First" in shown.stderr


def test_quiet_success_prints_only_the_body(cli, sandbox, sandbox_profile, body_file):
    result = cli("-q", "request", "POST", "/ws/patients/", str(body_file))
    ours = [line for line in result.stderr.splitlines() if not line.startswith("cwsctl-sandbox:")]
    assert result.exit_code == 0 and ours == []  # (the in-process sandbox logs to the same stderr)


def test_request_as_real_process_with_stdin_closed(run_cwsctl, sandbox, sandbox_profile, body_file):
    result = run_cwsctl("-q", "request", "POST", "/ws/patients/", str(body_file))
    assert result.returncode == 0 and result.stderr == b""
    assert json.loads(result.stdout)["id"]
    sandbox.faults = Faults(corrupt_rate=1.0)
    forged = run_cwsctl("request", "GET", "/ws/patients/1")  # faults apply to /ws/patients
    assert forged.returncode == 7 and forged.stdout == b""
    assert forged.stderr.decode().startswith("cwsctl: error: response signature is invalid")


@needs_openssl
def test_demo_runs_clean(run_cwsctl, cwsctl_home):
    result = run_cwsctl("demo", timeout=120)
    assert result.returncode == 0, result.stderr
    err = result.stderr.decode()
    assert (
        "201 Created" in err
        and "openssl: Verified OK" in err
        and "Verification failure (as expected)" in err
    )
    assert not cwsctl_home.exists()  # the demo left nothing in the user's home


# -- issue 20 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [[], ["-v"], ["--dry-run"], ["--curl"], ["--json"]])
def test_a_full_url_to_another_server_gets_no_cws_signature(
    cli, sandbox, sandbox_profile, hostile_server, extra
):
    """CWS signs only the body: the signature of an empty GET is a reusable credential, so it
    never leaves for another origin (another port is another origin) without --allow-other-host."""
    for url in (
        f"{hostile_server.url}/ws/",
        f"http://localhost:{sandbox.url.rsplit(':', 1)[1]}/ws/",
    ):
        result = cli("request", "GET", url, *extra)
        assert result.exit_code == 2, result.stderr
        assert "refusing to send this profile's credentials" in result.stderr
        assert "--allow-other-host" in result.stderr
        assert "Signature=" not in result.stdout + result.stderr
    assert hostile_server.connections == []


def test_allow_other_host_sends_but_never_shows_the_signature(
    cli, sandbox, sandbox_profile, hostile_server
):
    url = f"{hostile_server.url}/ws/"
    for extra in (["--dry-run"], ["--curl"]):
        shown = cli("request", "GET", url, "--allow-other-host", *extra)
        assert shown.exit_code == 0, shown.stderr
        assert "Signature=" not in shown.stdout and "not shown" in shown.stdout
    assert hostile_server.connections == []
    sent = cli("request", "GET", url, "--allow-other-host", "--insecure-skip-verify", "-v")
    assert sent.exit_code == 0, sent.stderr
    assert "Access=tester, Signature=" not in sent.stderr and "not shown" in sent.stderr
    (record,) = hostile_server.answered
    assert record.request.headers["authorization"].startswith(
        "CWS-SHA256 Access=tester, Signature="
    )
    # The profile's own server, by full URL, is home: shown as always.
    home = cli("request", "GET", f"{sandbox.url}/ws/", "--dry-run")
    assert "Signature=" in home.stdout


def test_a_query_holding_a_url_is_a_path(cli, sandbox, sandbox_profile):
    path = "/ws/patients/?external_id=http://hl7.org/fhir/sid/us-ssn|123"
    result = cli("request", "GET", path, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["body"]["patients"] == []
    dry = cli("request", "GET", path, "--dry-run")
    assert dry.stdout.startswith(f"GET {sandbox.url}/ws/patients/?external_id=http")


def test_credentials_in_a_url_are_refused_and_never_shown(cli, sandbox, sandbox_profile):
    init = cli(
        "profile",
        "init",
        "x",
        "--url",
        "https://alice:pw-s3cret@cws.example.org",
        "--username",
        "u",
    )
    assert init.exit_code == 2
    assert "pw-s3cret" not in init.stderr + init.stdout and "user name or password" in init.stderr
    full = cli("request", "GET", f"http://alice:pw-s3cret@{sandbox.url.split('://')[1]}/ws/")
    assert full.exit_code == 2 and "pw-s3cret" not in full.stderr
    store = Store()
    config = store.load()
    config.profiles["default"].url = sandbox.url.replace("://", "://alice:pw-s3cret@")
    store.save(config)
    stored = cli("request", "GET", "/ws/")
    assert stored.exit_code == 3 and "pw-s3cret" not in stored.stderr
    assert "user name or password" in stored.stderr
    doctor = cli("doctor", "--json")
    assert doctor.exit_code == 3 and "pw-s3cret" not in doctor.stdout + doctor.stderr

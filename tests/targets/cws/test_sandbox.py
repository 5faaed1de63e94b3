"""The sandbox server, over real HTTP on 127.0.0.1: statuses, signatures, faults, CLI, subprocess."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from cwsctl.core import keys
from cwsctl.core.bulk.rows import WALKTHROUGH_EXAMPLE
from cwsctl.core.errors import InputError, SignatureError
from cwsctl.protocols import cws_signature as signing
from cwsctl.protocols.cws_signature import Algorithm, AuthorizationHeader, TrustedKey
from cwsctl.sandbox.faults import FaultDice, Faults
from cwsctl.targets.cws.sandbox.store import (
    SandboxStore,
    register_client_key,
    server_public_key_pem,
)
from cwsctl.targets.cws.verification import verify_response
from tests.conftest import write_public
from tests.sandbox_plugin import SandboxUser, serve_sandbox

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from cwsctl.core.urls import is_loopback
from cwsctl.targets.cws.sandbox.server import SandboxServer

PATIENT = WALKTHROUGH_EXAMPLE


def body_of(document: object) -> bytes:
    return json.dumps(document).encode("utf-8")


def patient(**changes: object) -> dict[str, object]:
    record = {**PATIENT, **changes}
    return {k: v for k, v in record.items() if v is not ...}


def send(
    server: SandboxServer,
    user: SandboxUser | None,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    headers: dict[str, str] | None = None,
    algorithm: Algorithm | None = None,
) -> httpx.Response:
    all_headers = user.headers(body, algorithm) if user is not None else {}
    all_headers.update(headers or {})
    return httpx.request(method, server.url + path, content=body, headers=all_headers, timeout=10)


def verified(response: httpx.Response, trusted: TrustedKey) -> object:
    """Check the response signature over the raw bytes, then decode the JSON body."""
    result = verify_response(response.content, response.headers.get("authorization"), [trusted])
    assert result.verified
    assert result.signer == "coremr"
    assert response.headers["content-type"] == "application/json"
    return json.loads(response.content)


# -- endpoints and statuses -------------------------------------------------------------------


def test_service_info_is_signed_over_empty_request_body(sandbox, sandbox_user):
    response = send(sandbox, sandbox_user, "GET", "/ws/")
    assert response.status_code == 200
    assert verified(response, sandbox.trusted_key) == {"service": "CWS sandbox", "version": 2}
    header = AuthorizationHeader.parse(response.headers["authorization"])
    assert header.algorithm is Algorithm.SHA256
    assert header.username == "coremr"


def test_create_patient_then_read_it_back(sandbox, sandbox_user):
    response = send(sandbox, sandbox_user, "POST", "/ws/patients/", body_of(PATIENT))
    assert response.status_code == 201
    created = verified(response, sandbox.trusted_key)
    assert isinstance(created["id"], int)
    assert created["booking_date"] == "2023-04-07 10:00:00.000"  # normalised
    assert created["dob"] == "2000-04-12 10:00:00.000"
    assert {k: v for k, v in created.items() if k not in ("id", "booking_date")} == {
        k: v for k, v in PATIENT.items() if k != "booking_date"
    }
    assert response.headers["location"] == f"/ws/patients/{created['id']}"

    fetched = send(sandbox, sandbox_user, "GET", f"/ws/patients/{created['id']}")
    assert fetched.status_code == 200
    assert verified(fetched, sandbox.trusted_key) == created

    found = send(sandbox, sandbox_user, "GET", "/ws/patients/?external_id=FakeExternalID")
    assert verified(found, sandbox.trusted_key) == {"patients": [created]}
    in_facility = send(
        sandbox, sandbox_user, "GET", "/ws/patients?external_id=FakeExternalID&facility=10000"
    )
    assert verified(in_facility, sandbox.trusted_key) == {"patients": [created]}
    elsewhere = send(
        sandbox, sandbox_user, "GET", "/ws/patients/?external_id=FakeExternalID&facility=2"
    )
    assert verified(elsewhere, sandbox.trusted_key) == {"patients": []}


def test_patient_is_committed_before_the_answer(sandbox, sandbox_user):
    response = send(sandbox, sandbox_user, "POST", "/ws/patients", body_of(PATIENT))
    assert response.status_code == 201
    with SandboxStore(sandbox.data_dir) as other_connection:
        assert other_connection.count_patients() == 1
        assert other_connection.find_patients("FakeExternalID", "10000")[0]["fname"] == "First"


def test_duplicate_in_same_facility_is_409_with_existing_id(sandbox, sandbox_user):
    first = verified(
        send(sandbox, sandbox_user, "POST", "/ws/patients/", body_of(PATIENT)),
        sandbox.trusted_key,
    )
    again = send(sandbox, sandbox_user, "POST", "/ws/patients/", body_of(patient(facility="10000")))
    assert again.status_code == 409
    assert verified(again, sandbox.trusted_key) == {
        "error": "a patient with this external_id already exists in this facility",
        "field": "external_id",
        "id": first["id"],
    }
    other_facility = send(
        sandbox, sandbox_user, "POST", "/ws/patients/", body_of(patient(facility="CENTRAL"))
    )
    assert other_facility.status_code == 201
    assert sandbox.store.count_patients() == 2


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, None),
        (b"", 400, None),
        (b"[1, 2]", 400, None),
        (body_of(patient(lname=...)), 400, "lname"),
        (body_of(patient(dob=None)), 400, "dob"),
        (body_of(patient(agency="2")), 422, "agency"),
        (body_of(patient(dob="2000-04-12")), 422, "dob"),
        (body_of(patient(dob="2000-02-30 10:00:00")), 422, "dob"),
        (body_of(patient(sex="male")), 422, "sex"),
        (body_of(patient(fname="x" * 101)), 422, "fname"),
        (body_of(patient(ssn="123-45-6789")), 422, "ssn"),
    ],
)
def test_invalid_patients(sandbox, sandbox_user, body, status, field):
    response = send(sandbox, sandbox_user, "POST", "/ws/patients/", body)
    assert response.status_code == status
    document = verified(response, sandbox.trusted_key)
    assert document["error"]
    assert document.get("field") == field
    assert sandbox.store.count_patients() == 0


def test_errors_do_not_echo_patient_values(sandbox, sandbox_user):
    response = send(
        sandbox, sandbox_user, "POST", "/ws/patients/", body_of(patient(dob="Zebediah Quixote"))
    )
    assert response.status_code == 422
    assert b"Zebediah" not in response.content


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/ws/nothing-here", 404),
        ("GET", "/", 404),
        ("GET", "/ws/patients/999999", 404),
        ("GET", "/ws/patients/99999999999999999999999", 404),
        ("GET", "/ws/patients/abc", 404),
        ("DELETE", "/ws/patients/1", 405),
        ("POST", "/ws/", 405),
        ("PUT", "/ws/patients/", 405),
        ("GET", "/ws/patients/", 400),
        ("GET", "/ws/patients/?name=First", 422),
    ],
)
def test_not_found_wrong_method_and_bad_query(sandbox, sandbox_user, method, path, status):
    response = send(sandbox, sandbox_user, method, path)
    assert response.status_code == status
    assert verified(response, sandbox.trusted_key)["error"]
    if status == 405:
        assert response.headers["allow"]


def test_body_over_one_mebibyte_is_413_and_signed(sandbox, sandbox_user):
    response = send(sandbox, sandbox_user, "POST", "/ws/patients/", b" " * (1024 * 1024 + 1))
    assert response.status_code == 413
    assert "larger than 1048576" in verified(response, sandbox.trusted_key)["error"]
    # exactly the limit is read and judged on its content
    at_limit = send(sandbox, sandbox_user, "POST", "/ws/patients/", b" " * (1024 * 1024))
    assert at_limit.status_code == 400


def test_chunked_body_over_limit_is_413(sandbox, sandbox_user):
    def chunks():
        for _ in range(17):
            yield b" " * 65536

    response = httpx.post(
        sandbox.url + "/ws/patients/",
        content=chunks(),
        headers={"Authorization": sandbox_user.authorization(b"")},
        timeout=10,
    )
    assert response.status_code == 413
    verified(response, sandbox.trusted_key)


# -- request authentication -------------------------------------------------------------------


def test_missing_authorization_is_401(sandbox, sandbox_user):
    response = send(sandbox, None, "GET", "/ws/")
    assert response.status_code == 401
    assert "missing Authorization" in verified(response, sandbox.trusted_key)["error"]


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        "Bearer abc",
        "CWS-SHA256 Access=tester",
        "CWS-SHA256 Access=tester, Signature=!!!notbase64!!!",
        "CWS-MD5 Access=tester, Signature=AAAA",
        "Basic Access=tester, Signature=AAAA",
    ],
)
def test_malformed_authorization_is_401(sandbox, sandbox_user, value):
    response = send(sandbox, None, "GET", "/ws/", headers={"Authorization": value})
    assert response.status_code == 401
    assert verified(response, sandbox.trusted_key)["error"]


def test_unknown_username_is_401(sandbox, rsa2048):
    stranger = SandboxUser("nobody", rsa2048)
    response = send(sandbox, stranger, "GET", "/ws/")
    assert response.status_code == 401
    assert "unknown username 'nobody'" in verified(response, sandbox.trusted_key)["error"]


def test_signature_by_another_key_is_401(sandbox, sandbox_user, rsa2048_other):
    impostor = SandboxUser(sandbox_user.username, rsa2048_other)
    response = send(sandbox, impostor, "POST", "/ws/patients/", body_of(PATIENT))
    assert response.status_code == 401
    assert "does not verify" in verified(response, sandbox.trusted_key)["error"]
    assert sandbox.store.count_patients() == 0


def test_signature_over_other_bytes_is_401(sandbox, sandbox_user):
    body = body_of(PATIENT)
    response = httpx.post(
        sandbox.url + "/ws/patients/",
        content=body + b"\n",  # signed without the newline: bytes are sacred
        headers=sandbox_user.headers(body),
    )
    assert response.status_code == 401
    verified(response, sandbox.trusted_key)


def test_get_must_sign_the_empty_body(sandbox, sandbox_user):
    signed_something_else = sandbox_user.authorization(b"{}")
    response = send(sandbox, None, "GET", "/ws/", headers={"Authorization": signed_something_else})
    assert response.status_code == 401


def test_sha1_requests_are_accepted(sandbox, sandbox_user):
    response = send(
        sandbox, sandbox_user, "POST", "/ws/patients/", body_of(PATIENT), algorithm=Algorithm.SHA1
    )
    assert response.status_code == 201
    verified(response, sandbox.trusted_key)


def test_key_registered_by_cli_while_running_is_used(sandbox, cli, tmp_path, rsa2048_other):
    public = write_public(tmp_path / "other.pub", rsa2048_other)
    assert send(sandbox, SandboxUser("late", rsa2048_other), "GET", "/ws/").status_code == 401
    result = cli("sandbox", "add-key", "late", str(public), "--data-dir", str(sandbox.data_dir))
    assert result.exit_code == 0, result.stderr
    assert send(sandbox, SandboxUser("late", rsa2048_other), "GET", "/ws/").status_code == 200


def test_replaced_key_takes_effect(sandbox, sandbox_user, rsa2048_other):
    sandbox.register_key(sandbox_user.username, rsa2048_other.public_key(), replace=True)
    assert send(sandbox, sandbox_user, "GET", "/ws/").status_code == 401
    new = SandboxUser(sandbox_user.username, rsa2048_other)
    assert send(sandbox, new, "GET", "/ws/").status_code == 200


def test_concurrent_posts_all_land_with_unique_ids(sandbox, sandbox_user):
    def post(i: int) -> httpx.Response:
        return send(
            sandbox, sandbox_user, "POST", "/ws/patients/", body_of(patient(external_id=f"C{i}"))
        )

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(40)))
    assert [r.status_code for r in responses] == [201] * 40
    ids = {verified(r, sandbox.trusted_key)["id"] for r in responses}
    assert len(ids) == 40
    assert sandbox.store.count_patients() == 40


# -- identity and state on disk ---------------------------------------------------------------


def test_data_dir_is_private_and_key_persists(make_sandbox, sandbox_server):
    server = make_sandbox()
    assert server.data_dir.stat().st_mode & 0o777 == 0o700
    assert (server.data_dir / "server.pem").stat().st_mode & 0o777 == 0o600
    assert (server.data_dir / "sandbox.db").stat().st_mode & 0o777 == 0o600
    assert server_public_key_pem(server.data_dir) == sandbox_server.public_key_pem
    assert keys.parse_public_key(server.public_key_pem.encode()).key_size == 2048


def test_new_data_dir_gets_a_key_of_the_requested_size(tmp_path):
    pem = server_public_key_pem(tmp_path / "fresh", bits=2048)
    assert keys.parse_public_key(pem.encode()).key_size == 2048
    assert server_public_key_pem(tmp_path / "fresh", bits=3072) == pem  # made once, then kept


def test_is_loopback():
    assert is_loopback("127.0.0.1")
    assert is_loopback("localhost")
    assert is_loopback("::1")
    assert not is_loopback("0.0.0.0")  # noqa: S104
    assert not is_loopback("192.168.1.10")
    assert not is_loopback("example.org")


# -- faults -----------------------------------------------------------------------------------


def test_corrupt_signature_fault(make_sandbox, sandbox_server, rsa2048):
    server = make_sandbox(corrupt_rate=1.0)
    user = SandboxUser("tester", rsa2048)
    server.register_key(user.username, rsa2048.public_key())
    response = send(server, user, "POST", "/ws/patients/", body_of(PATIENT))
    assert response.status_code == 201
    assert response.headers["authorization"].startswith("CWS-SHA256 Access=coremr, Signature=")
    with pytest.raises(SignatureError, match="invalid"):
        verify_response(response.content, response.headers["authorization"], [server.trusted_key])
    # faults spare the health endpoint
    verified(send(server, user, "GET", "/ws/"), sandbox_server.trusted_key)


def test_unsigned_fault(make_sandbox, rsa2048):
    server = make_sandbox(unsigned_rate=1.0)
    user = SandboxUser("tester", rsa2048)
    server.register_key(user.username, rsa2048.public_key())
    response = send(server, user, "GET", "/ws/patients/?external_id=x")
    assert response.status_code == 200
    assert "authorization" not in response.headers
    with pytest.raises(SignatureError, match="no Authorization"):
        verify_response(response.content, None, [server.trusted_key])


def test_error_fault_answers_500_signed_without_processing(make_sandbox, rsa2048):
    server = make_sandbox(error_rate=1.0)
    user = SandboxUser("tester", rsa2048)
    server.register_key(user.username, rsa2048.public_key())
    response = send(server, user, "POST", "/ws/patients/", body_of(PATIENT))
    assert response.status_code == 500
    assert "injected" in verified(response, server.trusted_key)["error"]
    assert server.store.count_patients() == 0


def test_drop_fault_commits_then_cuts_the_connection(make_sandbox, rsa2048):
    server = make_sandbox(drop_rate=1.0)
    user = SandboxUser("tester", rsa2048)
    server.register_key(user.username, rsa2048.public_key())
    with pytest.raises(httpx.TransportError):
        send(server, user, "POST", "/ws/patients/", body_of(PATIENT))
    stored = server.store.find_patients("FakeExternalID", "10000")
    assert len(stored) == 1
    assert stored[0]["lname"] == "Name"
    server.faults = Faults()  # the retry learns the truth: already there
    retry = send(server, user, "POST", "/ws/patients/", body_of(PATIENT))
    assert retry.status_code == 409
    assert verified(retry, server.trusted_key)["id"] == stored[0]["id"]


def test_latency_fault_delays_patient_requests(make_sandbox, rsa2048):
    server = make_sandbox(latency_ms=400, seed=7)
    expected = random.Random(7).uniform(0, 400) / 1000  # noqa: S311 - the dice's first draw
    user = SandboxUser("tester", rsa2048)
    server.register_key(user.username, rsa2048.public_key())
    started = time.perf_counter()
    response = send(server, user, "GET", "/ws/patients/?external_id=x")
    assert time.perf_counter() - started >= expected * 0.95
    assert response.status_code == 200


def test_faults_from_environment(monkeypatch, make_sandbox, rsa2048, sandbox_server):
    env = {
        "CWSCTL_SANDBOX_DROP_RATE": "0.25",
        "CWSCTL_SANDBOX_ERROR_RATE": "1",
        "CWSCTL_SANDBOX_LATENCY_MS": "5",
        "CWSCTL_SANDBOX_CORRUPT_RATE": "0.5",
        "CWSCTL_SANDBOX_UNSIGNED_RATE": "0",
        "CWSCTL_SANDBOX_SEED": "42",
    }
    assert Faults.from_env(env) == Faults(0.25, 1.0, 5, 0.5, 0.0, 42)
    assert Faults.from_env(env, error_rate=0.0).error_rate == 0.0  # explicit values win
    assert not Faults.from_env({}).active
    with pytest.raises(InputError, match="CWSCTL_SANDBOX_DROP_RATE"):
        Faults.from_env({"CWSCTL_SANDBOX_DROP_RATE": "lots"})
    with pytest.raises(InputError, match="between 0 and 1"):
        Faults.from_env({"CWSCTL_SANDBOX_ERROR_RATE": "1.5"})
    with pytest.raises(InputError):
        Faults(latency_ms=-1)

    # a server given no faults reads them from the environment
    monkeypatch.setenv("CWSCTL_SANDBOX_ERROR_RATE", "1.0")
    server = make_sandbox()
    with SandboxServer(server.data_dir, key_bits=2048) as from_env:
        assert from_env.faults.error_rate == 1.0
        user = SandboxUser("tester", rsa2048)
        from_env.register_key(user.username, rsa2048.public_key())
        assert send(from_env, user, "GET", "/ws/patients/?external_id=x").status_code == 500


def test_fault_dice_are_reproducible_with_a_seed():
    first = FaultDice(Faults(drop_rate=0.5, seed=3))
    second = FaultDice(Faults(drop_rate=0.5, seed=3))
    draws = [first.hit(0.5) for _ in range(200)]
    assert draws == [second.hit(0.5) for _ in range(200)]
    assert 40 < sum(draws) < 160


# -- CLI --------------------------------------------------------------------------------------


def test_cli_server_key_makes_and_prints_the_key(cli, tmp_path):
    data_dir = tmp_path / "sbx"
    result = cli("sandbox", "server-key", "--data-dir", str(data_dir), "--key-bits", "2048")
    assert result.exit_code == 0, result.stderr
    key = keys.parse_public_key(result.stdout_bytes)
    assert key.key_size == 2048
    assert (data_dir / "server.pem").stat().st_mode & 0o777 == 0o600
    assert "coremr" in result.stderr
    again = cli("sandbox", "server-key", "--data-dir", str(data_dir), "--json")
    document = json.loads(again.stdout)
    assert document["username"] == "coremr"
    assert document["bits"] == 2048
    assert document["fingerprint"] == keys.fingerprint(key)
    assert document["public_key"] == result.stdout


def test_cli_server_key_default_data_dir(cli, cwsctl_home, monkeypatch):
    monkeypatch.delenv("CWSCTL_SANDBOX_DIR", raising=False)
    result = cli("sandbox", "server-key", "--key-bits", "2048", "-q")
    assert result.exit_code == 0
    assert result.stderr == ""
    assert (cwsctl_home / "sandbox" / "server.pem").exists()
    monkeypatch.setenv("CWSCTL_SANDBOX_DIR", str(cwsctl_home / "elsewhere"))
    assert cli("sandbox", "server-key", "--key-bits", "2048").exit_code == 0
    assert (cwsctl_home / "elsewhere" / "server.pem").exists()


def test_cli_add_key_and_list(cli, tmp_path, rsa2048, rsa2048_other):
    data_dir = str(tmp_path / "sbx")
    public = write_public(tmp_path / "rsa.public", rsa2048)
    other = write_public(tmp_path / "other.public", rsa2048_other)
    added = cli("sandbox", "add-key", "alice", str(public), "--data-dir", data_dir, "--json")
    assert added.exit_code == 0, added.stderr
    assert json.loads(added.stdout)["fingerprint"] == keys.fingerprint(rsa2048.public_key())
    assert cli("sandbox", "add-key", "alice", str(public), "--data-dir", data_dir).exit_code == 0

    clash = cli("sandbox", "add-key", "alice", str(other), "--data-dir", data_dir)
    assert clash.exit_code == 2
    assert "--replace" in clash.stderr
    replaced = cli("sandbox", "add-key", "alice", str(other), "--data-dir", data_dir, "--replace")
    assert replaced.exit_code == 0
    assert cli("sandbox", "add-key", "bob", str(public), "--data-dir", data_dir).exit_code == 0

    listing = cli("sandbox", "keys", "--data-dir", data_dir)
    assert listing.exit_code == 0
    assert listing.stdout.splitlines() == [
        f"alice  {keys.fingerprint(rsa2048_other.public_key())}",
        f"bob    {keys.fingerprint(rsa2048.public_key())}",
    ]
    as_json = json.loads(cli("sandbox", "keys", "--data-dir", data_dir, "--json").stdout)
    assert [k["username"] for k in as_json["keys"]] == ["alice", "bob"]


def test_cli_add_key_errors(cli, tmp_path, rsa2048):
    data_dir = str(tmp_path / "sbx")
    public = write_public(tmp_path / "rsa.public", rsa2048)
    bad_name = cli("sandbox", "add-key", "two words", str(public), "--data-dir", data_dir)
    assert bad_name.exit_code == 2
    assert "invalid username" in bad_name.stderr
    missing = cli("sandbox", "add-key", "alice", str(tmp_path / "nope.pem"), "--data-dir", data_dir)
    assert missing.exit_code == 3
    assert "Traceback" not in missing.stderr
    empty = cli("sandbox", "keys", "--data-dir", data_dir)
    assert empty.exit_code == 0
    assert empty.stdout == ""


def test_cli_serve_rejects_bad_options(cli, tmp_path):
    data_dir = str(tmp_path / "sbx")
    assert cli("sandbox", "serve", "--key-bits", "1024", "--data-dir", data_dir).exit_code == 2
    bad_rate = cli("sandbox", "serve", "--drop-rate", "2", "--data-dir", data_dir)
    assert bad_rate.exit_code == 2
    assert "between 0 and 1" in bad_rate.stderr


def test_cli_serve_without_the_extra_says_what_to_install(tmp_path):
    code = (
        "import sys; sys.modules['uvicorn'] = None\n"
        "from cwsctl.cli.main import run\n"
        f"sys.exit(run(['sandbox', 'serve', '--data-dir', {str(tmp_path)!r}]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "uvicorn" in result.stderr
    assert "pip install 'cwsctl[sandbox]'" in result.stderr


def test_cli_import_does_not_load_the_server():
    code = (
        "import sys, cwsctl.cli.app\n"
        "loaded = [m for m in ('starlette', 'uvicorn', 'cwsctl.sandbox.envelope', 'cwsctl.targets.cws.sandbox.app', 'cwsctl.targets.cws.sandbox.routes', 'cwsctl.sandbox.server', 'cwsctl.targets.cws.sandbox.server')"
        " if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_serve_subprocess_answers_logs_no_phi_and_stops_on_sigterm(tmp_path, rsa2048):
    data_dir = tmp_path / "sbx"
    user = SandboxUser("alice", rsa2048)
    register_client_key(data_dir, user.username, rsa2048.public_key())
    args = ("--key-bits", "2048", "--data-dir", str(data_dir))
    with serve_sandbox(tmp_path, *args, ready="listening on") as served:
        assert f"listening on {served.url}" in served.startup
        trusted = TrustedKey("coremr", server_public_key_pem(data_dir))
        body = body_of(patient(external_id="SECRET-EXT-77", fname="Zebediah", lname="Quixote"))
        created = httpx.post(served.url + "/ws/patients/", content=body, headers=user.headers(body))
        assert created.status_code == 201
        verify_response(created.content, created.headers.get("authorization"), [trusted])
        query = httpx.get(
            served.url + "/ws/patients/?external_id=SECRET-EXT-77", headers=user.headers(b"")
        )
        assert query.status_code == 200
        assert json.loads(query.content)["patients"][0]["lname"] == "Quixote"
    assert served.returncode == 0
    log = served.startup + served.log
    assert "POST /ws/patients/ 201" in log
    assert "GET /ws/patients/ 200" in log
    assert "user=alice" in log
    for secret in ("SECRET-EXT-77", "external_id=", "Zebediah", "Quixote", "?"):
        assert secret not in log
    assert "Sandbox stopped (SIGTERM)" in log
    assert served.stdout == ""


def test_access_log_line_shape(sandbox, sandbox_user, capfd):
    send(sandbox, sandbox_user, "GET", "/ws/patients/?external_id=PHI-VALUE")
    send(sandbox, None, "GET", "/ws/")
    time.sleep(0.05)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cwsctl-sandbox:")]
    assert any(
        line.startswith("cwsctl-sandbox: GET /ws/patients/ 200 ") and line.endswith("user=tester")
        for line in lines
    )
    assert any(line.startswith("cwsctl-sandbox: GET /ws/ 401 ") for line in lines)
    assert "PHI-VALUE" not in err


def test_signing_is_over_exact_response_bytes(sandbox, sandbox_user):
    """Re-serialising the body breaks the signature: the raw bytes are what is signed."""
    response = send(sandbox, sandbox_user, "GET", "/ws/")
    reformatted = json.dumps(json.loads(response.content), indent=2).encode()
    header = AuthorizationHeader.parse(response.headers["authorization"])
    public = sandbox.public_key
    assert signing.verify(public, response.content, header.signature, header.algorithm)
    assert not signing.verify(public, reformatted, header.signature, header.algorithm)


def test_signing_on_worker_threads_verifies(monkeypatch, make_sandbox, rsa2048):
    """Big server keys sign on worker threads; force that path with the session's 2048-bit key."""
    from cwsctl.targets.cws.sandbox import app as sandbox_app

    monkeypatch.setattr(sandbox_app, "SIGN_IN_THREADS_FROM_BITS", 2048)
    server = make_sandbox()
    assert server.app._signer is not None
    user = SandboxUser("tester", rsa2048)
    server.register_key(user.username, rsa2048.public_key())
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: send(server, user, "GET", "/ws/"), range(12)))
    for response in responses:
        assert verified(response, server.trusted_key) == {"service": "CWS sandbox", "version": 2}

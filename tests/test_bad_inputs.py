"""The bad-input catalogue: every case gives its documented exit code and a one-line error,
never a traceback, and leaves every file the user had exactly as it was."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cwsctl.core import keys
from cwsctl.sandbox.faults import Faults
from tests.conftest import write_private
from tests.test_patients_bulk import COLUMNS


@dataclass
class Case:
    id: str
    args: list[str]
    code: int
    message: str
    files: dict[str, bytes | str] = field(default_factory=dict)
    faults: Faults | None = None
    before: object = None  # a callable(ctx) run before the command


def _ec_key() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _weak_key() -> bytes:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point
    return keys.private_key_pem(small)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _chmod_key(ctx):
    (ctx["home"] / "keys" / "default.pem").chmod(0o644)


def _corrupt_config(ctx):
    (ctx["home"] / "config.toml").write_text("[profiles\nnot toml")


CSV_HEADER = ",".join(COLUMNS) + "\n"
GOOD_ROW = "E1,10000,2,1,First,Name,2000-04-12,M,B1,2023-04-07\n"

CASES = [
    Case("sign-missing-file", ["sign", "{tmp}/nope.json"], 2, "not found"),
    Case("sign-directory", ["sign", "{tmp}"], 2, "is a directory"),
    Case("sign-no-file", ["sign"], 2, "Missing argument"),
    Case("sign-world-readable-key", ["sign", "{tmp}/body.json"], 3, "chmod 600", before=_chmod_key),
    Case(
        "sign-wrong-passphrase",
        [
            "sign",
            "{tmp}/body.json",
            "--key",
            "{tmp}/enc.pem",
            "--username",
            "u",
            "--passphrase-file",
            "{tmp}/wrong.txt",
        ],
        3,
        "wrong passphrase",
    ),
    Case(
        "sign-unknown-algorithm",
        ["sign", "{tmp}/body.json", "--algorithm", "md5"],
        2,
        "unsupported",
    ),
    Case("import-empty", ["keys", "import", "{tmp}/empty.pem", "--force"], 3, "empty"),
    Case(
        "import-binary-garbage",
        ["keys", "import", "{tmp}/garbage.bin", "--force"],
        3,
        "not a readable private key",
    ),
    Case("import-public-key", ["keys", "import", "{tmp}/pub.pem", "--force"], 3, "is a public key"),
    Case("import-ec-key", ["keys", "import", "{tmp}/ec.pem", "--force"], 3, "EC key"),
    Case("import-1024-bit", ["keys", "import", "{tmp}/weak.pem", "--force"], 3, "1024-bit"),
    Case("keygen-odd-size", ["keygen", "--bits", "1000", "--force"], 2, "--bits"),
    Case(
        "verify-malformed-header",
        ["verify", "{tmp}/body.json", "--key", "{tmp}/pub.pem", "--header", "CWS-SHA256 garbage"],
        7,
        "malformed",
    ),
    Case(
        "verify-cws-md5",
        [
            "verify",
            "{tmp}/body.json",
            "--key",
            "{tmp}/pub.pem",
            "--header",
            "CWS-MD5 Access=coremr, Signature=AAAA",
        ],
        7,
        "unsupported",
    ),
    Case(
        "verify-huge-binary",
        ["verify", "{tmp}/huge.bin", "--key", "{tmp}/pub.pem", "--signature", "AAAA"],
        7,
        "Verification failure",
    ),
    Case("verify-no-sig-file", ["verify", "{tmp}/body.json"], 2, ".sig does not exist"),
    Case("unknown-profile", ["-p", "nope", "request", "GET", "/ws/"], 3, "no profile named"),
    Case("corrupt-config", ["request", "GET", "/ws/"], 3, "not valid TOML", before=_corrupt_config),
    Case(
        "bad-url", ["profile", "init", "x", "--url", "ftp://cws", "--username", "u"], 2, "https://"
    ),
    Case("plain-http-remote", ["request", "GET", "http://cws.example.org/ws/"], 2, "plain http"),
    Case(
        "trust-garbage", ["profile", "trust", "{tmp}/garbage.bin"], 3, "not a readable public key"
    ),
    Case(
        "unreachable-host", ["request", "GET", "http://127.0.0.1:{closed}/ws/"], 6, "cannot connect"
    ),
    Case("tls-failure", ["request", "GET", "https://127.0.0.1:{port}/ws/"], 6, "TLS"),
    Case("http-4xx", ["request", "GET", "/ws/patients/424242"], 4, "404"),
    Case("http-5xx", ["request", "GET", "/ws/patients/1"], 5, "500", faults=Faults(error_rate=1.0)),
    Case(
        "closes-mid-body",
        ["request", "GET", "/ws/patients/1"],
        6,
        "lost the connection",
        faults=Faults(drop_rate=1.0),
    ),
    Case(
        "forged-signature",
        ["request", "GET", "/ws/patients/1"],
        7,
        "signature is invalid",
        faults=Faults(corrupt_rate=1.0),
    ),
    Case(
        "unsigned-response",
        ["request", "GET", "/ws/patients/1"],
        7,
        "no Authorization",
        faults=Faults(unsigned_rate=1.0),
    ),
    Case(
        "non-json-body",
        ["request", "POST", "/ws/patients/", "{tmp}/notjson.txt"],
        4,
        "not valid JSON",
    ),
    Case(
        "bulk-not-an-array", ["patients", "create", "--from", "{tmp}/object.json"], 2, "JSON array"
    ),
    Case(
        "bulk-missing-columns",
        ["patients", "create", "--from", "{tmp}/cols.csv"],
        2,
        "lacks required",
    ),
    Case("bulk-invalid-csv", ["patients", "create", "--from", "{tmp}/quote.csv"], 4, "not created"),
    Case("bulk-stdin-no-format", ["patients", "create", "--from", "-"], 2, "--format"),
    Case(
        "single-invalid-patient",
        ["patients", "create", "--external-id", "A", "--facility", "1"],
        2,
        "required field",
    ),
]


@pytest.fixture
def ctx(tmp_path, sandbox, sandbox_profile, cwsctl_home, rsa2048):
    files = {
        "body.json": b'{"a": 1}',
        "empty.pem": b"",
        "garbage.bin": bytes(range(256)) * 4,
        "pub.pem": keys.public_key_pem(rsa2048.public_key()),
        "ec.pem": _ec_key(),
        "weak.pem": _weak_key(),
        "huge.bin": b"\x00\xff" * (4 * 1024 * 1024),
        "notjson.txt": b"this is not json",
        "object.json": b'{"external_id": "A"}',
        "cols.csv": b"external_id,facility\nA,1\n",
        "quote.csv": (
            CSV_HEADER + GOOD_ROW + 'E2,10000,2,1,"Unclosed,Name,2000-04-12,M,B2,2023-04-07\n'
        ).encode(),
        "wrong.txt": b"wrong\n",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    for name in ("ec.pem", "weak.pem"):
        (tmp_path / name).chmod(0o600)
    write_private(tmp_path / "enc.pem", rsa2048, b"right")
    sandbox.store.insert_patient(
        {
            "external_id": "X",
            "facility": 10000,
            "agency": 2,
            "billing_agency": 1,
            "fname": "A",
            "lname": "B",
            "dob": "2000-04-12 00:00:00.000",
            "sex": "M",
            "booking_no": "B",
            "booking_date": "2023-04-07 00:00:00.000",
        }
    )
    return {"tmp": tmp_path, "home": cwsctl_home, "sandbox": sandbox}


def snapshot(*roots: Path) -> dict[str, str]:
    """Hashes of every file the user has (the audit log is ours and only ever appended to)."""
    found = {}
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and "audit" not in path.parts and not path.name.endswith(".journal"):
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def test_catalogue_has_at_least_25_cases():
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, ctx, run_cwsctl):
    if case.before:
        case.before(ctx)
    if case.faults:
        ctx["sandbox"].faults = case.faults
    fill = {"tmp": ctx["tmp"], "closed": _closed_port(), "port": ctx["sandbox"].port}
    args = [a.format(**fill) for a in case.args]
    before = snapshot(ctx["tmp"], ctx["home"])
    result = run_cwsctl(*args, *(["--timeout", "5"] if "request" in args else []))
    err = result.stderr.decode()
    assert result.returncode == case.code, err
    assert "Traceback" not in err
    lines = err.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("cwsctl: error:")]
    assert len(errors) == 1, err  # one error line (a status or summary line may come before it)
    assert all(line.startswith("hint: ") for line in lines[errors[0] + 1 :]), err
    assert case.message in err, err
    assert snapshot(ctx["tmp"], ctx["home"]) == before


def test_ctrl_c_is_130_and_changes_nothing(ctx, cwsctl_home):
    import os

    ctx["sandbox"].faults = Faults(latency_ms=5000, seed=2)
    before = snapshot(ctx["tmp"], ctx["home"])
    process = subprocess.Popen(
        [sys.executable, "-m", "cwsctl", "request", "GET", "/ws/patients/1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "CWSCTL_HOME": str(cwsctl_home)},
    )
    time.sleep(1.5)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=20)
    assert process.returncode == 130
    assert err.decode().startswith("cwsctl: error: interrupted") and b"Traceback" not in err
    assert out == b""
    assert snapshot(ctx["tmp"], ctx["home"]) == before


def test_catalogue_json_mode_still_one_document_on_error(ctx, run_cwsctl):
    result = run_cwsctl(
        "verify",
        str(ctx["tmp"] / "body.json"),
        "--key",
        str(ctx["tmp"] / "pub.pem"),
        "--signature",
        "AAAA",
        "--json",
    )
    assert result.returncode == 7
    assert json.loads(result.stdout)["verified"] is False

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
from tests.cli.test_patients_bulk import COLUMNS
from tests.conftest import default_sigint, write_private


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
        "unreachable-host",
        ["request", "GET", "http://127.0.0.1:{closed}/ws/", "--allow-other-host"],
        6,
        "cannot connect",
    ),
    Case(
        "tls-failure",
        ["request", "GET", "https://127.0.0.1:{port}/ws/", "--allow-other-host"],
        6,
        "TLS",
    ),
    Case("http-4xx", ["request", "GET", "/ws/patients/424242"], 4, "404"),
    Case("http-5xx", ["request", "GET", "/ws/patients/1"], 5, "500", faults=Faults(error_rate=1.0)),
    Case(
        "closes-mid-body",
        ["request", "GET", "/ws/patients/1"],
        6,
        "the answer was cut off",
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


@pytest.mark.timeout(300)
@pytest.mark.timing
def test_ctrl_c_is_130_and_changes_nothing(ctx, cwsctl_home):
    """Ctrl-C while the request is in flight: exit 130, one line, no traceback, no file touched.

    The server here accepts the connection, reads the request head and never answers, so the
    signal is sent only once the request has arrived (the child is past start-up and waiting
    inside the command, not still importing), and no answer can race it. The child starts with
    SIGINT at its default (``default_sigint``), whatever the suite inherited. The timeouts are
    generous: a loaded machine only makes the test slower.
    """
    import os

    before = snapshot(ctx["tmp"], ctx["home"])
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.2)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/ws/patients/1"
        process = subprocess.Popen(
            [sys.executable, "-m", "cwsctl", "request", "GET", url, "--allow-other-host"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "CWSCTL_HOME": str(cwsctl_home)},
            preexec_fn=default_sigint,
        )
        try:
            connection = _accept_request_head(listener, process, deadline=time.monotonic() + 120)
            with connection:
                process.send_signal(signal.SIGINT)
                out, err = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 130, err
    assert err.decode().startswith("cwsctl: error: interrupted") and b"Traceback" not in err
    assert out == b""
    assert snapshot(ctx["tmp"], ctx["home"]) == before


def _accept_request_head(
    listener: socket.socket, process: subprocess.Popen, deadline: float
) -> socket.socket:
    """Wait (until ``deadline``) for ``process`` to connect and send a whole request head."""
    while True:
        assert time.monotonic() < deadline, "cwsctl never sent its request"
        if process.poll() is not None:
            pytest.fail(f"cwsctl exited early ({process.returncode}): {process.stderr.read()!r}")
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        break
    connection.settimeout(max(0.1, deadline - time.monotonic()))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = connection.recv(65536)
        assert chunk, f"cwsctl closed the connection before its request head ended: {head!r}"
        head += chunk
    assert head.startswith(b"GET /ws/patients/1 HTTP/1.1\r\n"), head
    return connection


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


# --- Out-of-range options and malformed URLs: usage errors (exit 2) found while parsing. ---
#
# Each case runs the real entry point (cwsctl.cli.main.run) in-process, which is fast and does
# exactly what `python -m cwsctl` does with argv; two cases below repeat it as a subprocess.

TIMEOUT_RULE = "must be a finite number of seconds greater than 0 and at most 86400"
URL_RULE = "must be an http:// or https:// URL with a valid host"
SIZE_RULE = "must be a size in bytes, 0 or more"
RATE_RULE = "must be a finite number between 0 and 1"
BITS_RULE = "must be one of 2048, 3072, 4096"


@pytest.fixture
def parse_only(capsys, tmp_path, monkeypatch):
    """Run cwsctl in-process and return (status, stderr, stdout).

    A `sandbox` command gets ``--data-dir`` pointing at a regular file as well, so that if a bad
    value ever got past parsing the command fails at once instead of serving until the timeout.
    """
    from cwsctl.cli.main import run

    not_a_dir = tmp_path / "not-a-dir"
    not_a_dir.write_bytes(b"")

    def parse(args, env=None):
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        guard = ["--data-dir", str(not_a_dir)] if args[0] == "sandbox" else []
        status = run([*args, *guard])
        captured = capsys.readouterr()
        return status, captured.err, captured.out

    return parse


def _assert_usage_error(status, err, out, names, rule):
    assert status == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    lines = err.splitlines()
    assert lines and lines[0].startswith("cwsctl: error: Invalid value for "), err
    assert all(line.startswith("hint: ") for line in lines[1:]), err
    for name in names:
        assert name in lines[0], err
    assert rule in lines[0], err
    assert out == ""


TIMEOUT_COMMANDS = [
    ["request", "GET", "/ws/"],
    ["doctor"],
    ["keys", "rotate"],
    ["patients", "create", "--from", "rows.csv"],
]


@pytest.mark.parametrize(
    "value", ["-1", "0", "-0", "nan", "NaN", "inf", "-inf", "86401", "1e400", "abc", ""]
)
@pytest.mark.parametrize("command", TIMEOUT_COMMANDS, ids=lambda c: "-".join(c[:2]))
def test_timeout_out_of_range_is_a_usage_error(command, value, parse_only):
    status, err, out = parse_only([*command, "--timeout", value])
    _assert_usage_error(status, err, out, ["'--timeout'"], TIMEOUT_RULE)


@pytest.mark.parametrize(
    ("option", "value", "rule"),
    [
        ("--concurrency", "0", "must be a whole number from 1 to 64"),
        ("--concurrency", "65", "must be a whole number from 1 to 64"),
        ("--concurrency", "-3", "must be a whole number from 1 to 64"),
        ("--concurrency", "2.5", "must be a whole number from 1 to 64"),
        ("--concurrency", "many", "must be a whole number from 1 to 64"),
        ("--retries", "-1", "must be a whole number from 0 to 10"),
        ("--retries", "11", "must be a whole number from 0 to 10"),
        ("--retries", "1e3", "must be a whole number from 0 to 10"),
    ],
)
def test_counts_out_of_range_are_usage_errors(option, value, rule, parse_only):
    args = ["patients", "create", "--from", "rows.csv", option, value]
    status, err, out = parse_only(args)
    _assert_usage_error(status, err, out, [f"'{option}'"], rule)


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["keygen"], "--bits"),
        (["demo"], "--bits"),
        (["sandbox", "serve"], "--key-bits"),
        (["sandbox", "server-key"], "--key-bits"),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, list) else v,
)
@pytest.mark.parametrize("value", ["1024", "1000", "8192", "0", "-2048", "2048.0", "big"])
def test_key_size_outside_the_allowed_set_is_a_usage_error(command, option, value, parse_only):
    status, err, out = parse_only([*command, option, value])
    _assert_usage_error(status, err, out, [f"'{option}'"], BITS_RULE)
    assert tuple(keys.ALLOWED_BITS) == (2048, 3072, 4096)  # the rule above names this set


@pytest.mark.parametrize("value", ["-1", "65536", "99999", "80.5", "http"])
def test_sandbox_port_out_of_range_is_a_usage_error(value, parse_only):
    status, err, out = parse_only(["sandbox", "serve", "--port", value])
    _assert_usage_error(status, err, out, ["'--port'"], "must be a whole number from 0 to 65535")


@pytest.mark.parametrize(
    ("option", "value", "rule"),
    [
        *[
            (option, value, RATE_RULE)
            for option in ("--drop-rate", "--error-rate", "--corrupt-rate", "--unsigned-rate")
            for value in ("-0.1", "1.5", "nan", "inf", "half")
        ],
        ("--latency-ms", "-1", "must be a whole number from 0 to 600000"),
        ("--latency-ms", "600001", "must be a whole number from 0 to 600000"),
        ("--latency-ms", "2.5", "must be a whole number from 0 to 600000"),
        ("--clock-skew-s", "31622401", "must be a whole number from -31622400 to 31622400"),
        ("--clock-skew-s", "-31622401", "must be a whole number from -31622400 to 31622400"),
        ("--clock-skew-s", "1e9", "must be a whole number from -31622400 to 31622400"),
    ],
)
def test_sandbox_fault_out_of_range_is_a_usage_error(option, value, rule, parse_only):
    status, err, out = parse_only(["sandbox", "serve", option, value])
    _assert_usage_error(status, err, out, [f"'{option}'"], rule)


@pytest.mark.parametrize("value", ["-1", "12X", "1.5M", "1KB", "1T", "M", "0x10", "", "64 MiB B"])
@pytest.mark.parametrize(
    "command",
    [["request", "GET", "/ws/"], ["patients", "create", "--from", "rows.csv"]],
    ids=["request", "patients-create"],
)
def test_max_response_size_malformed_is_a_usage_error(command, value, parse_only):
    status, err, out = parse_only([*command, "--max-response-size", value])
    _assert_usage_error(status, err, out, ["'--max-response-size'"], SIZE_RULE)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1048576", 1048576),
        ("1K", 1024),
        ("1k", 1024),
        ("2KiB", 2048),
        ("64M", 64 * 1024 * 1024),
        ("64mib", 64 * 1024 * 1024),
        ("1G", 1024**3),
        ("3GiB", 3 * 1024**3),
        (" 5 M ", 5 * 1024 * 1024),
    ],
)
def test_byte_sizes_accept_plain_bytes_and_binary_suffixes(text, expected):
    from cwsctl.cli.params import ByteSize

    assert ByteSize()(text) == expected


BAD_URLS = [
    "http://[::1",
    "http://[::1/ws/",
    "http://",
    "http:///ws/",
    "https://:443/ws/",
    "ftp://cws.example.org/",
    "file:///etc/passwd",
    "http://cws.example.org:99999/",
    "http://cws.example.org:abc/",
    "http://cws.example.org:0/",
    "http://cws example.org/",
    "http://cws.example.org/ws/\n",
    "http://cws.example.org/\x00",
    "http://-bad-.example.org/",
    "http://1.2.3.4.5/",
    "http://[zz::1]/",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_malformed_request_url_is_a_usage_error(url, parse_only):
    status, err, out = parse_only(["request", "GET", url])
    _assert_usage_error(status, err, out, ["'PATH_OR_URL'"], URL_RULE)


@pytest.mark.parametrize("url", [*BAD_URLS, "cws.example.org", "/ws/"])
def test_malformed_profile_url_is_a_usage_error(url, parse_only, cwsctl_home):
    args = ["profile", "init", "prod", "--url", url, "--username", "u"]
    status, err, out = parse_only(args)
    _assert_usage_error(status, err, out, ["'--url'"], URL_RULE)
    assert not cwsctl_home.exists() or not any(cwsctl_home.rglob("config.toml"))


@pytest.mark.parametrize("host", ["bad host", "", "[127.0.0.1]", "[zz]", "-x", "a..b", "1.2.3.4.5"])
def test_malformed_sandbox_host_is_a_usage_error(host, parse_only):
    status, err, out = parse_only(["sandbox", "serve", "--host", host])
    _assert_usage_error(status, err, out, ["'--host'"], "must be a host name or an IP address")


@pytest.mark.parametrize("path", ["https://cws.example.org/ws/", "/ws/\r\nX: y"])
def test_doctor_path_must_be_a_path(path, parse_only):
    status, err, out = parse_only(["doctor", "--path", path])
    _assert_usage_error(status, err, out, ["'--path'"], "must be a path such as /ws/")


@pytest.mark.parametrize(
    ("env", "args", "names", "rule"),
    [
        (
            {"CWSCTL_TIMEOUT": "nan"},
            ["request", "GET", "/ws/"],
            ["'--timeout'", "CWSCTL_TIMEOUT"],
            TIMEOUT_RULE,
        ),
        ({"CWSCTL_TIMEOUT": "-1"}, ["doctor"], ["'--timeout'", "CWSCTL_TIMEOUT"], TIMEOUT_RULE),
        (
            {"CWSCTL_TIMEOUT": "0"},
            ["patients", "create", "--from", "x.csv"],
            ["'--timeout'"],
            TIMEOUT_RULE,
        ),
        ({"CWSCTL_TIMEOUT": "inf"}, ["keys", "rotate"], ["'--timeout'"], TIMEOUT_RULE),
        (
            {"CWSCTL_CONCURRENCY": "0"},
            ["patients", "create", "--from", "x.csv"],
            ["'--concurrency'", "CWSCTL_CONCURRENCY"],
            "must be a whole number from 1 to 64",
        ),
        (
            {"CWSCTL_MAX_RESPONSE_SIZE": "lots"},
            ["request", "GET", "/ws/"],
            ["'--max-response-size'"],
            SIZE_RULE,
        ),
        (
            {"CWSCTL_MAX_RESPONSE_SIZE": "-5M"},
            ["patients", "create", "--from", "x.csv"],
            ["'--max-response-size'"],
            SIZE_RULE,
        ),
        ({"CWSCTL_SANDBOX_DROP_RATE": "2"}, ["sandbox", "serve"], ["'--drop-rate'"], RATE_RULE),
        ({"CWSCTL_SANDBOX_ERROR_RATE": "nan"}, ["sandbox", "serve"], ["'--error-rate'"], RATE_RULE),
        (
            {"CWSCTL_SANDBOX_CORRUPT_RATE": "-1"},
            ["sandbox", "serve"],
            ["'--corrupt-rate'"],
            RATE_RULE,
        ),
        (
            {"CWSCTL_SANDBOX_UNSIGNED_RATE": "inf"},
            ["sandbox", "serve"],
            ["'--unsigned-rate'"],
            RATE_RULE,
        ),
        (
            {"CWSCTL_SANDBOX_LATENCY_MS": "-5"},
            ["sandbox", "serve"],
            ["'--latency-ms'"],
            "must be a whole number from 0 to 600000",
        ),
        (
            {"CWSCTL_SANDBOX_CLOCK_SKEW_S": "99999999999"},
            ["sandbox", "serve"],
            ["'--clock-skew-s'"],
            "must be a whole number from -31622400 to 31622400",
        ),
    ],
    ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else None,
)
def test_env_var_out_of_range_is_a_usage_error(env, args, names, rule, parse_only):
    status, err, out = parse_only(args, env)
    _assert_usage_error(status, err, out, names, rule)


@pytest.mark.parametrize(
    "args",
    [
        ["request", "GET", "/ws/", "--timeout", "nan"],
        ["request", "GET", "http://[::1"],
        ["request", "GET", "/ws/", "--timeout", "-1"],
    ],
    ids=["timeout-nan", "url-unclosed-bracket", "timeout-negative"],
)
def test_issue_examples_exit_2_as_a_process(args, run_cwsctl):
    """The three inputs the issue saw end as 'internal error' exit 1, as a real process."""
    result = run_cwsctl(*args)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.startswith("cwsctl: error: Invalid value for "), err
    assert "Traceback" not in err and "internal error" not in err
    assert result.stdout == b""


def test_values_at_the_edges_of_each_range_are_accepted(ctx, run_cwsctl):
    """The bounds themselves parse: a dry run with every option at an edge of its range."""
    result = run_cwsctl(
        "request",
        "GET",
        f"{ctx['sandbox'].url}/ws/",
        "--dry-run",
        "--timeout",
        "86400",
        "--max-response-size",
        "0",
        env={"CWSCTL_MAX_RESPONSE_SIZE": "1GiB"},
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.startswith(f"GET {ctx['sandbox'].url}/ws/".encode())
    result = run_cwsctl(
        "request", "GET", "/ws/", "--timeout", "0.5", "--max-response-size", "64KiB"
    )
    assert result.returncode == 0, result.stderr.decode()


def test_library_callers_get_input_error_for_a_malformed_url():
    from cwsctl.core.errors import InputError, ProfileError
    from cwsctl.core.urls import parse_http_url, resolve_url

    with pytest.raises(InputError, match="not a valid URL"):
        resolve_url("https://cws.example.org", "http://[::1")
    with pytest.raises(InputError, match="port 0"):
        parse_http_url("https://cws.example.org:0/")
    with pytest.raises(ProfileError, match="profile's URL is unusable"):
        resolve_url("https://[::1", "/ws/")
    assert resolve_url("https://cws.example.org/", "/ws/") == "https://cws.example.org/ws/"
    assert parse_http_url("http://[::1]:8080/ws/") == "http://[::1]:8080/ws/"


def test_a_file_where_a_directory_belongs_is_one_line_not_a_bug(tmp_path, run_cwsctl):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    result = run_cwsctl(
        "-q", "sandbox", "server-key", "--data-dir", str(blocker), "--key-bits", "2048"
    )
    assert result.returncode == 3
    assert result.stderr.decode().startswith("cwsctl: error: cannot use ")
    assert b"Traceback" not in result.stderr and b"internal error" not in result.stderr

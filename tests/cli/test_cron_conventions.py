"""Every command as cron runs it: a real process, stdin closed, no terminal.

Each must finish promptly; with -q print nothing on stderr on success; with --json print exactly
one JSON document on stdout.
"""

from __future__ import annotations

import base64
import json
import time

import pytest

from cwsctl.core import keys
from cwsctl.protocols import cws_signature as signing
from cwsctl.protocols.cws_signature import Algorithm
from tests.cli.test_patients_bulk import patient, write_csv


@pytest.fixture
def files(tmp_path, sandbox, sandbox_profile, rsa2048):
    body = tmp_path / "body.json"
    body.write_bytes(b'{"a": 1}')
    pub = tmp_path / "pub.pem"
    pub.write_bytes(keys.public_key_pem(rsa2048.public_key()))
    sig = tmp_path / "body.json.sig"
    sig.write_text(base64.b64encode(signing.sign(rsa2048, b'{"a": 1}', Algorithm.SHA256)).decode())
    server_pem = tmp_path / "coremr.pem"
    server_pem.write_text(sandbox.public_key_pem)
    rows = write_csv(tmp_path / "rows.csv", [patient(i) for i in range(3)])
    private = tmp_path / "import.pem"
    private.write_bytes(keys.private_key_pem(rsa2048))
    private.chmod(0o600)
    return {
        "body": body,
        "pub": pub,
        "server": server_pem,
        "rows": rows,
        "private": private,
        "out": tmp_path / "exported.pem",
        "data": sandbox.data_dir,
        "tmp": tmp_path,
    }


COMMANDS = [
    ["profile", "list"],
    ["profile", "show"],
    ["profile", "use", "default"],
    ["profile", "trust", "{server}"],
    ["profile", "init", "other", "--url", "https://cws.example.org", "--username", "u"],
    ["keys", "show"],
    ["keys", "list"],
    ["keys", "export-public", "{out}"],
    ["keys", "import", "{private}", "--force"],
    ["keygen", "--next", "--bits", "2048"],
    ["sign", "{body}"],
    ["verify", "{body}", "--key", "{pub}", "--algorithm", "sha256"],
    ["request", "GET", "/ws/"],
    ["patients", "create", "--from", "{rows}"],
    ["doctor"],
    ["audit"],
    ["sandbox", "keys", "--data-dir", "{data}"],
    ["sandbox", "server-key", "--data-dir", "{data}"],
    ["demo"],
]


def _args(template, files):
    return [part.format(**files) for part in template]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c[:2]) for c in COMMANDS])
def test_quiet_success_is_silent_on_stderr(run_cwsctl, files, command):
    started = time.monotonic()
    result = run_cwsctl("-q", *_args(command, files), timeout=90)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    assert time.monotonic() - started < 60


JSON_COMMANDS = COMMANDS


@pytest.mark.parametrize("command", JSON_COMMANDS, ids=[" ".join(c[:2]) for c in JSON_COMMANDS])
def test_json_prints_one_document(run_cwsctl, files, command):
    result = run_cwsctl(*_args(command, files), "--json", timeout=90)
    assert result.returncode == 0, result.stderr.decode()
    json.loads(result.stdout)
    assert result.stderr == b""


@pytest.mark.parametrize("command", [["keys", "show"], ["keys", "jwks"]])
def test_a_reader_that_goes_away_is_not_an_internal_error(sandbox_profile, cwsctl_home, command):
    """`cwsctl keys show | true`: the pipe closes before cwsctl writes; that is no bug (exit 0)."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before cwsctl starts writing
    try:
        done = subprocess.run(
            [sys.executable, "-m", "cwsctl", *command],
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=subprocess.PIPE,
            env={**os.environ, "CWSCTL_HOME": str(cwsctl_home)},
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 0, done.stderr
    assert b"internal error" not in done.stderr and b"Traceback" not in done.stderr

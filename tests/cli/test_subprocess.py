"""cwsctl as cron runs it: a real process, stdin closed, no terminal, CWSCTL_HOME in a temp dir."""

from __future__ import annotations

import subprocess
import sys

from cwsctl import __version__
from tests.conftest import write_private


def test_version_via_python_m(run_cwsctl):
    result = run_cwsctl("--version")
    assert result.returncode == 0
    assert result.stdout.decode().strip() == f"cwsctl {__version__}"


def test_help_does_not_import_httpx_or_rich_progress():
    code = (
        "import sys\n"
        "from cwsctl.cli.main import run\n"
        "try:\n    run(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('httpx', 'rich.progress', 'cwsctl.sandbox', 'starlette') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_cron_round_trip_keygen_sign_verify_quiet(run_cwsctl, tmp_path):
    assert (
        run_cwsctl(
            "-q",
            "profile",
            "init",
            "prod",
            "--url",
            "https://cws.example.org",
            "--username",
            "alice",
        ).returncode
        == 0
    )
    gen = run_cwsctl("-q", "keygen", "--bits", "2048")
    assert gen.returncode == 0 and gen.stderr == b""
    pub = tmp_path / "pub.pem"
    pub.write_bytes(gen.stdout)
    body = tmp_path / "body.json"
    body.write_bytes(b'{"x": 1}')
    signed = run_cwsctl("-q", "sign", str(body))
    assert signed.returncode == 0 and signed.stderr == b""
    (tmp_path / "body.json.sig").write_bytes(signed.stdout)
    verified = run_cwsctl("verify", str(body), "--key", str(pub), "-q")
    assert (
        verified.returncode == 0 and verified.stdout == b"Verified OK\n" and verified.stderr == b""
    )


def test_errors_are_one_line_plus_hint_and_debug_shows_traceback(run_cwsctl, tmp_path, rsa2048):
    key = write_private(tmp_path / "rsa.private", rsa2048)
    key.chmod(0o644)
    body = tmp_path / "b.json"
    body.write_text("{}")
    result = run_cwsctl("sign", str(body), "--key", str(key), "--username", "u")
    assert result.returncode == 3
    lines = result.stderr.decode().splitlines()
    assert (
        lines[0].startswith("cwsctl: error: private key")
        and lines[1] == f"hint: run: chmod 600 {key}"
    )
    assert len(lines) == 2
    debug = run_cwsctl("--debug", "sign", str(body), "--key", str(key), "--username", "u")
    assert debug.returncode == 3 and b"Traceback" in debug.stderr


def test_unknown_option_is_usage_exit_2(run_cwsctl):
    result = run_cwsctl("sign", "--no-such-option", "x")
    assert result.returncode == 2
    assert result.stderr.decode().startswith("cwsctl: error: No such option")

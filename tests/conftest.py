"""Shared fixtures: an isolated CWSCTL_HOME per test, test keys made once per session, a CLI runner."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cwsctl.cli.app import app
from cwsctl.core import keys

pytest_plugins = ["tests.sandbox_plugin", "tests.hostile_server", "tests.timing_plugin"]

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl binary not installed")


@pytest.fixture(autouse=True)
def cwsctl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty CWSCTL_HOME and no inherited cwsctl environment."""
    home = tmp_path / "cwsctl-home"
    for var in ("CWSCTL_PROFILE", "CWSCTL_PASSPHRASE_FILE", "CWSCTL_DEBUG", "NO_COLOR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CWSCTL_HOME", str(home))
    return home


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str
    stdout_bytes: bytes


@pytest.fixture
def cli():
    """Run cwsctl in-process through Typer's CliRunner; stdout and stderr kept apart."""
    runner = CliRunner()

    def run(*args: str, input: bytes | str | None = None) -> CliResult:
        result = runner.invoke(app, list(args), input=input)
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return CliResult(result.exit_code, result.stdout, result.stderr, result.stdout_bytes)

    return run


@pytest.fixture
def run_cwsctl(cwsctl_home: Path):
    """Run cwsctl as a real subprocess, as cron does: stdin closed, no terminal."""

    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 60, stdin=subprocess.DEVNULL
    ):
        full_env = {**os.environ, "CWSCTL_HOME": str(cwsctl_home), **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "cwsctl", *args],
            stdin=stdin,
            capture_output=True,
            env=full_env,
            timeout=timeout,
        )

    return run


def default_sigint() -> None:
    """``preexec_fn`` for a child a test will Ctrl-C: SIGINT at its default, as a terminal's
    foreground job has it. A suite started in the background (``pytest &``, nohup) hands its
    children SIGINT ignored, and Python then keeps it ignored: the signal would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="session")
def rsa2048(key_dir: Path) -> keys.rsa.RSAPrivateKey:
    """One 2048-bit key for the whole session (RSA generation is slow)."""
    return keys.generate_private_key(2048)


@pytest.fixture(scope="session")
def rsa2048_other() -> keys.rsa.RSAPrivateKey:
    """A second key, for 'wrong key' cases."""
    return keys.generate_private_key(2048)


def write_private(path: Path, key: keys.rsa.RSAPrivateKey, passphrase: bytes | None = None) -> Path:
    """Write a test private key with safe permissions."""
    path.write_bytes(keys.private_key_pem(key, passphrase))
    path.chmod(0o600)
    return path


def write_public(path: Path, key: keys.rsa.RSAPrivateKey) -> Path:
    path.write_bytes(keys.public_key_pem(key.public_key()))
    return path


@pytest.fixture(scope="session")
def openssl_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Walkthrough keys from the real openssl: PKCS#8, PKCS#1 (-traditional), encrypted, 4096-bit."""
    from tests.openssl_keys import PASSPHRASE, make_openssl_key

    if OPENSSL is None:
        pytest.skip("openssl binary not installed")
    directory = tmp_path_factory.mktemp("openssl-keys")
    return {
        "pkcs8-2048": make_openssl_key(directory, "pkcs8-2048", 2048),
        "pkcs1-2048": make_openssl_key(directory, "pkcs1-2048", 2048, "-traditional"),
        "pkcs8-enc-2048": make_openssl_key(
            directory, "pkcs8-enc-2048", 2048, passphrase=PASSPHRASE
        ),
        "pkcs1-enc-2048": make_openssl_key(
            directory, "pkcs1-enc-2048", 2048, "-traditional", passphrase=PASSPHRASE
        ),
        "pkcs8-4096": make_openssl_key(directory, "pkcs8-4096", 4096),
    }

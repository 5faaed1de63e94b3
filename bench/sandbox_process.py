"""Helpers shared by the bench scripts: a clean environment, setup commands, and the sandbox
run as its own process (``cwsctl sandbox serve``), as users run it."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

DROP_ENV = ("PYTHONPROFILEIMPORTTIME", "PYTHONDEVMODE", "PYTHONTRACEMALLOC", "PYTHONMALLOC")


class SetupError(Exception):
    """The benchmark cannot run (exit 2)."""


def cwsctl_argv() -> list[str]:
    """``python -m cwsctl`` with this interpreter (what the issue asks to drive)."""
    return [sys.executable, "-m", "cwsctl"]


def clean_env(home: Path) -> dict[str, str]:
    """This environment without CWSCTL_* settings, with ``CWSCTL_HOME=home`` and no colour."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CWSCTL_") and k not in DROP_ENV}
    env["CWSCTL_HOME"] = str(home)
    env["NO_COLOR"] = "1"
    return env


def run_setup(argv: list[str], env: dict[str, str], what: str) -> str:
    """Run a setup command; its stdout, or SetupError with its stderr."""
    try:
        done = subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"{what}: {exc}") from None
    if done.returncode != 0:
        raise SetupError(f"{what}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def remove_work_dir(work: Path, *, keep: bool) -> None:
    """Delete a bench's temporary directory, or say where it was kept (``--keep``)."""
    if keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def machine() -> str:
    """``x86_64, 2 CPUs, Python 3.11.7`` (what the figures were measured on)."""
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs (nproc), Python {platform.python_version()}"
    )


class Sandbox:
    """``cwsctl sandbox serve`` in its own process; stderr (the access log) goes to ``log``.

    ``kind`` and ``token_lifetime``, when given, become ``--kind`` and ``--token-lifetime``
    (left out otherwise, so the CWS sandbox runs exactly as before); ``extra`` is appended to the
    command line as it is. ``append`` appends to ``log`` instead of truncating it (a restart on
    the same log keeps its earlier lines)."""

    def __init__(
        self,
        env: dict[str, str],
        data_dir: Path,
        port: int,
        log: Path,
        *,
        key_bits: int = 2048,
        faults: dict[str, float | int] | None = None,
        quiet: bool = False,
        cws: list[str] | None = None,
        kind: str | None = None,
        token_lifetime: int | None = None,
        extra: Sequence[str] = (),
        append: bool = False,
    ) -> None:
        self.port = port
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log
        argv = [
            *(cws or cwsctl_argv()),
            "sandbox",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        argv += ["--data-dir", str(data_dir), "--key-bits", str(key_bits)]
        for name, value in (faults or {}).items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        if kind is not None:  # `--kind openemr`: the OpenEMR flavour (state in openemr.db)
            argv += ["--kind", kind]
        if token_lifetime is not None:  # --kind openemr: seconds an access token lives
            argv += ["--token-lifetime", str(token_lifetime)]
        if quiet:
            argv.append("-q")
        argv += extra
        self.argv = argv
        self._log = log.open("ab" if append else "wb")
        self.proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Return once the port accepts connections (SetupError if the process died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = self.log_path.read_text(errors="replace").strip()[-500:]
                raise SetupError(f"sandbox exited {self.proc.returncode}: {text}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        raise SetupError(f"sandbox did not listen on {self.url} within {timeout:.0f} s")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait; SIGKILL if it does not stop. Idempotent; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

"""A small soak: a bulk load through the real CLI against a faulty sandbox process.

The shape of ``bench/soak.py`` at CI size: 300 rows; the sandbox (``cwsctl sandbox serve`` in
its own process) drops 10% of patient answers after processing them, fails 5% with a 500,
delays every one up to 20 ms and corrupts 2% of the signatures, with a fixed seed. The client
(``python -m cwsctl patients create --from``, stdin closed) is SIGKILLed once mid-run, the
sandbox is stopped (SIGTERM) and started again on the same port and data dir once mid-run, and
the command is re-run until it exits 0 (each run that meets a corrupted signature exits 7 at
once, by design). The sandbox's database must then hold exactly the input: none lost, none
twice, every field as sent, and no patient was POSTed again after it had been created.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from types import SimpleNamespace

import pytest

from cwsctl.core import keys
from cwsctl.core.bulk.rows import prepare_patient
from cwsctl.core.profile import Config, Profile, Store
from cwsctl.protocols.cws_signature import Algorithm, TrustedKey
from cwsctl.targets.cws.sandbox.store import SandboxStore, register_client_key
from cwsctl.targets.cws.settings import CwsSettings
from tests.cli.test_patients_bulk import all_patients, patient, write_csv
from tests.conftest import write_private

pytestmark = [pytest.mark.slow, pytest.mark.timing]

ROWS = 300
SEED = 20261123
FAULTS = {
    "--drop-rate": "0.10",
    "--error-rate": "0.05",
    "--latency-ms": "20",
    "--corrupt-rate": "0.02",
}
MAX_RUNS = 80  # about 10 are expected (one per corrupted answer, plus the SIGKILL)
EVENT_AFTER = 6  # journal entries a run writes before the SIGKILL / the sandbox restart
RUN_TIMEOUT = 60
USERNAME = "tester"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Sandbox:
    """``cwsctl sandbox serve`` as a separate process, its access log in ``log``."""

    def __init__(self, data_dir, port, log, seed):
        argv = [sys.executable, "-m", "cwsctl", "sandbox", "serve", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--data-dir", str(data_dir), "--key-bits", "2048"]
        argv += [*(x for item in FAULTS.items() for x in item), "--seed", str(seed)]
        self.port = port
        self.log = log
        with open(log, "wb") as handle:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the sandbox did not start listening"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _journal_lines(path, offset):
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().count(b"\n")
    except FileNotFoundError:
        return 0


def _access_log(paths):
    statuses, faults = Counter(), Counter()
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            match = re.match(r"cwsctl-sandbox: (\w+) \S+ (\d{3}) .*?user=\S+(.*)$", line)
            if match:
                statuses[f"{match[1]} {match[2]}"] += 1
                faults.update(re.findall(r"fault=(\w+)", match[3]))
    return statuses, faults


@pytest.mark.timeout(300)  # a soak: on a loaded machine it may take minutes
def test_soak_faults_sigkill_and_sandbox_restart_lose_nothing_and_duplicate_nothing(
    tmp_path, cwsctl_home, rsa2048, rsa2048_other
):
    data_dir = tmp_path / "sandbox"
    data_dir.mkdir(mode=0o700)
    write_private(data_dir / "server.pem", rsa2048_other)  # the sandbox's key: no keygen
    register_client_key(data_dir, USERNAME, rsa2048.public_key())
    port = _free_port()
    store = Store(cwsctl_home)
    server_pem = keys.public_key_pem(rsa2048_other.public_key()).decode("ascii")
    profile = Profile(
        name="default",
        url=f"http://127.0.0.1:{port}",
        settings=CwsSettings(
            username=USERNAME,
            algorithm=Algorithm.SHA256,
            trusted=[TrustedKey("coremr", server_pem)],
        ),
    )
    store.save(Config(default_profile="default", profiles={"default": profile}))
    keys.save_private_key(store.private_key_path("default"), rsa2048, None, overwrite=True)
    source = write_csv(tmp_path / "in.csv", [patient(i) for i in range(ROWS)])
    journal = tmp_path / "in.csv.journal"
    argv = [sys.executable, "-m", "cwsctl", "-q", "patients", "create", "--from", str(source)]
    env = {**os.environ, "CWSCTL_HOME": str(cwsctl_home)}

    sandboxes = [_Sandbox(data_dir, port, tmp_path / "sandbox-1.log", SEED)]
    codes, killed_in, restarted_in, client = [], None, None, None
    try:
        while len(codes) < MAX_RUNS and (not codes or codes[-1] != 0):
            offset = journal.stat().st_size if journal.exists() else 0
            want_kill, want_restart = killed_in is None, killed_in is not None and not restarted_in
            client = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
            started = time.monotonic()
            while client.poll() is None:
                assert time.monotonic() - started < RUN_TIMEOUT, f"run {len(codes) + 1} hung"
                time.sleep(0.01)
                if not (want_kill or want_restart) or _journal_lines(journal, offset) < EVENT_AFTER:
                    continue
                if want_kill:
                    client.send_signal(signal.SIGKILL)
                    killed_in, want_kill = len(codes) + 1, False
                else:  # mid-run: SIGTERM the sandbox, start it again on the same port and data
                    assert sandboxes[-1].stop() == 0
                    log = tmp_path / f"sandbox-{len(sandboxes) + 1}.log"
                    sandboxes.append(_Sandbox(data_dir, port, log, SEED + 1))
                    restarted_in, want_restart = len(codes) + 1, False
            codes.append(client.wait())
            if killed_in == len(codes) and codes[-1] != -signal.SIGKILL:
                killed_in = None  # it ended on its own just before the signal: kill the next one
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        for sandbox in sandboxes:
            sandbox.stop()

    assert codes[-1] == 0, codes
    assert killed_in is not None and restarted_in is not None, codes
    assert codes.count(-signal.SIGKILL) == 1 and codes[killed_in - 1] == -signal.SIGKILL
    assert set(codes) <= {0, 5, 6, 7, -signal.SIGKILL}, codes
    assert 7 in codes, codes  # a forged answer stopped at least one run

    statuses, faults = _access_log(sandbox.log for sandbox in sandboxes)
    assert faults["drop"] and faults["error"] and faults["corrupt"], faults
    assert statuses["POST 409"] == 0, statuses  # an in-doubt row was looked up, not re-sent
    assert statuses["POST 201"] == ROWS, statuses

    with SandboxStore(data_dir) as sandbox_store:
        found = all_patients(SimpleNamespace(store=sandbox_store), ROWS)  # each at most once
        assert sandbox_store.count_patients() == ROWS
    assert len(found) == ROWS
    for i in range(ROWS):
        assert found[f"EXT{i:05d}"] == prepare_patient(patient(i))

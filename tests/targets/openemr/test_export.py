"""`cwsctl export` against the OpenEMR-flavour sandbox in both export modes (openemr: OpenEMR as
its source shows it; spec: the Bulk Data Access IG), as real subprocesses: full and partial
exports, --since last, --status, --cancel, a done DIR, --new, and the faults of issue 21 item 5
(the client killed mid-poll and mid-download then resumed, a download cut short, 5xx on the
status URL, tokens expiring mid-export, a file whose lines do not match its type or count)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cwsctl.core import keys
from cwsctl.core.profile import Store
from tests.conftest import default_sigint

pytest.importorskip("jwt")
pytest.importorskip("starlette")

from cwsctl.sandbox.faults import Faults
from cwsctl.targets.openemr.sandbox.server import OpenEmrSandboxServer

STATE = ".cwsctl-export.json"


class ThrottlingProxy:
    """A TCP relay on 127.0.0.1 that forwards to ``target``; while ``rate`` is set, the
    server's bytes reach the client at about ``rate`` bytes a second (a slow network, so that a
    test can kill the client in the middle of a download)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.rate: int | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, slow: bool) -> None:
        try:
            while True:
                rate = self.rate if slow else None
                data = source.recv(4096 if rate else 65536)
                if not data:
                    break
                sink.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()


@dataclass
class Setup:
    """A sandbox with patients and an openemr profile registered with --export-scopes."""

    server: OpenEmrSandboxServer
    home: Path
    out: Path
    name: str = "emr"

    def env(self) -> dict[str, str]:
        return {**os.environ, "CWSCTL_HOME": str(self.home)}

    def args(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "cwsctl",
            "-p",
            self.name,
            "export",
            "--out",
            str(self.out),
            *extra,
        ]

    def run(self, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.args(*extra),
            env=self.env(),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )

    def run_json(self, *extra: str) -> dict[str, Any]:
        result = self.run("--json", *extra)
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        assert isinstance(document, dict)
        return document

    def start(self, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.args(*extra),
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
            preexec_fn=default_sigint,
        )

    def state(self) -> dict[str, Any]:
        try:
            data = json.loads((self.out / STATE).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def patient_ids(self) -> list[str]:
        """Every Patient id in DIR's Patient files, in order (duplicates kept)."""
        ids = []
        for path in sorted(self.out.glob("Patient-*.ndjson")):
            for line in path.read_bytes().splitlines():
                ids.append(json.loads(line)["id"])
        return ids

    def server_ids(self) -> list[str]:
        return sorted(p.uuid for p in self.server.patients())


@pytest.fixture
def export_setup(
    tmp_path: Path, rsa2048: Any, cwsctl_home: Path, cli: Callable[..., Any]
) -> Iterator[Callable[..., Setup]]:
    """Factory: ``export_setup("spec", patients=50, export_delay=2, token_lifetime=2,
    proxy=True)`` starts a sandbox with system scopes on, seeds it, and registers profile
    ``emr`` with ``oauth register --export-scopes`` plus the administrator's enable step. With
    ``proxy=True`` the profile's URL is a :class:`ThrottlingProxy` in front of the sandbox."""
    started: list[Any] = []

    def make(
        mode: str = "openemr",
        *,
        patients: int = 40,
        proxy: bool = False,
        front: bool = False,
        **options: Any,
    ) -> Setup:
        data_dir = tmp_path / f"emr-{len(started)}"
        data_dir.mkdir(mode=0o700)
        server = OpenEmrSandboxServer(
            data_dir,
            system_scopes=True,
            export_mode=mode,
            faults=Faults(),
            access_log=False,
            **options,
        ).start()
        started.append(server)
        if patients:
            server.seed_patients(patients)
        url = server.url
        if proxy:
            relay = ThrottlingProxy(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
            started.append(relay)
            url = relay.url
        if front:
            relay = Front(server.url)
            started.append(relay)
            url = relay.url

        def cwsctl(*args: str) -> None:  # set-up, so in-process: the export is what runs as cron
            result = cli(*args)
            assert result.exit_code == 0, (args, result.stderr)

        cwsctl("profile", "init", "emr", "--kind", "openemr", "--url", url, "--site", server.site)
        store = Store(cwsctl_home)
        keys.save_private_key(store.private_key_path("emr"), rsa2048, None, overwrite=True)
        cwsctl("-p", "emr", "oauth", "register", "--client-name", "export tests", "--export-scopes")
        server.enable_client(
            store.get_profile("emr").settings.client_id
        )  # the administrator's step
        setup = Setup(server, cwsctl_home, tmp_path / f"out-{len(started)}")
        setup.proxy = relay if proxy or front else None  # type: ignore[attr-defined]
        return setup

    yield make
    for item in started:
        if isinstance(item, ThrottlingProxy | Front):
            item.close()
        else:
            item.stop()


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def assert_every_patient_once(setup: Setup) -> None:
    ids = setup.patient_ids()
    assert len(ids) == len(set(ids)), "a patient is in DIR twice"
    assert sorted(ids) == setup.server_ids()
    assert not list(setup.out.glob("*.part"))


def assert_manifest_matches_files(setup: Setup) -> dict[str, Any]:
    manifest = json.loads((setup.out / "manifest.json").read_text())
    for entry in manifest["output"] + [e for e in manifest["error"] if "url" in e]:
        data = (setup.out / entry["path"]).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["lines"] == len(data.splitlines())
    return manifest


# -- whole exports ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["openemr", "spec"])
@pytest.mark.slow
def test_full_export_then_done_dir_then_new(export_setup: Callable[..., Setup], mode: str) -> None:
    setup = export_setup(mode, patients=60, export_delay=1.0 if mode == "spec" else 0.0)
    summary = setup.run_json()
    assert summary["state"] == "done" and summary["kicked_off"] and not summary["resumed"]
    assert summary["resources"] == 60
    assert_every_patient_once(setup)
    manifest = assert_manifest_matches_files(setup)
    assert manifest["requiresAccessToken"] is True
    assert manifest["cwsctl"]["transactionInstant"].endswith("Z")
    if mode == "openemr":  # the PHP DateTime object, kept as given and normalised
        assert set(manifest["transactionTime"]) == {"date", "timezone_type", "timezone"}
    else:
        assert manifest["output"][0]["count"] == 60
    assert stat.S_IMODE((setup.out / STATE).stat().st_mode) == 0o600
    assert stat.S_IMODE((setup.out / "Patient-1.ndjson").stat().st_mode) == 0o600

    again = setup.run()  # a finished DIR: reported, nothing sent again
    assert again.returncode == 0
    assert "already holds a finished export" in again.stderr
    assert json.loads((setup.out / "manifest.json").read_text()) == manifest

    renewed = setup.run_json("--new")
    assert renewed["kicked_off"] and renewed["status_url"] != summary["status_url"]
    assert_every_patient_once(setup)


@pytest.mark.parametrize("mode", ["openemr", "spec"])
def test_patient_level_with_types(export_setup: Callable[..., Setup], mode: str) -> None:
    setup = export_setup(mode, patients=15)
    summary = setup.run_json("--patient", "--type", "Patient")
    assert [f["type"] for f in summary["files"]] == ["Patient"]
    manifest = json.loads((setup.out / "manifest.json").read_text())
    assert "Patient/$export" in manifest["request"]
    assert "type=Patient" in manifest["cwsctl"]["kickoffUrl"]
    assert "_type=Patient" in manifest["cwsctl"]["kickoffUrl"]
    assert_every_patient_once(setup)


def test_group_export_asks_for_the_group_route(export_setup: Callable[..., Setup]) -> None:
    setup = export_setup("openemr", patients=5)
    summary = setup.run_json("--group", "no-such-group")
    assert summary["state"] == "done"
    manifest = json.loads((setup.out / "manifest.json").read_text())
    assert "/Group/no-such-group/$export" in manifest["cwsctl"]["kickoffUrl"]


@pytest.mark.parametrize("mode", ["openemr", "spec"])
@pytest.mark.slow
def test_since_last_exports_only_what_changed(
    export_setup: Callable[..., Setup], mode: str
) -> None:
    setup = export_setup(mode, patients=20)
    time.sleep(1.1)  # transaction times are whole seconds: the seed must lie before the first
    first = setup.run_json()
    assert first["resources"] == 20
    refused = setup.run("--since", "last")  # done DIR, no --new: nothing happens
    assert refused.returncode == 0 and "already holds" in refused.stderr
    time.sleep(1.1)
    setup.server.seed_patients(3, prefix="Q")
    second = setup.run_json("--since", "last", "--new")
    assert second["kicked_off"]
    new_ids = setup.patient_ids()
    old = set(setup.server_ids())
    assert len(new_ids) == 3 and len(set(new_ids)) == 3 and set(new_ids) <= old
    state = setup.state()
    assert state["since_sent"] == first["transaction_instant"]
    assert state["last_done"]["transaction_instant"] == second["transaction_instant"]


def test_since_last_needs_a_finished_export(export_setup: Callable[..., Setup]) -> None:
    setup = export_setup("openemr", patients=1)
    result = setup.run("--since", "last")
    assert result.returncode == 2
    assert "no finished export" in result.stderr


def test_bad_since_refused_before_sending(export_setup: Callable[..., Setup]) -> None:
    setup = export_setup("openemr", patients=1)
    result = setup.run("--since", "2026-03-01 12:00:00")
    assert result.returncode == 2
    assert "use T between date and time" in result.stderr
    assert not (setup.out / STATE).exists()


def test_a_profile_without_the_export_scope_is_told_which(
    export_setup: Callable[..., Setup], cwsctl_home: Path
) -> None:
    setup = export_setup("openemr", patients=1)
    store = Store(cwsctl_home)
    config = store.load()
    profile = store.get_profile("emr", config)
    profile.settings.scope = " ".join(
        s for s in profile.settings.scope.split() if s != "system/Group.$export"
    )
    store.save(config)
    result = setup.run("--group", "g1")
    assert result.returncode == 3
    assert "system/Group.$export" in result.stderr
    assert "--export-scopes" in result.stderr


# -- status and cancel -------------------------------------------------------------------------


@pytest.mark.slow
def test_status_cancel_and_new(export_setup: Callable[..., Setup]) -> None:
    setup = export_setup("spec", patients=10, export_delay=60.0)
    process = setup.start()
    wait_for(lambda: setup.state().get("state") == "running")
    process.send_signal(signal.SIGKILL)
    process.communicate()
    status = setup.run_json("--status")
    assert status["state"] == "running"
    assert status["server_status"] in (202, 429) and status["progress"]  # 429: polled too soon
    human = setup.run("--status")
    assert human.returncode == 0 and "state:" in human.stdout and "running" in human.stdout

    cancelled = setup.run("--cancel")
    assert cancelled.returncode == 0, cancelled.stderr
    assert setup.state()["state"] == "cancelled"
    again = setup.run()
    assert again.returncode == 2 and "--new" in again.stderr
    setup.server.export.delay = 0.0
    renewed = setup.run_json("--new")
    assert renewed["kicked_off"] and renewed["state"] == "done"
    assert renewed["status_url"] != status["status_url"]
    assert_every_patient_once(setup)


def test_status_of_an_empty_dir(export_setup: Callable[..., Setup]) -> None:
    setup = export_setup("openemr", patients=0)
    result = setup.run("--status")
    assert result.returncode == 2 and "no export in" in result.stderr


# -- faults: killed and resumed ------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
@pytest.mark.slow
def test_killed_mid_poll_resumes_without_a_second_kickoff(
    export_setup: Callable[..., Setup], sig: signal.Signals
) -> None:
    setup = export_setup("spec", patients=30, export_delay=4.0)
    process = setup.start()
    wait_for(lambda: setup.state().get("state") == "running")
    time.sleep(0.3)
    process.send_signal(sig)
    _, err = process.communicate(timeout=30)
    if sig == signal.SIGINT:
        assert process.returncode == 130, err
    status_url = setup.state()["status_url"]
    summary = setup.run_json()
    assert not summary["kicked_off"] and summary["resumed"]
    assert summary["status_url"] == status_url
    assert_every_patient_once(setup)
    assert_manifest_matches_files(setup)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
@pytest.mark.slow
def test_killed_mid_download_resumes_every_line_once(
    export_setup: Callable[..., Setup], sig: signal.Signals
) -> None:
    setup = export_setup("openemr", patients=3000, proxy=True)
    proxy: ThrottlingProxy = setup.proxy  # type: ignore[attr-defined]
    proxy.rate = 100_000  # bytes a second: the Patient file takes several seconds
    process = setup.start("--parallel", "2")
    part = setup.out / "Patient-1.ndjson.part"
    wait_for(lambda: part.exists() and part.stat().st_size > 20_000, timeout=60)
    process.send_signal(sig)
    _, err = process.communicate(timeout=30)
    if sig == signal.SIGINT:
        assert process.returncode == 130, err
        assert "interrupted" in err
    else:
        assert part.exists()  # what SIGKILL leaves behind
    state = setup.state()
    assert state["state"] == "downloading"
    assert not any(f["done"] for f in state["files"] if f["type"] == "Patient")
    proxy.rate = None
    summary = setup.run_json()
    assert not summary["kicked_off"] and summary["resumed"]
    assert summary["status_url"] == state["status_url"]
    assert summary["resources"] == 3000
    assert_every_patient_once(setup)
    assert_manifest_matches_files(setup)


def test_a_download_cut_short_is_fetched_again(export_setup: Callable[..., Setup]) -> None:
    setup = export_setup("openemr", patients=200)
    setup.server.export_faults.cut_file_after = 5000
    summary = setup.run_json()
    assert setup.server.export_faults.cut_file_after is None  # the cut happened
    assert summary["resources"] == 200
    assert_every_patient_once(setup)
    assert_manifest_matches_files(setup)


@pytest.mark.parametrize("mode", ["openemr", "spec"])
@pytest.mark.slow
def test_5xx_on_the_status_url_is_retried(export_setup: Callable[..., Setup], mode: str) -> None:
    setup = export_setup(mode, patients=10, export_delay=0.5 if mode == "spec" else 0.0)
    setup.server.export_faults.status_errors = 2
    summary = setup.run_json()
    assert setup.server.export_faults.status_errors == 0
    assert summary["state"] == "done"
    assert_every_patient_once(setup)


@pytest.mark.timing
@pytest.mark.slow
def test_tokens_expire_mid_export(export_setup: Callable[..., Setup]) -> None:
    setup = export_setup("spec", patients=30, export_delay=2.5, token_lifetime=2)
    summary = setup.run_json("--parallel", "1")
    assert summary["state"] == "done"
    assert summary["token_renewals"] >= 1
    assert_every_patient_once(setup)


@pytest.mark.parametrize("mode", ["openemr", "spec"])
@pytest.mark.slow
def test_a_file_of_the_wrong_type_is_exit_5_naming_it(
    export_setup: Callable[..., Setup], mode: str
) -> None:
    setup = export_setup(mode, patients=10)
    setup.server.export_faults.wrong_type = "Patient"
    result = setup.run()
    assert result.returncode == 5, result.stderr
    assert "Patient-1.ndjson" in result.stderr
    assert "not a Patient" in result.stderr
    assert not (setup.out / "Patient-1.ndjson").exists()
    assert not list(setup.out.glob("*.part"))
    state = setup.state()
    assert state["state"] == "downloading"
    again = setup.run()  # the same job again: no second kick-off, the same refusal
    assert again.returncode == 5 and "Patient-1.ndjson" in again.stderr
    assert setup.state()["status_url"] == state["status_url"]
    # the way out: cancel that job, start a new one
    setup.server.export_faults.wrong_type = None
    assert setup.run("--cancel").returncode == 0
    setup.run_json("--new")
    assert_every_patient_once(setup)


def test_a_count_that_does_not_match_is_exit_5_naming_the_file(
    export_setup: Callable[..., Setup],
) -> None:
    setup = export_setup("spec", patients=10)
    setup.server.export_faults.wrong_count = True
    result = setup.run()
    assert result.returncode == 5, result.stderr
    assert "Patient-1.ndjson" in result.stderr
    assert "the manifest says 11" in result.stderr
    assert not (setup.out / "Patient-1.ndjson").exists()


# -- refusals: a bare 401 naming the scope, 501 with system scopes off -------------------------


def _cwsctl(setup: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cwsctl", "-p", setup.name, *args],
        env=setup.env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def _audit_lines(setup: Setup) -> list[dict[str, Any]]:
    path = setup.home / "audit" / f"{setup.name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_a_bare_401_on_the_kickoff_names_the_scope(
    export_setup: Callable[..., Setup], cwsctl_home: Path
) -> None:
    setup = export_setup("openemr", patients=1)
    store = Store(cwsctl_home)
    narrower = [
        s for s in store.get_profile("emr").settings.scope.split() if s != "system/*.$export"
    ]
    registered = _cwsctl(
        setup, "oauth", "register", "--client-name", "n", "--scope", *[" ".join(narrower)]
    )
    assert registered.returncode == 0, registered.stderr
    setup.server.enable_client(Store(cwsctl_home).get_profile("emr").settings.client_id)
    config = store.load()  # the profile asks for the scope; OpenEMR drops what is not registered
    profile = store.get_profile("emr", config)
    profile.settings.scope = " ".join([*narrower, "system/*.$export"])
    store.save(config)
    result = setup.run()
    assert result.returncode == 4, result.stderr
    assert "HTTP 401" in result.stderr and "system/*.$export" in result.stderr
    assert "--export-scopes" in result.stderr and "Traceback" not in result.stderr
    kickoffs = [e for e in _audit_lines(setup) if e["path"].endswith("/fhir/$export")]
    assert [e["status"] for e in kickoffs] == [401, 401]  # renewed once, refused again


@pytest.mark.slow
def test_system_scopes_switched_off_is_501_naming_the_admin_step(
    export_setup: Callable[..., Setup], tmp_path: Path
) -> None:
    setup = export_setup("openemr", patients=2)
    assert setup.run_json()["resources"] == 2  # its token is cached in the profile's token file
    port = int(setup.server.url.rsplit(":", 1)[1])
    data_dir = setup.server.data_dir
    setup.server.stop()
    off = OpenEmrSandboxServer(data_dir, port=port, system_scopes=False, access_log=False).start()
    try:
        result = setup.run("--new")
        assert result.returncode == 5, result.stderr
        assert "HTTP 501" in result.stderr and "system scopes" in result.stderr
        assert "Enable OpenEMR FHIR System Scopes" in result.stderr
        tokens = setup.home / "tokens" / "emr.json"
        tokens.unlink()  # no cached token: the grant itself is refused
        refused = setup.run("--new")
        assert refused.returncode == 4, refused.stderr
        assert "system/" in refused.stderr and "Traceback" not in refused.stderr
    finally:
        off.stop()


@pytest.mark.slow
def test_the_audit_log_has_every_export_request_without_query_or_token(
    export_setup: Callable[..., Setup],
) -> None:
    setup = export_setup("spec", patients=3, export_delay=1.0)
    setup.run_json("--type-filter", "Patient?family=Secretname")  # matches nobody
    assert setup.run_json("--new")["resources"] == 3
    setup.run("--status")
    lines = _audit_lines(setup)
    paths = [(e["method"], e["path"].rsplit("/", 1)[-1], e["status"]) for e in lines]
    assert ("GET", "$export", 202) in paths
    assert ("GET", "$bulkdata-status", 202) in paths and ("GET", "$bulkdata-status", 200) in paths
    downloads = [e for e in lines if "/Binary/" in e["path"] or "/files/" in e["path"]]
    assert downloads and all(e["status"] == 200 and e["response_sha256"] for e in downloads)
    text = (setup.home / "audit" / "emr.jsonl").read_text()
    assert "Secretname" not in text and "?" not in text and "Bearer" not in text
    token = json.loads((setup.home / "tokens" / "emr.json").read_text())["system_access"]
    assert token["access_token"] not in text
    setup.run("--cancel")
    assert _audit_lines(setup)[-1]["method"] == "DELETE"


# -- a hostile or odd server ------------------------------------------------------------------


class Front:
    """An HTTP server on 127.0.0.1 that forwards every request to ``target`` (the sandbox),
    except that ``status`` (code, headers, body), when set, answers the status URL, and
    ``/files/<name>`` serves ``files[name]`` (bytes, or a callable writing to the handler).
    ``seen`` records (method, path, Authorization) of every request it gets."""

    def __init__(self, target: str | None = None) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        import httpx

        front = self
        self.target = target
        self.status: tuple[int, dict[str, str], bytes] | None = None
        self.files: dict[str, Any] = {}
        self.seen: list[tuple[str, str, str | None]] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, code: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(code)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                front.seen.append((self.command, self.path, self.headers.get("Authorization")))
                if self.path.startswith("/files/"):
                    content = front.files.get(self.path[len("/files/") :])
                    if callable(content):
                        content(self)
                    elif content is None:
                        self._answer(404, {}, b"")
                    else:
                        self._answer(200, {"Content-Type": "application/fhir+ndjson"}, content)
                    return
                if "$bulkdata-status" in self.path and front.status is not None:
                    self._answer(*front.status)
                    return
                if front.target is None:
                    self._answer(404, {}, b"")
                    return
                skip = {"content-length", "transfer-encoding", "connection"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                answer = httpx.request(
                    self.command, front.target + self.path, headers=headers, content=body
                )
                kept = {
                    k: v
                    for k, v in answer.headers.items()
                    if k.lower() not in skip | {"content-encoding"}
                }
                self._answer(answer.status_code, kept, answer.content)

            do_GET = do_POST = do_DELETE = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def fronted(export_setup: Callable[..., Setup]) -> Callable[..., tuple[Setup, Front]]:
    """Factory: an openemr-mode setup whose profile URL is a :class:`Front` of the sandbox."""

    def make(**options: Any) -> tuple[Setup, Front]:
        setup = export_setup("openemr", front=True, **options)
        return setup, setup.proxy  # type: ignore[attr-defined]

    return make


def _manifest(output: Any, **extra: Any) -> bytes:
    document = {
        "transactionTime": "2026-03-01T12:00:00Z",
        "request": "x",
        "requiresAccessToken": True,
        "output": output,
        "error": [],
        **extra,
    }
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"<html>not json</html>", "not a JSON object"),
        (_manifest({"url": "x", "type": "Patient"}), "'output' is not a list"),
        (b"[" * 100_000 + b"]" * 100_000, "not a JSON object"),
        (_manifest([{"url": "/files/a", "type": "../../etc"}]), "no valid resource type"),
        (_manifest([{"url": "/files/a", "type": "Patient"}] * 10_001), "more than 10000 files"),
        (_manifest([], error=["text"]), "error[0] is not an object"),
    ],
)
def test_an_odd_manifest_is_exit_5_in_one_line(
    fronted: Callable[..., tuple[Setup, Front]], body: bytes, expected: str
) -> None:
    setup, front = fronted(patients=1)
    front.status = (200, {"Content-Type": "application/json"}, body)
    result = setup.run()
    assert result.returncode == 5, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in setup.out.iterdir()) == [STATE]  # nothing else written


def test_odd_numbers_and_times_in_a_manifest_are_survived(
    fronted: Callable[..., tuple[Setup, Front]],
) -> None:
    setup, front = fronted(patients=1)
    line = b'{"resourceType":"Patient","id":"p1"}'
    front.files["p"] = line
    body = (
        b'{"transactionTime":{"date":"0001-01-01 00:00:00.000000","timezone_type":1,'
        b'"timezone":"+05:00"},"requiresAccessToken":true,"error":[],'
        b'"output":[{"url":"/files/p","type":"Patient","count":1e999}]}'
    )
    front.status = (200, {"Content-Type": "application/json", "Retry-After": "9" * 5000}, body)
    result = setup.run("--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["resources"] == 1 and summary["transaction_instant"] is None
    assert (setup.out / "Patient-1.ndjson").read_bytes() == line


@pytest.mark.parametrize("requires", [True, False])
@pytest.mark.slow
def test_credentials_never_go_to_another_host(
    fronted: Callable[..., tuple[Setup, Front]], requires: bool
) -> None:
    setup, front = fronted(patients=1)
    other = Front()  # another host the manifest names
    try:
        line = b'{"resourceType":"Patient","id":"p1"}'
        front.files["p"] = other.files["p"] = line
        output = [{"url": f"{other.url}/files/p", "type": "Patient"}]
        body = _manifest(output, requiresAccessToken=requires)
        front.status = (200, {"Content-Type": "application/json"}, body)
        result = setup.run()
        assert result.returncode == 0, result.stderr
        home_files = [s for s in front.seen if s[1].startswith("/files/")]
        if requires:  # fetched with its token from the profile's own host, never the other
            assert other.seen == []
            assert [auth.split()[0] for _, _, auth in home_files] == ["Bearer"]  # type: ignore[union-attr]
        else:  # fetched where the manifest says, with no token at all
            assert home_files == []
            assert other.seen == [("GET", "/files/p", None)]
    finally:
        other.close()


@pytest.mark.timing
@pytest.mark.slow
def test_ctrl_c_during_a_stalled_download_ends_at_once(
    fronted: Callable[..., tuple[Setup, Front]],
) -> None:
    setup, front = fronted(patients=1)

    def stall(handler: Any) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        handler.wfile.write(b'{"resourceType":"Patient"')
        handler.wfile.flush()
        time.sleep(40)

    front.files["slow"] = stall
    output = [{"url": "/files/slow", "type": "Patient"}]
    front.status = (200, {"Content-Type": "application/json"}, _manifest(output))
    process = setup.start()
    part = setup.out / "Patient-1.ndjson.part"
    wait_for(part.exists)  # opened once the answer's headers came; its bytes never finish
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    began = time.monotonic()
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert time.monotonic() - began < 10
    assert not part.exists()


@pytest.mark.slow
def test_retry_after_zero_is_not_polled_in_a_tight_loop(
    fronted: Callable[..., tuple[Setup, Front]],
) -> None:
    setup, front = fronted(patients=1)
    front.status = (202, {"Retry-After": "0", "X-Progress": "busy"}, b"")
    result = setup.run("--wait", "3")
    assert result.returncode == 6, result.stderr
    polls = [s for s in front.seen if "$bulkdata-status" in s[1]]
    assert 1 <= len(polls) <= 5


@pytest.mark.parametrize(
    "files",
    [
        [{"path": "../victim.ndjson", "kind": "output", "index": 0, "type": "Patient"}],
        [{"path": "/tmp/x.ndjson", "kind": "output", "index": 0, "type": "Patient"}],
        [1],
        "all",
    ],
)
@pytest.mark.slow
def test_a_damaged_state_file_is_refused_and_nothing_outside_dir_is_touched(
    export_setup: Callable[..., Setup], files: Any
) -> None:
    setup = export_setup("openemr", patients=1)
    setup.out.mkdir()
    victim = setup.out.parent / "victim.ndjson"
    victim.write_text("keep me")
    (victim.parent / "victim.ndjson.part").write_text("keep me too")
    for entry in files if isinstance(files, list) else []:
        if isinstance(entry, dict):
            entry.update(url="http://x/", done=False)
    state = {
        "version": 1,
        "state": "downloading",
        "status_url": "http://127.0.0.1:1/s",
        "request": {"level": "system", "types": [], "type_filter": []},
        "files": files,
    }
    (setup.out / STATE).write_text(json.dumps(state))
    for args in ((), ("--new",), ("--cancel",), ("--status",)):
        result = setup.run(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "is damaged" in result.stderr and "Traceback" not in result.stderr
    assert victim.read_text() == "keep me"
    assert (victim.parent / "victim.ndjson.part").read_text() == "keep me too"


def test_a_line_longer_than_the_cap_is_a_problem_and_not_held() -> None:
    from cwsctl.protocols.fhir.ndjson import NdjsonCheck

    check = NdjsonCheck("Patient", max_line=100)
    check.feed(b'{"resourceType":"Patient"}\n{"resourceType":"Patient","x":"')
    for _ in range(1000):
        check.feed(b"y" * 1000)
    assert len(check._pending) == 0
    check.feed(b'"}\n{"resourceType":"Patient"}')
    check.finish()
    assert check.lines == 3
    assert check.problem == "line 2 is longer than 100 bytes"


@pytest.mark.slow
def test_export_tokens_are_client_credentials_cached_apart_in_the_token_file(
    export_setup: Callable[..., Setup],
) -> None:
    setup = export_setup("openemr", patients=2)
    assert setup.run_json()["resources"] == 2
    path = setup.home / "tokens" / "emr.json"
    cache = json.loads(path.read_text())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = cache["system_access"]
    assert "system/*.$export" in first["scope"] and "access" not in cache
    # A person's sign-in in the same file is neither used nor disturbed by an export.
    cache["refresh_token"] = "a-person-s-refresh-token"
    path.write_text(json.dumps(cache))
    path.chmod(0o600)
    again = setup.run("--new")
    assert again.returncode == 0, again.stderr
    cache = json.loads(path.read_text())
    assert cache["refresh_token"] == "a-person-s-refresh-token"
    assert cache["system_access"]["access_token"] == first["access_token"]  # reused, not renewed
    assert first["access_token"] not in again.stderr + again.stdout

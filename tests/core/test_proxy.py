"""Proxies (issue 20 deliverable 2): HTTPS_PROXY/HTTP_PROXY/NO_PROXY are honoured through the
bounded transport, and a proxy never sees credentials.

``ConnectProxy`` is a tiny threaded proxy on 127.0.0.1 that records every byte a client sends
it: ``CONNECT host:port`` opens a blind tunnel (the TLS inside is the origin's), an absolute-form
request (``GET http://…``) is forwarded. The origin is an https server with a self-signed
certificate (trusted through SSL_CERT_FILE) that records the requests it gets, as an openEHR
server with bearer auth would; cwsctl runs as a real subprocess.
"""

from __future__ import annotations

import http.server
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.tls_server import self_signed_cert, serve_https

TOKEN = "bearer-s3cret-token-value"


@dataclass
class ConnectProxy:
    """A recording HTTP proxy on 127.0.0.1 (CONNECT tunnels and absolute-form forwarding)."""

    stall: bool = False  # read the request head, then never answer
    heads: list[str] = field(default_factory=list)  # each request head received, as text
    seen: bytearray = field(default_factory=bytearray)  # every byte any client sent us
    port: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ConnectProxy:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._spawn(self._accept)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(5)
        self._listener.close()

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._spawn(self._handle, conn)

    def _record(self, data: bytes) -> None:
        with self._lock:
            self.seen += data

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                self._record(data)
                head += data
            head, _, rest = head.partition(b"\r\n\r\n")
            self.heads.append(head.decode("latin-1"))
            if self.stall:
                while not self._stop.wait(0.1):
                    pass
                return
            method, target, _ = head.split(b"\r\n")[0].decode().split(" ", 2)
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                upstream = socket.create_connection((host, int(port)), timeout=10)
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:  # absolute form: forward the head (target made origin-form) and the rest
                from urllib.parse import urlsplit

                parts = urlsplit(target)
                upstream = socket.create_connection((parts.hostname, parts.port), timeout=10)
                line = f"{method} {parts.path or '/'}{'?' + parts.query if parts.query else ''}"
                lines = head.split(b"\r\n")
                upstream.sendall(b"\r\n".join([line.encode() + b" HTTP/1.1", *lines[1:]]))
                upstream.sendall(b"\r\n\r\n" + rest)
            self._relay(conn, upstream)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        with upstream:
            while not self._stop.is_set():
                ready, _, _ = select.select([client, upstream], [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        self._record(data)
                        upstream.sendall(data)
                    else:
                        client.sendall(data)


@dataclass
class Origin:
    url: str
    cert_file: Path
    requests: list[dict[str, str]]


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    """An https server on 127.0.0.1 (self-signed for 127.0.0.1) answering every GET with JSON
    and recording each request's path and headers."""
    cert_file, key_file = self_signed_cert(tmp_path_factory.mktemp("origin"), "127.0.0.1")
    requests: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with serve_https(Handler, cert_file, key_file) as url:
        yield Origin(url, cert_file, requests)


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    server = ConnectProxy().start()
    try:
        yield server
    finally:
        server.stop()


def run(home: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    clean = {**clean, "CWSCTL_HOME": str(home), **env}
    return subprocess.run(
        [sys.executable, "-m", "cwsctl", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=clean,
        timeout=60,
    )


@pytest.fixture
def bearer_profile(cwsctl_home: Path, origin: Origin) -> dict[str, str]:
    """An openehr bearer profile at the https origin; the env that trusts its certificate."""
    env = {"SSL_CERT_FILE": str(origin.cert_file), "CWSCTL_TOKEN": TOKEN}
    init = ["profile", "init", "ehr", "--kind", "openehr", "--url", origin.url, "--auth", "bearer"]
    done = run(cwsctl_home, env, *init, "--default")
    assert done.returncode == 0, done.stderr
    origin.requests.clear()
    return env


def test_https_goes_through_the_proxy_in_a_tunnel_and_the_proxy_never_sees_the_token(
    cwsctl_home, origin, proxy, bearer_profile
):
    env = {**bearer_profile, "HTTPS_PROXY": proxy.url}
    done = run(cwsctl_home, env, "-v", "request", "GET", "/ehr")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"ok": True}
    assert f"* proxy: {proxy.url} (CONNECT tunnel)" in done.stderr
    port = origin.url.rsplit(":", 1)[1]
    assert [h.split("\r\n")[0] for h in proxy.heads] == [f"CONNECT 127.0.0.1:{port} HTTP/1.1"]
    assert "authorization" not in proxy.heads[0].lower()
    assert TOKEN.encode() not in bytes(proxy.seen) and b"Bearer" not in bytes(proxy.seen)
    assert origin.requests[-1]["authorization"] == f"Bearer {TOKEN}"  # it arrived, inside TLS


def test_no_proxy_bypasses_the_proxy(cwsctl_home, origin, proxy, bearer_profile):
    env = {**bearer_profile, "HTTPS_PROXY": proxy.url, "NO_PROXY": "127.0.0.1"}
    done = run(cwsctl_home, env, "-v", "request", "GET", "/ehr")
    assert done.returncode == 0, done.stderr
    assert "* proxy: direct (NO_PROXY)" in done.stderr
    assert proxy.heads == [] and len(origin.requests) == 1


@pytest.mark.timing
@pytest.mark.slow
def test_the_deadline_holds_through_a_stalling_proxy(cwsctl_home, origin, proxy, bearer_profile):
    proxy.stall = True
    started = time.monotonic()
    done = run(
        cwsctl_home,
        {**bearer_profile, "HTTPS_PROXY": proxy.url},
        "request",
        "GET",
        "/ehr",
        "--timeout",
        "1.5",
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 6, done.stderr
    assert elapsed < 1.5 + 6, elapsed
    assert len(proxy.heads) >= 1 and proxy.heads[0].startswith("CONNECT ")
    assert origin.requests == []


def test_plain_http_is_never_handed_to_a_remote_proxy(cwsctl_home, hostile_server):
    """Over plain http a proxy gets the whole request, credentials included: refused (exit 2)
    before anything is sent, unless the proxy is on this machine."""
    init = ["profile", "init", "c", "--kind", "openehr", "--url", hostile_server.url]
    assert run(cwsctl_home, {}, *init, "--auth", "bearer", "--default").returncode == 0
    env = {"CWSCTL_TOKEN": TOKEN, "HTTP_PROXY": "http://192.0.2.1:3128"}
    done = run(cwsctl_home, env, "request", "GET", "/ehr")
    assert done.returncode == 2, done.stderr
    assert "192.0.2.1:3128" in done.stderr and "NO_PROXY" in done.stderr
    assert TOKEN not in done.stderr
    assert hostile_server.connections == []


def test_plain_http_through_a_loopback_proxy_is_forwarded(cwsctl_home, hostile_server, proxy):
    hostile_server.behaviour = "unsigned"  # a 200 JSON answer; openehr answers are not signed
    init = ["profile", "init", "c", "--kind", "openehr", "--url", hostile_server.url]
    assert run(cwsctl_home, {}, *init, "--default").returncode == 0
    done = run(cwsctl_home, {"HTTP_PROXY": proxy.url}, "-v", "request", "GET", "/ehr")
    assert done.returncode == 0, done.stderr
    assert f"* proxy: {proxy.url} (plain http" in done.stderr
    assert proxy.heads[0].startswith(f"GET {hostile_server.url}/ehr HTTP/1.1")


def test_doctor_names_the_proxy(cwsctl_home, origin, proxy, bearer_profile):
    env = {**bearer_profile, "HTTPS_PROXY": proxy.url}
    done = run(cwsctl_home, env, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["proxy"]["detail"] == f"{proxy.url} (CONNECT tunnel)", done.stdout
    assert checks["reach"]["ok"], checks
    direct = run(cwsctl_home, bearer_profile, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(direct.stdout)["checks"]}
    assert checks["proxy"]["detail"] == "direct (no proxy variable set)"

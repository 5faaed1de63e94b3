"""The sandbox under a hostile client, over raw sockets on 127.0.0.1.

An endless request body gets a 413 as soon as it passes the limit and costs the server no
memory; a client that never finishes its request head (or body), or never sends a byte, is
disconnected after the request timeout; hundreds of idle connections do not stop a real client
from being served. Memory is measured on a sandbox in its own process (``/proc/PID/status``), so
the test's own buffers do not count; the timeouts on an in-process sandbox with a 0.5 s request
timeout, so the file stays fast.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cwsctl.protocols.cws_signature import TrustedKey
from cwsctl.targets.cws.verification import verify_response
from tests.sandbox_plugin import SandboxUser

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from cwsctl.sandbox.envelope import DRAIN_LIMIT_BYTES, MAX_BODY_BYTES
from cwsctl.sandbox.faults import Faults
from cwsctl.sandbox.server import KEEP_ALIVE_S, MAX_HEAD_BYTES, REQUEST_TIMEOUT_S
from cwsctl.targets.cws.sandbox.server import SandboxServer
from cwsctl.targets.cws.sandbox.store import register_client_key

MiB = 1024 * 1024
REQUEST_TIMEOUT = 0.5
#: Allowance on top of a deadline before calling it a hang (a loaded 2-CPU CI machine).
SLACK = 2.0
#: What an endless sender may get into the kernel's socket buffers on both ends (loopback
#: autotuning goes up to tcp_rmem's max, 32 MiB here) on top of what the server reads.
SOCKET_BUFFERS = 48 * MiB
CHUNK = b"x" * 65536
CHUNKED_PIECE = b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n"

needs_proc = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads memory from /proc"
)


# -- servers ------------------------------------------------------------------------------------


def _copy_server_key(source: Path, data_dir: Path) -> None:
    data_dir.mkdir(mode=0o700, parents=True)
    shutil.copyfile(source / "server.pem", data_dir / "server.pem")
    os.chmod(data_dir / "server.pem", 0o600)


@pytest.fixture
def quick_sandbox(tmp_path, sandbox_server, rsa2048) -> Iterator[SandboxServer]:
    """An in-process sandbox whose clients get 0.5 s to send a request head (then its body)."""
    data_dir = tmp_path / "quick-sandbox"
    _copy_server_key(sandbox_server.data_dir, data_dir)
    server = SandboxServer(
        data_dir, key_bits=2048, faults=Faults(), request_timeout=REQUEST_TIMEOUT
    )
    server.register_key("tester", rsa2048.public_key())
    with server:
        yield server


@dataclass
class ServedSandbox:
    """``cwsctl sandbox serve`` running in a child process."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    trusted: TrustedKey
    user: SandboxUser

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def memory_kib(self, field: str) -> int:
        """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of the server, in KiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith(field + ":"))
        return int(line.split()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory, sandbox_server, rsa2048) -> Iterator[ServedSandbox]:
    """`cwsctl sandbox serve --port 0` in a child process, with ``tester`` registered."""
    root = tmp_path_factory.mktemp("served")
    data_dir = root / "data"
    _copy_server_key(sandbox_server.data_dir, data_dir)
    register_client_key(data_dir, "tester", rsa2048.public_key())
    env = {k: v for k, v in os.environ.items() if not k.startswith("CWSCTL_")}
    env["CWSCTL_HOME"] = str(root / "home")
    process = subprocess.Popen(
        [sys.executable, "-m", "cwsctl", "sandbox", "serve", "--port", "0",
         "--key-bits", "2048", "--data-dir", str(data_dir), "--json"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        announced = b""  # the --json document (pretty-printed) comes once it listens
        while True:
            line = process.stdout.readline()
            assert line, f"the sandbox exited before it was ready: {announced!r}"
            announced += line
            if line.rstrip() == b"}":
                break
        url = httpx.URL(json.loads(announced)["url"])
        assert url.port is not None
        yield ServedSandbox(
            process,
            url.host,
            url.port,
            TrustedKey("coremr", sandbox_server.public_key_pem),
            SandboxUser("tester", rsa2048),
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- a raw HTTP client ----------------------------------------------------------------------------


def connect(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port), timeout=10)


def read_response(sock: socket.socket, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One whole response: status, lower-cased headers, body (by Content-Length, or to EOF)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"connection closed before a whole response head: {data!r}"
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" not in headers:  # uvicorn's own 400: the body ends with the connection
        try:
            while piece := sock.recv(65536):
                body += piece
        except ConnectionResetError:  # closed with our unread request bytes in its buffer
            pass
        return int(status_line.split()[1]), headers, body
    length = int(headers["content-length"])
    while len(body) < length:
        piece = sock.recv(65536)
        assert piece, "connection closed inside the response body"
        body += piece
    return int(status_line.split()[1]), headers, body


def seconds_until_closed(sock: socket.socket, limit: float) -> float:
    """Wait (reading and discarding) until the peer closes; seconds taken, or fail at ``limit``."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for more than {limit}s")
    return time.monotonic() - started


def pump_until_closed(sock: socket.socket, piece: bytes, *, limit: int, seconds: float) -> int:
    """Send ``piece`` over and over until the server closes; bytes sent (fail at a bound)."""
    sock.setblocking(False)
    sent = 0
    started = time.monotonic()
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while sent < limit and time.monotonic() - started < seconds:
            for _, events in selector.select(timeout=0.5):
                try:
                    if events & selectors.EVENT_READ and not sock.recv(65536):
                        return sent
                    if events & selectors.EVENT_WRITE:
                        sent += sock.send(piece)
                except (BrokenPipeError, ConnectionResetError):
                    return sent
    pytest.fail(f"the server was still reading after {sent} bytes and {seconds}s")


def signed_get(url: str, user: SandboxUser, trusted: TrustedKey) -> float:
    """A real client's ``GET /ws/`` on a new connection: must be 200 and verify; its latency."""
    started = time.monotonic()
    response = httpx.get(url + "/ws/", headers=user.headers(b""), timeout=10)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    verify_response(response.content, response.headers.get("authorization"), [trusted])
    return elapsed


def trickle(sock: socket.socket, data: bytes, interval: float) -> Callable[[], None]:
    """A sender for ``data`` one byte per ``interval`` (stops when the peer is gone)."""

    def run() -> None:
        for byte in data:
            try:
                sock.send(bytes([byte]))
            except OSError:
                return
            time.sleep(interval)

    return run


# -- endless bodies: 413 at the limit, bounded memory, then closed ------------------------------


@needs_proc
def test_endless_chunked_body_is_413_at_the_limit_in_flat_memory(served):
    signed_get(served.url, served.user, served.trusted)  # warm the request path up
    peak_before = served.memory_kib("VmHWM")
    sock = connect(served.host, served.port)
    with sock:
        sock.sendall(
            b"POST /ws/patients/ HTTP/1.1\r\nHost: sandbox\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        # Just past the limit, then nothing: the answer must not wait for the body to end.
        for _ in range(MAX_BODY_BYTES // len(CHUNK) + 1):
            sock.sendall(CHUNKED_PIECE)
        status, headers, body = read_response(sock)
        assert status == 413
        assert headers["connection"] == "close"
        verify_response(body, headers.get("authorization"), [served.trusted])
        # Then the body goes on and on: the server drains a bounded amount and hangs up.
        sent = pump_until_closed(sock, CHUNKED_PIECE, limit=1024 * MiB, seconds=20)
    assert sent < DRAIN_LIMIT_BYTES + SOCKET_BUFFERS
    growth_mib = (served.memory_kib("VmHWM") - peak_before) / 1024
    assert growth_mib < 50, f"the sandbox's peak memory grew by {growth_mib:.0f} MiB"
    signed_get(served.url, served.user, served.trusted)  # and it still serves


@needs_proc
def test_huge_content_length_is_413_before_any_body_byte(served):
    peak_before = served.memory_kib("VmHWM")
    sock = connect(served.host, served.port)
    with sock:
        sock.sendall(
            b"POST /ws/patients/ HTTP/1.1\r\nHost: sandbox\r\nContent-Length: 1099511627776\r\n\r\n"
        )
        status, headers, body = read_response(sock)
        assert status == 413
        assert f"larger than {MAX_BODY_BYTES} bytes" in json.loads(body)["error"]
        assert headers["connection"] == "close"
        sent = pump_until_closed(sock, CHUNK, limit=1024 * MiB, seconds=20)
    assert sent < DRAIN_LIMIT_BYTES + SOCKET_BUFFERS
    growth_mib = (served.memory_kib("VmHWM") - peak_before) / 1024
    assert growth_mib < 50, f"the sandbox's peak memory grew by {growth_mib:.0f} MiB"


def test_finite_body_over_the_limit_still_reads_the_413(quick_sandbox, sandbox_user):
    # A client that sends its whole (too large) body before reading, as httpx does, must get
    # the answer, not a connection reset.
    body = b" " * (3 * MiB)
    response = httpx.post(
        quick_sandbox.url + "/ws/patients/",
        content=body,
        headers=sandbox_user.headers(body),
        timeout=10,
    )
    assert response.status_code == 413
    assert response.headers["connection"] == "close"


# -- slow and silent clients: disconnected after the request timeout -----------------------------


@pytest.mark.timing
def test_request_head_never_finished_is_disconnected(quick_sandbox):
    sock = connect(quick_sandbox.host, quick_sandbox.port)
    with sock:
        # One byte every 0.1 s for 10 s: the deadline is not reset by each byte.
        head = b"GET /ws/ HTTP/1.1\r\nHost: sandbox\r\nX-Slow: " + b"a" * 100
        thread = threading.Thread(target=trickle(sock, head, 0.1), daemon=True)
        thread.start()
        elapsed = seconds_until_closed(sock, REQUEST_TIMEOUT + SLACK)
    assert elapsed >= REQUEST_TIMEOUT * 0.8
    thread.join(15)


@pytest.mark.timing
def test_silent_connection_is_disconnected(quick_sandbox):
    sock = connect(quick_sandbox.host, quick_sandbox.port)
    with sock:
        elapsed = seconds_until_closed(sock, REQUEST_TIMEOUT + SLACK)
    assert elapsed >= REQUEST_TIMEOUT * 0.8


@pytest.mark.timing
def test_next_request_head_never_finished_is_disconnected(quick_sandbox, rsa2048):
    user = SandboxUser("tester", rsa2048)
    sock = connect(quick_sandbox.host, quick_sandbox.port)
    with sock:
        sock.sendall(
            f"GET /ws/ HTTP/1.1\r\nHost: sandbox\r\nAuthorization: {user.authorization(b'')}"
            "\r\n\r\n".encode("ascii")
        )
        status, _, _ = read_response(sock)
        assert status == 200  # a keep-alive connection: the clock restarts after the answer
        sock.sendall(b"GET /ws/ HTTP/1.1\r\n")
        elapsed = seconds_until_closed(sock, REQUEST_TIMEOUT + SLACK)
    assert elapsed >= REQUEST_TIMEOUT * 0.5


@pytest.mark.timing
def test_request_body_never_finished_is_disconnected(quick_sandbox, capfd):
    sock = connect(quick_sandbox.host, quick_sandbox.port)
    with sock:
        sock.sendall(
            b"POST /ws/patients/ HTTP/1.1\r\nHost: sandbox\r\nContent-Length: 100\r\n\r\n{"
        )
        elapsed = seconds_until_closed(sock, REQUEST_TIMEOUT + SLACK)
    assert elapsed >= REQUEST_TIMEOUT * 0.8
    err = capfd.readouterr().err  # the operator is told why, without the request's bytes
    assert f"request body not received within {REQUEST_TIMEOUT:g}s" in err
    assert "{" not in err


def test_request_head_over_the_size_cap_is_400(quick_sandbox):
    sock = connect(quick_sandbox.host, quick_sandbox.port)
    with sock:
        sock.sendall(b"GET /ws/ HTTP/1.1\r\nHost: sandbox\r\nX-Flood: ")
        try:
            for _ in range(2 * MAX_HEAD_BYTES // 1024):
                sock.sendall(b"a" * 1024)
        except OSError:
            pass  # the server may hang up while we are still sending
        status, headers, _ = read_response(sock)
        assert status == 400
        assert headers["connection"] == "close"


@pytest.mark.timing
def test_a_slow_but_timely_request_is_served(quick_sandbox, rsa2048):
    user = SandboxUser("tester", rsa2048)
    sock = connect(quick_sandbox.host, quick_sandbox.port)
    with sock:
        request = (
            f"GET /ws/ HTTP/1.1\r\nHost: sandbox\r\nAuthorization: {user.authorization(b'')}"
            "\r\n\r\n".encode("ascii")
        )
        for part in (request[:10], request[10:]):  # in two pieces, well within the deadline
            sock.sendall(part)
            time.sleep(REQUEST_TIMEOUT / 4)
        status, _, _ = read_response(sock)
    assert status == 200


# -- many idle connections do not lock others out -------------------------------------------


@pytest.mark.timing
def test_hundreds_of_idle_connections_do_not_block_a_real_client(sandbox, sandbox_user):
    idle: list[socket.socket] = []
    try:
        for n in range(300):
            sock = connect(sandbox.host, sandbox.port)
            idle.append(sock)
            if n % 3 == 1:  # a head never finished
                sock.sendall(b"GET /ws/ HTTP/1.1\r\nHost: sandbox\r\n")
            elif n % 3 == 2:  # a body never finished: a request task waiting on it
                sock.sendall(b"POST /ws/patients/ HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
        latency = signed_get(sandbox.url, sandbox_user, sandbox.trusted_key)
        assert latency < 5.0, f"a real request took {latency:.2f}s with 300 idle connections"
        # the idle connections are still open: the server did not get its way by dropping them
        idle[0].setblocking(False)
        with pytest.raises(BlockingIOError):
            idle[0].recv(1)
    finally:
        for sock in idle:
            sock.close()


# -- the limits are the ones --help states ------------------------------------------------------


def test_serve_help_states_the_limits_in_force(cli):
    result = cli("sandbox", "serve", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert f"body over {MAX_BODY_BYTES // MiB} MiB gets 413" in text
    assert f"at most {DRAIN_LIMIT_BYTES // MiB} MiB more" in text
    assert f"over {MAX_HEAD_BYTES // 1024} KiB gets 400" in text
    assert f"has {REQUEST_TIMEOUT_S:g} s to send a request head" in text
    assert f"then {REQUEST_TIMEOUT_S:g} s more for the body" in text
    assert f"closed {KEEP_ALIVE_S} s after its last answer" in text

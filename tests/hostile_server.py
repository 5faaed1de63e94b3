"""A hostile HTTP/1.1 server for tests: raw sockets on 127.0.0.1, one misbehaviour per answer.

``HostileServer`` reads each request completely, then answers it with the behaviour named by its
``behaviour`` attribute (settable while it runs). Every answer ends with the connection closed, so
each request gets its own connection and its own record in ``server.connections``.

Behaviours (see ``BEHAVIOURS``):

- ``signed``: a complete, correctly signed 200 (the control case).
- ``slow_complete``: the same answer, its head and body dribbled out over ~1.2 s.
- ``unsigned``: a well-formed 200 with a JSON body and no ``Authorization`` header.
- ``gzip``: a signed answer sent with ``Content-Encoding: gzip``.
- ``endless_chunked``: ``Transfer-Encoding: chunked`` and chunks that never end.
- ``endless_close``: no length at all (close-delimited) and bytes that never end.
- ``trickle``: status line and headers, then one body byte every ``trickle_interval`` seconds.
- ``not_http``: an ``ICY 200 OK`` status line (a Shoutcast server), then data.
- ``ssh_banner``: an SSH server's banner line, then silence (as a real sshd waits).
- ``header_flood_big``: one 1 MiB header.
- ``header_flood_many``: ``flood_headers`` (10,000) tiny headers: under h11's 100 KiB head limit.
- ``header_flood_wide``: 10,000 longer headers (~290 KiB): over h11's head limit.
- ``bad_chunked``: ``Transfer-Encoding: chunked`` with a chunk size that is not hex.
- ``reset_mid_body``: ``Content-Length: 65536``, 1,000 bytes, then an RST (SO_LINGER 0).
- ``short_close``: ``Content-Length: 65536``, 1,000 bytes, then a clean close (FIN).
- ``short_stall``: ``Content-Length: 65536``, 1,000 bytes, then silence.
- ``scripted``: whatever ``script(request)`` returns, an :class:`Answer` (raw status line, extra
  headers, body, signed or not): servers that answer each path differently, with any reason
  phrase, header value or body (the hostile-terminal catalogue's control sequences; redirects,
  error answers with hostile bodies).
- ``proxy``: forward the request to ``upstream`` (host, port) and relay the answer byte for
  byte, except answers to ``POST /ws/patients/`` whose row's ``external_id`` is a key of
  ``mangle``: those get the upstream's real head and then ``endless`` (the real body, then bytes
  without end), ``trickle`` (the real body one byte at a time) or ``reset`` (half the real body,
  then an RST). The upstream has acted on the request either way.

The server bounds itself: request heads and bodies have size limits and read timeouts, every
"endless" or "forever" loop stops when the client goes away, at ``byte_limit`` bytes, after
``time_limit`` seconds or when the server stops. Waits block in ``select`` (no busy loop). ``stop()``
closes the listener and shuts every open connection down, and joins every thread.

The ``hostile_server`` fixture starts one per test (``server.url``; ``server.signer_key`` is the
key its signed answers use, which a test pins as the ``coremr`` key).
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from cwsctl.core import keys
from cwsctl.protocols import cws_signature as signing
from cwsctl.protocols.cws_signature import Algorithm, AuthorizationHeader

SERVER_SIGNER = "coremr"
DEFAULT_BODY = b'{"service": "hostile", "ok": true, "note": "caf\xc3\xa9 \\u00e9"}'

MAX_REQUEST_HEAD = 64 * 1024
MAX_REQUEST_BODY = 16 * 1024 * 1024
MAX_UPSTREAM_ANSWER = 16 * 1024 * 1024
IO_TIMEOUT = 10.0  # one socket read or write by the server
CHUNK = 64 * 1024


class ClientGone(Exception):
    """The client closed or reset its connection (or the server is stopping)."""


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


@dataclass
class ConnectionRecord:
    """What happened on one accepted connection (times from ``time.monotonic``)."""

    accepted_at: float
    behaviour: str = ""
    request: Request | None = None
    bytes_sent: int = 0
    trickled: int = 0  # bytes sent one at a time by a trickle
    client_gone_at: float | None = None  # when the server saw the client close or reset
    ended_at: float | None = None
    end: str = ""  # why the handler stopped: "done", "client gone", "byte limit", ...

    @property
    def client_lasted(self) -> float | None:
        """Seconds from accept until the client went away (None if it never did)."""
        return None if self.client_gone_at is None else self.client_gone_at - self.accepted_at


@dataclass
class Answer:
    """One answer of the ``scripted`` behaviour; the status line and headers are written as
    latin-1 (so ``"\\xc2\\x9b"`` sends the two bytes of U+009B's UTF-8)."""

    status_line: str = "HTTP/1.1 200 OK"
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    content_type: str = "application/json"
    signed: bool = True


@dataclass
class HostileServer:
    """A raw-socket HTTP/1.1 server whose answers misbehave on purpose (see module docstring)."""

    signer_key: rsa.RSAPrivateKey
    behaviour: str = "signed"
    body: bytes = DEFAULT_BODY
    trickle_interval: float = 1.0
    byte_limit: int = 512 * 1024 * 1024  # an "endless" body stops here
    time_limit: float = 60.0  # a "forever" behaviour stops after this long
    flood_headers: int = 10_000
    upstream: tuple[str, int] | None = None
    mangle: dict[str, str] = field(default_factory=dict)
    script: Callable[[Request], Answer] | None = None  # the ``scripted`` behaviour's answers
    connections: list[ConnectionRecord] = field(default_factory=list)
    # What the proxy forwarded: (method, target, external_id or None, mangling or None).
    proxy_log: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._handlers: list[threading.Thread] = []
        self._open: set[socket.socket] = set()

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HostileServer:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(0.2)  # accept() wakes up to notice stop()
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="hostile-accept", daemon=True
        )
        self._acceptor.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, shut every open connection down, join every thread."""
        self._stop.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for conn in list(self._open):
                with contextlib.suppress(OSError):  # already closed by its handler
                    conn.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked in send or recv
            handlers = list(self._handlers)
        deadline = time.monotonic() + timeout
        for thread in handlers:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in handlers if t.is_alive()]
        assert not alive, f"hostile server threads still running after stop: {alive}"

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def answered(self) -> list[ConnectionRecord]:
        """Connections that carried a complete request."""
        with self._lock:
            return [c for c in self.connections if c.request is not None]

    # -- plumbing -------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            record = ConnectionRecord(accepted_at=time.monotonic())
            thread = threading.Thread(
                target=self._handle,
                args=(conn, record),
                name=f"hostile-conn-{len(self.connections)}",
                daemon=True,
            )
            with self._lock:
                self.connections.append(record)
                self._handlers.append(thread)
                self._open.add(conn)
            thread.start()

    def _handle(self, conn: socket.socket, record: ConnectionRecord) -> None:
        conn.settimeout(IO_TIMEOUT)
        try:
            request = _read_request(conn)
            if request is None:
                record.end = "no request"
                return
            record.request = request
            record.behaviour = self.behaviour
            BEHAVIOURS[record.behaviour](self, conn, request, record)
            record.end = record.end or "done"
        except ClientGone:
            record.client_gone_at = record.client_gone_at or time.monotonic()
            record.end = record.end or "client gone"
        except OSError as exc:
            record.end = record.end or f"socket error: {exc}"
        finally:
            record.ended_at = time.monotonic()
            with self._lock:
                self._open.discard(conn)
            conn.close()

    def send(self, conn: socket.socket, record: ConnectionRecord, data: bytes) -> None:
        """Send all of ``data``; raise ClientGone if the client went away or the server stops."""
        if self._stop.is_set():
            raise ClientGone
        try:
            conn.sendall(data)
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as exc:
            record.client_gone_at = time.monotonic()
            raise ClientGone from exc
        except OSError as exc:  # shut down by stop()
            raise ClientGone from exc
        record.bytes_sent += len(data)

    def wait(self, conn: socket.socket, record: ConnectionRecord, seconds: float) -> None:
        """Sleep ``seconds`` unless the client goes away first (then raise ClientGone)."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            if self._stop.is_set():
                raise ClientGone
            readable, _, _ = select.select([conn], [], [], min(left, 0.25))
            if readable:
                try:
                    data = conn.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    record.client_gone_at = time.monotonic()
                    raise ClientGone

    def stall(self, conn: socket.socket, record: ConnectionRecord) -> None:
        """Say nothing until the client goes away (at most ``time_limit`` seconds)."""
        self.wait(conn, record, self.time_limit)
        record.end = "time limit"

    def endless(
        self, conn: socket.socket, record: ConnectionRecord, piece: Callable[[int], bytes]
    ) -> None:
        """Send ``piece(n)`` after ``piece(n)`` until the client goes or a limit is reached."""
        started = time.monotonic()
        n = 0
        while record.bytes_sent < self.byte_limit:
            if time.monotonic() - started > self.time_limit:
                record.end = "time limit"
                return
            self.send(conn, record, piece(n))
            n += 1
        record.end = "byte limit"

    def trickle(self, conn: socket.socket, record: ConnectionRecord, data: bytes) -> None:
        """One byte of ``data`` every ``trickle_interval`` seconds (bounded by ``time_limit``)."""
        started = time.monotonic()
        for i in range(len(data)):
            if time.monotonic() - started > self.time_limit:
                record.end = "time limit"
                return
            self.send(conn, record, data[i : i + 1])
            record.trickled += 1
            self.wait(conn, record, self.trickle_interval)

    def reset(self, conn: socket.socket) -> None:
        """Close with an RST instead of a FIN."""
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    def signature_header(self, body: bytes) -> str:
        signature = signing.sign(self.signer_key, body, Algorithm.SHA256)
        return AuthorizationHeader(Algorithm.SHA256, SERVER_SIGNER, signature).format()


# -- requests ---------------------------------------------------------------------------------
def _read_request(conn: socket.socket) -> Request | None:
    """Read one request head and its Content-Length body; None if the client sent nothing."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_REQUEST_HEAD:
            raise ClientGone("request head too large")
        data = conn.recv(65536)
        if not data:
            if buffer:
                raise ClientGone("client closed mid-request")
            return None
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    if length > MAX_REQUEST_BODY:
        raise ClientGone("request body too large")
    while len(rest) < length:
        data = conn.recv(min(65536, length - len(rest)))
        if not data:
            raise ClientGone("client closed mid-body")
        rest += data
    return Request(method, target, headers, rest[:length])


def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [status, *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- behaviours -------------------------------------------------------------------------------
Behaviour = Callable[[HostileServer, socket.socket, Request, ConnectionRecord], None]


def _signed_head(server: HostileServer, body: bytes, *extra: tuple[str, str]) -> bytes:
    return _head(
        "HTTP/1.1 200 OK",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Authorization", server.signature_header(body)),
            ("Connection", "close"),
            *extra,
        ],
    )


def signed(server: HostileServer, conn, request, rec) -> None:
    server.send(conn, rec, _signed_head(server, server.body) + server.body)


def slow_complete(server: HostileServer, conn, request, rec) -> None:
    answer = _signed_head(server, server.body) + server.body
    pieces = 6
    size = -(-len(answer) // pieces)
    for i in range(0, len(answer), size):
        server.send(conn, rec, answer[i : i + size])
        server.wait(conn, rec, 0.2)


def unsigned(server: HostileServer, conn, request, rec) -> None:
    head = _head(
        "HTTP/1.1 200 OK",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(server.body))),
            ("Connection", "close"),
        ],
    )
    server.send(conn, rec, head + server.body)


def gzip_encoded(server: HostileServer, conn, request, rec) -> None:
    import gzip

    body = gzip.compress(server.body)
    server.send(conn, rec, _signed_head(server, body, ("Content-Encoding", "gzip")) + body)


def endless_chunked(server: HostileServer, conn, request, rec) -> None:
    server.send(
        conn,
        rec,
        _head(
            "HTTP/1.1 200 OK",
            [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")],
        ),
    )
    chunk = b"%x\r\n" % CHUNK + b"a" * CHUNK + b"\r\n"
    server.endless(conn, rec, lambda n: chunk)


def endless_close(server: HostileServer, conn, request, rec) -> None:
    server.send(
        conn,
        rec,
        _head("HTTP/1.1 200 OK", [("Content-Type", "application/json"), ("Connection", "close")]),
    )
    block = b"b" * CHUNK
    server.endless(conn, rec, lambda n: block)


def trickle(server: HostileServer, conn, request, rec) -> None:
    body = b"[" + b"1," * 2048 + b"1]"
    head = _head(
        "HTTP/1.1 200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    server.send(conn, rec, head)
    server.trickle(conn, rec, body)


def not_http(server: HostileServer, conn, request, rec) -> None:
    server.send(conn, rec, b"ICY 200 OK\r\nicy-name: hostile radio\r\n\r\n")
    block = b"\xff\xfb" * 512
    server.endless(conn, rec, lambda n: block)


def ssh_banner(server: HostileServer, conn, request, rec) -> None:
    server.send(conn, rec, b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n")
    server.stall(conn, rec)


def header_flood_big(server: HostileServer, conn, request, rec) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Flood: "
    server.send(conn, rec, head)
    server.send(conn, rec, b"f" * (1024 * 1024))
    server.send(conn, rec, b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")


def _flood(server: HostileServer, conn, rec, header: Callable[[int], str]) -> None:
    body = server.body
    lines = ["HTTP/1.1 200 OK", "Content-Type: application/json"]
    lines += [header(i) for i in range(server.flood_headers)]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    server.send(conn, rec, ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body)


def header_flood_many(server: HostileServer, conn, request, rec) -> None:
    _flood(server, conn, rec, lambda i: f"x:{i % 10}")  # 5 bytes a line: ~50 KiB in all


def header_flood_wide(server: HostileServer, conn, request, rec) -> None:
    _flood(server, conn, rec, lambda i: f"X-Flood-{i:05d}: {'v' * 12}")  # ~290 KiB


def bad_chunked(server: HostileServer, conn, request, rec) -> None:
    head = _head(
        "HTTP/1.1 200 OK",
        [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")],
    )
    server.send(conn, rec, head + b"zz\r\n" + b"{}" * 40 + b"\r\n0\r\n\r\n")
    server.stall(conn, rec)


def _short(server: HostileServer, conn, rec) -> None:
    head = _head(
        "HTTP/1.1 200 OK",
        [("Content-Type", "application/json"), ("Content-Length", "65536")],
    )
    server.send(conn, rec, head + b"[" + b"0," * 500)


def reset_mid_body(server: HostileServer, conn, request, rec) -> None:
    _short(server, conn, rec)
    server.wait(conn, rec, 0.1)  # let the head arrive before the RST
    rec.end = "reset"
    server.reset(conn)


def short_close(server: HostileServer, conn, request, rec) -> None:
    _short(server, conn, rec)
    rec.end = "closed early"


def short_stall(server: HostileServer, conn, request, rec) -> None:
    _short(server, conn, rec)
    server.stall(conn, rec)


def scripted(server: HostileServer, conn, request, rec) -> None:
    assert server.script is not None, "set server.script for the scripted behaviour"
    answer = server.script(request)
    headers = [("Content-Type", answer.content_type), ("Content-Length", str(len(answer.body)))]
    if answer.signed:
        headers.append(("Authorization", server.signature_header(answer.body)))
    headers += [("Connection", "close"), *answer.headers]
    server.send(conn, rec, _head(answer.status_line, headers) + answer.body)


# -- proxy ------------------------------------------------------------------------------------
def proxy(server: HostileServer, conn, request, rec) -> None:
    assert server.upstream is not None, "set server.upstream for the proxy behaviour"
    answer = _forward(server.upstream, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    external_id = None
    if request.method == "POST" and request.target.startswith("/ws/patients"):
        try:
            external_id = json.loads(request.body).get("external_id")
        except ValueError:
            external_id = None
    mangling = server.mangle.get(external_id) if external_id else None
    server.proxy_log.append((request.method, request.target, external_id, mangling))
    if mangling is None:
        server.send(conn, rec, answer)
    elif mangling == "endless":
        kept = [
            line
            for line in head.split(b"\r\n")
            if not line.lower().startswith((b"content-length:", b"connection:"))
        ]
        server.send(conn, rec, b"\r\n".join(kept) + b"\r\nconnection: close\r\n\r\n" + body)
        block = b" " * CHUNK
        server.endless(conn, rec, lambda n: block)
    elif mangling == "trickle":
        server.send(conn, rec, head + b"\r\n\r\n")
        server.trickle(conn, rec, body)
    elif mangling == "reset":
        server.send(conn, rec, head + b"\r\n\r\n" + body[: len(body) // 2])
        server.wait(conn, rec, 0.1)
        rec.end = "reset"
        server.reset(conn)
    else:
        raise AssertionError(f"unknown mangling {mangling!r}")


def _forward(upstream: tuple[str, int], request: Request) -> bytes:
    """Send ``request`` to ``upstream`` with ``Connection: close``; return its raw answer."""
    headers = {k: v for k, v in request.headers.items() if k not in ("connection", "host")}
    lines = [f"{request.method} {request.target} HTTP/1.1", f"host: {upstream[0]}:{upstream[1]}"]
    lines += [f"{k}: {v}" for k, v in headers.items()] + ["connection: close"]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + request.body
    with socket.create_connection(upstream, timeout=IO_TIMEOUT) as up:
        up.sendall(raw)
        answer = b""
        while len(answer) <= MAX_UPSTREAM_ANSWER:
            data = up.recv(65536)
            if not data:
                break
            answer += data
    return answer


BEHAVIOURS: dict[str, Behaviour] = {
    "signed": signed,
    "slow_complete": slow_complete,
    "unsigned": unsigned,
    "gzip": gzip_encoded,
    "endless_chunked": endless_chunked,
    "endless_close": endless_close,
    "trickle": trickle,
    "not_http": not_http,
    "ssh_banner": ssh_banner,
    "header_flood_big": header_flood_big,
    "header_flood_many": header_flood_many,
    "header_flood_wide": header_flood_wide,
    "bad_chunked": bad_chunked,
    "reset_mid_body": reset_mid_body,
    "short_close": short_close,
    "short_stall": short_stall,
    "proxy": proxy,
    "scripted": scripted,
}


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def hostile_signer_key() -> rsa.RSAPrivateKey:
    """The key the hostile server signs with; tests pin its public half as ``coremr``."""
    return keys.generate_private_key(2048)


@pytest.fixture
def hostile_server(hostile_signer_key: rsa.RSAPrivateKey) -> Iterator[HostileServer]:
    """A started HostileServer (behaviour ``signed``), stopped and joined after the test."""
    server = HostileServer(signer_key=hostile_signer_key).start()
    try:
        yield server
    finally:
        server.stop()

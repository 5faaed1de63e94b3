"""Running a sandbox flavour: in a background thread (tests, demos) or in the foreground (the CLI).

``BaseSandboxServer`` binds its socket itself (port 0 picks a free one), so ``url`` is known before
uvicorn starts. uvicorn's access log is off (it would print query strings, which can carry PHI)
and its logging config is left alone (``log_config=None``), so embedding the server does not
reconfigure the host program's logging.

Limits against a hostile or broken client (all documented in ``cwsctl sandbox serve --help``):

- request body: ``MAX_BODY_BYTES`` (1 MiB), counted as it arrives → 413 and close (see
  :mod:`.envelope`); nothing past the limit is kept, so an endless body costs no memory;
- request head (request line and headers): ``MAX_HEAD_BYTES``, h11's own limit → 400 and close;
- time to send a request: ``REQUEST_TIMEOUT_S`` for the head (from the connection opening or the
  previous answer), then as long again for the body → closed without an answer
  (:mod:`.protocol`; uvicorn has no such clock of its own). This also closes connections that
  never send a byte;
- an idle keep-alive connection is closed ``KEEP_ALIVE_S`` after its last answer (uvicorn);
- no cap on the number of connections: uvicorn's ``limit_concurrency`` answers 503 to *every*
  request once that many connections are open, so a client holding idle connections would lock
  everyone else out; the request timeout reclaims them instead. The listen backlog is
  ``_BACKLOG`` (the kernel may cap it at net.core.somaxconn).
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import socket
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeVar

import uvicorn

from cwsctl.core.errors import InputError, NetworkError
from cwsctl.sandbox.envelope import EnvelopeApp
from cwsctl.sandbox.faults import Faults
from cwsctl.sandbox.protocol import DeadlineH11Protocol

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
_BACKLOG = 2048
#: Largest request head h11 buffers (its own default, pinned here because --help quotes it).
MAX_HEAD_BYTES = 16 * 1024
#: Seconds a client has to send a request head, and then as long again for its body.
REQUEST_TIMEOUT_S = 10.0
#: Seconds an idle keep-alive connection stays open after an answer (uvicorn's default).
KEEP_ALIVE_S = 5


class _UvicornServer(uvicorn.Server):
    """uvicorn, with the stop signals caught early and not re-raised (so SIGTERM exits 0).

    uvicorn installs its handlers only once ``run`` starts and re-raises the signal at the end;
    we install them before announcing readiness, so a signal sent right after the "listening"
    line still stops the server cleanly, and the process then exits normally.
    """

    _handlers_installed = False

    @contextlib.contextmanager
    def stop_signals_caught(self) -> Generator[None, None, None]:
        """Route SIGINT/SIGTERM to a graceful shutdown while the block runs (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        self._handlers_installed = True
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
            self._handlers_installed = False

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if self._handlers_installed:
            yield
            return
        with self.stop_signals_caught():
            yield

    @property
    def stop_signal(self) -> int | None:
        """The first signal that asked us to stop, if any."""
        return self._captured_signals[0] if self._captured_signals else None


_S = TypeVar("_S", bound="BaseSandboxServer")


class _Closable(Protocol):
    def close(self) -> None: ...


class BaseSandboxServer:
    """What every sandbox flavour shares: the socket, uvicorn and its limits, start and stop.

    A flavour builds its ``app`` (an :class:`~.envelope.EnvelopeApp`) and its ``store``, then calls
    ``_init_running``; both are closed when the server stops.
    """

    app: EnvelopeApp
    store: _Closable
    data_dir: Path

    def _init_running(
        self, *, host: str, port: int, access_log: bool, request_timeout: float
    ) -> None:
        if not (math.isfinite(request_timeout) and request_timeout > 0):
            raise ValueError(f"request_timeout must be a positive number, not {request_timeout!r}")
        self.request_timeout = request_timeout
        self.access_log = access_log
        self.host = host
        self.requested_port = port
        self._socket: socket.socket | None = None
        self._server: _UvicornServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def _close_state(self) -> None:
        """Close the flavour's app and store (called by ``stop``)."""
        self.app.close()
        self.store.close()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43123`` (valid once bound)."""
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def faults(self) -> Faults:
        """Fault switches in force; assign a new ``Faults`` to change them while running."""
        return self.app.faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        self.app.faults = value

    # -- running ----------------------------------------------------------------------------
    def _prepare(self) -> tuple[_UvicornServer, socket.socket]:
        if self._server is not None:
            raise RuntimeError("sandbox server already started")
        sock = _bind(self.host, self.requested_port)
        self.port = int(sock.getsockname()[1])
        protocol = functools.partial(
            DeadlineH11Protocol,
            request_timeout=self.request_timeout,
            log_timeouts=self.access_log,
        )
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            http=protocol,  # type: ignore[arg-type]  # a factory, as uvicorn calls it
            ws="none",
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            timeout_keep_alive=KEEP_ALIVE_S,
            limit_concurrency=None,  # see the module docstring: a cap would lock clients out
            backlog=_BACKLOG,
            loop="asyncio",
            server_header=False,
            date_header=False,  # the app sends its own (see EnvelopeApp, clock skew)
            timeout_graceful_shutdown=5,
        )
        server = _UvicornServer(config)
        self._socket, self._server = sock, server
        return server, sock

    def start(self: _S, timeout: float = 15.0) -> _S:
        """Run in a daemon thread; return once it accepts connections."""
        server, sock = self._prepare()
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="cwsctl-sandbox", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise NetworkError(f"the sandbox server did not start on {self.url}")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and close the database; idempotent."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._server = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._close_state()

    def serve_forever(self: _S, on_ready: Callable[[_S], None] | None = None) -> int | None:
        """Serve in this thread until SIGINT/SIGTERM; return the signal that stopped it."""
        server, sock = self._prepare()
        try:
            with server.stop_signals_caught():
                if on_ready is not None:
                    on_ready(self)
                server.run(sockets=[sock])
            return server.stop_signal
        finally:
            self._server = None
            self.stop()

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InputError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(_BACKLOG)  # connections queue from now on, before uvicorn's loop runs
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise NetworkError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="choose another --port (0 picks a free one)",
        ) from None
    return sock

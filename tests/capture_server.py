"""A tiny HTTP server for tests that records every request exactly and answers from a script.

``CaptureServer`` listens on 127.0.0.1 (ephemeral port); each request is recorded in
``server.requests`` (method, path with its query, headers with lower-case names, body bytes) and
answered by ``server.answer(request) -> (status, headers, body)``, which a test sets. It stands in
for a server whose behaviour the sandbox does not model, so a test can check the exact requests
cwsctl sends. The ``capture_server`` fixture starts one per test and stops it afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest


@dataclass
class Captured:
    """One request as received."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        """The path without the query."""
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        """The query parameters."""
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)


Answer = tuple[int, dict[str, str], bytes]


def _not_found(_: Captured) -> Answer:
    return 404, {"Content-Type": "application/json"}, b'{"error":"Not Found","message":"none"}'


class CaptureServer:
    """Records requests; answers with ``self.answer``."""

    def __init__(self) -> None:
        self.requests: list[Captured] = []
        self.answer: Callable[[Captured], Answer] = _not_found
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                captured = Captured(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                server.requests.append(captured)
                status, headers, payload = server.answer(captured)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> CaptureServer:
        """Serve in a thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def capture_server() -> Iterator[CaptureServer]:
    server = CaptureServer().start()
    try:
        yield server
    finally:
        server.stop()

"""The bounded transport makes httpx's SSL context on its first https connection only: plain
http (the local sandbox), dry runs and early failures skip loading the CA bundle, and https
still verifies with httpx's default context (certifi, or SSL_CERT_FILE)."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cwsctl.core.transport.bounded import bounded_client
from tests.tls_server import self_signed_cert, serve_https


def _pool(client: httpx.Client):
    return client._transport._pool  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An https server on 127.0.0.1 with a self-signed certificate for 127.0.0.1 and localhost."""
    cert_file, key_file = self_signed_cert(
        tmp_path_factory.mktemp("tls"), "localhost", dns_names=("localhost",)
    )

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    with serve_https(Handler, cert_file, key_file) as url:
        yield f"{url}/", cert_file


def test_plain_http_makes_no_ssl_context(sandbox):
    with bounded_client(timeout=10) as client:
        assert client.get(f"{sandbox.url}/ws/").status_code in (200, 401)
        assert _pool(client)._ssl_context is None


def test_https_verifies_with_httpx_default_context(tls_server, monkeypatch):
    url, _ = tls_server
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with bounded_client(timeout=10) as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            client.get(url)
        context = _pool(client)._ssl_context
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname


def test_https_honours_ssl_cert_file_like_httpx(tls_server, monkeypatch):
    url, cert_file = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    with bounded_client(timeout=10) as client:
        response = client.get(url)
        assert response.status_code == 200 and response.read() == b"ok"


def test_building_a_request_imports_no_httpcore():
    """A dry run builds the request with httpx and sends nothing: httpcore (and h11) stay out."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cwsctl.core.transport.bounded import bounded_client\n"
        "with bounded_client() as client:\n"
        "    client.build_request('POST', 'https://cws.example.org/ws/', content=b'{}')\n"
        "assert 'httpcore' not in sys.modules and 'h11' not in sys.modules, 'imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_pool_is_built_once_for_many_threads(sandbox):
    with bounded_client(timeout=10, max_connections=4) as client:
        transport = client._transport
        pools = []

        def send() -> None:
            client.get(f"{sandbox.url}/ws/")
            pools.append(transport._pool)

        threads = [threading.Thread(target=send) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(pools) == 8 and all(pool is pools[0] for pool in pools)

"""The bounded exchange in core: the size cap and the deadline, against the real sandbox.

The hostile-server catalogue (tests/core/test_hostile_server.py) drives the CLI; these tests pin the
library's own contract: what a caller of ``CwsClient`` gets, and what the server did meanwhile.
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from cwsctl.core.bulk.rows import WALKTHROUGH_EXAMPLE
from cwsctl.core.errors import NetworkError
from cwsctl.core.transport.bounded import bounded_client, format_size
from cwsctl.core.transport.deadline import exchange_deadline, time_left
from cwsctl.core.transport.errors import OutcomeUnknownError
from cwsctl.protocols.cws_signature import Algorithm
from cwsctl.targets.cws.client import CwsClient
from cwsctl.targets.cws.identity import SigningIdentity
from cwsctl.targets.cws.patients import patient_body


@pytest.fixture
def client_for(sandbox, sandbox_user, tmp_path):
    identity = SigningIdentity(
        sandbox_user.private_key, sandbox_user.username, Algorithm.SHA256, tmp_path / "unused.pem"
    )
    clients: list[CwsClient] = []

    def make(**options) -> CwsClient:
        client = CwsClient(identity, [sandbox.trusted_key], base_url=sandbox.url, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_answers_within_the_cap_are_read_whole(client_for):
    response = client_for(max_response_size=4096).request("GET", "/ws/")
    assert response.ok and response.verification is not None and response.verification.verified


@pytest.mark.timing
def test_a_get_larger_than_the_cap_is_refused_and_not_retried(client_for):
    client = client_for(max_response_size=8)
    started = time.monotonic()
    with pytest.raises(NetworkError) as caught:
        client.request("GET", "/ws/")
    assert "larger than 8 bytes" in caught.value.message
    assert not isinstance(caught.value, OutcomeUnknownError)  # a GET changed nothing
    assert time.monotonic() - started < 5


def test_a_post_whose_answer_is_too_large_is_in_doubt_and_the_server_did_act(client_for, sandbox):
    body = patient_body(WALKTHROUGH_EXAMPLE)
    with pytest.raises(OutcomeUnknownError) as caught:
        client_for(max_response_size=16).request("POST", "/ws/patients/", body)
    assert "outcome is unknown" in caught.value.message
    # The sandbox created the patient although the client never saw the answer: hence "in doubt".
    found = client_for().request(
        "GET", f"/ws/patients/?external_id={WALKTHROUGH_EXAMPLE['external_id']}&facility=10000"
    )
    assert found.status == 200 and b'"patients":[{' in found.body.replace(b" ", b"")


def test_nested_deadlines_keep_the_sooner_one():
    with exchange_deadline(10):
        outer = time_left()
        with exchange_deadline(0.5):
            inner = time_left()
        with exchange_deadline(60):
            later = time_left()
    assert outer is not None and inner is not None and later is not None
    assert inner <= 0.5 < outer <= 10 and later <= 10
    assert time_left() is None


@pytest.mark.parametrize(
    ("size", "text"),
    [(64 * 1024 * 1024, "64 MiB"), (1024, "1 KiB"), (1536, "1536 bytes"), (1 << 30, "1 GiB")],
)
def test_format_size(size, text):
    assert format_size(size) == text


@pytest.fixture
def gzip_server() -> Iterator[str]:
    """A one-answer-per-connection server that compresses although asked not to."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []
    body = gzip.compress(b"{}" + b" " * 100_000)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                seen.append(conn.recv(65536))
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close() alone does not)
    listener.close()
    thread.join(5)
    assert not thread.is_alive()
    assert seen and b"accept-encoding: identity" in seen[0].lower()


def test_a_compressed_answer_is_refused(gzip_server):
    import httpx

    with bounded_client(timeout=5) as http, pytest.raises(httpx.TransportError) as caught:
        http.get(gzip_server)
    assert "'gzip'-encoded answer" in str(caught.value)


def test_cookies_an_answer_sets_are_kept_and_answers_without_any_change_nothing():
    import httpx

    from cwsctl.core.transport.bounded import bounded_client

    with bounded_client() as client:
        request = httpx.Request("GET", "http://cookies.test/")
        answer = httpx.Response(200, headers={"set-cookie": "a=b; Path=/"}, request=request)
        client.cookies.extract_cookies(answer)
        assert client.cookies.get("a") == "b"
        client.cookies.extract_cookies(httpx.Response(200, request=request))
        assert dict(client.cookies) == {"a": "b"}

"""Token answers a hostile or broken OpenEMR can send (issue 20 items 10 and 19): an expires_in of
1e999, "Infinity" or NaN never makes a token live for ever; an access token that is megabytes
long, or that a header cannot carry, is refused; the loopback receiver outlasts forged
redirects with the wrong state."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from cwsctl.core.errors import NetworkError, ServerFailureError
from cwsctl.protocols.oauth2.login import LoopbackReceiver
from cwsctl.protocols.oauth2.token_response import (
    DEFAULT_TOKEN_LIFETIME_S,
    MAX_ACCESS_TOKEN_SIZE,
    MAX_TOKEN_LIFETIME_S,
)
from cwsctl.protocols.oauth2.tokens import Token
from cwsctl.targets.openemr.tokens import parse_token_response


def _answer(document: object) -> httpx.Response:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return httpx.Response(200, content=body, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("expires_in", ["1e999", 1e308, "Infinity", "NaN", "-Infinity", -5, "x"])
def test_a_nonsense_expires_in_gives_a_bounded_lifetime(expires_in):
    raw = b'{"access_token": "tok", "token_type": "Bearer", "expires_in": %s}' % (
        (json.dumps(expires_in) if isinstance(expires_in, str) else repr(expires_in)).encode()
    )
    if expires_in == "1e999":
        raw = raw.replace(b'"1e999"', b"1e999")  # the JSON number, which Python reads as inf
    result = parse_token_response(_answer(raw), "client_credentials", sent_at=1000.0)
    lifetime = result.token.expires_at - 1000.0
    assert 0 < lifetime <= MAX_TOKEN_LIFETIME_S
    assert lifetime == DEFAULT_TOKEN_LIFETIME_S or expires_in == 1e308
    assert json.dumps(result.token.to_json(), allow_nan=False)  # the cache holds a real number


def test_a_cached_token_that_never_expires_is_not_a_token():
    cached = {"access_token": "t", "obtained_at": 0.0, "expires_at": float("inf")}
    assert Token.from_json(cached) is None
    assert Token.from_json({**cached, "expires_at": float("nan")}) is None
    assert Token.from_json({**cached, "expires_at": 100.0}) is not None


@pytest.mark.parametrize(
    "token",
    [
        "x" * (MAX_ACCESS_TOKEN_SIZE + 1),
        "x" * (4 * 1024 * 1024),
        "ab\r\ncd",
        "t\u00f6ken",
        "a\x00b",
    ],
)
def test_an_access_token_a_header_cannot_carry_is_refused(token):
    answer = _answer({"access_token": token, "token_type": "Bearer", "expires_in": 60})
    with pytest.raises(ServerFailureError) as caught:
        parse_token_response(answer, "client_credentials", sent_at=0.0)
    assert token not in caught.value.message and len(caught.value.message) < 300


def test_a_long_but_reasonable_token_is_taken():
    token = "x" * MAX_ACCESS_TOKEN_SIZE
    answer = _answer({"access_token": token, "token_type": "Bearer", "expires_in": 60})
    assert (
        parse_token_response(answer, "client_credentials", sent_at=0.0).token.access_token == token
    )


def test_the_receiver_ignores_a_wrong_state_and_waits_for_the_right_one():
    ignored: list[str] = []
    with LoopbackReceiver() as receiver:

        def browser() -> None:
            httpx.get(receiver.redirect_uri, params={"code": "forged", "state": "bad"})
            httpx.get(receiver.redirect_uri, params={"code": "forged2"})  # no state at all
            time.sleep(0.2)
            httpx.get(receiver.redirect_uri, params={"code": "real", "state": "good"})

        thread = threading.Thread(target=browser)
        thread.start()
        code = receiver.wait("good", 10, on_ignored=ignored.append)
        thread.join()
    assert code == "real"
    assert len(ignored) == 2 and all("state" in line for line in ignored)


@pytest.mark.timing
@pytest.mark.slow
def test_the_receiver_still_times_out_when_only_wrong_states_come():
    with LoopbackReceiver() as receiver:
        httpx.get(receiver.redirect_uri, params={"code": "forged", "state": "bad"})
        started = time.monotonic()
        with pytest.raises(NetworkError):
            receiver.wait("good", 1.0, on_ignored=lambda line: None)
        assert time.monotonic() - started < 3

"""A person's sign-in: the authorization-code grant with PKCE (S256, RFC 7636), the authorization
request URL, and a redirect to ``http://127.0.0.1:PORT/callback`` received by
:class:`LoopbackReceiver` (RFC 8252 loopback redirect).
"""

from __future__ import annotations

import base64
import hashlib
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from cwsctl.core.errors import ClientRequestError, NetworkError
from cwsctl.core.text import printable

CALLBACK_PATH = "/callback"
#: The redirect URI registered by default: loopback redirects match any port (RFC 8252 §7.3).
LOOPBACK_REDIRECT_URI = f"http://127.0.0.1{CALLBACK_PATH}"


@dataclass(frozen=True)
class PkcePair:
    """A PKCE code verifier and its S256 challenge (RFC 7636)."""

    verifier: str
    challenge: str

    def __repr__(self) -> str:
        return "PkcePair(<redacted>)"


def pkce_pair() -> PkcePair:
    """A fresh verifier (43+ unreserved characters) and ``BASE64URL(SHA256(verifier))``."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
    return PkcePair(verifier, challenge)


def authorization_url(
    authorize: str,
    *,
    client_id: str,
    redirect_uri: str,
    state: str,
    code_challenge: str,
    scope: str,
    audience: str,
) -> str:
    """The authorization request URL for the person to open: ``authorize`` (the authorization
    endpoint) with the request in its query (``aud`` = ``audience``, the FHIR base)."""
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            "aud": audience,
        },
        quote_via=quote,
    )
    return f"{authorize}?{query}"


@dataclass(frozen=True)
class Callback:
    """The query of the request that reached the loopback redirect."""

    code: str | None
    state: str | None
    error: str | None
    error_description: str | None

    def __repr__(self) -> str:
        return f"Callback(state={self.state!r}, error={self.error!r}, code=<redacted>)"


_PAGE = (
    b"<!doctype html><meta charset=utf-8><title>cwsctl</title>"
    b"<p>cwsctl received the answer. You can close this window.</p>"
)


class _CallbackHandler(BaseHTTPRequestHandler):
    server: _CallbackServer
    timeout = 10  # a stalled browser connection must not hold a handler thread for ever

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != CALLBACK_PATH:
            self.send_error(404)
            return
        query = parse_qs(parts.query)

        def first(name: str) -> str | None:
            values = query.get(name)
            return values[0] if values else None

        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(_PAGE)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(_PAGE)
        self.server.answers.put(
            Callback(first("code"), first("state"), first("error"), first("error_description"))
        )

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: the request line carries the authorization code."""


class _CallbackServer(ThreadingHTTPServer):
    daemon_threads = True
    answers: queue.Queue[Callback]


class LoopbackReceiver:
    """A one-shot HTTP server on 127.0.0.1 that receives the authorization redirect.

    Use as a context manager; ``redirect_uri`` is ``http://127.0.0.1:PORT/callback``.
    """

    def __init__(self, port: int = 0) -> None:
        try:
            self._server = _CallbackServer(("127.0.0.1", port), _CallbackHandler)
        except OSError as exc:
            raise NetworkError(
                f"cannot listen on 127.0.0.1:{port} for the redirect: {exc.strerror or exc}",
                hint="choose another --port, or 0 for any free port",
            ) from None
        self._server.answers = queue.Queue()
        self.port: int = self._server.server_address[1]
        self.redirect_uri = f"http://127.0.0.1:{self.port}{CALLBACK_PATH}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="cwsctl-oauth-callback", daemon=True
        )

    def __enter__(self) -> LoopbackReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop listening."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def wait(
        self,
        expected_state: str,
        timeout: float,
        on_ignored: Callable[[str], None] | None = None,
    ) -> str:
        """The authorization code from the redirect; errors for a refusal or no redirect with
        the right ``state`` within ``timeout`` seconds.

        A redirect with the wrong ``state`` (or none) is ignored, its code never used, and
        ``on_ignored`` told with a one-line warning: any local process can reach the port, and
        must not be able to abort the login; the real redirect, or the timeout, ends the wait.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                answer = self._server.answers.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise NetworkError(
                    f"no answer reached {self.redirect_uri} within {timeout:g} s",
                    hint="open the printed URL in a browser on this machine and approve; "
                    "allow more time with --wait SECONDS",
                ) from None
            if answer.state is not None and secrets.compare_digest(
                answer.state.encode(), expected_state.encode()
            ):
                break
            if on_ignored is not None:
                on_ignored(
                    "ignored a redirect with the wrong state (not from this login: possible "
                    "forgery); still waiting for the right one"
                )
        if answer.error:
            description = printable(answer.error_description or "")
            raise ClientRequestError(
                f"authorization refused: {printable(answer.error)}"
                + (f" ({description})" if description else ""),
                hint="sign in as a user allowed these scopes, or ask for fewer with --scope",
            )
        if not answer.code:
            raise ClientRequestError(
                "the redirect carried no authorization code", hint="run cwsctl oauth login again"
            )
        return answer.code


def new_state() -> str:
    """An unguessable ``state`` for one authorization request."""
    return secrets.token_urlsafe(24)

"""The exporter's HTTP session: what a target tells about its server (:class:`ExportServer`),
the bearer token (:class:`TokenSupply`), sending with one renewal after a 401, and audit."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from cwsctl.core.audit import AuditLog, body_sha256
from cwsctl.core.errors import ClientRequestError, CwsError
from cwsctl.core.transport.bounded import bounded_client
from cwsctl.core.transport.deadline import exchange_deadline
from cwsctl.core.transport.errors import network_error
from cwsctl.protocols.fhir.export_request import ExportRequest
from cwsctl.protocols.fhir.export_result import ExportOptions
from cwsctl.protocols.fhir.outcome import outcome_text

EMPTY_SHA256 = body_sha256(b"")  # every export request is a GET or DELETE without a body
#: Most seconds one file's download may take in all (the stall timeout above still applies).
FILE_DEADLINE_S = 24 * 3600.0
#: A status or manifest answer larger than this is not a manifest (10,000 entries take ~2 MiB).
MAX_MANIFEST_SIZE = 8 << 20


@dataclass(frozen=True)
class ExportServer:
    """What a target knows of the server it exports from, which the generic client does not."""

    #: The FHIR base URL the kick-off paths are under.
    fhir_base: str
    #: Where a server-named URL (status, file) is fetched with credentials.
    home_url: Callable[[str], str]
    #: Seconds the kick-off request may take (a server may export inside it).
    kickoff_timeout: float
    #: How to get a scope a 401 or the profile lacks (the ``hint`` of the error).
    scope_hint: Callable[[str], str]
    #: Raises when the profile cannot hold the scopes the request needs (before the kick-off).
    check_scopes: Callable[[ExportRequest], None]
    #: The server's own meaning of a kick-off refused with this status (None: the generic one).
    kickoff_refusal: Callable[[int, str], CwsError | None]
    #: The hint when the server no longer has a file (404 or 410).
    file_gone_hint: str
    #: The manifest's ``transactionTime`` as a UTC instant string, or None when unreadable.
    transaction_instant: Callable[[Any], str | None]


class BearerToken(Protocol):
    """A token as the session uses it."""

    @property
    def access_token(self) -> str:
        """The token itself (compared to tell a renewal)."""
        ...

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value."""
        ...


class TokenSupply(Protocol):
    """Where the session gets its bearer token: the current one, or a new one after a 401."""

    def token(
        self,
        client: httpx.Client,
        *,
        timeout: float,
        max_response_size: int,
        reject: str | None = None,
    ) -> BearerToken:
        """A usable token (asked for through ``client`` when there is none), never ``reject``,
        the one a 401 refused."""
        ...


class ExportSession:
    """The HTTP clients, the shared token and the audit log of one exporter."""

    def __init__(
        self,
        tokens: TokenSupply,
        server: ExportServer,
        options: ExportOptions,
        audit: AuditLog | None = None,
    ) -> None:
        self.tokens = tokens
        self.server = server
        self.options = options
        self.audit = audit
        self._api: httpx.Client | None = None
        self._files_client: httpx.Client | None = None
        self._token_lock = threading.Lock()
        self._current_token: str | None = None
        #: Tokens this run got after its first (expiry, or a 401).
        self.token_renewals = 0

    def close(self) -> None:
        """Close the HTTP clients."""
        for client in (self._api, self._files_client):
            if client is not None:
                client.close()
        if self.audit is not None:
            self.audit.close()

    @property
    def api(self) -> httpx.Client:
        """The client for token, kick-off, status and cancel requests (64 MiB cap)."""
        if self._api is None:
            self._api = bounded_client(
                timeout=self.server.kickoff_timeout, max_response_size=MAX_MANIFEST_SIZE
            )
        return self._api

    @property
    def files_client(self) -> httpx.Client:
        """The client for downloads: ``max_file_size`` per answer, a connection per thread."""
        if self._files_client is None:
            self._files_client = bounded_client(
                timeout=FILE_DEADLINE_S,
                max_response_size=self.options.max_file_size,
                max_connections=max(self.options.parallel, 1),
            )
        return self._files_client

    def token(self, reject: str | None = None) -> BearerToken:
        """A usable token (renewed before it expires or when it is ``reject``, the one a 401
        refused); threads share it."""
        with exchange_deadline(self.options.timeout):
            token = self.tokens.token(
                self.api,
                timeout=self.options.timeout,
                max_response_size=MAX_MANIFEST_SIZE,
                reject=reject,
            )
        with self._token_lock:
            if token.access_token != self._current_token:
                if self._current_token is not None:
                    self.token_renewals += 1
                self._current_token = token.access_token
        return token

    def home_url(self, url: str) -> str:
        """Where a server-named URL is fetched with credentials (the target's rule: for
        OpenEMR, its path on the profile's origin)."""
        return self.server.home_url(url)

    def send(
        self,
        client: httpx.Client,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        authorize: bool = True,
        stream: bool = False,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> httpx.Response:
        """Send with a bearer token; a 401 gets a new token and one more try."""
        token = self.token() if authorize else None
        for attempt in (0, 1):
            sent = dict(headers)
            if token is not None:
                sent["Authorization"] = token.authorization
            request = client.build_request(
                method, url, headers=sent, timeout=httpx.Timeout(timeout or self.options.timeout)
            )
            started = time.perf_counter()
            try:
                if deadline is not None:
                    with exchange_deadline(deadline):
                        response = client.send(request, stream=stream)
                else:
                    response = client.send(request, stream=stream)
            except httpx.HTTPError as exc:
                error = network_error(exc, method, url, timeout=deadline or timeout)
                self.record(method, url, None, started, error=type(error).__name__)
                raise error from None
            last = response.status_code != 401 or token is None or bool(attempt)
            if not (stream and last):  # a streamed answer is recorded once it is read
                digest = None if stream else body_sha256(response.content)
                self.record(method, url, response.status_code, started, digest)
            if last or token is None:
                return response
            response.close()
            token = self.token(reject=token.access_token)
        raise AssertionError("unreachable")  # pragma: no cover

    def record(
        self,
        method: str,
        url: str,
        status: int | None,
        started: float,
        response_sha256: str | None = None,
        error: str | None = None,
    ) -> None:
        """One audit line for an export request: method, path (never the query string: a
        ``_typeFilter`` may name a patient), status, the answer's SHA-256, how long it took."""
        if self.audit is None:
            return
        self.audit.record(
            method=method,
            url=url,
            status=status,
            request_sha256=EMPTY_SHA256,
            response_sha256=response_sha256,
            verified=False,
            signer=None,
            key_fingerprint=None,
            duration_ms=(time.perf_counter() - started) * 1000,
            error=error,
        )

    def unauthorized(self, what: str, scope: str, content: bytes) -> CwsError:
        """The error for a 401: the scope the token lacks, with the target's hint."""
        text = outcome_text(content)
        if text and "unauthorized" not in text.lower():
            # OpenEMR's OperationOutcome "AccessToken does not grant access to resource R"
            resource = re.search(r"resource (\w+)", text)
            needed = f"system/{resource.group(1)}.read" if resource else scope
            return ClientRequestError(
                f"{what}: HTTP 401: {text} (the token needs {needed})",
                hint=self.server.scope_hint(needed),
            )
        return ClientRequestError(
            f"{what}: HTTP 401: the token lacks the scope {scope}",
            hint=self.server.scope_hint(scope),
        )

"""Getting access tokens: the cache, the refresh-token, client-credentials and authorization-code
grants (each authenticated by a client assertion), and :func:`run_flow` to drive them.

The stored refresh token (from a person's sign-in) comes first; otherwise the client-credentials
grant, asking only for the source's ``credentials_scope``, and only when it has one. With neither,
or when the refresh token is refused or revoked, :class:`~cwsctl.core.errors.LoginRequiredError`
(exit 3) carries the target's ``login_hint``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from typing import Protocol, TypeVar

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from cwsctl.core.errors import LoginRequiredError
from cwsctl.core.transport.bounded import DEFAULT_TIMEOUT, bounded_client
from cwsctl.core.transport.errors import network_error
from cwsctl.protocols.oauth2.assertion import CLIENT_ASSERTION_TYPE, client_assertion
from cwsctl.protocols.oauth2.token_response import (
    ExplainRefusal,
    TokenRefusedError,
    parse_token_response,
)
from cwsctl.protocols.oauth2.tokens import (
    ACCESS,
    GRANT_AUTHORIZATION_CODE,
    GRANT_CLIENT_CREDENTIALS,
    GRANT_REFRESH_TOKEN,
    SYSTEM_ACCESS,
    GrantResult,
    Token,
    TokenStore,
)

T = TypeVar("T")
TokenFlow = Generator[httpx.Request, httpx.Response, "Token"]


class TokenEndpoint(Protocol):
    """Where token requests go (``token``) and the URL a client assertion names (``audience``)."""

    @property
    def token(self) -> str: ...

    @property
    def audience(self) -> str: ...


class TokenSource:
    """Gets access tokens for one client, from the cache or a grant.

    The ``*_flow`` methods are generators in httpx's auth-flow style: they yield the token
    request, receive its response and return the :class:`Token`, doing no I/O themselves, so
    that :class:`~cwsctl.protocols.oauth2.bearer.OAuthBearerAuth` can run them inside the API request's own client. Use
    :func:`run_flow` to run one with a client of your own.

    ``grant=GRANT_CLIENT_CREDENTIALS`` makes a source that only ever uses the client-credentials
    grant with the profile's ``system/*`` scopes, even when a person is signed in (a bulk export
    runs as OpenEMR's system user); its token is cached apart
    (:data:`~cwsctl.protocols.oauth2.tokens.SYSTEM_ACCESS`), under the same lock and in the same
    0600 file.

    ``name`` (the profile's) and ``login_hint`` are for the messages; ``credentials_scope`` is
    what the client-credentials grant asks for ("" when the client has no scope for it);
    ``explain`` reads the token endpoint's refusals as the target means them.
    """

    def __init__(
        self,
        client_id: str,
        endpoints: TokenEndpoint,
        private_key: rsa.RSAPrivateKey,
        tokens: TokenStore,
        *,
        name: str,
        credentials_scope: str,
        login_hint: str,
        explain: ExplainRefusal,
        clock: Callable[[], float] = time.time,
        grant: str | None = None,
    ) -> None:
        if grant not in (None, GRANT_CLIENT_CREDENTIALS):
            raise ValueError(f"TokenSource cannot be limited to the {grant} grant")
        self.grant = grant
        self._slot = SYSTEM_ACCESS if grant == GRANT_CLIENT_CREDENTIALS else ACCESS
        self._client_id = client_id
        self.private_key = private_key
        self.endpoints = endpoints
        self.tokens = tokens
        self.clock = clock
        self.name = name
        self.credentials_scope = credentials_scope
        self.login_hint = login_hint
        self.explain = explain
        self.token_requests = 0  # token requests yielded so far (for tests and benchmarks)
        #: Set once a token renewed after a 401 was refused with a 401 too: OpenEMR's 401 then
        #: means a missing scope or a disabled client, which no further renewal mends.
        self.renewal_refused = False
        self._lock = threading.Lock()
        self._last: Token | None = None  # the token this source last used, kept in memory

    @property
    def client_id(self) -> str:
        """The client id tokens are asked for."""
        return self._client_id

    def cached_token(self) -> Token | None:
        """A cached access token that is still usable, if any."""
        token = self.tokens.access_token(self.client_id, self.endpoints.token, self._slot)
        return token if token is not None and token.usable(self.clock()) else None

    def grant_request(
        self, form: dict[str, str], template: httpx.Request | None = None
    ) -> httpx.Request:
        """A POST to the token endpoint with ``form`` plus a fresh client assertion."""
        fields = {
            **form,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": client_assertion(
                self.private_key, self.client_id, self.endpoints.audience, now=self.clock()
            ),
        }
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        if template is not None and "user-agent" in template.headers:
            headers["User-Agent"] = template.headers["user-agent"]
        self.token_requests += 1
        return httpx.Request("POST", self.endpoints.token, data=fields, headers=headers)

    def token_flow(
        self, *, reject: str | None = None, template: httpx.Request | None = None
    ) -> TokenFlow:
        """A usable token: the cached one (unless it is ``reject``, the one a 401 refused),
        else from the refresh-token grant, else from the client-credentials grant with
        ``credentials_scope`` (an OpenEMR profile's ``system/*`` scopes; only the last for a
        client-credentials source).

        Raises LoginRequiredError when the refresh token is refused (it is forgotten) or when
        there is none and ``credentials_scope`` is empty.
        """
        client_id = self.client_id
        token_url = self.endpoints.token
        last = self._last  # the fast path of a bulk run: no lock, no file read
        if last is not None and last.usable(self.clock()) and last.access_token != reject:
            return last
        with self._lock, self.tokens.locked():
            # Read under the lock: another thread or process may have just renewed it.
            cached = self.tokens.access_token(client_id, token_url, self._slot)
            if cached is not None and cached.usable(self.clock()) and cached.access_token != reject:
                self._last = cached
                return cached
            name = self.name
            refresh = None if self.grant else self.tokens.refresh_token(client_id, token_url)
            if refresh:
                form = {
                    "grant_type": GRANT_REFRESH_TOKEN,
                    "refresh_token": refresh,
                    "client_id": client_id,
                }
                sent_at = self.clock()
                response = yield self.grant_request(form, template)
                try:
                    result = parse_token_response(
                        response, GRANT_REFRESH_TOKEN, sent_at=sent_at, explain=self.explain
                    )
                except TokenRefusedError as exc:
                    if exc.error != "invalid_grant":
                        raise
                    self.tokens.drop_refresh_token()
                    raise LoginRequiredError(
                        f"{exc.message}: the sign-in of profile {name!r} was revoked, logged "
                        "out or has expired",
                        hint=self.login_hint,
                    ) from None
                self.tokens.save_grant(client_id, token_url, result)
                self._last = result.token
                return result.token
            scope = self.credentials_scope
            if not scope:
                raise LoginRequiredError(
                    f"profile {name!r} has no signed-in user (no refresh token) and no system/ "
                    "scope for a grant without one",
                    hint=self.login_hint,
                )
            form = {"grant_type": GRANT_CLIENT_CREDENTIALS, "scope": scope}
            sent_at = self.clock()
            response = yield self.grant_request(form, template)
            result = parse_token_response(
                response, GRANT_CLIENT_CREDENTIALS, sent_at=sent_at, explain=self.explain
            )
            self.tokens.save_grant(client_id, token_url, result, self._slot)
            self._last = result.token
            return result.token

    def forget_sign_in(self) -> None:
        """Drop the cached access token and the refresh token (the server revoked the sign-in)."""
        with self._lock, self.tokens.locked():
            self._last = None
            self.tokens.clear_grants()

    def code_flow(
        self, code: str, redirect_uri: str, code_verifier: str
    ) -> Generator[httpx.Request, httpx.Response, GrantResult]:
        """Exchange an authorization code (with its PKCE verifier) for tokens; store them."""
        client_id = self.client_id
        form = {
            "grant_type": GRANT_AUTHORIZATION_CODE,
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
            "client_id": client_id,
        }
        with self._lock, self.tokens.locked():
            sent_at = self.clock()
            response = yield self.grant_request(form)
            result = parse_token_response(
                response, GRANT_AUTHORIZATION_CODE, sent_at=sent_at, explain=self.explain
            )
            self.tokens.save_grant(client_id, self.endpoints.token, result)
            return result

    def has_refresh_token(self) -> bool:
        """True when a refresh token is stored for this client."""
        return self.tokens.refresh_token(self.client_id, self.endpoints.token) is not None


def run_flow(
    flow: Generator[httpx.Request, httpx.Response, T],
    client: httpx.Client | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_response_size: int | None = None,
) -> T:
    """Drive an auth-style flow: send each request it yields, return its result.

    With no ``client``, a bounded client of its own (``timeout``, ``max_response_size``) is
    opened for the flow and closed after it. Network failures become NetworkError (exit 6)
    naming the endpoint.
    """
    if client is None:
        with bounded_client(timeout=timeout, max_response_size=max_response_size) as own:
            return run_flow(flow, own, timeout=timeout, max_response_size=max_response_size)
    try:
        request = next(flow)
        while True:
            try:
                response = client.send(request)
            except httpx.HTTPError as exc:
                raise network_error(
                    exc,
                    request.method,
                    str(request.url),
                    timeout=timeout,
                    max_response_size=max_response_size,
                ) from None
            try:
                request = flow.send(response)
            finally:
                response.close()
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        flow.close()

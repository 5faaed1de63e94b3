"""The CWS client: every request body signed with the profile's key, every answer's signature
verified against pinned CorEMR keys (httpx's auth-flow shape; fails closed)."""

from __future__ import annotations

from collections.abc import Generator, Mapping
from typing import Any

import httpx

from cwsctl.core.client import OTHER_HOST_CREDENTIAL, VERIFICATION_EXTENSION, ApiClient, ApiResponse
from cwsctl.core.errors import ProfileError
from cwsctl.core.headers import check_value
from cwsctl.protocols.cws_signature import TrustedKey
from cwsctl.targets.cws.identity import SigningIdentity
from cwsctl.targets.cws.verification import verify_response


class CwsAuth(httpx.Auth):
    """Sign each request body with ``identity``; verify each response against ``trusted`` keys."""

    requires_request_body = True
    requires_response_body = True

    def __init__(
        self, identity: SigningIdentity, trusted: list[TrustedKey], *, verify_responses: bool = True
    ) -> None:
        self.identity = identity
        self.trusted = trusted
        self.verify_responses = verify_responses

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add the Authorization header, send, then verify the answer (raises SignatureError)."""
        request.headers["Authorization"] = self.identity.authorize(request.content).format()
        response = yield request
        if self.verify_responses:
            result = verify_response(
                response.content, response.headers.get("Authorization"), self.trusted
            )
            response.extensions[VERIFICATION_EXTENSION] = result


class CwsClient(ApiClient):
    """Signed requests to one CWS server, every answer's signature verified against pinned keys."""

    signs_responses = True

    def __init__(
        self,
        identity: SigningIdentity,
        trusted: list[TrustedKey],
        *,
        verify_responses: bool = True,
        **options: Any,
    ) -> None:
        if verify_responses and not trusted:
            raise ProfileError(
                "no pinned CorEMR key: responses cannot be verified",
                hint="pin the server's public key: cwsctl profile trust COREMR_PUBLIC_KEY.pem",
            )
        check_value(
            identity.username,
            "the profile's username",
            ProfileError,
            hint="fix it: cwsctl profile init NAME --username USER",
        )
        super().__init__(CwsAuth(identity, trusted, verify_responses=verify_responses), **options)
        self.identity = identity

    def build_request(
        self,
        method: str,
        path_or_url: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Request:
        """The exact signed request that would be sent (``request()`` leaves signing to
        ``CwsAuth``, so each body sent is signed exactly once)."""
        request = super().build_request(method, path_or_url, body, headers)
        if self.at_home(str(request.url)):
            request.headers["Authorization"] = self.identity.authorize(body).format()
        else:  # --allow-other-host: signed when sent, shown nowhere (it is a replayable credential)
            request.headers["Authorization"] = OTHER_HOST_CREDENTIAL
        return request

    def unauthorized_hint(self) -> str:
        """A CWS 401: CorEMR could not check the body's signature."""
        return (
            f"likely causes: username {self.identity.username!r} is not registered in CorEMR's "
            f"Public Keys; a different key is registered there (ours is "
            f"{self.identity.fingerprint}); or the body was altered on the way (a proxy "
            "reformatting JSON)"
        )

    def trust_description(self, response: ApiResponse) -> str:
        """``verified by coremr (SHA256:…)`` or ``NOT VERIFIED``."""
        check = response.verification
        if check is not None and check.verified:
            return f"verified by {check.signer} ({check.key_fingerprint})"
        return "NOT VERIFIED"

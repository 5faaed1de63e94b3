"""The ``httpx.Auth`` that adds ``Authorization: Bearer …`` from a token source.

When no cached token is usable it *yields* the token request from its auth flow, so the token
exchange goes through the same bounded client as the API request (same deadline, same size cap).
A 401 answer gets one fresh token and one retry; once a renewal was refused too (OpenEMR answers
401 for a missing scope or a disabled client), the token source renews no more on a 401 for the
rest of the run. What else an answer says about the sign-in (OpenEMR's 400 "Refresh Token revoked
or logged out") is the target's to read, through the ``check_signed_in`` hook.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import httpx

from cwsctl.core.transport.http_auth import authorized_copy
from cwsctl.protocols.oauth2.grants import TokenSource

#: A target's look at each answer: raises (LoginRequiredError) when it says the sign-in is gone.
CheckSignedIn = Callable[[TokenSource, httpx.Response], None]


class OAuthBearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer <token>``; a 401 gets one fresh token and one retry.

    A token request, when one is needed, is yielded from the flow and so travels through the
    same (bounded) client as the request it authorizes.
    """

    requires_request_body = True  # the one retry must be able to send the body again
    requires_response_body = True  # token answers are read inside the flow

    def __init__(self, source: TokenSource, check_signed_in: CheckSignedIn | None = None) -> None:
        self.source = source
        self.check_signed_in = check_signed_in

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """httpx's driver of :meth:`auth_flow`, closing the flow whatever happens (it may hold
        the token lock while a token request is out)."""
        request.read()
        flow = self.auth_flow(request)
        try:
            outgoing = next(flow)
            while True:
                response = yield outgoing
                response.read()
                try:
                    outgoing = flow.send(response)
                except StopIteration:
                    return
        finally:
            flow.close()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Authorize ``request``; on a 401, renew the token once and send it once more.

        What goes out is a copy carrying the token: the caller's request object never holds
        it, so whatever shows or logs that object (``request -v``, the audit log) cannot leak it.
        Once a renewal was refused too, later 401s are returned as they are (one renewal per
        run, not one per request). ``check_signed_in`` sees each answer (OpenEMR's "logged out"
        answer raises LoginRequiredError there).
        """
        source = self.source
        token = yield from source.token_flow(template=request)
        response = yield authorized_copy(request, token.authorization)
        self._check_signed_in(response)
        if response.status_code != 401 or source.renewal_refused:
            return
        token = yield from source.token_flow(reject=token.access_token, template=request)
        response = yield authorized_copy(request, token.authorization)
        self._check_signed_in(response)
        if response.status_code == 401:  # final, and no more renewals for this source
            source.renewal_refused = True

    def _check_signed_in(self, response: httpx.Response) -> None:
        if self.check_signed_in is not None:
            self.check_signed_in(self.source, response)

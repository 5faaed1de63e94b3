"""What OpenEMR's refusals mean and what to do about them: the token endpoint's OAuth2 errors,
a disabled client, and its "logged out" answer.
"""

from __future__ import annotations

from cwsctl.protocols.oauth2.tokens import (
    GRANT_AUTHORIZATION_CODE,
    GRANT_CLIENT_CREDENTIALS,
    GRANT_REFRESH_TOKEN,
)
from cwsctl.targets.openemr.scopes import ENABLE_CLIENT_PLACE, SYSTEM_SCOPES_PLACE

#: What OpenEMR says (7.0.3 in error_description, 7.0.4+ in message) to a user token whose
#: sign-in was logged out or revoked (BearerTokenAuthorizationStrategy).
LOGGED_OUT_TEXT = "Refresh Token revoked or logged out"
DISABLED_CLIENT = "disabled or unknown client"


def disabled_client_hint() -> str:
    """What to do about a 401 ``invalid_client``."""
    return (
        "a new client stays disabled until an OpenEMR administrator enables it "
        f"({ENABLE_CLIENT_PLACE}); if it is enabled, check the client id (cwsctl oauth "
        "register) and that its JWKS's first key is this profile's key (cwsctl keys jwks)"
    )


def _refusal_hint(grant: str, error: str, status: int, detail: str) -> str:
    if error == "invalid_client" and status == 401:
        return disabled_client_hint()
    if error == "invalid_client":
        return (
            "OpenEMR refused the client assertion: check that the client's JWKS starts with this "
            "key (cwsctl keys jwks; OpenEMR ignores kid and uses the first key), that the clock "
            "is right, and that the token endpoint is the one OpenEMR names (cwsctl oauth "
            "discover); or register again: cwsctl oauth register"
        )
    if error == "invalid_request" and grant != GRANT_AUTHORIZATION_CODE:
        return (
            "OpenEMR refused the request or its client assertion (7.0.4+ also want iat within "
            "the last 5 minutes and exp within 24 hours): check this machine's clock"
        )
    if error == "invalid_scope":
        system = (
            " system/ scopes exist only after an administrator turned them on "
            f"({SYSTEM_SCOPES_PLACE})"
        )
        return (
            "OpenEMR does not offer a scope the client asks for (its hint names it): register "
            "with scopes it offers (cwsctl oauth register --scope '…')."
            + (system if "system/" in detail or grant == GRANT_CLIENT_CREDENTIALS else "")
        )
    if grant == GRANT_REFRESH_TOKEN:
        return "the refresh token is no longer valid: run cwsctl oauth login on a terminal"
    if grant == GRANT_AUTHORIZATION_CODE:
        return "run cwsctl oauth login again (the code is single-use and short-lived)"
    if error in ("unauthorized_client", "unsupported_grant_type"):
        return (
            "this client may not get tokens without a person: run cwsctl oauth login on a "
            "terminal once (cron then uses the refresh token)"
        )
    return (
        "check the client in OpenEMR (cwsctl oauth register) or sign in again (cwsctl oauth login)"
    )


def refusal_hint(grant: str, error: str, status: int, detail: str) -> tuple[str, str]:
    """OpenEMR's reading of a token endpoint's refusal (an
    :data:`~cwsctl.protocols.oauth2.token_response.ExplainRefusal`): a 401 ``invalid_client``
    is a disabled or unknown client; and what to do."""
    note = DISABLED_CLIENT if error == "invalid_client" and status == 401 else ""
    return note, _refusal_hint(grant, error, status, detail)

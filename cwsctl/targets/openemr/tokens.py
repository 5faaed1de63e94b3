"""Tokens for an openemr profile: its :class:`TokenSource`, the bearer ``httpx.Auth`` and the sign-in
URL, with OpenEMR's reading of refusals and of its "logged out" answer.

OpenEMR identifies a backend client by a JWT it signs with its own RSA key (``private_key_jwt``,
RS384, RFC 7523): the server checks it against the first RSA key of the JWK Set the client
registered (it ignores ``kid``). cwsctl uses the profile's key for it, so an OpenEMR profile needs
nothing but its key and a client id.

Grants: the stored refresh token (from ``cwsctl oauth login``) first; otherwise the
client-credentials grant, asking only for the profile's ``system/*`` scopes, and only when it has
some (OpenEMR gives that grant to its system user, which can read and export but never write).
With neither, or when the refresh token is refused or revoked,
:class:`~cwsctl.core.errors.LoginRequiredError` (exit 3) names ``cwsctl -p PROFILE oauth login``.
OpenEMR's 400 "Refresh Token revoked or logged out" raises LoginRequiredError too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from cwsctl.core.errors import LoginRequiredError
from cwsctl.core.profile import Profile, Store
from cwsctl.protocols.oauth2 import grants, login, token_response
from cwsctl.protocols.oauth2.bearer import OAuthBearerAuth
from cwsctl.protocols.oauth2.tokens import GrantResult, TokenStore
from cwsctl.targets.openemr.client_id import require_client_id, require_openemr
from cwsctl.targets.openemr.endpoints import endpoints
from cwsctl.targets.openemr.hints import LOGGED_OUT_TEXT, refusal_hint
from cwsctl.targets.openemr.scopes import effective_scope, login_hint, system_scope
from cwsctl.targets.openemr.settings import OpenEmrSettings


class TokenSource(grants.TokenSource):
    """The :class:`~cwsctl.protocols.oauth2.grants.TokenSource` of an openemr profile: its client
    id, endpoints, scopes and token file, with OpenEMR's hints.

    ``grant=GRANT_CLIENT_CREDENTIALS`` makes a source that only ever uses the client-credentials
    grant with the profile's ``system/*`` scopes (a bulk export runs as OpenEMR's system user).
    """

    def __init__(
        self,
        profile: Profile,
        store: Store,
        private_key: rsa.RSAPrivateKey,
        *,
        clock: Callable[[], float] = time.time,
        grant: str | None = None,
    ) -> None:
        require_openemr(profile)
        self.profile = profile
        self.scope = effective_scope(profile)
        super().__init__(
            OpenEmrSettings.of(profile).client_id,
            endpoints(profile),
            private_key,
            TokenStore(store, profile.name),
            name=profile.name,
            credentials_scope=system_scope(self.scope),
            login_hint=login_hint(profile.name),
            explain=refusal_hint,
            clock=clock,
            grant=grant,
        )

    @property
    def client_id(self) -> str:
        """The profile's client id (ProfileError naming ``cwsctl oauth register`` if none)."""
        return require_client_id(self.profile)


def parse_token_response(response: httpx.Response, grant: str, *, sent_at: float) -> GrantResult:
    """A token endpoint's answer read as OpenEMR means it (see
    :func:`cwsctl.protocols.oauth2.token_response.parse_token_response`)."""
    return token_response.parse_token_response(
        response, grant, sent_at=sent_at, explain=refusal_hint
    )


def check_signed_in(source: grants.TokenSource, response: httpx.Response) -> None:
    """OpenEMR's 400 "Refresh Token revoked or logged out": forget the sign-in and raise
    LoginRequiredError (the :class:`OAuthBearerAuth` hook)."""
    if response.status_code != 400 or LOGGED_OUT_TEXT.encode() not in response.content:
        return
    _, detail = token_response.refusal_detail(token_response.json_object(response))
    if LOGGED_OUT_TEXT not in detail:
        return
    source.forget_sign_in()
    name = source.name
    raise LoginRequiredError(
        f'OpenEMR answered 400 "{LOGGED_OUT_TEXT}": the sign-in of profile {name!r} '
        "was revoked or its user logged out",
        hint=login_hint(name),
    )


def bearer_auth(profile: Profile, store: Store, private_key: rsa.RSAPrivateKey) -> httpx.Auth:
    """The ``httpx.Auth`` for an openemr profile (ProfileError at once if it has no client id)."""
    source = TokenSource(profile, store, private_key)
    require_client_id(profile)
    return OAuthBearerAuth(source, check_signed_in)


def authorize_url(
    profile: Profile, *, redirect_uri: str, state: str, code_challenge: str, scope: str
) -> str:
    """The authorization request URL for the person to open (``aud`` = the FHIR base)."""
    ends = endpoints(profile)
    return login.authorization_url(
        ends.authorize,
        client_id=require_client_id(profile),
        redirect_uri=redirect_uri,
        state=state,
        code_challenge=code_challenge,
        scope=scope,
        audience=ends.fhir_base,
    )

"""An openehr profile's credentials: none, HTTP basic as its username, or a bearer token."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import httpx

from cwsctl.core.transport.http_auth import authorized_copy

if TYPE_CHECKING:
    from collections.abc import Generator

    from cwsctl.core.profile import Profile, Store


class SecretAuth(httpx.Auth):
    """Basic or bearer credentials, sent on a copy of each request (never on the caller's)."""

    def __init__(self, authorization: str) -> None:
        self._authorization = authorization

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Send the request with the credentials."""
        yield authorized_copy(request, self._authorization)

    def __repr__(self) -> str:
        return "SecretAuth(<redacted>)"


def basic_authorization(username: str, password: str) -> str:
    """The ``Authorization`` value of HTTP basic auth (RFC 7617)."""
    userpass = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {userpass}"


def credentials(profile: Profile, store: Store) -> httpx.Auth | None:
    """The profile's ``auth``: nothing, basic as ``username``, or a bearer token."""
    from cwsctl.core.errors import ProfileError
    from cwsctl.core.secrets import SECRET_FOR_AUTH, check_secret, resolve_secret
    from cwsctl.targets.openehr.settings import OpenEhrSettings

    settings = OpenEhrSettings.of(profile)
    if settings.auth == "none":
        return None
    secret = resolve_secret(store, profile.name, SECRET_FOR_AUTH[settings.auth])
    if settings.auth == "basic":
        check_secret(settings.username, "username", f"profile {profile.name!r}", ProfileError)
        return SecretAuth(basic_authorization(settings.username, secret))
    return SecretAuth(f"Bearer {secret}")

"""Registering cwsctl with OpenEMR (RFC 7591 dynamic registration, private_key_jwt, the 7.0.3
retry), and recording a client id and its registration secrets in the profile.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import httpx

from cwsctl.core.errors import ClientRequestError, ServerFailureError
from cwsctl.core.profile import Profile, Store
from cwsctl.core.text import printable
from cwsctl.protocols.oauth2.token_response import json_object, refusal_detail
from cwsctl.protocols.oauth2.tokens import TokenStore
from cwsctl.targets.openemr.client_id import client_id_problem, require_openemr
from cwsctl.targets.openemr.endpoints import endpoints
from cwsctl.targets.openemr.scopes import DEFAULT_SCOPE, SYSTEM_SCOPES_PLACE
from cwsctl.targets.openemr.settings import OpenEmrSettings


def registration_document(
    *,
    client_name: str,
    scope: str,
    redirect_uris: list[str],
    contacts: list[str] | None = None,
    jwks: dict[str, Any] | None = None,
    jwks_uri: str | None = None,
) -> dict[str, Any]:
    """The dynamic-registration request: a private client authenticating with private_key_jwt,
    with its JWK Set inline (``jwks``) or by reference (``jwks_uri``)."""
    if (jwks is None) == (jwks_uri is None):
        raise ValueError("give exactly one of jwks and jwks_uri")
    document: dict[str, Any] = {
        "application_type": "private",
        "token_endpoint_auth_method": "private_key_jwt",
        "client_name": client_name,
        "redirect_uris": list(redirect_uris),
        "contacts": list(contacts or []),
        "scope": scope,
    }
    if jwks is not None:
        document["jwks"] = jwks
    else:
        document["jwks_uri"] = jwks_uri
    return document


@dataclass
class Registration:
    """What a registration answer holds (secrets kept out of ``repr``)."""

    client_id: str
    scope: str
    registration_access_token: str | None
    registration_client_uri: str | None
    client_secret: str | None
    #: True when OpenEMR (7.0.3) refused ``token_endpoint_auth_method: private_key_jwt`` and the
    #: registration was sent again without it (OpenEMR never stores the method anyway).
    sent_without_auth_method: bool = False

    def __repr__(self) -> str:
        return (
            f"Registration(client_id={self.client_id!r}, scope={self.scope!r}, <secrets redacted>)"
        )

    @property
    def starts_disabled(self) -> bool:
        """OpenEMR disables a new confidential client holding any user/ or system/ scope until
        an administrator enables it (with manual approval on, every new client)."""
        return any(s.startswith(("user/", "system/")) for s in self.scope.split())

    def secrets(self) -> dict[str, str]:
        """The parts to keep in the profile's 0600 token file."""
        kept = {"client_id": self.client_id}
        for name in ("registration_access_token", "registration_client_uri", "client_secret"):
            value = getattr(self, name)
            if value:
                kept[name] = value
        return kept


def _registration_request(url: str, document: dict[str, Any]) -> httpx.Request:
    return httpx.Request(
        "POST",
        url,
        json=document,
        headers={"Accept": "application/json", "Accept-Encoding": "identity"},
    )


def _unsupported_auth_method(response: httpx.Response, document: dict[str, Any]) -> bool:
    if response.status_code != 400 or "token_endpoint_auth_method" not in document:
        return False
    _, detail = refusal_detail(json_object(response))
    return "unsupported token_endpoint_auth_method" in detail.lower()


def registration_flow(
    profile: Profile, document: dict[str, Any]
) -> Generator[httpx.Request, httpx.Response, Registration]:
    """POST ``document`` to the profile's registration endpoint; return the registration.

    OpenEMR 7.0.3 refuses ``token_endpoint_auth_method: private_key_jwt`` as unsupported (7.0.4
    accepts it); on that refusal the document is sent once more without the method, which
    OpenEMR never stores (any client with a JWKS may send assertions).
    """
    url = endpoints(profile).registration
    response = yield _registration_request(url, document)
    retried = False
    if _unsupported_auth_method(response, document):
        document = {k: v for k, v in document.items() if k != "token_endpoint_auth_method"}
        retried = True
        response.close()
        response = yield _registration_request(url, document)
    body = json_object(response)
    status = response.status_code
    if 400 <= status < 500:
        error, detail = refusal_detail(body)
        message = f"OpenEMR refused the registration: {error or f'HTTP {status}'}"
        hint = "check the scopes, redirect URIs and that the site accepts registrations"
        if error == "invalid_scope" or "system/" in detail:
            hint = (
                "register only scopes OpenEMR offers (its hint names the one refused), e.g. the "
                f"default: {DEFAULT_SCOPE}"
            )
            if "system/" in str(document.get("scope", "")):
                hint += (
                    "; system/ scopes exist only after an administrator turned them on "
                    f"({SYSTEM_SCOPES_PLACE})"
                )
        raise ClientRequestError(message + (f" ({detail})" if detail else ""), hint=hint)
    if status >= 500:
        raise ServerFailureError(f"the registration endpoint failed: HTTP {status}")
    client_id = body.get("client_id") if body else None
    if status not in (200, 201) or body is None or not isinstance(client_id, str) or not client_id:
        raise ServerFailureError(
            f"the registration endpoint answered HTTP {status} without a client_id"
        )
    problem = client_id_problem(client_id)
    if problem is not None:
        raise ServerFailureError(
            f"the server answered an unusable client_id: {problem}: {printable(client_id)}",
            hint="nothing was stored; ask the server's administrators, or register the client "
            "in OpenEMR's admin pages and record it with: cwsctl oauth register --client-id ID",
        )

    def optional(name: str) -> str | None:
        value = body.get(name) if body else None
        return value if isinstance(value, str) and value else None

    return Registration(
        client_id=client_id,
        scope=str(body.get("scope") or document.get("scope", "")),
        registration_access_token=optional("registration_access_token"),
        registration_client_uri=optional("registration_client_uri"),
        client_secret=optional("client_secret"),
        sent_without_auth_method=retried,
    )


def record_client(
    store: Store, profile_name: str, client_id: str, *, scope: str | None = None
) -> Profile:
    """Set the profile's client id (and scope, if given) in config.toml; forget old tokens."""
    config = store.load()
    profile = store.get_profile(profile_name, config)
    require_openemr(profile)
    settings = OpenEmrSettings.of(profile)
    changed = settings.client_id != client_id
    settings.client_id = client_id
    if scope:
        settings.scope = scope
    store.save(config)
    if changed:
        TokenStore(store, profile_name).clear_grants()
    return profile


def record_registration(store: Store, profile_name: str, registration: Registration) -> Profile:
    """Keep a registration: client id and scope in the profile, its secrets in the 0600 file."""
    profile = record_client(
        store, profile_name, registration.client_id, scope=registration.scope or None
    )
    TokenStore(store, profile_name).save_registration(registration.secrets())
    return profile

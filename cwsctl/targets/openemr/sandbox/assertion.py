"""The OpenEMR flavour's client-assertion check (``private_key_jwt``, RFC 7523).

Mirrors OpenEMR's ``JWTClientAuthenticationService`` (``JWTCAS`` in ``cwsctl/sandbox/README.md``
and ``../shared/servers/OPENEMR.md``): the client looked up by ``sub``, 7.0.4+'s
``performAdditionalValidations``, an RS384 signature checked with the first RSA key of the
client's JWKS (``kid`` ignored; a ``jwks_uri`` fetched only from a loopback address), ``iss``,
``aud`` = the token URL, ``iat``/``nbf``/``exp`` with lcobucci's ``LooseValidAt`` leeway, and a
``jti`` never used twice.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt

from cwsctl.core.urls import is_loopback
from cwsctl.targets.openemr.sandbox.scopes import V703
from cwsctl.targets.openemr.sandbox.state import (
    INVALID_REQUEST,
    OAuthError,
    OpenEmrState,
    invalid_client,
)
from cwsctl.targets.openemr.sandbox.store import Client

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHM = "RS384"
#: Clock skew allowed on an assertion's iat, nbf and exp (lcobucci LooseValidAt, 60 s).
LEEWAY_S = 60
#: 7.0.4+: an assertion's exp at most this far ahead, its iat at most this far behind.
MAX_EXP_AHEAD_S = 24 * 3600
MAX_IAT_BEHIND_S = 300
_JWKS_DEADLINE_S = 5.0
_MAX_JWKS_BYTES = 64 * 1024


async def assertion_client(state: OpenEmrState, form: dict[str, str], token_url: str) -> Client:
    """The enabled client whose RS384 assertion passes OpenEMR's checks."""
    assertion = form.get("client_assertion", "")
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise invalid_client("the client_assertion is not a JWT") from None
    subject = claims.get("sub")
    client = state.store.client(subject) if isinstance(subject, str) and subject else None
    if client is None:
        raise invalid_client("the assertion's sub is not a registered client_id")
    if not client.enabled:
        raise invalid_client("the client is disabled: an administrator must enable it")
    now = time.time()
    if state.version != V703:  # performAdditionalValidations: 400 invalid_request
        form_id = form.get("client_id")
        if claims.get("iss") != subject or (form_id and form_id != subject):
            raise OAuthError(
                "invalid_request", INVALID_REQUEST, 400, reason="sub, iss and client_id differ"
            )
        exp = claims.get("exp")
        if isinstance(exp, (int, float)) and exp > now + MAX_EXP_AHEAD_S:
            raise OAuthError(
                "invalid_request", INVALID_REQUEST, 400, reason="exp is over 24 h ahead"
            )
        iat = claims.get("iat")
        if isinstance(iat, (int, float)) and iat < now - MAX_IAT_BEHIND_S:
            raise OAuthError(
                "invalid_request", INVALID_REQUEST, 400, reason="iat is over 5 min old"
            )
    key = _first_rsa_key(await _jwks(client))
    failed = _constraint_failure(assertion, header, claims, key, client.client_id, token_url)
    if failed:
        raise invalid_client(failed, 400)
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise invalid_client("the assertion has no jti", 400)
    exp = claims.get("exp")
    keep_until = (float(exp) if isinstance(exp, (int, float)) else now + 3600) + LEEWAY_S
    if not state.store.remember_jti(client.client_id, jti, keep_until):
        raise invalid_client("the assertion's jti was used before", 400)
    return client


async def _jwks(client: Client) -> dict[str, Any]:
    jwks = client.metadata.get("jwks")
    if isinstance(jwks, dict):
        return jwks
    uri = client.metadata.get("jwks_uri")
    if not isinstance(uri, str) or not uri:
        raise invalid_client("the client registered no jwks or jwks_uri")
    return await _fetch_jwks(uri)


def _constraint_failure(
    assertion: str,
    header: dict[str, Any],
    claims: dict[str, Any],
    key: Any,
    client_id: str,
    token_url: str,
) -> str:
    """Why the assertion fails JWTCAS's constraints (signed RS384, issuer, audience, time)."""
    if header.get("alg") != ASSERTION_ALGORITHM:
        return f"the assertion must be signed {ASSERTION_ALGORITHM}"
    try:
        jwt.decode(
            assertion,
            key=key,
            algorithms=[ASSERTION_ALGORITHM],
            options={
                "verify_aud": False,
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
                "verify_iss": False,
            },
        )
    except jwt.PyJWTError:
        return "the signature does not verify with the first RSA key of the client's JWKS"
    if claims.get("iss") != client_id:
        return "iss is not the client_id"
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if token_url not in audiences:
        return f"aud is not {token_url}"
    now = time.time()
    for name, late in (("iat", False), ("nbf", False), ("exp", True)):
        value = claims.get(name)
        if value is None:
            if name == "iat":
                return "the assertion has no iat"
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{name} is not a number"
        if late and value < now - LEEWAY_S:
            return "the assertion has expired (exp)"
        if not late and value > now + LEEWAY_S:
            return f"{name} is in the future"
    return ""


def _first_rsa_key(jwks: dict[str, Any]) -> Any:
    """The first RSA key of ``jwks`` (``kid`` is never looked at), as a public key object."""
    keys = jwks.get("keys")
    raw = (
        next(
            (k for k in keys if isinstance(k, dict) and k.get("kty") == "RSA"),
            None,
        )
        if isinstance(keys, list)
        else None
    )
    if raw is None:
        raise invalid_client("the client's JWKS has no RSA key")
    try:
        return jwt.PyJWK(raw, ASSERTION_ALGORITHM).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        raise invalid_client("the first RSA key of the client's JWKS is not usable") from None


async def _fetch_jwks(uri: str) -> dict[str, Any]:
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not is_loopback(parts.hostname or ""):
        raise invalid_client("jwks_uri is not on a loopback address: the sandbox fetches nothing")

    async def fetch() -> bytes:
        http = httpx.AsyncClient(timeout=5.0, follow_redirects=False, trust_env=False)
        async with http, http.stream("GET", uri, headers={"Accept": "application/json"}) as answer:
            if answer.status_code != 200:
                raise invalid_client(f"jwks_uri answered {answer.status_code}")
            body = b""
            async for chunk in answer.aiter_bytes():
                body += chunk
                if len(body) > _MAX_JWKS_BYTES:
                    raise invalid_client("jwks_uri answered more than 64 KiB")
            return body

    try:
        # One deadline for the whole fetch: httpx's timeout is per read.
        body = await asyncio.wait_for(fetch(), _JWKS_DEADLINE_S)
    except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
        raise invalid_client("jwks_uri took too long") from None
    except httpx.HTTPError as exc:
        raise invalid_client(f"jwks_uri could not be fetched: {type(exc).__name__}") from None
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise invalid_client("jwks_uri did not answer JSON") from None
    if not isinstance(document, dict):
        raise invalid_client("jwks_uri did not answer a JWK Set")
    return document

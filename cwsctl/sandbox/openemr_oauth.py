"""The OpenEMR flavour's OAuth2 endpoints: registration, authorize, token (and bearer checks).

- ``POST /oauth2/{site}/registration`` (RFC 7591, as OpenEMR answers it: 200): confidential
  (``application_type`` "private") clients with ``token_endpoint_auth_method``
  "private_key_jwt" and their public keys inline (``jwks``) or at a loopback ``jwks_uri`` (the
  sandbox fetches nothing from the network). ``redirect_uris`` is required, as in OpenEMR.
- ``GET /oauth2/{site}/authorize``: approves at once (no login page: a test stand-in) and
  redirects with a single-use code (60 s); PKCE S256 required; a loopback redirect URI matches
  a registered one whatever its port (RFC 8252 §7.3).
- ``POST /oauth2/{site}/token``: grants client_credentials, authorization_code and
  refresh_token, the client always authenticated by an RS384 JWT assertion (RFC 7523) checked
  with PyJWT against the client's registered JWKS. Refresh tokens are issued only with the
  ``offline_access`` scope (as OpenEMR does) and rotate on every use.

Refusals are ``{"error", "error_description"}`` with RFC 6749 codes: ``invalid_client`` 401
(league/oauth2-server's status, which OpenEMR uses), everything else 400.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from cwsctl.core.urls import is_loopback
from cwsctl.sandbox.openemr_store import ACCESS, CODE, REFRESH, OpenEmrStore

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHM = "RS384"
#: Clock skew allowed on an assertion's exp and iat.
LEEWAY_S = 30
#: Longest an assertion may live (exp - iat), as SMART backend services require.
MAX_ASSERTION_LIFETIME_S = 300
DEFAULT_TOKEN_LIFETIME_S = 60
REFRESH_LIFETIME_S = 90 * 24 * 3600
CODE_LIFETIME_S = 60
#: OpenEMR's scope for a client that registers without one.
DEFAULT_SCOPE = "openid email phone address api:oemr api:fhir api:port"
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")
_PKCE = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
_PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")
_JWKS_DEADLINE_S = 5.0
_MAX_JWKS_BYTES = 64 * 1024
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass
class OpenEmrState:
    """What the OpenEMR endpoints share: the store, the site name, the token lifetime."""

    store: OpenEmrStore
    site: str = "default"
    token_lifetime: int = DEFAULT_TOKEN_LIFETIME_S


class OAuthError(Exception):
    """A refusal: ``error`` code, description, HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def response(self) -> Response:
        """The JSON answer."""
        return JSONResponse(
            {"error": self.error, "error_description": self.description},
            self.status,
            headers=_NO_STORE,
        )


def _client_error(description: str) -> OAuthError:
    return OAuthError("invalid_client", description, 401)


class OAuthEndpoints:
    """The ``/oauth2/{site}/…`` endpoints over one :class:`OpenEmrState`."""

    def __init__(self, state: OpenEmrState) -> None:
        self.state = state
        self.store = state.store

    # -- registration -------------------------------------------------------------------------
    async def registration(self, request: Request) -> Response:
        try:
            metadata = _registration_metadata(request, await request.body())
        except OAuthError as exc:
            return exc.response()
        client_id = secrets.token_urlsafe(32)
        registration_token = secrets.token_urlsafe(32)
        metadata = {"client_id": client_id, "client_id_issued_at": int(time.time()), **metadata}
        self.store.add_client(client_id, metadata, registration_token)
        answer = {**metadata, "registration_access_token": registration_token}
        return JSONResponse(answer, 200, headers=_NO_STORE)

    # -- authorize ----------------------------------------------------------------------------
    async def authorize(self, request: Request) -> Response:
        params = request.query_params
        client_id = params.get("client_id", "")
        client = self.store.client(client_id) if client_id else None
        if client is None:  # never redirect to an unchecked URI (RFC 6749 §4.1.2.1)
            return OAuthError("invalid_client", "unknown or missing client_id", 400).response()
        redirect_uri = params.get("redirect_uri", "")
        if not redirect_uri:
            return OAuthError("invalid_request", "redirect_uri is required").response()
        if not any(_redirect_matches(r, redirect_uri) for r in client.get("redirect_uris", [])):
            return OAuthError(
                "invalid_request", "redirect_uri is not one registered for this client"
            ).response()
        state = params.get("state")

        def refuse(error: str, description: str) -> Response:
            query = {"error": error, "error_description": description}
            if state is not None:
                query["state"] = state
            return RedirectResponse(_with_query(redirect_uri, query), 302)

        if params.get("response_type") != "code":
            return refuse("unsupported_response_type", "response_type must be code")
        challenge = params.get("code_challenge", "")
        if not _PKCE.match(challenge):
            return refuse(
                "invalid_request", "a PKCE code_challenge (43-128 characters) is required"
            )
        if params.get("code_challenge_method") != "S256":
            return refuse("invalid_request", "code_challenge_method must be S256")
        fhir_base = str(request.base_url).rstrip("/") + f"/apis/{self.state.site}/fhir"
        aud = params.get("aud")
        if aud is not None and aud.rstrip("/") != fhir_base:
            return refuse("invalid_request", f"aud must be {fhir_base}")
        try:
            scope = _granted_scope(params.get("scope"), client["scope"])
        except OAuthError as exc:
            return refuse(exc.error, exc.description)
        code = secrets.token_urlsafe(32)
        self.store.add_token(
            code,
            CODE,
            client_id,
            scope,
            CODE_LIFETIME_S,
            {"redirect_uri": redirect_uri, "code_challenge": challenge},
        )
        query = {"code": code}
        if state is not None:
            query["state"] = state
        return RedirectResponse(_with_query(redirect_uri, query), 302)

    # -- token --------------------------------------------------------------------------------
    async def token(self, request: Request) -> Response:
        try:
            form = _form(request, await request.body())
            grant_type = form.get("grant_type")
            if not grant_type:
                raise OAuthError("invalid_request", "grant_type is required")
            if grant_type not in ("client_credentials", "authorization_code", "refresh_token"):
                raise OAuthError(
                    "unsupported_grant_type",
                    f"grant_type {grant_type[:40]!r} is not supported here: use "
                    "client_credentials, authorization_code or refresh_token",
                )
            token_url = str(request.base_url).rstrip("/") + f"/oauth2/{self.state.site}/token"
            client = await self._authenticate_client(form, token_url)
            if grant_type == "client_credentials":
                scope = _granted_scope(form.get("scope"), client["scope"])
                return self._issue(client["client_id"], scope, refresh=False)
            if grant_type == "authorization_code":
                return self._code_grant(form, client)
            return self._refresh_grant(form, client)
        except OAuthError as exc:
            return exc.response()

    def _code_grant(self, form: dict[str, str], client: dict[str, Any]) -> Response:
        code = form.get("code")
        if not code:
            raise OAuthError("invalid_request", "code is required")
        grant = self.store.take_token(code, CODE)  # single use, whatever happens next
        if grant is None or grant.client_id != client["client_id"]:
            raise OAuthError("invalid_grant", "the code is unknown, used, expired or not yours")
        if form.get("redirect_uri") != grant.extra["redirect_uri"]:
            raise OAuthError("invalid_grant", "redirect_uri differs from the authorize request's")
        verifier = form.get("code_verifier", "")
        if not verifier:
            raise OAuthError("invalid_grant", "code_verifier is required (PKCE)")
        if _s256(verifier) != grant.extra["code_challenge"]:
            raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
        return self._issue(client["client_id"], grant.scope, refresh=True)

    def _refresh_grant(self, form: dict[str, str], client: dict[str, Any]) -> Response:
        refresh_token = form.get("refresh_token")
        if not refresh_token:
            raise OAuthError("invalid_request", "refresh_token is required")
        grant = self.store.take_token(refresh_token, REFRESH)  # rotation: the old one is gone
        if grant is None or grant.client_id != client["client_id"]:
            raise OAuthError(
                "invalid_grant", "the refresh token is unknown, used, expired or not yours"
            )
        scope = _granted_scope(form.get("scope"), grant.scope)
        return self._issue(client["client_id"], scope, refresh=True)

    def _issue(self, client_id: str, scope: str, *, refresh: bool) -> Response:
        lifetime = self.state.token_lifetime
        access_token = secrets.token_urlsafe(32)
        self.store.add_token(access_token, ACCESS, client_id, scope, lifetime)
        answer: dict[str, Any] = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": scope,
        }
        if refresh and "offline_access" in scope.split():
            refresh_token = secrets.token_urlsafe(48)
            self.store.add_token(refresh_token, REFRESH, client_id, scope, REFRESH_LIFETIME_S)
            answer["refresh_token"] = refresh_token
        return JSONResponse(answer, 200, headers=_NO_STORE)

    async def _authenticate_client(self, form: dict[str, str], token_url: str) -> dict[str, Any]:
        """The registered client whose RS384 assertion in ``form`` verifies (RFC 7523 §3)."""
        if form.get("client_assertion_type") != JWT_BEARER or not form.get("client_assertion"):
            raise _client_error(
                "client authentication failed: send client_assertion_type="
                f"{JWT_BEARER} and a client_assertion (private_key_jwt)"
            )
        assertion = form["client_assertion"]
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise _client_error(f"the client assertion is not a JWT: {exc}") from None
        if header.get("alg") != ASSERTION_ALGORITHM:
            raise _client_error(
                f"the client assertion must be signed {ASSERTION_ALGORITHM}, "
                f"not {str(header.get('alg'))[:20]}"
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _client_error("the client assertion's header has no kid")
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or not issuer:
            raise _client_error("the client assertion has no iss")
        if form.get("client_id") and form["client_id"] != issuer:
            raise _client_error("client_id differs from the assertion's iss")
        client = self.store.client(issuer)
        if client is None:
            raise _client_error("iss is not a registered client_id")
        key = await self._client_key(client, kid)
        try:
            claims = jwt.decode(
                assertion,
                key=key,
                algorithms=[ASSERTION_ALGORITHM],
                audience=token_url,
                issuer=issuer,
                leeway=LEEWAY_S,
                options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise _client_error("the client assertion has expired (exp)") from None
        except jwt.InvalidAudienceError:
            raise _client_error(f"the client assertion's aud must be {token_url}") from None
        except jwt.ImmatureSignatureError:
            raise _client_error("the client assertion is issued in the future (iat)") from None
        except jwt.InvalidSignatureError:
            raise _client_error(
                f"the client assertion's signature does not verify with key {kid!r}"
            ) from None
        except jwt.PyJWTError as exc:
            raise _client_error(f"the client assertion is invalid: {exc}") from None
        if claims["sub"] != issuer:
            raise _client_error("the client assertion's sub must equal its iss (the client_id)")
        if claims["exp"] - claims["iat"] > MAX_ASSERTION_LIFETIME_S:
            raise _client_error("the client assertion's exp is more than 5 minutes after its iat")
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti:
            raise _client_error("the client assertion's jti must be a non-empty string")
        if not self.store.remember_jti(issuer, jti, float(claims["exp"]) + LEEWAY_S):
            raise _client_error("the client assertion's jti was already used: replayed assertion")
        return client

    async def _client_key(self, client: dict[str, Any], kid: str) -> Any:
        """The public key with ``kid`` in the client's JWKS (inline, or fetched from loopback)."""
        jwks = client.get("jwks")
        if jwks is None:
            jwks = await _fetch_jwks(client["jwks_uri"])
        raw = next(
            (k for k in jwks.get("keys", []) if isinstance(k, dict) and k.get("kid") == kid), None
        )
        if raw is None:
            raise _client_error(f"no key with kid {kid[:80]!r} is registered for this client")
        if raw.get("kty") != "RSA" or raw.get("use") not in (None, "sig"):
            raise _client_error(f"key {kid[:80]!r} is not an RSA signing key")
        if raw.get("alg") not in (None, ASSERTION_ALGORITHM):
            raise _client_error(f"key {kid[:80]!r} is declared for {str(raw['alg'])[:20]}")
        try:
            jwk = jwt.PyJWK(raw, ASSERTION_ALGORITHM)
        except jwt.PyJWTError as exc:
            raise _client_error(f"key {kid[:80]!r} is not usable: {exc}") from None
        return jwk.key  # the key itself: a PyJWK would impose its own (default RS256) algorithm


def bearer_grant(store: OpenEmrStore, authorization: list[str]) -> tuple[str | None, str | None]:
    """Check ``Authorization`` values: (client_id, None) or (None, why it is refused).

    ``why`` is None-and-None for a request with no bearer token at all: the caller then answers
    without an error code, as RFC 6750 §3.1 asks.
    """
    if not authorization:
        return None, None
    if len(authorization) > 1:
        return None, "more than one Authorization header"
    scheme, _, token = authorization[0].strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None, "the Authorization header must be 'Bearer ACCESS_TOKEN'"
    grant = store.token(token.strip(), ACCESS)
    if grant is None:
        return None, "the access token is invalid, expired or revoked"
    return grant.client_id, None


# -- helpers -----------------------------------------------------------------------------------
def _registration_metadata(request: Request, body: bytes) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("application/json"):
        raise OAuthError("invalid_client_metadata", "Content-Type must be application/json")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise OAuthError("invalid_client_metadata", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise OAuthError("invalid_client_metadata", "the body must be a JSON object")
    application_type = data.get("application_type", "private")
    if application_type != "private":
        raise OAuthError(
            "invalid_client_metadata",
            "this sandbox registers confidential clients only: application_type 'private'",
        )
    method = data.get("token_endpoint_auth_method")
    if method != "private_key_jwt":
        raise OAuthError(
            "invalid_client_metadata",
            "this sandbox supports token_endpoint_auth_method 'private_key_jwt' only",
        )
    metadata: dict[str, Any] = {
        "application_type": application_type,
        "token_endpoint_auth_method": method,
    }
    jwks, jwks_uri = data.get("jwks"), data.get("jwks_uri")
    if (jwks is None) == (jwks_uri is None):
        raise OAuthError(
            "invalid_client_metadata", "private_key_jwt needs exactly one of jwks and jwks_uri"
        )
    if jwks is not None:
        metadata["jwks"] = _checked_jwks(jwks)
    else:
        if not isinstance(jwks_uri, str) or not _loopback_http_url(jwks_uri):
            raise OAuthError(
                "invalid_client_metadata",
                "jwks_uri must be an http(s) URL on a loopback address: the sandbox does not "
                "fetch from the network (send the keys inline as jwks instead)",
            )
        metadata["jwks_uri"] = jwks_uri
    redirect_uris = data.get("redirect_uris")
    if (
        not isinstance(redirect_uris, list)
        or not redirect_uris
        or not all(isinstance(u, str) and _absolute_uri(u) for u in redirect_uris)
    ):
        raise OAuthError(
            "invalid_redirect_uri",
            "redirect_uris must be a non-empty array of absolute URIs without a fragment",
        )
    metadata["redirect_uris"] = redirect_uris
    for name in ("contacts", "post_logout_redirect_uris"):
        value = data.get(name)
        if value is not None:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise OAuthError("invalid_client_metadata", f"{name} must be an array of strings")
            metadata[name] = value
    client_name = data.get("client_name")
    if client_name is not None:
        if not isinstance(client_name, str):
            raise OAuthError("invalid_client_metadata", "client_name must be a string")
        metadata["client_name"] = client_name
    scope = data.get("scope", DEFAULT_SCOPE)
    if not isinstance(scope, str) or not _scopes(scope):
        raise OAuthError("invalid_client_metadata", "scope must be space-separated scope tokens")
    metadata["scope"] = " ".join(_scopes(scope))
    return metadata


def _checked_jwks(jwks: Any) -> dict[str, Any]:
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise OAuthError("invalid_client_metadata", "jwks must be a JWK Set: {'keys': [...]}")
    for key in jwks["keys"]:
        if not isinstance(key, dict):
            raise OAuthError("invalid_client_metadata", "every member of jwks.keys must be a JWK")
        if any(member in key for member in _PRIVATE_JWK_MEMBERS):
            raise OAuthError(
                "invalid_client_metadata",
                "jwks holds private key material: register only the public keys",
            )
        if not isinstance(key.get("kid"), str) or not key["kid"]:
            raise OAuthError(
                "invalid_client_metadata", "every key in jwks needs a kid (assertions name it)"
            )
    try:
        key_set = jwt.PyJWKSet.from_dict(jwks)
    except jwt.PyJWTError as exc:
        raise OAuthError("invalid_client_metadata", f"jwks is not usable: {exc}") from None
    if not any(k.key_type == "RSA" for k in key_set.keys):
        raise OAuthError("invalid_client_metadata", "jwks has no RSA key (RS384 needs one)")
    return jwks


async def _fetch_jwks(uri: str) -> dict[str, Any]:
    async def fetch() -> bytes:
        http = httpx.AsyncClient(timeout=5.0, follow_redirects=False, trust_env=False)
        async with http, http.stream("GET", uri, headers={"Accept": "application/json"}) as answer:
            if answer.status_code != 200:
                raise _client_error(f"jwks_uri answered {answer.status_code}")
            body = b""
            async for chunk in answer.aiter_bytes():
                body += chunk
                if len(body) > _MAX_JWKS_BYTES:
                    raise _client_error("jwks_uri answered more than 64 KiB")
            return body

    try:
        # One deadline for the whole fetch: httpx's timeout is per read, and a trickling
        # server would otherwise hold the token request open indefinitely.
        body = await asyncio.wait_for(fetch(), _JWKS_DEADLINE_S)
    except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
        raise _client_error(f"jwks_uri took longer than {_JWKS_DEADLINE_S:g} s") from None
    except httpx.HTTPError as exc:
        raise _client_error(f"jwks_uri could not be fetched: {type(exc).__name__}") from None
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _client_error("jwks_uri did not answer JSON") from None
    try:
        return _checked_jwks(document)
    except OAuthError as exc:
        raise _client_error(f"jwks_uri: {exc.description}") from None


def _form(request: Request, body: bytes) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise OAuthError(
            "invalid_request", "the token request must be application/x-www-form-urlencoded"
        )
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise OAuthError("invalid_request", "the form is not UTF-8") from None
    repeated = sorted(name for name, values in parsed.items() if len(values) > 1)
    if repeated:  # RFC 6749 §3.2
        raise OAuthError("invalid_request", f"parameter {repeated[0][:40]!r} is repeated")
    return {name: values[0] for name, values in parsed.items()}


def _scopes(text: str) -> list[str]:
    tokens = text.split(" ")
    if not text or not all(_SCOPE_TOKEN.match(t) for t in tokens):
        return []
    return list(dict.fromkeys(tokens))


def _granted_scope(requested: str | None, allowed: str) -> str:
    """``requested`` if every scope in it is ``allowed`` (all of ``allowed`` when absent)."""
    if requested is None or requested == "":
        return allowed
    wanted = _scopes(requested)
    if not wanted:
        raise OAuthError("invalid_scope", "scope must be space-separated scope tokens")
    extra = [s for s in wanted if s not in allowed.split()]
    if extra:
        raise OAuthError("invalid_scope", f"scope {extra[0][:80]!r} was not registered or granted")
    return " ".join(wanted)


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _absolute_uri(uri: str) -> bool:
    parts = urlsplit(uri)
    return bool(parts.scheme and (parts.netloc or parts.path)) and "#" not in uri


def _loopback_http_url(uri: str) -> bool:
    parts = urlsplit(uri)
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and is_loopback(parts.hostname or "")
    )


_LOOPBACK_REDIRECT_HOSTS = ("127.0.0.1", "localhost", "::1")


def _redirect_matches(registered: str, given: str) -> bool:
    """Exact match, or the same loopback redirect on any port (RFC 8252 §7.3)."""
    if registered == given:
        return True
    r, g = urlsplit(registered), urlsplit(given)
    try:
        r.port, g.port  # noqa: B018 - a malformed port raises
    except ValueError:
        return False
    return (
        r.scheme == g.scheme == "http"
        and r.hostname in _LOOPBACK_REDIRECT_HOSTS
        and r.hostname == g.hostname
        and r.path == g.path
        and r.query == g.query
        and not g.fragment
    )


def _with_query(uri: str, params: dict[str, str]) -> str:
    separator = "&" if urlsplit(uri).query else "?"
    return uri + separator + urlencode(params)

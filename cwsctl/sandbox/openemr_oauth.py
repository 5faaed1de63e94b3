"""The OpenEMR flavour's OAuth2 server: discovery, registration, authorize, token.

Modelled on OpenEMR 7.0.3 and 7.0.4+ (``version``), as ``../shared/servers/OPENEMR.md`` and
``cwsctl/sandbox/README.md`` describe them; every refusal is league/oauth2-server's body
``{"error", "error_description", "hint"?, "message"}``. In short:

- URLs are built from the *site address*: the Site Address Override when one is configured
  (``site_address``), else the scheme the request came in with plus its ``X-Forwarded-Host`` or
  ``Host``. The token URL built from it is the only ``aud`` an assertion may carry.
- ``POST /oauth2/{site}/registration``: JSON only; scopes validated against the server's list
  (:mod:`.openemr_scopes`); ``system/`` needs a JWKS; 7.0.3 refuses
  ``token_endpoint_auth_method: private_key_jwt``. A confidential client with a ``user/`` or
  ``system/`` scope (any client, with ``manual_approval``) starts *disabled*: every grant answers
  401 ``invalid_client`` until :meth:`OpenEmrStore.set_enabled`.
- ``GET /oauth2/{site}/authorize`` approves at once (no login or consent page) and opens a
  trusted-user session for the grant.
- ``POST /oauth2/{site}/token``: client_credentials (an RS384 assertion verified with the first
  RSA key of the client's JWKS, ``kid`` ignored; a token of the *system* user, 300 s, no refresh
  token), authorization_code and refresh_token (tokens of the *user*, 3600 s, a refresh token
  with ``offline_access``; a refresh revokes the old refresh and access tokens).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import jwt
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from cwsctl.core.urls import is_loopback
from cwsctl.sandbox.openemr_scopes import V703, VERSIONS, server_scopes, unsupported
from cwsctl.sandbox.openemr_store import (
    ACCESS,
    CODE,
    REFRESH,
    SYSTEM,
    USERS,
    Client,
    OpenEmrStore,
    digest,
)

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHM = "RS384"
#: Clock skew allowed on an assertion's iat, nbf and exp (lcobucci LooseValidAt, 60 s).
LEEWAY_S = 60
#: 7.0.4+: an assertion's exp at most this far ahead, its iat at most this far behind.
MAX_EXP_AHEAD_S = 24 * 3600
MAX_IAT_BEHIND_S = 300
#: OpenEMR's lifetimes: client-credentials access tokens, user access tokens, refresh, code.
CLIENT_CREDENTIALS_LIFETIME_S = 300
USER_ACCESS_LIFETIME_S = 3600
REFRESH_LIFETIME_S = 90 * 24 * 3600
CODE_LIFETIME_S = 60
#: token_endpoint_auth_method values registration accepts, per version (never stored).
AUTH_METHODS = {
    V703: ("client_secret_basic", "client_secret_post"),
    "7.0.4": ("client_secret_basic", "client_secret_post", "private_key_jwt"),
}
#: league/oauth2-server's messages.
INVALID_CLIENT = "Client authentication failed"
INVALID_SCOPE = "The requested scope is invalid, unknown, or malformed"
INVALID_REQUEST = (
    "The request is missing a required parameter, includes an invalid parameter value, "
    "includes a parameter more than once, or is otherwise malformed."
)
INVALID_GRANT = (
    "The provided authorization grant (e.g., authorization code, resource owner credentials) "
    "or refresh token is invalid, expired, revoked, does not match the redirection URI used in "
    "the authorization request, or was issued to another client."
)
INVALID_REFRESH = "The refresh token is invalid."
UNSUPPORTED_GRANT = "The authorization grant type is not supported by the authorization server."
_REGISTRATION_KEYS = (
    "contacts",
    "application_type",
    "client_name",
    "logo_uri",
    "redirect_uris",
    "post_logout_redirect_uris",
    "token_endpoint_auth_method",
    "policy_uri",
    "tos_uri",
    "jwks_uri",
    "jwks",
    "sector_identifier_uri",
    "subject_type",
    "default_max_age",
    "require_auth_time",
    "default_acr_values",
    "initiate_login_uri",
    "request_uris",
    "response_types",
    "grant_types",
    "scope",
)
_JWKS_DEADLINE_S = 5.0
_MAX_JWKS_BYTES = 64 * 1024
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
#: What PHP sends when a script sets no Content-Type (7.0.3's registration, empty 401s).
PHP_DEFAULT_TYPE = "text/html; charset=UTF-8"


@dataclass
class OpenEmrState:
    """The server's configuration (OpenEMR's globals) and store, shared by every endpoint."""

    store: OpenEmrStore
    site: str = "default"
    version: str = "7.0.4"
    site_address: str | None = None
    system_scopes: bool = False
    manual_approval: bool = False
    token_lifetime: int | None = None
    log_refusals: bool = True

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise ValueError(f"version must be one of {', '.join(VERSIONS)}, not {self.version!r}")

    def base(self, request: Request) -> str:
        """OpenEMR's site address: the override, else scheme + X-Forwarded-Host or Host."""
        if self.site_address:
            return self.site_address.rstrip("/")
        host = request.headers.get("x-forwarded-host") or request.headers.get("host", "")
        return f"{request.url.scheme}://{host}"

    def token_url(self, request: Request) -> str:
        """The token URL assertions must name as ``aud``."""
        return f"{self.base(request)}/oauth2/{self.site}/token"

    def fhir_base(self, request: Request) -> str:
        """``{site address}/apis/{site}/fhir``."""
        return f"{self.base(request)}/apis/{self.site}/fhir"

    def access_lifetime(self, role: str) -> int:
        """Seconds an access token of ``role`` lives (an override applies to both)."""
        if self.token_lifetime is not None:
            return self.token_lifetime
        return CLIENT_CREDENTIALS_LIFETIME_S if role == SYSTEM else USER_ACCESS_LIFETIME_S


class OAuthError(Exception):
    """A league/oauth2-server refusal; ``reason`` goes to the sandbox's log, not the body."""

    def __init__(
        self,
        error: str,
        message: str,
        status: int = 400,
        hint: str | None = None,
        *,
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.error = error
        self.message = message
        self.status = status
        self.hint = hint
        self.reason = reason or hint or message

    def body(self) -> dict[str, Any]:
        """``{"error", "error_description", "hint"?, "message"}``."""
        document: dict[str, Any] = {"error": self.error, "error_description": self.message}
        if self.hint is not None:
            document["hint"] = self.hint
        document["message"] = self.message
        return document

    def response(self) -> Response:
        """The JSON answer."""
        return JSONResponse(self.body(), self.status, headers=_NO_STORE)


def invalid_client(reason: str, status: int = 401) -> OAuthError:
    """``invalid_client``: 401 (unknown, disabled, no usable key) or 400 (a failed assertion)."""
    return OAuthError("invalid_client", INVALID_CLIENT, status, reason=reason)


def invalid_request(parameter: str, hint: str | None = None) -> OAuthError:
    """league's ``invalidRequest``: hint "Check the `X` parameter" unless given."""
    return OAuthError(
        "invalid_request", INVALID_REQUEST, 400, hint or f"Check the `{parameter}` parameter"
    )


def invalid_scope(scope: str) -> OAuthError:
    """league's ``invalidScope``: hint "Check the `X` scope"."""
    return OAuthError("invalid_scope", INVALID_SCOPE, 400, f"Check the `{scope}` scope")


class OAuthEndpoints:
    """The ``/oauth2/{site}/…`` endpoints and the SMART configuration over one state."""

    def __init__(self, state: OpenEmrState) -> None:
        self.state = state
        self.store = state.store

    def _refused(self, exc: OAuthError, where: str) -> Response:
        if self.state.log_refusals:
            reason = "".join(c if c.isprintable() else "?" for c in exc.reason)[:200]
            sys.stderr.write(f"cwsctl-sandbox: {where} refused: {reason}\n")
        return exc.response()

    # -- discovery ----------------------------------------------------------------------------
    async def openid_configuration(self, request: Request) -> Response:
        base = f"{self.state.base(request)}/oauth2/{self.state.site}"
        document = {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "jwks_uri": f"{base}/jwk",
            "userinfo_endpoint": f"{base}/userinfo",
            "registration_endpoint": f"{base}/registration",
            "end_session_endpoint": f"{base}/logout",
            "introspection_endpoint": f"{base}/introspect",
            "scopes_supported": self._scopes_supported(),
            "response_types_supported": ["code", "token", "id_token", "code token"],
            "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post"],
        }
        return JSONResponse(document)

    async def smart_configuration(self, request: Request) -> Response:
        base = f"{self.state.base(request)}/oauth2/{self.state.site}"
        document: dict[str, Any] = {}
        if self.state.version != V703:
            document["issuer"] = self.state.fhir_base(request)
        document |= {
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
        }
        if self.state.version == V703:
            document["registration_endpoint"] = f"{base}/registration"
        else:
            document["token_endpoint_auth_methods_supported"] = [
                "client_secret_basic",
                "private_key_jwt",
            ]
        document |= {
            "introspection_endpoint": f"{base}/introspect",
            "scopes_supported": self._scopes_supported(),
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "capabilities": [
                "launch-standalone",
                "client-public",
                "client-confidential-symmetric",
                "client-confidential-asymmetric",
                "permission-offline",
                "permission-user",
            ],
        }
        return JSONResponse(document)

    def _scopes_supported(self) -> list[str]:
        return sorted(server_scopes(self.state.version, self.state.system_scopes))

    # -- registration -------------------------------------------------------------------------
    async def registration(self, request: Request) -> Response:
        try:
            answer, stored, enabled = self._register(request, await request.body())
        except OAuthError as exc:
            return self._refused(exc, "registration")
        self.store.add_client(
            answer["client_id"], stored, answer["registration_access_token"], enabled=enabled
        )
        if self.state.version == V703:  # PSR-7 withHeader results discarded: PHP's defaults
            return Response(json.dumps(answer), 200, media_type=PHP_DEFAULT_TYPE)
        return JSONResponse(answer, 200, headers=_NO_STORE)

    def _register(
        self, request: Request, body: bytes
    ) -> tuple[dict[str, Any], dict[str, Any], bool]:
        def metadata_error(message: str) -> OAuthError:
            return OAuthError("invalid_client_metadata", message, 400)

        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("application/json"):
            raise metadata_error("Unexpected content type")
        if not body:
            raise metadata_error("No JSON body")
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise metadata_error("Invalid JSON") from None
        if not data or not isinstance(data, dict):
            raise metadata_error("Invalid JSON")
        raw_scope = data.get("scope")
        scope: str = raw_scope if isinstance(raw_scope, str) else ""
        private = data.get("application_type") == "private"
        if private:
            if "system/" in scope and not data.get("jwks") and not data.get("jwks_uri"):
                raise metadata_error("jwks is invalid")
        elif "system/" in scope or "user/" in scope or "offline_access" in scope:
            raise metadata_error(
                "system, user scopes, and offline_access are only allowed for confidential clients"
            )
        bad = unsupported(scope.split(" "), self.state.version, self.state.system_scopes)
        if bad is not None:
            raise invalid_scope(bad)
        method = data.get("token_endpoint_auth_method")
        if method is not None and method not in AUTH_METHODS[self.state.version]:
            raise metadata_error(f"Unsupported token_endpoint_auth_method value : {method}")
        redirect_uris = data.get("redirect_uris")
        if not isinstance(redirect_uris, list) or not all(
            isinstance(u, str) for u in redirect_uris
        ):
            raise OAuthError("invalid_redirect_uri", "redirect_uris is invalid", 400)
        if "post_logout_redirect_uris" in data and not data["post_logout_redirect_uris"]:
            raise metadata_error("post_logout_redirect_uris is invalid")
        jwks = data.get("jwks")
        if jwks is not None and not isinstance(jwks, dict):
            raise metadata_error("jwks is invalid")
        client_id = _b64(secrets.token_bytes(32))
        client_secret = _b64(secrets.token_bytes(64)) if private else ""
        registration_token = _b64(secrets.token_bytes(32))
        base = f"{self.state.base(request)}/oauth2/{self.state.site}"
        params: dict[str, Any] = {"client_role": "user" if private else "patient"}
        params |= {key: data[key] for key in _REGISTRATION_KEYS if data.get(key) is not None}
        answer = {
            "client_id": client_id,
            "client_secret": client_secret,
            "registration_access_token": registration_token,
            "registration_client_uri": f"{base}/client/{_b64(secrets.token_bytes(16))}",
            "client_id_issued_at": int(time.time()),
            "client_secret_expires_at": 0,
            **params,
        }
        stored = {**params, "scope": scope}
        if client_secret:
            stored["client_secret_sha256"] = digest(client_secret)
        restricted = private and ("user/" in scope or "system/" in scope)
        enabled = not (self.state.manual_approval or restricted)
        return answer, stored, enabled

    # -- authorize ----------------------------------------------------------------------------
    async def authorize(self, request: Request) -> Response:
        try:
            return self._authorize(request)
        except OAuthError as exc:
            return self._refused(exc, "authorize")

    def _authorize(self, request: Request) -> Response:
        params = request.query_params
        if params.get("response_type") != "code":
            raise OAuthError("unsupported_grant_type", UNSUPPORTED_GRANT, 400)
        client_id = params.get("client_id", "")
        if not client_id:
            raise invalid_request("client_id")
        client = self.store.client(client_id)
        if client is None:
            raise invalid_client("unknown client_id")
        if not client.enabled:
            raise invalid_client("the client is disabled: an administrator must enable it")
        registered = client.metadata.get("redirect_uris", [])
        redirect_uri = params.get("redirect_uri")
        if redirect_uri is None:
            if len(registered) != 1:
                raise invalid_request("redirect_uri")
            redirect_uri = registered[0]
        elif not any(_redirect_matches(r, redirect_uri) for r in registered):
            raise invalid_client("redirect_uri is not one registered for this client")
        state = params.get("state")

        def redirect(query: dict[str, str]) -> Response:
            if state is not None:
                query["state"] = state
            return RedirectResponse(_with_query(redirect_uri, query), 302)

        requested = [s for s in params.get("scope", "").split(" ") if s]
        bad = unsupported(requested, self.state.version, self.state.system_scopes)
        if bad is not None:
            error = invalid_scope(bad)
            return redirect({"error": error.error, "error_description": error.message})
        aud = params.get("aud")
        if aud is not None:
            base = self.state.base(request)
            allowed = (
                self.state.fhir_base(request),
                f"{base}/apis/{self.state.site}/api",
                f"{base}/portal",
            )
            if aud not in allowed:
                raise invalid_request("aud", "Aud parameter did not match authorized server")
        challenge = params.get("code_challenge")
        if challenge is not None:
            if params.get("code_challenge_method", "plain") != "S256":
                raise invalid_request("code_challenge_method", "Code challenge method must be S256")
            if not (43 <= len(challenge) <= 128):
                raise invalid_request("code_challenge", "Code challenge must follow RFC 7636")
        elif client.metadata.get("client_role") != "user":
            raise invalid_request(
                "code_challenge", "Code challenge must be provided for public clients"
            )
        # Auto-approved: every requested scope the client registered (others are dropped, as
        # ScopeRepository::finalizeScopes does); no login page, no consent page.
        held = client.scope.split()
        scope = " ".join(s for s in requested if s in held)
        code = secrets.token_urlsafe(32)
        self.store.add_token(
            code,
            CODE,
            client_id,
            scope,
            CODE_LIFETIME_S,
            role=USERS,
            extra={"redirect_uri": params.get("redirect_uri"), "code_challenge": challenge},
        )
        return redirect({"code": code})

    # -- token --------------------------------------------------------------------------------
    async def token(self, request: Request) -> Response:
        try:
            form = _form(request, await request.body())
            grant_type = form.get("grant_type")
            if grant_type == "client_credentials":
                return await self._client_credentials(form, request)
            if grant_type == "authorization_code":
                client = await self._grant_client(form, request)
                return self._code_grant(form, client)
            if grant_type == "refresh_token":
                client = await self._grant_client(form, request)
                return self._refresh_grant(form, client)
            raise OAuthError(
                "unsupported_grant_type",
                UNSUPPORTED_GRANT,
                400,
                "Check that all required parameters have been provided",
            )
        except OAuthError as exc:
            return self._refused(exc, "token")

    async def _client_credentials(self, form: dict[str, str], request: Request) -> Response:
        if form.get("client_assertion_type") != JWT_BEARER or not form.get("client_assertion"):
            raise invalid_client("client_credentials needs a jwt-bearer client_assertion")
        client = await self._assertion_client(form, self.state.token_url(request))
        requested = form.get("scope")
        held = client.scope.split()
        if requested is None:
            scope = client.scope  # chosen: no scope asked → the client's registered scopes
        else:
            wanted = [s for s in requested.split(" ") if s]
            bad = unsupported(wanted, self.state.version, self.state.system_scopes)
            if bad is not None:
                raise invalid_scope(bad)
            scope = " ".join(s for s in wanted if s in held)
        return self._issue(client.client_id, scope, SYSTEM, None, refresh=False)

    async def _grant_client(self, form: dict[str, str], request: Request) -> Client:
        """The client of a code or refresh grant (7.0.4+: its assertion checked, if sent)."""
        has_assertion = bool(form.get("client_assertion"))
        if has_assertion and self.state.version != V703:
            if form.get("client_assertion_type") != JWT_BEARER:
                raise invalid_request("client_assertion_type")
            return await self._assertion_client(form, self.state.token_url(request))
        # 7.0.3 ignores an assertion here; everyone: client_id, and the secret when sent.
        client_id, secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("authorization", "")
        if basic[:6].lower() == "basic ":
            try:
                user, _, password = base64.b64decode(basic[6:]).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            client_id, secret = client_id or user, secret or password
        if not client_id:
            raise invalid_request("client_id")
        client = self.store.client(client_id)
        if client is None:
            raise invalid_client("unknown client_id")
        if secret:
            expected = client.metadata.get("client_secret_sha256")
            if expected is None or not secrets.compare_digest(digest(secret), expected):
                raise invalid_client("client_secret does not match")
        if not client.enabled:
            raise invalid_client("the client is disabled: an administrator must enable it")
        return client

    async def _assertion_client(self, form: dict[str, str], token_url: str) -> Client:
        """The enabled client whose RS384 assertion passes OpenEMR's checks."""
        assertion = form.get("client_assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise invalid_client("the client_assertion is not a JWT") from None
        subject = claims.get("sub")
        client = self.store.client(subject) if isinstance(subject, str) and subject else None
        if client is None:
            raise invalid_client("the assertion's sub is not a registered client_id")
        if not client.enabled:
            raise invalid_client("the client is disabled: an administrator must enable it")
        now = time.time()
        if self.state.version != V703:  # performAdditionalValidations: 400 invalid_request
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
        key = _first_rsa_key(await self._jwks(client))
        failed = _constraint_failure(assertion, header, claims, key, client.client_id, token_url)
        if failed:
            raise invalid_client(failed, 400)
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise invalid_client("the assertion has no jti", 400)
        exp = claims.get("exp")
        keep_until = (float(exp) if isinstance(exp, (int, float)) else now + 3600) + LEEWAY_S
        if not self.store.remember_jti(client.client_id, jti, keep_until):
            raise invalid_client("the assertion's jti was used before", 400)
        return client

    async def _jwks(self, client: Client) -> dict[str, Any]:
        jwks = client.metadata.get("jwks")
        if isinstance(jwks, dict):
            return jwks
        uri = client.metadata.get("jwks_uri")
        if not isinstance(uri, str) or not uri:
            raise invalid_client("the client registered no jwks or jwks_uri")
        return await _fetch_jwks(uri)

    def _code_grant(self, form: dict[str, str], client: Client) -> Response:
        code = form.get("code")
        if not code:
            raise invalid_request("code")
        grant = self.store.take_token(code, CODE)
        if grant is None:
            raise invalid_request("code", "Cannot decrypt the authorization code")
        if grant.client_id != client.client_id:
            raise invalid_request("code", "Authorization code was not issued to this client")
        if grant.revoked:
            raise OAuthError(
                "invalid_grant", INVALID_GRANT, 400, "Authorization code has been revoked"
            )
        if grant.expires_at <= time.time():
            raise invalid_request("code", "Authorization code has expired")
        sent_redirect = grant.extra.get("redirect_uri")
        if sent_redirect is not None and form.get("redirect_uri") != sent_redirect:
            raise invalid_request("redirect_uri", "Invalid redirect URI")
        challenge = grant.extra.get("code_challenge")
        if challenge is not None:
            verifier = form.get("code_verifier")
            if not verifier:
                raise invalid_request("code_verifier")
            if _s256(verifier) != challenge:
                raise OAuthError(
                    "invalid_grant", INVALID_GRANT, 400, "Failed to verify `code_verifier`."
                )
        session = self.store.open_session(client.client_id)
        return self._issue(client.client_id, grant.scope, USERS, session, refresh=True)

    def _refresh_grant(self, form: dict[str, str], client: Client) -> Response:
        refresh_token = form.get("refresh_token")
        if not refresh_token:
            raise invalid_request("refresh_token")

        def refused(hint: str) -> OAuthError:
            return OAuthError("invalid_grant", INVALID_REFRESH, 400, hint)

        grant = self.store.take_token(refresh_token, REFRESH)  # rotation: the old one is gone
        if grant is None:
            raise refused("Cannot decrypt the refresh token")
        if grant.client_id != client.client_id:
            raise refused("Token is not linked to client")
        if grant.expires_at <= time.time():
            raise refused("Token has expired")
        if grant.revoked or (grant.session and not self.store.session_active(grant.session)):
            raise refused("Token has been revoked")
        scope = grant.scope
        requested = form.get("scope")
        if requested:
            wanted = [s for s in requested.split(" ") if s]
            extra = [s for s in wanted if s not in grant.scope.split()]
            if extra:
                raise invalid_scope(extra[0])
            scope = " ".join(wanted)
        old_access = grant.extra.get("access")
        if isinstance(old_access, str):
            self.store.revoke_digest(old_access)
        return self._issue(client.client_id, scope, USERS, grant.session, refresh=True)

    def _issue(
        self, client_id: str, scope: str, role: str, session: str | None, *, refresh: bool
    ) -> Response:
        lifetime = self.state.access_lifetime(role)
        access_token = secrets.token_urlsafe(32)
        self.store.add_token(
            access_token, ACCESS, client_id, scope, lifetime, role=role, session=session
        )
        answer: dict[str, Any] = {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "access_token": access_token,
        }
        if refresh and "offline_access" in scope.split():
            refresh_token = secrets.token_urlsafe(48)
            self.store.add_token(
                refresh_token,
                REFRESH,
                client_id,
                scope,
                REFRESH_LIFETIME_S,
                role=role,
                session=session,
                extra={"access": digest(access_token)},
            )
            answer["refresh_token"] = refresh_token
        answer["scope"] = scope
        return JSONResponse(answer, 200, headers=_NO_STORE)


# -- helpers -----------------------------------------------------------------------------------
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


def _form(request: Request, body: bytes) -> dict[str, str]:
    """The form parameters (PHP's ``$_POST``: only a urlencoded body; a repeated name → last)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return {}
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError:
        return {}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _s256(verifier: str) -> str:
    return _b64(hashlib.sha256(verifier.encode("ascii", "replace")).digest())


_PORTLESS_LOOPBACK = ("127.0.0.1", "::1")


def _redirect_matches(registered: str, given: str) -> bool:
    """Exact, or (league 8.x) the same ``http://127.0.0.1`` / ``http://[::1]`` URI on any port."""
    if registered == given:
        return True
    r, g = urlsplit(registered), urlsplit(given)
    try:
        r.port, g.port  # noqa: B018 - a malformed port raises
    except ValueError:
        return False
    return (
        r.scheme == g.scheme == "http"
        and r.hostname in _PORTLESS_LOOPBACK
        and r.hostname == g.hostname
        and r.path == g.path
        and r.query == g.query
    )


def _with_query(uri: str, params: dict[str, str]) -> str:
    separator = "&" if urlsplit(uri).query else "?"
    return uri + separator + urlencode(params)

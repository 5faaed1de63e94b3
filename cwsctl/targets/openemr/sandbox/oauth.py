"""The OpenEMR flavour's OAuth2 server: discovery, registration, authorize, token.

Modelled on OpenEMR 7.0.3 and 7.0.4+ (``version``), as ``../shared/servers/OPENEMR.md`` and
``cwsctl/sandbox/README.md`` describe them; every refusal is league/oauth2-server's body
``{"error", "error_description", "hint"?, "message"}`` (:class:`~.state.OAuthError`,
beside the server's configuration in :mod:`.state`). In short:

- URLs are built from the *site address*: the Site Address Override when one is configured
  (``site_address``), else the scheme the request came in with plus its ``X-Forwarded-Host`` or
  ``Host``. The token URL built from it is the only ``aud`` an assertion may carry.
- ``POST /oauth2/{site}/registration``: JSON only; scopes validated against the server's list
  (:mod:`.scopes`); ``system/`` needs a JWKS; 7.0.3 refuses
  ``token_endpoint_auth_method: private_key_jwt``. A confidential client with a ``user/`` or
  ``system/`` scope (any client, with ``manual_approval``) starts *disabled*: every grant answers
  401 ``invalid_client`` until :meth:`OpenEmrStore.set_enabled`.
- ``GET /oauth2/{site}/authorize`` approves at once (no login or consent page) and opens a
  trusted-user session for the grant.
- ``POST /oauth2/{site}/token``: client_credentials (an RS384 assertion verified with the first
  RSA key of the client's JWKS, ``kid`` ignored, by :mod:`.assertion`; a token of the
  *system* user, 300 s, no refresh token), authorization_code and refresh_token (tokens of the
  *user*, 3600 s, a refresh token with ``offline_access``; a refresh revokes the old refresh and
  access tokens).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import sys
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from cwsctl.targets.openemr.sandbox.assertion import JWT_BEARER, assertion_client
from cwsctl.targets.openemr.sandbox.scopes import V703, server_scopes, unsupported
from cwsctl.targets.openemr.sandbox.state import (
    CODE_LIFETIME_S,
    INVALID_REQUEST,
    NO_STORE,
    PHP_DEFAULT_TYPE,
    REFRESH_LIFETIME_S,
    OAuthError,
    OpenEmrState,
    invalid_client,
)
from cwsctl.targets.openemr.sandbox.store import (
    ACCESS,
    CODE,
    REFRESH,
    SYSTEM,
    USERS,
    Client,
    digest,
)

#: token_endpoint_auth_method values registration accepts, per version (never stored).
AUTH_METHODS = {
    V703: ("client_secret_basic", "client_secret_post"),
    "7.0.4": ("client_secret_basic", "client_secret_post", "private_key_jwt"),
}
#: league/oauth2-server's messages.
INVALID_SCOPE = "The requested scope is invalid, unknown, or malformed"
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
        return JSONResponse(answer, 200, headers=NO_STORE)

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
        client = await assertion_client(self.state, form, self.state.token_url(request))
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
            return await assertion_client(self.state, form, self.state.token_url(request))
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
        return JSONResponse(answer, 200, headers=NO_STORE)


# -- helpers -----------------------------------------------------------------------------------
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

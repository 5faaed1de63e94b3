"""OpenEMR's OAuth2, client side: discovery, registration, client assertions, grants, the cache.

OpenEMR identifies a backend client by a JWT it signs with its own RSA key (``private_key_jwt``,
RS384, RFC 7523): the server checks it against the first RSA key of the JWK Set the client
registered (it ignores ``kid``). cwsctl uses the profile's key for it, so an OpenEMR profile needs
nothing but its key and a client id.

- **Discovery** (:func:`discovery_flow`): ``{url}/oauth2/{site}/.well-known/openid-configuration``
  and ``{url}/apis/{site}/fhir/.well-known/smart-configuration`` say the token, authorization and
  registration endpoints as OpenEMR builds them (from its Site Address, which may differ from the
  URL cwsctl was given). They are kept in the profile. Requests always go to the profile URL's
  scheme, host and port with the discovered *path*, so credentials never follow a host named by
  a document; the client assertion's ``aud`` is the discovered token endpoint, string for string.
- **Endpoints** (:func:`endpoints`): the discovered ones, else the documented paths
  ``{url}/oauth2/{site}/token``, ``…/registration``, ``…/authorize`` and ``{url}/apis/{site}/fhir``.
- **Client assertion** (:func:`client_assertion`): header ``alg`` RS384, ``typ`` JWT, ``kid`` as in
  :func:`cwsctl.core.jwks.key_id`; claims ``iss`` = ``sub`` = client id, ``aud`` = the token
  endpoint, ``iat`` now, ``exp`` ``ASSERTION_LIFETIME_S`` later (under the 5 minutes OpenEMR
  allows, leaving a minute for clock skew), a fresh uuid4 ``jti``. Signed by PyJWT.
- **Scopes**: :data:`DEFAULT_SCOPE` is what a default OpenEMR install accepts (FHIR, a user's
  patient read and write, a refresh token). ``system/*`` scopes exist only once an administrator
  enables them and are asked for only on request (:data:`SYSTEM_SCOPES`, :data:`EXPORT_SCOPES`);
  ``api:oemr`` (the Standard API) likewise.
- **Grants** (:class:`TokenSource`): the stored refresh token (from ``cwsctl oauth login``) first;
  otherwise the client-credentials grant, asking only for the profile's ``system/*`` scopes, and
  only when it has some (OpenEMR gives that grant to its system user, which can read and export
  but never write). With neither, or when the refresh token is refused or revoked,
  :class:`~cwsctl.core.errors.LoginRequiredError` (exit 3) names ``cwsctl -p PROFILE oauth login``.
- **Token cache** (:class:`TokenStore`): ``$CWSCTL_HOME/tokens/<profile>.json`` (mode 0600, in a
  0700 directory, replaced atomically) holds the access token with its expiry, the refresh token
  and the registration access token. An access token is reused until ``min(10 s, 10 % of its
  lifetime)`` before it expires (10 s for OpenEMR's 300-second client-credentials tokens and its
  one-hour user tokens). Tokens never appear in ``repr``, error messages or the audit log.
- **Requests** (:class:`OAuthBearerAuth`, built by :func:`bearer_auth`): an ``httpx.Auth`` that
  adds ``Authorization: Bearer …``. When no cached token is usable it *yields* the token request
  from its auth flow, so the token exchange goes through the same bounded client as the API
  request (same deadline, same size cap). A 401 answer gets one fresh token and one retry; once
  a renewal was refused too (OpenEMR answers 401 for a missing scope or a disabled client), the
  token source renews no more on a 401 for the rest of the run. OpenEMR's 400 "Refresh Token
  revoked or logged out" raises LoginRequiredError.
- **Login** (:class:`LoopbackReceiver`, :func:`pkce_pair`, :func:`authorize_url`): the
  authorization-code grant with PKCE (S256) and a redirect to ``http://127.0.0.1:PORT/callback``
  (RFC 8252 loopback redirect).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import queue
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from cwsctl.core.errors import (
    ClientRequestError,
    LocalKeyError,
    LoginRequiredError,
    NetworkError,
    ProfileError,
    ServerFailureError,
)
from cwsctl.core.files import (
    atomic_write,
    check_private_file,
    ensure_private_dir,
    exclusive_lock,
    no_core_dumps,
)
from cwsctl.core.headers import value_problem
from cwsctl.core.jsondoc import loads_json
from cwsctl.core.jwks import JWS_ALGORITHM, key_id
from cwsctl.core.profile import DISCOVERED_FIELDS, Profile, Store, validate_profile_name
from cwsctl.core.text import printable
from cwsctl.core.transport.bounded import DEFAULT_TIMEOUT, bounded_client
from cwsctl.core.transport.deadline import time_left
from cwsctl.core.transport.errors import network_error
from cwsctl.core.transport.http_auth import authorized_copy

#: Scopes asked for when the profile names none: FHIR, a signed-in user's patient read and
#: write, and a refresh token for cron (offline_access). A default OpenEMR install accepts each.
DEFAULT_SCOPE = "openid offline_access api:fhir user/Patient.read user/Patient.write"
#: Added by ``oauth register --standard-api``: OpenEMR's Standard API (/apis/SITE/api/…).
STANDARD_API_SCOPE = "api:oemr"
#: Added by ``oauth register --system-scopes``: the client-credentials grant (no person) may read
#: patients. Exists only once an administrator enabled system scopes (see SYSTEM_SCOPES_PLACE).
SYSTEM_SCOPES = ("system/Patient.read",)
#: Added by ``oauth register --export-scopes``: what a bulk FHIR export ($export) needs.
EXPORT_SCOPES = (
    "system/Patient.read",
    "system/*.$export",
    "system/Patient.$export",
    "system/Group.$export",
    "system/*.$bulkdata-status",
    "system/Binary.read",
)
#: Where an OpenEMR administrator turns on system/ scopes (until then: invalid_scope).
SYSTEM_SCOPES_PLACE = 'Administration → Config → Connectors → "Enable OpenEMR FHIR System Scopes"'
#: Where an OpenEMR administrator enables a newly registered confidential client.
ENABLE_CLIENT_PLACE = "Administration → System → API Clients → the client → Enable"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Seconds a client assertion is valid (OpenEMR refuses more than 300).
ASSERTION_LIFETIME_S = 240
MAX_ASSERTION_LIFETIME_S = 300
#: Lifetime assumed for a token whose answer has no ``expires_in`` (OpenEMR's client-credentials
#: tokens last 300 s; its user tokens an hour).
DEFAULT_TOKEN_LIFETIME_S = 300
#: The longest lifetime believed from an ``expires_in`` (a day; OpenEMR's tokens last an hour).
#: A missing, non-numeric, negative or non-finite one (1e999, "Infinity", NaN) gets the default.
MAX_TOKEN_LIFETIME_S = 24 * 3600
#: The largest access token taken (OpenEMR's JWTs are 1-2 KiB; servers refuse much larger
#: request heads anyway): a bigger one is refused rather than cached and sent with every request.
MAX_ACCESS_TOKEN_SIZE = 16 * 1024
#: Seconds the discovery documents may take (``profile init``, ``oauth discover``) by default.
DISCOVERY_TIMEOUT_S = 10.0
#: A cached token is reused until this long before it expires (or 10 % of its lifetime, if less).
REUSE_MARGIN_S = 10.0
CALLBACK_PATH = "/callback"
#: The redirect URI registered by default: loopback redirects match any port (RFC 8252 §7.3).
LOOPBACK_REDIRECT_URI = f"http://127.0.0.1{CALLBACK_PATH}"
TOKENS_DIR = "tokens"

GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_REFRESH_TOKEN = "refresh_token"  # noqa: S105 - a grant type name, not a secret
GRANT_AUTHORIZATION_CODE = "authorization_code"
#: The token file's entries: the access token of the usual grants, a refresh token, and the
#: client-credentials token of a source that never uses a person's sign-in (bulk export).
ACCESS, SYSTEM_ACCESS = "access", "system_access"
GRANT_SLOTS = (ACCESS, "refresh_token", SYSTEM_ACCESS)
#: What OpenEMR says (7.0.3 in error_description, 7.0.4+ in message) to a user token whose
#: sign-in was logged out or revoked (BearerTokenAuthorizationStrategy).
LOGGED_OUT_TEXT = "Refresh Token revoked or logged out"

T = TypeVar("T")
TokenFlow = Generator[httpx.Request, httpx.Response, "Token"]


# -- endpoints -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    """Where a profile's OAuth2 exchanges go.

    ``token``, ``registration`` and ``authorize`` are what cwsctl sends to (the profile URL's
    scheme, host and port); ``audience`` is the token endpoint as OpenEMR names it (the
    assertion's ``aud``) and ``fhir_base`` the FHIR base as OpenEMR names it (the authorization
    request's ``aud``). Without discovery both are built from the profile URL.
    """

    token: str
    registration: str
    authorize: str
    fhir_base: str
    audience: str
    discovered: bool = False


def documented_endpoints(url: str, site: str) -> dict[str, str]:
    """OpenEMR's documented endpoint URLs under base ``url`` for ``site``."""
    base = url.rstrip("/")
    site_part = quote(site or "default", safe="")
    oauth = f"{base}/oauth2/{site_part}"
    return {
        "token_endpoint": f"{oauth}/token",
        "registration_endpoint": f"{oauth}/registration",
        "authorization_endpoint": f"{oauth}/authorize",
        "fhir_base": f"{base}/apis/{site_part}/fhir",
    }


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (lower-cased scheme and host, as written otherwise)."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def at_origin(home: str, url: str) -> str:
    """``url``'s path and query on ``home``'s scheme, host and port: where a discovered
    endpoint is actually sent, so that no credential follows a host named by a document."""
    parts = urlsplit(url)
    path = parts.path or "/"
    return f"{origin(home)}{path}" + (f"?{parts.query}" if parts.query else "")


def endpoints(profile: Profile) -> Endpoints:
    """The OAuth2 endpoints of an openemr profile: the discovered ones, else the documented."""
    if not profile.url:
        raise ProfileError(
            f"profile {profile.name!r} has no URL",
            hint=f"set it: cwsctl profile init {profile.name} --kind openemr --url https://…",
        )
    documented = documented_endpoints(profile.url, profile.site)
    token = profile.token_endpoint or documented["token_endpoint"]
    registration = profile.registration_endpoint or documented["registration_endpoint"]
    authorize = profile.authorization_endpoint or documented["authorization_endpoint"]
    return Endpoints(
        token=at_origin(profile.url, token),
        registration=at_origin(profile.url, registration),
        authorize=at_origin(profile.url, authorize),
        fhir_base=profile.fhir_base or documented["fhir_base"],
        audience=token,
        discovered=bool(profile.token_endpoint),
    )


def site_address(profile: Profile) -> str | None:
    """The origin OpenEMR builds its URLs from (its Site Address), when discovery told it."""
    named = profile.token_endpoint or profile.issuer
    return origin(named) if named else None


def effective_scope(profile: Profile) -> str:
    """The scopes a profile asks for: its own, else :data:`DEFAULT_SCOPE`."""
    return " ".join(profile.scope.split()) or DEFAULT_SCOPE


def system_scope(scope: str) -> str:
    """The ``system/*`` scopes of ``scope`` (what the client-credentials grant may ask for)."""
    return " ".join(s for s in scope.split() if s.startswith("system/"))


def has_user_scope(scope: str) -> bool:
    """Whether ``scope`` holds a ``user/…`` scope (such a client writes as a signed-in user)."""
    return any(s.startswith("user/") for s in scope.split())


def user_scope(scope: str) -> str:
    """``scope`` without its ``system/*`` scopes (what a person's sign-in asks for)."""
    return " ".join(s for s in scope.split() if not s.startswith("system/"))


def with_scopes(scope: str, extra: list[str] | tuple[str, ...]) -> str:
    """``scope`` plus each of ``extra`` not in it yet, in order."""
    words = scope.split()
    return " ".join(words + [s for s in dict.fromkeys(extra) if s not in words])


def login_hint(profile_name: str) -> str:
    """The command that signs a person in for ``profile_name``."""
    return f"sign in as an OpenEMR user once: cwsctl -p {profile_name} oauth login"


# -- discovery -----------------------------------------------------------------------------


@dataclass
class Discovery:
    """What OpenEMR's two discovery documents said, and what could not be read."""

    token_endpoint: str = ""
    authorization_endpoint: str = ""
    registration_endpoint: str = ""
    fhir_base: str = ""
    issuer: str = ""
    auth_methods: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """True when both documents were read and named a token endpoint."""
        return not self.problems and bool(self.token_endpoint)


def discovery_urls(url: str, site: str) -> tuple[str, str]:
    """The OpenID configuration and SMART configuration URLs under ``url`` for ``site``."""
    ends = documented_endpoints(url, site)
    oauth = ends["token_endpoint"].removesuffix("/token")
    return (
        f"{oauth}/.well-known/openid-configuration",
        f"{ends['fhir_base']}/.well-known/smart-configuration",
    )


def _discovered_url(document: dict[str, Any], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str):
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or not value.isprintable():
        return ""
    return value


def discovery_flow(url: str, site: str) -> Generator[httpx.Request, httpx.Response, Discovery]:
    """GET both discovery documents (at ``url``'s host); return what they name.

    A document that cannot be read is noted in ``problems`` (nothing is raised for an answer);
    network failures surface from :func:`run_flow` as NetworkError.
    """
    found: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for label, address in zip(("openid", "smart"), discovery_urls(url, site), strict=True):
        response = yield httpx.Request(
            "GET", address, headers={"Accept": "application/json", "Accept-Encoding": "identity"}
        )
        body = _json_object(response)
        if response.status_code != 200 or body is None:
            problems.append(f"{urlsplit(address).path} answered HTTP {response.status_code}")
            continue
        found[label] = body
    openid, smart = found.get("openid", {}), found.get("smart", {})

    def first(name: str) -> str:
        return _discovered_url(openid, name) or _discovered_url(smart, name)

    token = first("token_endpoint")
    issuer = _discovered_url(openid, "issuer")
    fhir_base = _discovered_url(smart, "issuer")  # 7.0.4+: the FHIR base
    named = token or issuer
    if not fhir_base and named:
        # 7.0.3's SMART document has no issuer: the FHIR base sits beside /oauth2/{site}.
        site_part = quote(site or "default", safe="")
        marker = f"/oauth2/{site_part}"
        head = named.split(marker, 1)[0] if marker in named else ""
        fhir_base = f"{head}/apis/{site_part}/fhir" if head else ""
    methods = smart.get("token_endpoint_auth_methods_supported")
    return Discovery(
        token_endpoint=token,
        authorization_endpoint=first("authorization_endpoint"),
        registration_endpoint=first("registration_endpoint"),
        fhir_base=fhir_base,
        issuer=issuer,
        auth_methods=tuple(str(m) for m in methods) if isinstance(methods, list) else (),
        problems=tuple(problems) if token else (*problems, "no token_endpoint named"),
    )


def discover(
    url: str,
    site: str,
    *,
    timeout: float = DISCOVERY_TIMEOUT_S,
    max_response_size: int | None = 1 << 20,
) -> Discovery:
    """Read the discovery documents through a bounded client; an unreachable server or an
    unreadable answer gives a :class:`Discovery` whose ``problems`` say why (never raises for
    those, so the caller can fall back to the documented paths)."""
    try:
        return run_flow(
            discovery_flow(url, site), timeout=timeout, max_response_size=max_response_size
        )
    except NetworkError as exc:
        return Discovery(problems=(exc.message,))


def apply_discovery(profile: Profile, found: Discovery) -> bool:
    """Keep what ``found`` names in ``profile`` (all of it, or nothing when it named no token
    endpoint); True when the token endpoint changed."""
    before = profile.token_endpoint
    if not found.token_endpoint:
        for name in DISCOVERED_FIELDS:
            setattr(profile, name, "")
    else:
        profile.token_endpoint = found.token_endpoint
        profile.authorization_endpoint = found.authorization_endpoint
        profile.registration_endpoint = found.registration_endpoint
        profile.fhir_base = found.fhir_base
        profile.issuer = found.issuer
    return profile.token_endpoint != before


#: The longest OAuth client id cwsctl takes (OpenEMR's are 43 characters; RFC 7591 sets none).
MAX_CLIENT_ID = 255


def client_id_problem(client_id: str) -> str | None:
    """Why ``client_id`` is no usable OAuth client id, or None: the one rule for ``profile init
    --client-id``, ``oauth register --client-id``, a registration answer and a stored id.

    1 to 255 characters of printable ASCII without spaces (RFC 6749's VSCHAR less the space);
    a leading '-' is fine (OpenEMR's ids are base64url and may start with one).
    """
    if not client_id:
        return "it is empty"
    if len(client_id) > MAX_CLIENT_ID:
        return f"it is {len(client_id)} characters long (at most {MAX_CLIENT_ID})"
    for ch in client_id:
        if not "!" <= ch <= "~":
            shown = "a space" if ch == " " else printable(repr(ch))
            return f"it holds {shown} (only printable ASCII without spaces)"
    return None


def require_client_id(profile: Profile) -> str:
    """The profile's client id, or ProfileError naming the command that gets one (or fixes a
    stored id that breaks :func:`client_id_problem`'s rule)."""
    if not profile.client_id:
        raise ProfileError(
            f"profile {profile.name!r} has no OAuth client id",
            hint="register cwsctl with OpenEMR: cwsctl oauth register (or, for a client made in "
            "OpenEMR's admin pages: cwsctl oauth register --client-id ID)",
        )
    problem = client_id_problem(profile.client_id)
    if problem is not None:
        raise ProfileError(
            f"profile {profile.name!r} holds an unusable OAuth client id: {problem}",
            hint="register again (cwsctl oauth register) or record the right one: "
            "cwsctl oauth register --client-id ID",
        )
    return profile.client_id


def require_openemr(profile: Profile) -> None:
    """Refuse a profile of another kind with a hint."""
    if profile.kind != "openemr":
        raise ProfileError(
            f"profile {profile.name!r} is a {profile.kind} profile; OAuth2 is for openemr profiles",
            hint=f"make one: cwsctl profile init NAME --kind openemr --url https://… "
            f"(this is profile {profile.name!r})",
        )


# -- client assertion ----------------------------------------------------------------------


def client_assertion(
    private_key: rsa.RSAPrivateKey,
    client_id: str,
    audience: str,
    *,
    now: float | None = None,
    lifetime: int = ASSERTION_LIFETIME_S,
) -> str:
    """A compact JWS (RS384) proving ``client_id`` holds ``private_key``, for ``audience``.

    ``audience`` is the token endpoint URL. Every call gets a new ``jti``, so an assertion is
    never sent twice.
    """
    import jwt

    if not 0 < lifetime <= MAX_ASSERTION_LIFETIME_S:
        raise ValueError(f"assertion lifetime must be 1..{MAX_ASSERTION_LIFETIME_S} s")
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": issued,
        "exp": issued + lifetime,
        "jti": str(uuid.uuid4()),
    }
    headers = {"kid": key_id(private_key.public_key()), "typ": "JWT"}
    return jwt.encode(claims, private_key, algorithm=JWS_ALGORITHM, headers=headers)


# -- tokens and their cache ----------------------------------------------------------------


@dataclass
class Token:
    """An access token and when it stops being usable (times are Unix seconds)."""

    access_token: str
    token_type: str
    scope: str
    obtained_at: float
    expires_at: float

    def __repr__(self) -> str:  # never show the token itself
        return (
            f"Token(token_type={self.token_type!r}, scope={self.scope!r}, "
            f"expires_at={self.expires_at!r}, access_token=<redacted>)"
        )

    @property
    def lifetime(self) -> float:
        """Seconds between obtaining the token and its expiry."""
        return max(0.0, self.expires_at - self.obtained_at)

    def usable(self, now: float | None = None) -> bool:
        """True until :func:`reuse_margin` before the token expires."""
        now = time.time() if now is None else now
        return now < self.expires_at - reuse_margin(self.lifetime)

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value."""
        return f"Bearer {self.access_token}"

    def to_json(self) -> dict[str, Any]:
        """The cached form."""
        return {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "scope": self.scope,
            "obtained_at": self.obtained_at,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_json(cls, data: Any) -> Token | None:
        """The cached token, or None when the entry is not one."""
        if not isinstance(data, dict):
            return None
        try:
            token = cls(
                access_token=str(data["access_token"]),
                token_type=str(data.get("token_type", "Bearer")),
                scope=str(data.get("scope", "")),
                obtained_at=float(data["obtained_at"]),
                expires_at=float(data["expires_at"]),
            )
        except (KeyError, TypeError, ValueError):
            return None
        # A token that never expires (a cache written from an expires_in of 1e999) is none.
        finite = math.isfinite(token.obtained_at) and math.isfinite(token.expires_at)
        return token if finite else None


def reuse_margin(lifetime: float) -> float:
    """How long before expiry a token stops being reused: the smaller of 10 s and 10 %."""
    return min(REUSE_MARGIN_S, 0.1 * lifetime)


@dataclass
class GrantResult:
    """What a token endpoint granted."""

    token: Token
    refresh_token: str | None

    def __repr__(self) -> str:
        return f"GrantResult(token={self.token!r}, refresh_token={'<redacted>' if self.refresh_token else None})"


class TokenStore:
    """A profile's OAuth2 secrets on disk: ``$CWSCTL_HOME/tokens/<profile>.json``, mode 0600.

    The file holds the cached access token and the refresh token (both valid only for the
    ``client_id`` and token URL they were issued for: after a new registration or a URL change
    they are ignored) and the registration answer's secrets. Writers hold an exclusive lock on
    ``<profile>.lock`` beside it (see :meth:`locked`) so that two cron jobs do not both spend a
    rotating refresh token.
    """

    def __init__(self, store: Store, profile: str) -> None:
        self.directory = store.root / TOKENS_DIR
        validate_profile_name(profile)  # it becomes a file name
        self.path = self.directory / f"{profile}.json"
        self.lock_path = self.directory / f"{profile}.lock"

    def read(self) -> dict[str, Any]:
        """The whole file (empty when missing or unreadable as JSON).

        A file group or others can read or write is refused (exit 3, like a key): its tokens
        may have been copied, or planted."""
        check_private_file(self.path, what="token file")
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError:
            return {}  # a damaged cache only costs a new token
        no_core_dumps()  # tokens are in memory from now on
        try:
            data = json.loads(raw)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def write(self, data: dict[str, Any]) -> None:
        """Replace the file atomically (0600 in a 0700 directory)."""
        ensure_private_dir(self.directory)
        atomic_write(
            self.path,
            json.dumps(data, indent=1).encode("utf-8"),
            what="token file",
            error=LocalKeyError,
        )

    @contextlib.contextmanager
    def _updating(self) -> Iterator[dict[str, Any]]:
        """Read, let the caller change, and write the file under an exclusive lock of its own
        (``<profile>.json.lock``, not the grant lock: a grant holder writes too), so concurrent
        writers (a registration and a token refresh) never lose each other's change."""
        ensure_private_dir(self.directory)
        with exclusive_lock(self.directory / f"{self.path.name}.lock", error=LocalKeyError):
            data = self.read()
            yield data
            self.write(data)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the profile's token lock (an advisory ``flock``; a no-op where there is none),
        waiting at most until the exchange's deadline (or 60 s when there is none)."""
        ensure_private_dir(self.directory)
        with exclusive_lock(
            self.lock_path, error=LocalKeyError, wait=time_left() or 60.0, what="token lock"
        ):
            yield

    def _grants(self, client_id: str, token_url: str) -> dict[str, Any]:
        data = self.read()
        if data.get("client_id") != client_id or data.get("token_url") != token_url:
            return {}
        return data

    def access_token(self, client_id: str, token_url: str, slot: str = ACCESS) -> Token | None:
        """The cached access token for this client and token URL (usable or not), if any.

        ``slot`` :data:`SYSTEM_ACCESS` is the client-credentials token kept apart from a
        signed-in person's (see :class:`TokenSource`'s ``grant``)."""
        return Token.from_json(self._grants(client_id, token_url).get(slot))

    def refresh_token(self, client_id: str, token_url: str) -> str | None:
        """The stored refresh token for this client and token URL, if any."""
        value = self._grants(client_id, token_url).get("refresh_token")
        return value if isinstance(value, str) and value else None

    def save_grant(
        self, client_id: str, token_url: str, result: GrantResult, slot: str = ACCESS
    ) -> None:
        """Cache a granted access token (in ``slot``); keep (or replace, when rotated) the
        refresh token."""
        with self._updating() as data:
            if data.get("client_id") != client_id or data.get("token_url") != token_url:
                for name in GRANT_SLOTS[1:] if slot == ACCESS else GRANT_SLOTS:
                    data.pop(name, None)
            data.update({"client_id": client_id, "token_url": token_url})
            data[slot] = result.token.to_json()
            if result.refresh_token:
                data["refresh_token"] = result.refresh_token

    def drop_refresh_token(self) -> None:
        """Forget a refresh token the server refused."""
        with self._updating() as data:
            data.pop("refresh_token", None)

    def clear_grants(self) -> None:
        """Forget the access and refresh tokens (the registration secrets stay)."""
        with self._updating() as data:
            for name in (*GRANT_SLOTS, "client_id", "token_url"):
                data.pop(name, None)

    def registration(self) -> dict[str, Any]:
        """The stored registration secrets (``client_id``, ``registration_access_token`` …)."""
        value = self.read().get("registration")
        return value if isinstance(value, dict) else {}

    def save_registration(self, secrets_: dict[str, str]) -> None:
        """Store a registration answer's secrets."""
        with self._updating() as data:
            data["registration"] = secrets_


# -- token endpoint answers ----------------------------------------------------------------

_GRANT_LABEL = {
    GRANT_CLIENT_CREDENTIALS: "client-credentials",
    GRANT_REFRESH_TOKEN: "refresh-token",
    GRANT_AUTHORIZATION_CODE: "authorization-code",
}


class TokenRefusedError(ClientRequestError):
    """The token endpoint refused a grant (HTTP 4xx), with its OAuth2 ``error`` code."""

    def __init__(
        self, message: str, *, grant: str, error: str, status: int, hint: str | None = None
    ) -> None:
        super().__init__(message, hint)
        self.grant = grant
        self.error = error
        self.status = status


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        data = loads_json(response.content)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _text_field(body: dict[str, Any] | None, name: str) -> str:
    value = body.get(name) if body else None
    return printable(value) if isinstance(value, str) else ""


def refusal_detail(body: dict[str, Any] | None) -> tuple[str, str]:
    """An OAuth2 error answer as ``(error code, detail)``: OpenEMR's ``error_description``, its
    ``message`` when it says more, and its ``hint`` (which names the offending scope), each
    made safe for one line."""
    error = _text_field(body, "error")
    description = _text_field(body, "error_description")
    message = _text_field(body, "message")
    hint = _text_field(body, "hint")
    parts = [description] if description else []
    if message and message != description:
        parts.append(message)
    if hint:
        parts.append(f"hint: {hint}")
    return error, "; ".join(parts)


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


def parse_token_response(response: httpx.Response, grant: str, *, sent_at: float) -> GrantResult:
    """The token and refresh token of a token endpoint answer, or the error it stands for.

    A 4xx answer raises :class:`TokenRefusedError` naming the OAuth2 error, OpenEMR's own
    description and hint, and what to do; a 5xx raises ServerFailureError. Token values never
    appear in a message.
    """
    label = _GRANT_LABEL.get(grant, grant)
    status = response.status_code
    body = _json_object(response)
    if 400 <= status < 500:
        error, detail = refusal_detail(body)
        what = error or f"HTTP {status} {printable(response.reason_phrase)}"
        if error == "invalid_client" and status == 401:
            what += f" — {DISABLED_CLIENT}"
        message = f"the token endpoint refused the {label} grant: {what}"
        if detail:
            message += f" ({detail})"
        raise TokenRefusedError(
            message,
            grant=grant,
            error=error,
            status=status,
            hint=_refusal_hint(grant, error, status, detail),
        )
    if status >= 500:
        raise ServerFailureError(
            f"the token endpoint failed: HTTP {status} {printable(response.reason_phrase)}",
            hint="try again later",
        )
    if status != 200 or body is None:
        raise ServerFailureError(
            f"the token endpoint answered HTTP {status} without a token document"
        )
    access = body.get("access_token")
    token_type = str(body.get("token_type", ""))
    if not isinstance(access, str) or not access:
        raise ServerFailureError("the token endpoint's answer has no access_token")
    if len(access) > MAX_ACCESS_TOKEN_SIZE:
        raise ServerFailureError(
            f"the token endpoint's access_token is {len(access)} characters long (cwsctl takes "
            f"at most {MAX_ACCESS_TOKEN_SIZE}); refusing it",
            hint="ask the server's administrators",
        )
    if value_problem(access) is not None:
        raise ServerFailureError(
            f"the token endpoint's access_token {value_problem(access)}: it cannot be sent in "
            "an HTTP header; refusing it",
            hint="ask the server's administrators",
        )
    if token_type.lower() != "bearer":
        raise ServerFailureError(
            f"the token endpoint granted a {printable(token_type) or 'typeless'} token; "
            "cwsctl uses Bearer tokens"
        )
    lifetime = token_lifetime(body.get("expires_in"))
    refresh = body.get("refresh_token")
    return GrantResult(
        token=Token(
            access_token=access,
            token_type="Bearer",  # noqa: S106 - the scheme name, checked above
            scope=str(body.get("scope", "")),
            obtained_at=sent_at,
            expires_at=sent_at + lifetime,
        ),
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
    )


def token_lifetime(expires_in: object) -> float:
    """Seconds a granted token lives: ``expires_in`` when it is a finite number of seconds
    above 0, at most :data:`MAX_TOKEN_LIFETIME_S`; else :data:`DEFAULT_TOKEN_LIFETIME_S`."""
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float | str):
        return DEFAULT_TOKEN_LIFETIME_S
    try:
        seconds = float(expires_in)
    except (ValueError, OverflowError):
        return DEFAULT_TOKEN_LIFETIME_S
    if not math.isfinite(seconds) or seconds <= 0:
        return DEFAULT_TOKEN_LIFETIME_S
    return min(seconds, MAX_TOKEN_LIFETIME_S)


# -- getting tokens ------------------------------------------------------------------------


class TokenSource:
    """Gets access tokens for one openemr profile, from the cache or a grant.

    The ``*_flow`` methods are generators in httpx's auth-flow style: they yield the token
    request, receive its response and return the :class:`Token`, doing no I/O themselves, so
    that :class:`OAuthBearerAuth` can run them inside the API request's own client. Use
    :func:`run_flow` to run one with a client of your own.

    ``grant=GRANT_CLIENT_CREDENTIALS`` makes a source that only ever uses the client-credentials
    grant with the profile's ``system/*`` scopes, even when a person is signed in (a bulk export
    runs as OpenEMR's system user); its token is cached apart (:data:`SYSTEM_ACCESS`), under
    the same lock and in the same 0600 file.
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
        if grant not in (None, GRANT_CLIENT_CREDENTIALS):
            raise ValueError(f"TokenSource cannot be limited to the {grant} grant")
        self.grant = grant
        self._slot = SYSTEM_ACCESS if grant == GRANT_CLIENT_CREDENTIALS else ACCESS
        self.profile = profile
        self.private_key = private_key
        self.endpoints = endpoints(profile)
        self.tokens = TokenStore(store, profile.name)
        self.clock = clock
        self.scope = effective_scope(profile)
        self.token_requests = 0  # token requests yielded so far (for tests and benchmarks)
        #: Set once a token renewed after a 401 was refused with a 401 too: OpenEMR's 401 then
        #: means a missing scope or a disabled client, which no further renewal mends.
        self.renewal_refused = False
        self._lock = threading.Lock()
        self._last: Token | None = None  # the token this source last used, kept in memory

    @property
    def client_id(self) -> str:
        """The profile's client id (ProfileError naming ``cwsctl oauth register`` if none)."""
        return require_client_id(self.profile)

    def cached_token(self) -> Token | None:
        """A cached access token that is still usable, if any."""
        token = self.tokens.access_token(self.client_id, self.endpoints.token, self._slot)
        return token if token is not None and token.usable(self.clock()) else None

    def grant_request(
        self, form: dict[str, str], template: httpx.Request | None = None
    ) -> httpx.Request:
        """A POST to the token endpoint with ``form`` plus a fresh client assertion."""
        fields = {
            **form,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": client_assertion(
                self.private_key, self.client_id, self.endpoints.audience, now=self.clock()
            ),
        }
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        if template is not None and "user-agent" in template.headers:
            headers["User-Agent"] = template.headers["user-agent"]
        self.token_requests += 1
        return httpx.Request("POST", self.endpoints.token, data=fields, headers=headers)

    def token_flow(
        self, *, reject: str | None = None, template: httpx.Request | None = None
    ) -> TokenFlow:
        """A usable token: the cached one (unless it is ``reject``, the one a 401 refused),
        else from the refresh-token grant, else from the client-credentials grant with the
        profile's ``system/*`` scopes (only the last for a client-credentials source).

        Raises LoginRequiredError when the refresh token is refused (it is forgotten) or when
        there is none and the profile has no ``system/*`` scope.
        """
        client_id = self.client_id
        token_url = self.endpoints.token
        last = self._last  # the fast path of a bulk run: no lock, no file read
        if last is not None and last.usable(self.clock()) and last.access_token != reject:
            return last
        with self._lock, self.tokens.locked():
            # Read under the lock: another thread or process may have just renewed it.
            cached = self.tokens.access_token(client_id, token_url, self._slot)
            if cached is not None and cached.usable(self.clock()) and cached.access_token != reject:
                self._last = cached
                return cached
            name = self.profile.name
            refresh = None if self.grant else self.tokens.refresh_token(client_id, token_url)
            if refresh:
                form = {
                    "grant_type": GRANT_REFRESH_TOKEN,
                    "refresh_token": refresh,
                    "client_id": client_id,
                }
                sent_at = self.clock()
                response = yield self.grant_request(form, template)
                try:
                    result = parse_token_response(response, GRANT_REFRESH_TOKEN, sent_at=sent_at)
                except TokenRefusedError as exc:
                    if exc.error != "invalid_grant":
                        raise
                    self.tokens.drop_refresh_token()
                    raise LoginRequiredError(
                        f"{exc.message}: the sign-in of profile {name!r} was revoked, logged "
                        "out or has expired",
                        hint=login_hint(name),
                    ) from None
                self.tokens.save_grant(client_id, token_url, result)
                self._last = result.token
                return result.token
            scope = system_scope(self.scope)
            if not scope:
                raise LoginRequiredError(
                    f"profile {name!r} has no signed-in user (no refresh token) and no system/ "
                    "scope for a grant without one",
                    hint=login_hint(name),
                )
            form = {"grant_type": GRANT_CLIENT_CREDENTIALS, "scope": scope}
            sent_at = self.clock()
            response = yield self.grant_request(form, template)
            result = parse_token_response(response, GRANT_CLIENT_CREDENTIALS, sent_at=sent_at)
            self.tokens.save_grant(client_id, token_url, result, self._slot)
            self._last = result.token
            return result.token

    def forget_sign_in(self) -> None:
        """Drop the cached access token and the refresh token (OpenEMR revoked the sign-in)."""
        with self._lock, self.tokens.locked():
            self._last = None
            self.tokens.clear_grants()

    def code_flow(
        self, code: str, redirect_uri: str, code_verifier: str
    ) -> Generator[httpx.Request, httpx.Response, GrantResult]:
        """Exchange an authorization code (with its PKCE verifier) for tokens; store them."""
        client_id = self.client_id
        form = {
            "grant_type": GRANT_AUTHORIZATION_CODE,
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
            "client_id": client_id,
        }
        with self._lock, self.tokens.locked():
            sent_at = self.clock()
            response = yield self.grant_request(form)
            result = parse_token_response(response, GRANT_AUTHORIZATION_CODE, sent_at=sent_at)
            self.tokens.save_grant(client_id, self.endpoints.token, result)
            return result

    def has_refresh_token(self) -> bool:
        """True when a refresh token is stored for this client."""
        return self.tokens.refresh_token(self.client_id, self.endpoints.token) is not None


def run_flow(
    flow: Generator[httpx.Request, httpx.Response, T],
    client: httpx.Client | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_response_size: int | None = None,
) -> T:
    """Drive an auth-style flow: send each request it yields, return its result.

    With no ``client``, a bounded client of its own (``timeout``, ``max_response_size``) is
    opened for the flow and closed after it. Network failures become NetworkError (exit 6)
    naming the endpoint.
    """
    if client is None:
        with bounded_client(timeout=timeout, max_response_size=max_response_size) as own:
            return run_flow(flow, own, timeout=timeout, max_response_size=max_response_size)
    try:
        request = next(flow)
        while True:
            try:
                response = client.send(request)
            except httpx.HTTPError as exc:
                raise network_error(
                    exc,
                    request.method,
                    str(request.url),
                    timeout=timeout,
                    max_response_size=max_response_size,
                ) from None
            try:
                request = flow.send(response)
            finally:
                response.close()
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        flow.close()


class OAuthBearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer <token>``; a 401 gets one fresh token and one retry.

    A token request, when one is needed, is yielded from the flow and so travels through the
    same (bounded) client as the request it authorizes.
    """

    requires_request_body = True  # the one retry must be able to send the body again
    requires_response_body = True  # token answers are read inside the flow

    def __init__(self, source: TokenSource) -> None:
        self.source = source

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
        run, not one per request). OpenEMR's "logged out" answer raises LoginRequiredError.
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
        if response.status_code != 400 or LOGGED_OUT_TEXT.encode() not in response.content:
            return
        _, detail = refusal_detail(_json_object(response))
        if LOGGED_OUT_TEXT not in detail:
            return
        self.source.forget_sign_in()
        name = self.source.profile.name
        raise LoginRequiredError(
            f'OpenEMR answered 400 "{LOGGED_OUT_TEXT}": the sign-in of profile {name!r} '
            "was revoked or its user logged out",
            hint=login_hint(name),
        )


def bearer_auth(profile: Profile, store: Store, private_key: rsa.RSAPrivateKey) -> httpx.Auth:
    """The ``httpx.Auth`` for an openemr profile (ProfileError at once if it has no client id)."""
    source = TokenSource(profile, store, private_key)
    require_client_id(profile)
    return OAuthBearerAuth(source)


# -- registration --------------------------------------------------------------------------


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
    _, detail = refusal_detail(_json_object(response))
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
    body = _json_object(response)
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
    changed = profile.client_id != client_id
    profile.client_id = client_id
    if scope:
        profile.scope = scope
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


# -- login: authorization code with PKCE and a loopback redirect ---------------------------


@dataclass(frozen=True)
class PkcePair:
    """A PKCE code verifier and its S256 challenge (RFC 7636)."""

    verifier: str
    challenge: str

    def __repr__(self) -> str:
        return "PkcePair(<redacted>)"


def pkce_pair() -> PkcePair:
    """A fresh verifier (43+ unreserved characters) and ``BASE64URL(SHA256(verifier))``."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
    return PkcePair(verifier, challenge)


def authorize_url(
    profile: Profile, *, redirect_uri: str, state: str, code_challenge: str, scope: str
) -> str:
    """The authorization request URL for the person to open (``aud`` = the FHIR base)."""
    ends = endpoints(profile)
    query = urlencode(
        {
            "response_type": "code",
            "client_id": require_client_id(profile),
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            "aud": ends.fhir_base,
        },
        quote_via=quote,
    )
    return f"{ends.authorize}?{query}"


@dataclass(frozen=True)
class Callback:
    """The query of the request that reached the loopback redirect."""

    code: str | None
    state: str | None
    error: str | None
    error_description: str | None

    def __repr__(self) -> str:
        return f"Callback(state={self.state!r}, error={self.error!r}, code=<redacted>)"


_PAGE = (
    b"<!doctype html><meta charset=utf-8><title>cwsctl</title>"
    b"<p>cwsctl received the answer. You can close this window.</p>"
)


class _CallbackHandler(BaseHTTPRequestHandler):
    server: _CallbackServer
    timeout = 10  # a stalled browser connection must not hold a handler thread for ever

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != CALLBACK_PATH:
            self.send_error(404)
            return
        query = parse_qs(parts.query)

        def first(name: str) -> str | None:
            values = query.get(name)
            return values[0] if values else None

        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(_PAGE)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(_PAGE)
        self.server.answers.put(
            Callback(first("code"), first("state"), first("error"), first("error_description"))
        )

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: the request line carries the authorization code."""


class _CallbackServer(ThreadingHTTPServer):
    daemon_threads = True
    answers: queue.Queue[Callback]


class LoopbackReceiver:
    """A one-shot HTTP server on 127.0.0.1 that receives the authorization redirect.

    Use as a context manager; ``redirect_uri`` is ``http://127.0.0.1:PORT/callback``.
    """

    def __init__(self, port: int = 0) -> None:
        try:
            self._server = _CallbackServer(("127.0.0.1", port), _CallbackHandler)
        except OSError as exc:
            raise NetworkError(
                f"cannot listen on 127.0.0.1:{port} for the redirect: {exc.strerror or exc}",
                hint="choose another --port, or 0 for any free port",
            ) from None
        self._server.answers = queue.Queue()
        self.port: int = self._server.server_address[1]
        self.redirect_uri = f"http://127.0.0.1:{self.port}{CALLBACK_PATH}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="cwsctl-oauth-callback", daemon=True
        )

    def __enter__(self) -> LoopbackReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop listening."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def wait(
        self,
        expected_state: str,
        timeout: float,
        on_ignored: Callable[[str], None] | None = None,
    ) -> str:
        """The authorization code from the redirect; errors for a refusal or no redirect with
        the right ``state`` within ``timeout`` seconds.

        A redirect with the wrong ``state`` (or none) is ignored, its code never used, and
        ``on_ignored`` told with a one-line warning: any local process can reach the port, and
        must not be able to abort the login; the real redirect, or the timeout, ends the wait.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                answer = self._server.answers.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise NetworkError(
                    f"no answer reached {self.redirect_uri} within {timeout:g} s",
                    hint="open the printed URL in a browser on this machine and approve; "
                    "allow more time with --wait SECONDS",
                ) from None
            if answer.state is not None and secrets.compare_digest(
                answer.state.encode(), expected_state.encode()
            ):
                break
            if on_ignored is not None:
                on_ignored(
                    "ignored a redirect with the wrong state (not from this login: possible "
                    "forgery); still waiting for the right one"
                )
        if answer.error:
            description = printable(answer.error_description or "")
            raise ClientRequestError(
                f"authorization refused: {printable(answer.error)}"
                + (f" ({description})" if description else ""),
                hint="sign in as a user allowed these scopes, or ask for fewer with --scope",
            )
        if not answer.code:
            raise ClientRequestError(
                "the redirect carried no authorization code", hint="run cwsctl oauth login again"
            )
        return answer.code


def new_state() -> str:
    """An unguessable ``state`` for one authorization request."""
    return secrets.token_urlsafe(24)

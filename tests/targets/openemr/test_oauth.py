"""OpenEMR OAuth2, client side: client assertions, JWKS, the token cache, bearer auth, registration
and login, against a small token server in this file (real HTTP on 127.0.0.1, real JWT checks
with PyJWT against the registered JWKS) and the real openssl binary as a second verifier."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest

from cwsctl.core import keys
from cwsctl.core.errors import ClientRequestError, LoginRequiredError, ProfileError
from cwsctl.core.profile import Config, Profile, Store
from cwsctl.core.transport.bounded import bounded_client
from cwsctl.protocols.oauth2.assertion import (
    CLIENT_ASSERTION_TYPE,
    MAX_ASSERTION_LIFETIME_S,
    client_assertion,
)
from cwsctl.protocols.oauth2.grants import run_flow
from cwsctl.protocols.oauth2.jwks import jwk, jwk_set, key_id
from cwsctl.protocols.oauth2.tokens import Token, TokenStore, reuse_margin
from cwsctl.targets.openemr.endpoints import endpoints
from cwsctl.targets.openemr.scopes import DEFAULT_SCOPE, system_scope, user_scope
from cwsctl.targets.openemr.settings import OpenEmrSettings
from cwsctl.targets.openemr.tokens import TokenSource, bearer_auth, parse_token_response
from tests.conftest import OPENSSL, needs_openssl, write_private
from tests.targets.openemr.conftest import read_login_url, start_oauth_login

CLIENT_ID = "cwsctl-test-client"
SITE = "default"


# -- a token server: registration, token, authorize and one API path ---------------------------


@dataclass
class TokenServerState:
    """What the test token server knows and what it has seen."""

    jwks: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    client_id: str = CLIENT_ID
    lifetime: int = 60
    tokens: dict[str, float] = field(default_factory=dict)  # access token -> expiry
    refresh_tokens: set[str] = field(default_factory=set)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    seen_jti: set[str] = field(default_factory=set)
    token_forms: list[dict[str, str]] = field(default_factory=list)
    registrations: list[dict[str, Any]] = field(default_factory=list)
    api_hits: list[str | None] = field(default_factory=list)  # Authorization headers seen
    api_bodies: list[bytes] = field(default_factory=list)
    refuse_client_credentials: str | None = None  # an OAuth error code, e.g. "invalid_client"
    refuse_hint: str | None = None  # OpenEMR's "hint" field in that refusal
    api_always_401: bool = False
    api_401_body: bytes = b'{"error": "invalid_token"}'
    api_400_body: bytes | None = None  # answer every API call 400 with this (a logout)
    site_address: str | None = None  # what the discovery documents and the aud check use
    version: str = "7.0.4"  # "7.0.3": registration refuses token_endpoint_auth_method
    new_client_ids: bool = False  # each registration makes a new client id
    discovery_hits: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def grants(self) -> list[str]:
        return [form.get("grant_type", "") for form in self.token_forms]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, document: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    @property
    def state(self) -> TokenServerState:
        return self.server.state

    def _site(self) -> str:
        return self.state.site_address or self.server.url

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path == f"/oauth2/{SITE}/registration":
            document = json.loads(self._body())
            with self.state.lock:
                self.state.registrations.append(document)
            method = document.get("token_endpoint_auth_method")
            if self.state.version == "7.0.3" and method == "private_key_jwt":
                self._send(
                    400,
                    {
                        "error": "invalid_client_metadata",
                        "error_description": "Unsupported token_endpoint_auth_method value : "
                        "private_key_jwt",
                    },
                )
                return
            with self.state.lock:
                self.state.jwks = document.get("jwks", {"keys": []})
                if self.state.new_client_ids:
                    self.state.client_id = f"client-{len(self.state.registrations)}"
            self._send(
                200,
                {
                    "client_id": self.state.client_id,
                    "registration_access_token": "reg-secret-" + uuid.uuid4().hex,
                    "client_id_issued_at": int(time.time()),
                    "scope": document.get("scope", ""),
                },
            )
            return
        if path == f"/oauth2/{SITE}/token":
            self._token(
                {
                    k: v[0]
                    for k, v in parse_qs(self._body().decode(), keep_blank_values=True).items()
                }
            )
            return
        if path == f"/apis/{SITE}/api/patient":
            self._api(201, self._body())
            return
        self._send(404, {"error": "not found"})

    def _refuse(self, error: str, description: str, hint: str | None = None) -> None:
        document = {"error": error, "error_description": description, "message": description}
        if hint:
            document["hint"] = hint
        self._send(401 if error == "invalid_client" else 400, document)

    def _token(self, form: dict[str, str]) -> None:
        state = self.state
        with state.lock:
            state.token_forms.append(form)
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            self._refuse("invalid_client", "no client assertion")
            return
        token_url = f"{self._site()}/oauth2/{SITE}/token"
        assertion = form.get("client_assertion", "")
        try:
            kid = jwt.get_unverified_header(assertion).get("kid")
            entry = next(k for k in state.jwks["keys"] if k.get("kid") == kid)
            claims = jwt.decode(
                assertion,
                jwt.PyJWK(entry).key,
                algorithms=["RS384"],
                audience=token_url,
                issuer=state.client_id,
                options={"require": ["exp", "iat", "jti", "sub", "iss", "aud"]},
            )
        except (StopIteration, jwt.PyJWTError) as exc:
            self._refuse("invalid_client", f"assertion rejected: {type(exc).__name__}")
            return
        if claims["sub"] != state.client_id or claims["exp"] - claims["iat"] > 300:
            self._refuse("invalid_client", "bad sub or lifetime")
            return
        with state.lock:
            if claims["jti"] in state.seen_jti:
                replayed = True
            else:
                replayed = False
                state.seen_jti.add(claims["jti"])
        if replayed:
            self._refuse("invalid_client", "jti already used")
            return
        grant = form.get("grant_type")
        refresh: str | None = None
        if grant == "client_credentials":
            if state.refuse_client_credentials:
                self._refuse(
                    state.refuse_client_credentials, "client credentials refused", state.refuse_hint
                )
                return
        elif grant == "refresh_token":
            with state.lock:
                if form.get("refresh_token") not in state.refresh_tokens:
                    valid = False
                else:
                    valid = True
                    state.refresh_tokens.discard(form["refresh_token"])
            if not valid:
                self._refuse("invalid_grant", "refresh token revoked")
                return
            refresh = "rt-" + uuid.uuid4().hex
        elif grant == "authorization_code":
            with state.lock:
                issued = state.codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "")
            challenge = (
                base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
                .decode()
                .rstrip("=")
            )
            if (
                issued is None
                or issued["redirect_uri"] != form.get("redirect_uri")
                or issued["code_challenge"] != challenge
            ):
                self._refuse("invalid_grant", "bad code, redirect_uri or verifier")
                return
            refresh = "rt-" + uuid.uuid4().hex
        else:
            self._refuse("unsupported_grant_type", str(grant))
            return
        access = "at-" + uuid.uuid4().hex
        with state.lock:
            state.tokens[access] = time.time() + state.lifetime
            if refresh:
                state.refresh_tokens.add(refresh)
        document: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": access,
            "expires_in": state.lifetime,
            "scope": form.get("scope", "system/Patient.read"),
        }
        if refresh:
            document["refresh_token"] = refresh
        self._send(200, document)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == f"/oauth2/{SITE}/.well-known/openid-configuration":
            with self.state.lock:
                self.state.discovery_hits += 1
            oauth = f"{self._site()}/oauth2/{SITE}"
            self._send(
                200,
                {
                    "issuer": oauth,
                    "authorization_endpoint": f"{oauth}/authorize",
                    "token_endpoint": f"{oauth}/token",
                    "registration_endpoint": f"{oauth}/registration",
                    "token_endpoint_auth_methods_supported": ["client_secret_post"],
                },
            )
            return
        if parts.path == f"/apis/{SITE}/fhir/.well-known/smart-configuration":
            with self.state.lock:
                self.state.discovery_hits += 1
            oauth = f"{self._site()}/oauth2/{SITE}"
            document = {
                "authorization_endpoint": f"{oauth}/authorize",
                "token_endpoint": f"{oauth}/token",
            }
            if self.state.version != "7.0.3":
                document["issuer"] = f"{self._site()}/apis/{SITE}/fhir"
            self._send(200, document)
            return
        if parts.path == f"/oauth2/{SITE}/authorize":
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            code = "code-" + uuid.uuid4().hex
            with self.state.lock:
                self.state.codes[code] = query
            target = (
                query["redirect_uri"] + "?" + urlencode({"code": code, "state": query["state"]})
            )
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if parts.path == f"/apis/{SITE}/api/patient":
            self._api(200)
            return
        self._send(404, {"error": "not found"})

    def _send_raw(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _api(self, status_ok: int, body: bytes = b"") -> bool:
        """Record an API hit; answer 401 unless its bearer token is live (True when allowed)."""
        header = self.headers.get("Authorization")
        with self.state.lock:
            self.state.api_hits.append(header)
            self.state.api_bodies.append(body)
            expiry = self.state.tokens.get((header or "").removeprefix("Bearer "), 0)
        if self.state.api_400_body is not None:
            self._send_raw(400, self.state.api_400_body)
            return False
        if self.state.api_always_401 or expiry < time.time():
            self._send_raw(401, self.state.api_401_body)
            return False
        self._send(status_ok, {"validationErrors": [], "internalErrors": [], "data": {}})
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: TokenServerState
    url: str


@pytest.fixture
def token_server() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.state = TokenServerState()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def store(cwsctl_home: Path) -> Store:
    return Store(cwsctl_home)


def make_profile(store: Store, url: str, *, client_id: str = CLIENT_ID, scope: str = "") -> Profile:
    profile = Profile(
        name="default",
        kind="openemr",
        url=url,
        settings=OpenEmrSettings(client_id=client_id, scope=scope),
    )
    config = Config(default_profile="default", profiles={"default": profile})
    store.save(config)
    return profile


@pytest.fixture
def emr(store: Store, token_server: _Server, rsa2048) -> Profile:
    """An openemr profile at the token server, with rsa2048 as its key, registered there."""
    store.keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(store.private_key_path("default"), rsa2048)
    token_server.state.jwks = jwk_set([rsa2048.public_key()])
    return make_profile(store, token_server.url, scope=DEFAULT_SCOPE + " system/Patient.read")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- client assertion --------------------------------------------------------------------------


def test_assertion_header_and_claims(rsa2048) -> None:
    audience = "https://emr.example.org:9300/oauth2/default/token"
    before = int(time.time())
    token = client_assertion(rsa2048, CLIENT_ID, audience)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "RS384", "typ": "JWT", "kid": key_id(rsa2048.public_key())}
    claims = jwt.decode(token, rsa2048.public_key(), algorithms=["RS384"], audience=audience)
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == audience
    assert before <= claims["iat"] <= int(time.time())
    assert 0 < claims["exp"] - claims["iat"] <= MAX_ASSERTION_LIFETIME_S
    assert uuid.UUID(claims["jti"]).version == 4
    # the header's kid is the JWKS kid, so the server finds the key in the registered set
    assert header["kid"] == jwk_set([rsa2048.public_key()])["keys"][0]["kid"]


def test_assertion_jti_unique_and_wrong_key_fails(rsa2048, rsa2048_other) -> None:
    audience = "https://emr.example.org/oauth2/default/token"
    tokens = [client_assertion(rsa2048, CLIENT_ID, audience) for _ in range(20)]
    jtis = {jwt.decode(t, options={"verify_signature": False})["jti"] for t in tokens}
    assert len(jtis) == 20
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(tokens[0], rsa2048_other.public_key(), algorithms=["RS384"], audience=audience)
    with pytest.raises(ValueError):
        client_assertion(rsa2048, CLIENT_ID, audience, lifetime=MAX_ASSERTION_LIFETIME_S + 1)


@needs_openssl
def test_assertion_verifies_with_openssl(rsa2048, tmp_path: Path) -> None:
    """A second, independent verifier: openssl dgst -sha384 -verify over the JWS signing input."""
    token = client_assertion(rsa2048, CLIENT_ID, "https://emr.example.org/oauth2/default/token")
    header_b64, claims_b64, signature_b64 = token.split(".")
    signing_input = tmp_path / "input"
    signing_input.write_bytes(f"{header_b64}.{claims_b64}".encode("ascii"))
    signature = tmp_path / "sig"
    signature.write_bytes(b64url_decode(signature_b64))
    public = tmp_path / "pub.pem"
    public.write_bytes(keys.public_key_pem(rsa2048.public_key()))

    def verify(path: Path) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [
                OPENSSL,
                "dgst",
                "-sha384",
                "-verify",
                str(public),
                "-signature",
                str(signature),
                str(path),
            ],
            capture_output=True,
        )

    good = verify(signing_input)
    assert good.returncode == 0, good.stderr
    assert b"Verified OK" in good.stdout
    tampered = tmp_path / "tampered"
    forged = json.loads(b64url_decode(claims_b64))
    forged["sub"] = "someone-else"
    forged_b64 = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("=")
    tampered.write_bytes(f"{header_b64}.{forged_b64}".encode("ascii"))
    assert verify(tampered).returncode != 0


# -- JWKS --------------------------------------------------------------------------------------


def test_jwk_shape_and_round_trip(rsa2048) -> None:
    entry = jwk(rsa2048.public_key())
    assert set(entry) == {"kty", "n", "e", "use", "alg", "kid"}
    assert (entry["kty"], entry["use"], entry["alg"]) == ("RSA", "sig", "RS384")
    fingerprint = keys.fingerprint(rsa2048.public_key()).removeprefix("SHA256:")
    assert entry["kid"] == fingerprint.replace("+", "-").replace("/", "_")
    assert "=" not in entry["kid"] and "+" not in entry["kid"] and "/" not in entry["kid"]
    parsed = jwt.PyJWK(entry).key
    assert parsed.public_numbers() == rsa2048.public_key().public_numbers()


def test_keys_jwks_cli_lists_next_key_during_rotation(
    cli, store: Store, rsa2048, rsa2048_other
) -> None:
    store.keys_dir.mkdir(mode=0o700, parents=True)
    write_private(store.private_key_path("default"), rsa2048)
    result = cli("keys", "jwks")
    assert result.exit_code == 0, result.stderr
    one = json.loads(result.stdout)
    assert [k["kid"] for k in one["keys"]] == [key_id(rsa2048.public_key())]

    write_private(store.next_key_path("default"), rsa2048_other)
    result = cli("keys", "jwks")
    assert result.exit_code == 0, result.stderr
    two = json.loads(result.stdout)
    assert [k["kid"] for k in two["keys"]] == [
        key_id(rsa2048.public_key()),
        key_id(rsa2048_other.public_key()),
    ]
    assert all(k["alg"] == "RS384" and k["use"] == "sig" for k in two["keys"])
    assert "rotation" in result.stderr


def test_keys_jwks_without_key_is_exit_3(cli) -> None:
    result = cli("keys", "jwks")
    assert result.exit_code == 3
    assert "cwsctl keygen" in result.stderr


# -- endpoints, token answers, cache -----------------------------------------------------------


def test_endpoints_follow_url_and_site() -> None:
    profile = Profile(
        name="e",
        kind="openemr",
        url="https://emr.example.org:9300/",
        settings=OpenEmrSettings(site="clinic"),
    )
    ends = endpoints(profile)
    assert ends.token == "https://emr.example.org:9300/oauth2/clinic/token"
    assert ends.registration == "https://emr.example.org:9300/oauth2/clinic/registration"
    assert ends.authorize == "https://emr.example.org:9300/oauth2/clinic/authorize"
    assert ends.fhir_base == "https://emr.example.org:9300/apis/clinic/fhir"


def test_refusal_is_one_clear_line_without_secrets() -> None:
    response = httpx.Response(
        401,
        json={
            "error": "invalid_client",
            "error_description": "Client authentication failed\nagain",
        },
    )
    with pytest.raises(ClientRequestError) as caught:
        parse_token_response(response, "client_credentials", sent_at=0)
    assert caught.value.exit_status == 4
    assert "invalid_client" in caught.value.message
    assert "\n" not in caught.value.message
    assert "cwsctl oauth register" in (caught.value.hint or "")


def test_reuse_margin_is_min_of_10s_and_10_percent() -> None:
    assert reuse_margin(60) == pytest.approx(6)
    assert reuse_margin(3600) == 10
    token = Token("t", "Bearer", "", obtained_at=1000, expires_at=1060)
    assert token.usable(1053.9)
    assert not token.usable(1054.1)
    assert "t" not in repr(token).replace("token_type", "").replace("Token", "").replace(
        "expires_at", ""
    ).replace("access_token", "").replace("redacted", "")


def test_cache_file_is_0600_in_a_0700_dir(
    emr: Profile, store: Store, rsa2048, token_server
) -> None:
    source = TokenSource(emr, store, rsa2048)
    with bounded_client(timeout=10) as client:
        token = run_flow(source.token_flow(), client)
    path = store.root / "tokens" / "default.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    cached = TokenStore(store, "default").access_token(CLIENT_ID, endpoints(emr).token)
    assert cached is not None and cached.access_token == token.access_token
    assert token_server.state.grants() == ["client_credentials"]
    assert token_server.state.token_forms[0]["scope"] == "system/Patient.read"


def test_cache_ignored_after_client_id_changes(
    emr: Profile, store: Store, rsa2048, token_server
) -> None:
    with bounded_client(timeout=10) as client:
        run_flow(TokenSource(emr, store, rsa2048).token_flow(), client)
        emr.settings.client_id = "another-client"
        token_server.state.client_id = "another-client"
        run_flow(TokenSource(emr, store, rsa2048).token_flow(), client)
    assert token_server.state.grants() == ["client_credentials", "client_credentials"]


# -- bearer auth: reuse, renewal, one retry ----------------------------------------------------


def test_bearer_auth_reuses_one_token_across_requests(
    emr: Profile, store: Store, rsa2048, token_server
) -> None:
    url = f"{token_server.url}/apis/{SITE}/api/patient"
    with bounded_client(timeout=10) as client:
        auth = bearer_auth(emr, store, rsa2048)
        statuses = [client.get(url, auth=auth).status_code for _ in range(4)]
        request = client.build_request("GET", url)
        statuses.append(client.send(request, auth=auth).status_code)
        # what went out was a copy: the caller's request object never holds the token
        assert "authorization" not in request.headers
        # a second process (a new auth object) reads the same cache
        statuses.append(client.get(url, auth=bearer_auth(emr, store, rsa2048)).status_code)
    assert statuses == [200] * 6
    assert token_server.state.grants() == ["client_credentials"]
    assert len(set(token_server.state.api_hits)) == 1


def test_concurrent_requests_share_one_token_request(
    emr: Profile, store: Store, rsa2048, token_server
) -> None:
    """Bulk runs send from threads: the first token request is made once, not once per thread."""
    from concurrent.futures import ThreadPoolExecutor

    url = f"{token_server.url}/apis/{SITE}/api/patient"
    with bounded_client(timeout=10) as client:
        auth = bearer_auth(emr, store, rsa2048)
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: client.get(url, auth=auth).status_code, range(32)))
    assert statuses == [200] * 32
    assert token_server.state.grants() == ["client_credentials"]


@pytest.mark.timing
@pytest.mark.slow
def test_bearer_auth_renews_after_expiry(emr: Profile, store: Store, rsa2048, token_server) -> None:
    token_server.state.lifetime = 1
    url = f"{token_server.url}/apis/{SITE}/api/patient"
    with bounded_client(timeout=10) as client:
        auth = bearer_auth(emr, store, rsa2048)
        assert client.get(url, auth=auth).status_code == 200
        time.sleep(1.0)
        assert client.get(url, auth=auth).status_code == 200
    assert token_server.state.grants() == ["client_credentials", "client_credentials"]
    assert token_server.state.api_hits[0] != token_server.state.api_hits[1]


def test_401_renews_once_and_retries_once(
    emr: Profile, store: Store, rsa2048, token_server
) -> None:
    """A revoked cached token: one new token, one retry, success."""
    revoked = Token("revoked-token", "Bearer", "", time.time(), time.time() + 600)
    from cwsctl.protocols.oauth2.tokens import GrantResult

    TokenStore(store, "default").save_grant(
        CLIENT_ID, endpoints(emr).token, GrantResult(revoked, None)
    )
    url = f"{token_server.url}/apis/{SITE}/api/patient"
    with bounded_client(timeout=10) as client:
        response = client.get(url, auth=bearer_auth(emr, store, rsa2048))
    assert response.status_code == 200
    assert token_server.state.api_hits[0] == "Bearer revoked-token"
    assert len(token_server.state.api_hits) == 2
    assert token_server.state.grants() == ["client_credentials"]


def test_second_401_goes_to_the_caller_never_a_loop(
    emr: Profile, store: Store, rsa2048, token_server
) -> None:
    token_server.state.api_always_401 = True
    url = f"{token_server.url}/apis/{SITE}/api/patient"
    with bounded_client(timeout=10) as client:
        response = client.get(url, auth=bearer_auth(emr, store, rsa2048))
    assert response.status_code == 401
    assert len(token_server.state.api_hits) == 2  # the request and exactly one retry
    assert token_server.state.grants() == ["client_credentials", "client_credentials"]


def test_post_retry_resends_the_same_body(
    emr: Profile, store: Store, rsa2048, token_server
) -> None:
    """The retried POST carries its body again (requires_request_body), with the new token."""
    from cwsctl.protocols.oauth2.tokens import GrantResult

    revoked = Token("revoked-token", "Bearer", "", time.time(), time.time() + 600)
    TokenStore(store, "default").save_grant(
        CLIENT_ID, endpoints(emr).token, GrantResult(revoked, None)
    )
    url = f"{token_server.url}/apis/{SITE}/api/patient"
    with bounded_client(timeout=10) as client:
        response = client.post(url, content=b'{"fname":"A"}', auth=bearer_auth(emr, store, rsa2048))
    assert response.status_code == 201
    assert token_server.state.api_bodies == [b'{"fname":"A"}', b'{"fname":"A"}']
    assert token_server.state.api_hits[0] == "Bearer revoked-token"
    assert token_server.state.api_hits[1] != token_server.state.api_hits[0]


def test_no_client_id_names_register(store: Store, rsa2048, token_server) -> None:
    profile = make_profile(store, token_server.url, client_id="")
    with pytest.raises(ProfileError) as caught:
        bearer_auth(profile, store, rsa2048)
    assert "cwsctl oauth register" in (caught.value.hint or "")


# -- refresh tokens ----------------------------------------------------------------------------


def _seed_refresh(store: Store, profile: Profile, token_server: _Server, value: str) -> None:
    from cwsctl.protocols.oauth2.tokens import GrantResult

    expired = Token("old", "Bearer", "", time.time() - 100, time.time() - 40)
    TokenStore(store, "default").save_grant(
        CLIENT_ID, endpoints(profile).token, GrantResult(expired, value)
    )
    token_server.state.refresh_tokens.add(value)


def test_refresh_grant_preferred_and_rotated(
    emr: Profile, store: Store, rsa2048, token_server
) -> None:
    _seed_refresh(store, emr, token_server, "rt-first")
    with bounded_client(timeout=10) as client:
        run_flow(TokenSource(emr, store, rsa2048).token_flow(), client)
    assert token_server.state.grants() == ["refresh_token"]
    form = token_server.state.token_forms[0]
    assert form["refresh_token"] == "rt-first"
    assert form["client_assertion_type"] == CLIENT_ASSERTION_TYPE
    stored = TokenStore(store, "default").refresh_token(CLIENT_ID, endpoints(emr).token)
    assert (
        stored is not None and stored != "rt-first" and stored in token_server.state.refresh_tokens
    )


def test_refused_refresh_stops_with_login_required(
    emr: Profile, store: Store, rsa2048, token_server
) -> None:
    """A revoked refresh token (400 invalid_grant) is not papered over with a system token,
    which could not write: exit 3 naming the login command, and the token is forgotten."""
    _seed_refresh(store, emr, token_server, "rt-revoked")
    token_server.state.refresh_tokens.clear()
    with bounded_client(timeout=10) as client, pytest.raises(LoginRequiredError) as caught:
        run_flow(TokenSource(emr, store, rsa2048).token_flow(), client)
    assert caught.value.exit_status == 3
    assert token_server.state.grants() == ["refresh_token"]
    assert caught.value.hint == "sign in as an OpenEMR user once: cwsctl -p default oauth login"
    assert (
        "invalid_grant" in caught.value.message and "refresh token revoked" in caught.value.message
    )
    assert TokenStore(store, "default").refresh_token(CLIENT_ID, endpoints(emr).token) is None


def test_no_refresh_and_no_system_scope_is_login_required(
    store: Store, rsa2048, token_server
) -> None:
    profile = make_profile(store, token_server.url, scope=DEFAULT_SCOPE)
    with bounded_client(timeout=10) as client, pytest.raises(LoginRequiredError) as caught:
        run_flow(TokenSource(profile, store, rsa2048).token_flow(), client)
    assert isinstance(caught.value, ProfileError) and caught.value.exit_status == 3
    assert "cwsctl -p default oauth login" in (caught.value.hint or "")
    assert token_server.state.token_forms == []  # nothing was sent


def test_client_credentials_ask_only_for_system_scopes(store: Store, rsa2048, token_server) -> None:
    token_server.state.jwks = jwk_set([rsa2048.public_key()])
    scope = "openid offline_access api:fhir user/Patient.read system/Patient.read system/*.$export"
    profile = make_profile(store, token_server.url, scope=scope)
    with bounded_client(timeout=10) as client:
        run_flow(TokenSource(profile, store, rsa2048).token_flow(), client)
    assert token_server.state.token_forms[0]["scope"] == "system/Patient.read system/*.$export"


def test_default_scope_is_what_a_default_openemr_offers() -> None:
    assert DEFAULT_SCOPE == "openid offline_access api:fhir user/Patient.read user/Patient.write"
    assert system_scope(DEFAULT_SCOPE) == ""
    assert user_scope("openid system/Patient.read user/Patient.read") == "openid user/Patient.read"


def test_token_answer_without_expires_in_lasts_300_seconds() -> None:
    response = httpx.Response(200, json={"access_token": "a", "token_type": "Bearer"})
    result = parse_token_response(response, "client_credentials", sent_at=1000.0)
    assert result.token.expires_at == 1300.0


@pytest.mark.parametrize(
    "body",
    [
        # 7.0.4+ (BearerTokenAuthorizationStrategy) and 7.0.3 (league's OAuthServerException)
        b'{"error":"An error occurred","message":"Refresh Token revoked or logged out"}',
        b'{"error":"invalid _request","error_description":"Refresh Token revoked or logged out",'
        b'"message":"Refresh Token revoked or logged out"}',
    ],
)
def test_logged_out_answer_is_login_required_and_forgets_tokens(
    emr: Profile, store: Store, rsa2048, token_server, body: bytes
) -> None:
    _seed_refresh(store, emr, token_server, "rt-live")
    token_server.state.api_400_body = body
    url = f"{token_server.url}/apis/{SITE}/api/patient"
    with bounded_client(timeout=10) as client, pytest.raises(LoginRequiredError) as caught:
        client.get(url, auth=bearer_auth(emr, store, rsa2048))
    assert "Refresh Token revoked or logged out" in caught.value.message
    assert "cwsctl -p default oauth login" in (caught.value.hint or "")
    tokens = TokenStore(store, "default")
    assert tokens.refresh_token(CLIENT_ID, endpoints(emr).token) is None
    assert tokens.access_token(CLIENT_ID, endpoints(emr).token) is None
    assert len(token_server.state.api_hits) == 1  # no renewal, no retry


def test_401_renews_once_per_source_not_once_per_request(
    emr: Profile, store: Store, rsa2048, token_server
) -> None:
    """OpenEMR's 401 for a missing scope: one renewal for the run; then 401s come back as is."""
    token_server.state.api_always_401 = True
    url = f"{token_server.url}/apis/{SITE}/api/patient"
    auth = bearer_auth(emr, store, rsa2048)
    with bounded_client(timeout=10) as client:
        statuses = [client.get(url, auth=auth).status_code for _ in range(5)]
    assert statuses == [401] * 5
    assert len(token_server.state.api_hits) == 6  # 5 requests and one retry
    assert token_server.state.grants() == ["client_credentials", "client_credentials"]


def test_renewal_that_works_keeps_renewal_on(
    emr: Profile, store: Store, rsa2048, token_server
) -> None:
    """A token revoked twice in one run is renewed twice: only a refused renewal stops them."""
    url = f"{token_server.url}/apis/{SITE}/api/patient"
    auth = bearer_auth(emr, store, rsa2048)
    with bounded_client(timeout=10) as client:
        assert client.get(url, auth=auth).status_code == 200
        for _ in range(2):
            with token_server.state.lock:
                token_server.state.tokens.clear()  # the server revokes every token
            assert client.get(url, auth=auth).status_code == 200
    assert token_server.state.grants() == ["client_credentials"] * 3


def test_refusal_carries_openemr_hint_and_disabled_client(
    emr: Profile, store: Store, rsa2048, token_server
) -> None:
    token_server.state.refuse_client_credentials = "invalid_scope"
    token_server.state.refuse_hint = "Check the `system/Patient.read` scope\n"
    with bounded_client(timeout=10) as client, pytest.raises(ClientRequestError) as caught:
        run_flow(TokenSource(emr, store, rsa2048).token_flow(), client)
    assert "hint: Check the `system/Patient.read` scope" in caught.value.message
    assert "\n" not in caught.value.message
    assert "Enable OpenEMR FHIR System Scopes" in (caught.value.hint or "")
    token_server.state.refuse_client_credentials = "invalid_client"  # 401: a disabled client
    token_server.state.refuse_hint = None
    with bounded_client(timeout=10) as client, pytest.raises(ClientRequestError) as caught:
        run_flow(TokenSource(emr, store, rsa2048).token_flow(), client)
    assert "invalid_client — disabled or unknown client" in caught.value.message
    assert "Administration → System → API Clients" in (caught.value.hint or "")


@pytest.mark.parametrize(
    "body", [b"", b'{"error":"An error occurred","message":"Unauthorized","code":0}']
)
def test_api_401_error_line_says_scope_or_disabled(
    run_cwsctl, emr: Profile, token_server, body: bytes
) -> None:
    token_server.state.api_always_401 = True
    token_server.state.api_401_body = body
    result = run_cwsctl("request", "GET", f"/apis/{SITE}/api/patient")
    assert result.returncode == 4
    line = result.stderr.decode().splitlines()
    error = next(x for x in line if x.startswith("cwsctl: error:"))
    assert "the token lacks a scope for this path, or the client is disabled" in error
    if body:
        assert "Unauthorized" in error


# -- CLI: token, register, login ---------------------------------------------------------------


@pytest.mark.slow
def test_oauth_token_prints_token_and_reuses_cache(run_cwsctl, emr: Profile, token_server) -> None:
    first = run_cwsctl("oauth", "token")
    assert first.returncode == 0, first.stderr
    token = first.stdout.decode().strip()
    assert token in token_server.state.tokens
    assert token.encode() not in first.stderr
    second = run_cwsctl("-q", "oauth", "token")
    assert second.returncode == 0 and second.stdout.decode().strip() == token
    assert second.stderr == b""
    assert token_server.state.grants() == ["client_credentials"]
    as_json = json.loads(run_cwsctl("oauth", "token", "--json").stdout)
    assert as_json["access_token"] == token and 0 < as_json["expires_in"] <= 60


def test_oauth_token_refused_is_exit_4_with_hint(run_cwsctl, emr: Profile, token_server) -> None:
    token_server.state.refuse_client_credentials = "invalid_client"
    result = run_cwsctl("oauth", "token")
    assert result.returncode == 4
    lines = result.stderr.decode().splitlines()
    assert lines[0].startswith(
        "cwsctl: error: the token endpoint refused the client-credentials grant: invalid_client"
    )
    assert lines[1].startswith("hint:") and "cwsctl oauth register" in lines[1]
    assert result.stdout == b""


def test_oauth_token_unknown_key_is_refused(
    run_cwsctl, emr: Profile, token_server, rsa2048_other
) -> None:
    token_server.state.jwks = jwk_set([rsa2048_other.public_key()])  # registered another key
    result = run_cwsctl("oauth", "token")
    assert result.returncode == 4
    assert b"invalid_client" in result.stderr


def test_oauth_token_without_client_id_names_register(
    run_cwsctl, store: Store, token_server, rsa2048
) -> None:
    make_profile(store, token_server.url, client_id="")
    result = run_cwsctl("oauth", "token")
    assert result.returncode == 3
    assert b"cwsctl oauth register" in result.stderr


def test_oauth_commands_refuse_cws_profiles(run_cwsctl, store: Store) -> None:
    store.save(
        Config(
            default_profile="default",
            profiles={"default": Profile(name="default", url="https://cws.example.org")},
        )
    )
    result = run_cwsctl("oauth", "token")
    assert result.returncode == 3
    assert b"openemr" in result.stderr


def test_register_sends_jwks_and_stores_secret(cli, store: Store, token_server, rsa2048) -> None:
    store.keys_dir.mkdir(mode=0o700, parents=True)
    write_private(store.private_key_path("default"), rsa2048)
    make_profile(store, token_server.url, client_id="")
    result = cli(
        "oauth", "register", "--client-name", "Bookings loader", "--contact", "ops@example.org"
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == CLIENT_ID
    sent = token_server.state.registrations[0]
    assert sent["application_type"] == "private"
    assert sent["token_endpoint_auth_method"] == "private_key_jwt"
    assert sent["client_name"] == "Bookings loader"
    assert sent["contacts"] == ["ops@example.org"]
    assert sent["scope"] == DEFAULT_SCOPE
    assert sent["redirect_uris"] == ["http://127.0.0.1/callback"]
    assert sent["jwks"] == jwk_set([rsa2048.public_key()])
    assert store.get_profile("default").settings.client_id == CLIENT_ID
    assert store.get_profile("default").settings.scope == DEFAULT_SCOPE
    secrets_file = store.root / "tokens" / "default.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    secret = json.loads(secrets_file.read_text())["registration"]["registration_access_token"]
    assert secret.startswith("reg-secret-")
    assert secret not in result.stdout + result.stderr
    # said plainly: a confidential client with user/ scopes starts disabled
    assert "disabled until an administrator enables it" in result.stderr
    assert "Administration → System → API Clients" in result.stderr
    assert "cwsctl -p default oauth login" in result.stderr
    # no system/ scope and nobody signed in: no grant to try
    token = cli("oauth", "token")
    assert token.exit_code == 3
    assert "cwsctl -p default oauth login" in token.stderr
    assert len(token_server.state.token_forms) == 0


def test_register_scope_flags(cli, store: Store, token_server, rsa2048) -> None:
    store.keys_dir.mkdir(mode=0o700, parents=True)
    write_private(store.private_key_path("default"), rsa2048)
    make_profile(store, token_server.url, client_id="")
    result = cli("oauth", "register", "--system-scopes", "--standard-api")
    assert result.exit_code == 0, result.stderr
    sent = token_server.state.registrations[0]["scope"].split()
    assert sent == [*DEFAULT_SCOPE.split(), "system/Patient.read", "api:oemr"]
    assert "Enable OpenEMR FHIR System Scopes" in result.stderr  # the admin step, spelled out
    token = cli("oauth", "token")  # system/ scopes: the client-credentials grant works
    assert token.exit_code == 0, token.stderr
    assert token_server.state.token_forms[-1]["scope"] == "system/Patient.read"
    exported = cli("oauth", "register", "--export-scopes", "--scope", "openid")
    assert exported.exit_code == 0, exported.stderr
    assert token_server.state.registrations[1]["scope"].split() == [
        "openid",
        "system/Patient.read",
        "system/*.$export",
        "system/Patient.$export",
        "system/Group.$export",
        "system/*.$bulkdata-status",
        "system/Binary.read",
    ]


def test_register_on_703_retries_without_auth_method(
    cli, store: Store, token_server, rsa2048
) -> None:
    token_server.state.version = "7.0.3"
    store.keys_dir.mkdir(mode=0o700, parents=True)
    write_private(store.private_key_path("default"), rsa2048)
    make_profile(store, token_server.url, client_id="")
    result = cli("oauth", "register")
    assert result.exit_code == 0, result.stderr
    first, second = token_server.state.registrations
    assert first["token_endpoint_auth_method"] == "private_key_jwt"
    assert "token_endpoint_auth_method" not in second
    assert {k: v for k, v in first.items() if k != "token_endpoint_auth_method"} == second
    assert store.get_profile("default").settings.client_id == CLIENT_ID
    assert "7.0.3" in result.stderr


def test_register_refusal_shows_openemr_hint(cli, store: Store, token_server, rsa2048) -> None:
    """A refusal other than the auth method is not retried, and OpenEMR's hint is shown."""
    from cwsctl.targets.openemr.registration import registration_flow

    profile = make_profile(store, token_server.url, client_id="")
    flow = registration_flow(profile, {"scope": "system/Patient.read", "jwks": {"keys": []}})
    request = next(flow)
    assert request.url.path == f"/oauth2/{SITE}/registration"
    answer = httpx.Response(
        400,
        json={
            "error": "invalid_scope",
            "error_description": "The requested scope is invalid, unknown, or malformed",
            "hint": "Check the `system/Patient.read` scope",
            "message": "The requested scope is invalid, unknown, or malformed",
        },
    )
    with pytest.raises(ClientRequestError) as caught:
        flow.send(answer)
    assert "hint: Check the `system/Patient.read` scope" in caught.value.message
    assert "Enable OpenEMR FHIR System Scopes" in (caught.value.hint or "")


# -- discovery ---------------------------------------------------------------------------------


def _init(cli, url: str, *extra: str):
    return cli(
        "profile",
        "init",
        "default",
        "--kind",
        "openemr",
        "--url",
        url,
        "--client-id",
        CLIENT_ID,
        "--scope",
        DEFAULT_SCOPE + " system/Patient.read",
        *extra,
    )


@pytest.mark.parametrize("version", ["7.0.3", "7.0.4"])
def test_discovery_names_the_aud_while_requests_stay_on_the_typed_host(
    cli, store: Store, token_server, rsa2048, version: str
) -> None:
    """OpenEMR's Site Address differs from the URL cwsctl was given (a proxy, an alias): the
    assertion names OpenEMR's token URL, the request still goes to the typed host."""
    from cwsctl.targets.openemr.tokens import authorize_url

    token_server.state.site_address = "https://emr.example.test"
    token_server.state.version = version
    store.keys_dir.mkdir(mode=0o700, parents=True)
    write_private(store.private_key_path("default"), rsa2048)
    token_server.state.jwks = jwk_set([rsa2048.public_key()])
    result = _init(cli, token_server.url)
    assert result.exit_code == 0, result.stderr
    assert token_server.state.discovery_hits == 2
    profile = store.get_profile("default")
    assert profile.settings.token_endpoint == "https://emr.example.test/oauth2/default/token"
    assert (
        profile.settings.registration_endpoint
        == "https://emr.example.test/oauth2/default/registration"
    )
    assert (
        profile.settings.fhir_base == "https://emr.example.test/apis/default/fhir"
    )  # 7.0.3: derived
    assert "site address is https://emr.example.test" in result.stderr
    ends = endpoints(profile)
    assert ends.token == f"{token_server.url}/oauth2/default/token"
    assert ends.audience == profile.settings.token_endpoint
    token = cli("oauth", "token")  # emr.example.test does not resolve: it was never contacted
    assert token.exit_code == 0, token.stderr
    claims = jwt.decode(
        token_server.state.token_forms[0]["client_assertion"], options={"verify_signature": False}
    )
    assert claims["aud"] == "https://emr.example.test/oauth2/default/token"
    url = authorize_url(
        profile,
        redirect_uri="http://127.0.0.1:1/callback",
        state="s",
        code_challenge="c",
        scope="x",
    )
    assert url.startswith(f"{token_server.url}/oauth2/default/authorize?")
    assert parse_qs(urlsplit(url).query)["aud"] == ["https://emr.example.test/apis/default/fhir"]
    # `oauth discover` redoes it: the site address moved
    token_server.state.site_address = "https://emr2.example.test"
    again = cli("oauth", "discover")
    assert again.exit_code == 0, again.stderr
    assert again.stdout.strip() == "https://emr2.example.test/oauth2/default/token"
    assert store.get_profile("default").settings.token_endpoint == again.stdout.strip()


def test_discovery_unreachable_warns_once_and_falls_back(cli, store: Store) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"  # nothing listens there now
    result = _init(cli, url, "--timeout", "3")
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert "documented paths" in warnings[0] and "cwsctl -p default oauth discover" in warnings[0]
    profile = store.get_profile("default")
    assert profile.settings.token_endpoint == ""
    assert endpoints(profile).audience == f"{url}/oauth2/default/token"


def test_profile_without_discovered_endpoints_still_loads(store: Store) -> None:
    """A config.toml written before discovery existed loads, and saves back the same shape."""
    store.root.mkdir(parents=True, exist_ok=True)
    store.config_path.write_text(
        'default_profile = "emr"\n[profiles.emr]\nkind = "openemr"\n'
        'url = "https://emr.example.org"\nsite = "default"\nclient_id = "c"\nscope = ""\n'
    )
    profile = store.get_profile("emr")
    assert endpoints(profile).audience == "https://emr.example.org/oauth2/default/token"
    assert not endpoints(profile).discovered
    assert set(profile.to_toml()) == {"kind", "url", "site", "client_id", "scope"}


def test_register_json_and_show_secret(cli, store: Store, token_server, rsa2048) -> None:
    store.keys_dir.mkdir(mode=0o700, parents=True)
    write_private(store.private_key_path("default"), rsa2048)
    make_profile(store, token_server.url, client_id="")
    result = cli(
        "oauth",
        "register",
        "--json",
        "--scope",
        "system/Patient.read",
        "--jwks-uri",
        "https://keys.example.org/jwks.json",
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {
        "client_id": CLIENT_ID,
        "scope": "system/Patient.read",
        "registration_access_token_stored": True,
    }
    sent = token_server.state.registrations[0]
    assert sent["jwks_uri"] == "https://keys.example.org/jwks.json" and "jwks" not in sent
    shown = cli("oauth", "register", "--show-secret")
    assert "registration_access_token: reg-secret-" in shown.stdout


def test_register_client_id_by_hand_sends_nothing(cli, store: Store, token_server) -> None:
    make_profile(store, token_server.url, client_id="")
    result = cli("oauth", "register", "--client-id", "made-in-admin-pages")
    assert result.exit_code == 0, result.stderr
    assert store.get_profile("default").settings.client_id == "made-in-admin-pages"
    assert token_server.state.registrations == []
    assert cli("oauth", "register", "--client-id", "has space").exit_code == 2


@pytest.mark.slow
def test_login_then_refresh_grant_without_prompt(
    run_cwsctl, cwsctl_home: Path, emr: Profile, store: Store, token_server
) -> None:
    env = {**os.environ, "CWSCTL_HOME": str(cwsctl_home)}
    process = start_oauth_login(env, "--no-browser", "--wait", "20")
    try:
        url = read_login_url(process)
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        assert url.startswith(f"{token_server.url}/oauth2/{SITE}/authorize?")
        assert query["response_type"] == "code" and query["client_id"] == CLIENT_ID
        assert query["code_challenge_method"] == "S256"
        assert query["aud"] == f"{token_server.url}/apis/{SITE}/fhir"
        assert query["redirect_uri"].startswith("http://127.0.0.1:")
        answer = httpx.get(url, follow_redirects=True, timeout=10)
        assert answer.status_code == 200
        _, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert token_server.state.grants() == ["authorization_code"]
    exchange = token_server.state.token_forms[0]
    assert exchange["redirect_uri"] == query["redirect_uri"]
    refresh = TokenStore(store, "default").refresh_token(CLIENT_ID, endpoints(emr).token)
    assert refresh is not None and refresh.encode() not in err
    # later, with the access token expired: the refresh grant, no prompt, nothing on a terminal
    data = json.loads((store.root / "tokens" / "default.json").read_text())
    data["access"]["expires_at"] = time.time() - 1
    (store.root / "tokens" / "default.json").write_text(json.dumps(data))
    later = run_cwsctl("oauth", "token")
    assert later.returncode == 0, later.stderr
    assert token_server.state.grants() == ["authorization_code", "refresh_token"]


def test_login_ignores_a_wrong_state_and_signs_in_with_the_right_one(
    cwsctl_home: Path, emr: Profile, token_server
) -> None:
    """Any local process can reach the loopback port: a redirect with the wrong state is
    ignored with a warning (its code never exchanged), not allowed to abort the login."""
    env = {**os.environ, "CWSCTL_HOME": str(cwsctl_home)}
    process = start_oauth_login(env, "--no-browser", "--wait", "20")
    try:
        url = read_login_url(process)
        redirect = parse_qs(urlsplit(url).query)["redirect_uri"][0]
        httpx.get(redirect, params={"code": "forged", "state": "not-the-state"}, timeout=10)
        httpx.get(redirect, params={"code": "forged-too"}, timeout=10)
        assert process.poll() is None  # still waiting
        assert httpx.get(url, follow_redirects=True, timeout=10).status_code == 200
        _, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert err.count(b"cwsctl: warning: ignored a redirect with the wrong state") == 2
    assert token_server.state.grants() == ["authorization_code"]
    assert token_server.state.token_forms[0]["code"] not in ("forged", "forged-too")


@pytest.mark.slow
def test_login_wrong_state_only_times_out_with_exit_6(
    cwsctl_home: Path, emr: Profile, token_server
) -> None:
    env = {**os.environ, "CWSCTL_HOME": str(cwsctl_home)}
    process = start_oauth_login(env, "--no-browser", "--wait", "2")
    try:
        url = read_login_url(process)
        redirect = parse_qs(urlsplit(url).query)["redirect_uri"][0]
        httpx.get(redirect, params={"code": "forged", "state": "not-the-state"}, timeout=10)
        _, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 6, err
    assert token_server.state.token_forms == []


def test_the_browser_inherits_no_secret_variables(
    cwsctl_home: Path, emr: Profile, token_server, tmp_path: Path
) -> None:
    """oauth login on a terminal opens $BROWSER: it gets cwsctl's environment minus
    CWSCTL_PASSWORD*, CWSCTL_TOKEN* and CWSCTL_PASSPHRASE*."""
    import pty
    import subprocess
    import sys

    seen = tmp_path / "browser-env.json"
    browser = tmp_path / "browser"
    browser.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"open({str(seen)!r}, 'w').write(json.dumps({{**os.environ, 'URL': sys.argv[1]}}))\n"
    )
    browser.chmod(0o700)
    secrets = {
        "CWSCTL_PASSWORD": "pw-secret",
        "CWSCTL_TOKEN": "tok-secret",
        "CWSCTL_TOKEN_FILE": str(tmp_path / "t"),
        "CWSCTL_PASSPHRASE_FILE": str(tmp_path / "p"),
    }
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(secrets, CWSCTL_HOME=str(cwsctl_home), BROWSER=f"{browser} %s", DISPLAY=":99")
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "cwsctl", "oauth", "login", "--wait", "20"],
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(terminal)
    try:
        url = read_login_url(process)
        deadline = time.monotonic() + 20
        while not seen.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(url, follow_redirects=True, timeout=10).status_code == 200
        _, err = process.communicate(timeout=20)
    finally:
        process.kill()
        os.close(controller)
    assert process.returncode == 0, err
    inherited = json.loads(seen.read_text())
    assert inherited["URL"] == url and inherited["CWSCTL_HOME"] == str(cwsctl_home)
    assert not set(secrets) & set(inherited)


def test_login_without_terminal_needs_no_browser_flag(run_cwsctl, emr: Profile) -> None:
    result = run_cwsctl("oauth", "login")
    assert result.returncode == 2
    assert b"not a terminal" in result.stderr and b"--no-browser" in result.stderr


def test_login_times_out_with_exit_6(run_cwsctl, emr: Profile) -> None:
    result = run_cwsctl("oauth", "login", "--no-browser", "--wait", "0.5")
    assert result.returncode == 6
    assert b"--wait" in result.stderr


# -- end to end against the OpenEMR flavour of the sandbox -------------------------------------

VERSIONS = ["7.0.3", "7.0.4"]


def token_requests(capfd: pytest.CaptureFixture[str]) -> int:
    """Token requests the sandbox answered since the last call (from its access log on stderr)."""
    return capfd.readouterr().err.count("POST /oauth2/default/token ")


@pytest.fixture(params=VERSIONS)
def emr_sandbox(request, make_openemr_sandbox):
    """A sandbox of each version with system scopes turned on and 2-second tokens."""
    return make_openemr_sandbox(version=request.param, system_scopes=True, token_lifetime=2)


def _sandbox_profile(cli, store: Store, sandbox, rsa2048, *extra: str) -> None:
    store.keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(store.private_key_path("default"), rsa2048)
    result = cli("profile", "init", "default", "--kind", "openemr", "--url", sandbox.url, *extra)
    assert result.exit_code == 0, result.stderr
    assert "warning" not in result.stderr  # discovery worked


@pytest.fixture
def registered(cli, store: Store, emr_sandbox, rsa2048) -> Profile:
    """An openemr profile at the sandbox, registered with system scopes and enabled."""
    _sandbox_profile(cli, store, emr_sandbox, rsa2048)
    result = cli("oauth", "register", "--system-scopes", "--contact", "ops@example.org")
    assert result.exit_code == 0, result.stderr
    profile = store.get_profile("default")
    assert profile.settings.client_id == result.stdout.strip() and profile.settings.client_id
    assert emr_sandbox.enable_client(profile.settings.client_id)
    return profile


def test_sandbox_registration_disabled_until_enabled(
    cli, store: Store, emr_sandbox, rsa2048
) -> None:
    _sandbox_profile(cli, store, emr_sandbox, rsa2048)
    assert (
        store.get_profile("default").settings.token_endpoint == emr_sandbox.token_url
    )  # discovered
    result = cli("oauth", "register", "--system-scopes")
    assert result.exit_code == 0, result.stderr
    client_id = result.stdout.strip()
    assert "disabled until an administrator enables it" in result.stderr
    if emr_sandbox.version == "7.0.3":  # refused private_key_jwt; sent again without it
        assert "7.0.3" in result.stderr
    assert [c["enabled"] for c in emr_sandbox.clients()] == [False]
    refused = cli("oauth", "token")
    assert refused.exit_code == 4
    assert "invalid_client — disabled or unknown client" in refused.stderr
    assert "Administration → System → API Clients" in refused.stderr
    doctor = cli("doctor")
    assert doctor.exit_code == 4
    assert "disabled or unknown client" in doctor.stdout + doctor.stderr
    emr_sandbox.enable_client(client_id)  # the administrator's step
    token = cli("oauth", "token")
    assert token.exit_code == 0, token.stderr


@pytest.mark.parametrize("version", VERSIONS)
def test_sandbox_system_scopes_off_refuses_registration_with_the_admin_step(
    cli, store: Store, make_openemr_sandbox, rsa2048, version: str
) -> None:
    sandbox = make_openemr_sandbox(version=version)  # system scopes off: a default install
    _sandbox_profile(cli, store, sandbox, rsa2048)
    result = cli("oauth", "register", "--system-scopes")
    assert result.exit_code == 4
    error, hint = [x for x in result.stderr.splitlines() if x.startswith(("cwsctl:", "hint:"))]
    assert "invalid_scope" in error and "hint: Check the `system/Patient.read` scope" in error
    assert "Enable OpenEMR FHIR System Scopes" in hint
    default = cli("oauth", "register")  # the default scope is one a default install offers
    assert default.exit_code == 0, default.stderr


@pytest.mark.parametrize("version", VERSIONS)
def test_sandbox_site_address_differs_aud_follows_discovery(
    cli, store: Store, make_openemr_sandbox, rsa2048, version: str
) -> None:
    sandbox = make_openemr_sandbox(
        version=version, system_scopes=True, site_address="https://emr.example.test"
    )
    _sandbox_profile(cli, store, sandbox, rsa2048)
    profile = store.get_profile("default")
    assert profile.settings.token_endpoint == "https://emr.example.test/oauth2/default/token"
    assert profile.settings.fhir_base == "https://emr.example.test/apis/default/fhir"
    registered = cli("oauth", "register", "--system-scopes")
    assert registered.exit_code == 0, registered.stderr
    sandbox.enable_client(registered.stdout.strip())
    token = cli("oauth", "token")  # sent to 127.0.0.1, aud = the site address's token URL
    assert token.exit_code == 0, token.stderr
    doctor = cli("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert "differs from the profile URL" in checks["site address"]["detail"]
    assert checks["discovery"]["ok"] and checks["token and API"]["ok"], doctor.stdout


@pytest.mark.timing
@pytest.mark.slow
def test_sandbox_token_reuse_then_renewal(
    cli, run_cwsctl, registered: Profile, emr_sandbox, capfd: pytest.CaptureFixture[str]
) -> None:
    # A 3-second token (reused for 2.7 s). The first call is a process of its own, as cron
    # runs it: it asks for the token and leaves it in the profile's token file; the other five
    # run in-process (the ``cli`` fixture, milliseconds each), so they fit the reuse window on a
    # loaded machine and show that the file carries the token from one process to the next.
    # In-process, the sandbox's access lines land in the call's own stderr: counted there too.
    emr_sandbox.token_lifetime = 3
    capfd.readouterr()
    first = run_cwsctl("-q", "request", "GET", f"/apis/{SITE}/fhir/Patient")
    obtained_by = time.monotonic()  # the token was asked for before the process ended
    assert first.returncode == 0, first.stderr
    assert first.stderr == b""
    in_process_log = ""
    tokens = []
    for _ in range(3):
        result = cli("oauth", "token")
        assert result.exit_code == 0, result.stderr
        tokens.append(result.stdout.strip())
        in_process_log += result.stderr
    for _ in range(2):
        result = cli("-q", "request", "GET", f"/apis/{SITE}/fhir/Patient")
        assert result.exit_code == 0, result.stderr
        own = [x for x in result.stderr.splitlines() if not x.startswith("cwsctl-sandbox: ")]
        assert own == []
        in_process_log += result.stderr
    assert len(set(tokens)) == 1
    # six calls, one token request (the first call's)
    assert token_requests(capfd) + in_process_log.count("POST /oauth2/default/token ") == 1
    time.sleep(max(0.0, obtained_by + 3.0 - time.monotonic()))  # past its reuse margin now
    renewed = cli("oauth", "token")
    assert renewed.exit_code == 0, renewed.stderr
    assert renewed.stdout.strip() != tokens[0]
    assert token_requests(capfd) + renewed.stderr.count("POST /oauth2/default/token ") == 1


def test_sandbox_revoked_token_one_renewal_one_retry(
    run_cwsctl, registered: Profile, emr_sandbox, capfd: pytest.CaptureFixture[str]
) -> None:
    emr_sandbox.token_lifetime = 60
    assert run_cwsctl("request", "GET", f"/apis/{SITE}/fhir/Patient").returncode == 0
    assert token_requests(capfd) == 1
    emr_sandbox.revoke_tokens()  # the cached token still looks valid on our side
    result = run_cwsctl("request", "GET", f"/apis/{SITE}/fhir/Patient")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["resourceType"] == "Bundle"
    log = capfd.readouterr().err
    assert log.count("POST /oauth2/default/token ") == 1  # one renewal
    assert log.count(f"GET /apis/{SITE}/fhir/Patient 401") == 1  # the revoked token
    assert log.count(f"GET /apis/{SITE}/fhir/Patient 200") == 1  # exactly one retry


def test_sandbox_missing_scope_renews_once_per_run(
    registered: Profile, store: Store, emr_sandbox, rsa2048, capfd: pytest.CaptureFixture[str]
) -> None:
    """A client-credentials token may not create patients: OpenEMR answers 401 to every try.
    Five creates in one run: one renewal, then the 401s come back as they are."""
    from cwsctl.registry import kind_of

    capfd.readouterr()
    emr_sandbox.token_lifetime = 60
    client = kind_of(registered).open_client(registered, store, passphrase=None, audit=None)
    body = json.dumps({"resourceType": "Patient", "name": [{"use": "official", "family": "Li"}]})
    with client:
        answers = [
            client.request("POST", f"/apis/{SITE}/fhir/Patient", body.encode()) for _ in range(5)
        ]
    assert [a.status for a in answers] == [401] * 5
    assert "the token lacks a scope for this path, or the client is disabled" in (
        answers[0].error_message()
    )
    log = capfd.readouterr().err
    assert log.count("POST /oauth2/default/token ") == 2  # the first token, one renewal
    assert log.count(f"POST /apis/{SITE}/fhir/Patient 401") == 6  # five and one retry
    assert emr_sandbox.count_patients() == 0


def test_sandbox_unknown_key_refused_with_exit_4(
    run_cwsctl, registered: Profile, store: Store, rsa2048_other
) -> None:
    write_private(store.private_key_path("default"), rsa2048_other)  # not the registered key
    result = run_cwsctl("oauth", "token")
    assert result.returncode == 4
    first, hint = result.stderr.decode().splitlines()[:2]
    assert first.startswith(
        "cwsctl: error: the token endpoint refused the client-credentials grant: invalid_client"
    )
    assert "cwsctl keys jwks" in hint and "cwsctl oauth register" in hint
    assert result.stdout == b""


def _post_assertion(sandbox, assertion: str) -> httpx.Response:
    with bounded_client(timeout=10) as client:
        return client.post(
            sandbox.token_url,
            data={
                "grant_type": "client_credentials",
                "scope": "system/Patient.read",
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": assertion,
            },
        )


def _refusal(response: httpx.Response) -> ClientRequestError:
    with pytest.raises(ClientRequestError) as caught:
        parse_token_response(response, "client_credentials", sent_at=time.time())
    assert caught.value.exit_status == 4
    return caught.value


def test_sandbox_replayed_jti_refused(registered: Profile, emr_sandbox, rsa2048) -> None:
    assertion = client_assertion(rsa2048, registered.settings.client_id, emr_sandbox.token_url)
    assert _post_assertion(emr_sandbox, assertion).status_code == 200
    error = _refusal(_post_assertion(emr_sandbox, assertion))
    assert "invalid_client" in error.message


def test_sandbox_wrong_aud_refused(registered: Profile, emr_sandbox, rsa2048) -> None:
    elsewhere = emr_sandbox.token_url.replace("/oauth2/default/", "/oauth2/other/")
    error = _refusal(
        _post_assertion(
            emr_sandbox, client_assertion(rsa2048, registered.settings.client_id, elsewhere)
        )
    )
    assert "invalid_client" in error.message


def test_sandbox_expired_assertion_refused(
    registered: Profile, store: Store, emr_sandbox, rsa2048
) -> None:
    """A clock ten minutes slow makes every assertion expired on arrival."""
    source = TokenSource(registered, store, rsa2048, clock=lambda: time.time() - 600)
    with bounded_client(timeout=10) as client, pytest.raises(ClientRequestError) as caught:
        run_flow(source.token_flow(), client)
    assert caught.value.exit_status == 4
    # 7.0.3: a constraint failure (400 invalid_client); 7.0.4+: its extra iat check
    expected = "invalid_client" if emr_sandbox.version == "7.0.3" else "invalid_request"
    assert expected in caught.value.message
    assert "clock" in (caught.value.hint or "")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.timing
@pytest.mark.slow
def test_sandbox_login_refresh_then_logout_is_login_required(
    run_cwsctl, make_openemr_login, store: Store, cwsctl_home: Path, version: str
) -> None:
    """Writes use the login's refresh token; a logout stops every later call with exit 3."""
    login = make_openemr_login(version=version, token_lifetime=2)
    tokens = TokenStore(store, login.name)
    profile = store.get_profile(login.name)
    first_refresh = tokens.refresh_token(login.client_id, endpoints(profile).token)
    assert first_refresh is not None
    time.sleep(2.0)  # the access token from the login expires
    result = run_cwsctl("-q", "-p", login.name, "request", "GET", f"/apis/{SITE}/fhir/Patient")
    assert result.returncode == 0, result.stderr
    second_refresh = tokens.refresh_token(login.client_id, endpoints(profile).token)
    # the refresh grant ran (OpenEMR rotates refresh tokens on every use) and was stored
    assert second_refresh is not None and second_refresh != first_refresh
    login.server.token_lifetime = 60
    # Past the refreshed 2-second token's reuse margin, so this gets a 60-second one whatever
    # the load (a reused 2-second token could expire before the request below: a refresh then).
    time.sleep(2.0)
    assert run_cwsctl("-p", login.name, "oauth", "token").returncode == 0
    login.server.logout()
    result = run_cwsctl("-p", login.name, "request", "GET", f"/apis/{SITE}/fhir/Patient")
    assert result.returncode == 3, result.stderr
    error = result.stderr.decode()
    assert "Refresh Token revoked or logged out" in error
    assert f"hint: sign in as an OpenEMR user once: cwsctl -p {login.name} oauth login" in error
    again = run_cwsctl("-p", login.name, "request", "GET", f"/apis/{SITE}/fhir/Patient")
    assert again.returncode == 3  # nothing left to try without a person
    assert f"cwsctl -p {login.name} oauth login" in again.stderr.decode()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.timing
@pytest.mark.slow
def test_sandbox_refused_refresh_token_is_login_required(
    run_cwsctl, make_openemr_login, store: Store, version: str
) -> None:
    login = make_openemr_login(version=version, token_lifetime=1)
    login.server.revoke_tokens(refresh=True)
    time.sleep(1.0)
    result = run_cwsctl("-p", login.name, "request", "GET", f"/apis/{SITE}/fhir/Patient")
    assert result.returncode == 3, result.stderr
    error = result.stderr.decode()
    assert "invalid_grant" in error and f"cwsctl -p {login.name} oauth login" in error


@pytest.mark.parametrize("args", [["--help"], ["oauth", "--help"], ["keys", "jwks", "--help"]])
def test_help_imports_neither_jwt_nor_httpx(args: list[str]) -> None:
    import sys

    code = (
        "import sys\n"
        "from cwsctl.cli.main import run\n"
        f"run({args!r})\n"
        "print(sorted(m for m in ('jwt', 'httpx', 'cwsctl.protocols.oauth2.grants') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_tokens_stay_out_of_verbose_output_and_audit_log(
    run_cwsctl, cwsctl_home: Path, registered: Profile, store: Store
) -> None:
    result = run_cwsctl("-v", "request", "GET", f"/apis/{SITE}/fhir/Patient")
    assert result.returncode == 0, result.stderr
    cache = json.loads((store.root / "tokens" / "default.json").read_text())
    secrets_ = [cache["access"]["access_token"], cache["registration"]["registration_access_token"]]
    assert b"content-type" in result.stderr.lower()  # -v did show the exchange
    for secret in secrets_:
        assert secret.encode() not in result.stdout + result.stderr
        for path in cwsctl_home.rglob("*"):
            if path.is_file() and path.parent.name != "tokens":
                assert secret.encode() not in path.read_bytes(), path

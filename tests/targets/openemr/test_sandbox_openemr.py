"""The OpenEMR flavour of the sandbox, spoken to directly with httpx and PyJWT (no cwsctl client).

Every behaviour in cwsctl/sandbox/README.md's OpenEMR table has a test here, in both version
modes where 7.0.3 and 7.0.4+ differ.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.sandbox_plugin import serve_sandbox

jwt = pytest.importorskip("jwt")
pytest.importorskip("starlette")

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
REDIRECT = "http://127.0.0.1/callback"
USER_SCOPE = "openid offline_access api:fhir user/Patient.read user/Patient.write"
STANDARD_SCOPE = "openid offline_access api:oemr user/patient.read user/patient.write"
SYSTEM_SCOPE = "system/Patient.read"
VERSIONS = ["7.0.3", "7.0.4"]
PT_TYPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PT"}]}
SS_TYPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS"}]}
DENIED = "The resource owner or authorization server denied the request."
LOGGED_OUT = "Refresh Token revoked or logged out"

Make = Callable[..., Any]


# -- helpers --------------------------------------------------------------------------------------
def jwks(*keys_and_kids: tuple[Any, str | None]) -> dict[str, Any]:
    entries = []
    for key, kid in keys_and_kids:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        entries.append({**jwk, "kid": kid} if kid else jwk)
    return {"keys": entries}


def register_raw(server: Any, body: Any, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{server.url}/oauth2/{server.site}/registration",
        content=content,
        headers={"Content-Type": "application/json", **headers},
    )


def register(
    server: Any, key: Any, scope: str = USER_SCOPE, *, enable: bool = True, **extra: Any
) -> dict[str, Any]:
    body = {
        "application_type": "private",
        "client_name": "cwsctl tests",
        "redirect_uris": [REDIRECT],
        "scope": scope,
        "jwks": jwks((key, "k1")),
        **extra,
    }
    answer = register_raw(server, {k: v for k, v in body.items() if v is not None})
    assert answer.status_code == 200, answer.text
    document = answer.json()
    if enable:
        assert server.enable_client(document["client_id"])
    return document


def assertion(
    server: Any, key: Any, client_id: str, *, alg: str = "RS384", kid: str = "k1", **claims: Any
) -> str:
    now = int(time.time())
    payload = {
        "iss": client_id,
        "sub": client_id,
        "aud": server.token_url,
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_hex(16),
        **claims,
    }
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def token_request(
    server: Any, signed: str | None, headers: dict[str, str] | None = None, **form: str
) -> httpx.Response:
    data = {"grant_type": "client_credentials", **form}
    if signed is not None:
        data |= {"client_assertion_type": JWT_BEARER, "client_assertion": signed}
    return httpx.post(f"{server.url}/oauth2/{server.site}/token", data=data, headers=headers)


def system_token(server: Any, key: Any, client_id: str, scope: str = SYSTEM_SCOPE) -> str:
    answer = token_request(server, assertion(server, key, client_id), scope=scope)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize(server: Any, client_id: str, scope: str, **params: str) -> httpx.Response:
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": "xyz",
        **params,
    }
    return httpx.get(f"{server.url}/oauth2/{server.site}/authorize", params=query)


def redirect_query(answer: httpx.Response) -> dict[str, list[str]]:
    assert answer.status_code == 302, answer.text
    return parse_qs(urlsplit(answer.headers["location"]).query)


def user_login(server: Any, key: Any, client_id: str, scope: str = USER_SCOPE) -> httpx.Response:
    """authorize (PKCE, auto-approved) + code exchange with an assertion: the token answer."""
    verifier, challenge = pkce()
    code = redirect_query(
        authorize(server, client_id, scope, code_challenge=challenge, code_challenge_method="S256")
    )["code"][0]
    return code_exchange(server, key, client_id, code, verifier)


def code_exchange(
    server: Any, key: Any, client_id: str, code: str, verifier: str
) -> httpx.Response:
    """The authorization-code grant for ``code`` with an assertion and PKCE ``verifier``."""
    return token_request(
        server,
        assertion(server, key, client_id),
        grant_type="authorization_code",
        client_id=client_id,
        code=code,
        redirect_uri=REDIRECT,
        code_verifier=verifier,
    )


def user_tokens(server: Any, key: Any, client_id: str, scope: str = USER_SCOPE) -> dict[str, Any]:
    answer = user_login(server, key, client_id, scope)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def refresh(server: Any, key: Any, client_id: str, refresh_token: str) -> httpx.Response:
    return token_request(
        server,
        assertion(server, key, client_id),
        grant_type="refresh_token",
        client_id=client_id,
        refresh_token=refresh_token,
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def patient(family: str = "Hopper", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [
            {"system": "urn:cwsctl:facility:10000", "type": PT_TYPE, "value": "10000:A1"}
        ],
        "name": [{"use": "official", "family": family, "given": ["Grace", "Brewster"]}],
        "gender": "female",
        "birthDate": "1906-12-09",
        **extra,
    }


def assert_unauthorized(answer: httpx.Response, version: str) -> None:
    """A missing scope: 401, empty on 7.0.3, OpenEMR's kernel body on 7.0.4+."""
    assert answer.status_code == 401
    if version == "7.0.3":
        assert answer.content == b""
    else:
        assert answer.json() == {"error": "An error occurred", "message": "Unauthorized", "code": 0}


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def shared_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One running sandbox per version for the module (stopping one costs ~0.2 s)."""
    from cwsctl.sandbox.faults import Faults
    from cwsctl.targets.openemr.sandbox.server import OpenEmrSandboxServer

    servers: dict[str, Any] = {}
    for name in VERSIONS:
        data_dir = tmp_path_factory.mktemp(f"openemr-{name}")
        servers[name] = OpenEmrSandboxServer(
            data_dir, version=name, system_scopes=True, faults=Faults()
        ).start()
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def emr(shared_servers: dict[str, Any], version: str) -> Any:
    """The sandbox of each version (system scopes on), emptied: no clients, tokens, patients."""
    server = shared_servers[version]
    server.reset()
    server.token_lifetime = None
    return server


@pytest.fixture
def client(emr: Any, rsa2048: Any) -> str:
    """An enabled confidential client of ``emr`` with user/ and system/ scopes."""
    return str(register(emr, rsa2048, f"{USER_SCOPE} {SYSTEM_SCOPE}")["client_id"])


@pytest.fixture
def user(emr: Any, rsa2048: Any, client: str) -> httpx.Client:
    """An httpx client on ``emr``'s API with a user's access token (create and read Patient)."""
    token = user_tokens(emr, rsa2048, client)["access_token"]
    with httpx.Client(base_url=emr.api_url, headers=bearer(token)) as http:
        yield http


# -- discovery -----------------------------------------------------------------------------------
def test_smart_configuration_per_version(emr: Any, version: str) -> None:
    answer = httpx.get(f"{emr.url}/apis/default/fhir/.well-known/smart-configuration")
    assert answer.status_code == 200  # public: no token
    document = answer.json()
    assert document["token_endpoint"] == emr.token_url == f"{emr.url}/oauth2/default/token"
    assert document["authorization_endpoint"] == f"{emr.url}/oauth2/default/authorize"
    if version == "7.0.3":
        assert document["registration_endpoint"] == f"{emr.url}/oauth2/default/registration"
        assert "issuer" not in document
        assert "token_endpoint_auth_methods_supported" not in document
    else:
        assert "registration_endpoint" not in document
        assert document["issuer"] == emr.fhir_url == f"{emr.url}/apis/default/fhir"
        assert document["token_endpoint_auth_methods_supported"] == [
            "client_secret_basic",
            "private_key_jwt",
        ]


def test_openid_configuration(emr: Any) -> None:
    document = httpx.get(f"{emr.url}/oauth2/default/.well-known/openid-configuration").json()
    assert document["issuer"] == emr.oauth_url == f"{emr.url}/oauth2/default"
    assert document["token_endpoint"] == emr.token_url
    assert document["registration_endpoint"] == f"{emr.oauth_url}/registration"
    assert document["token_endpoint_auth_methods_supported"] == ["client_secret_post"]
    assert "system/Patient.read" in document["scopes_supported"]
    assert httpx.get(f"{emr.url}/.well-known/openid-configuration").status_code == 404
    assert httpx.get(f"{emr.url}/.well-known/smart-configuration").status_code == 404


def test_site_address_override_is_the_base_of_discovery_and_aud(
    make_openemr_sandbox: Make, rsa2048: Any
) -> None:
    server = make_openemr_sandbox(site_address="https://emr.example.test/", system_scopes=True)
    assert server.token_url == "https://emr.example.test/oauth2/default/token"
    assert server.fhir_url == "https://emr.example.test/apis/default/fhir"
    assert server.api_url == f"{server.url}/apis/default"  # where requests actually go
    smart = httpx.get(f"{server.api_url}/fhir/.well-known/smart-configuration").json()
    assert smart["token_endpoint"] == server.token_url
    client_id = register(server, rsa2048, SYSTEM_SCOPE)["client_id"]
    typed_url = f"{server.url}/oauth2/default/token"
    wrong = token_request(server, assertion(server, rsa2048, client_id, aud=typed_url))
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_client")
    right = token_request(server, assertion(server, rsa2048, client_id))
    assert right.status_code == 200, right.text


def test_without_override_the_request_host_is_the_site_address(
    openemr_sandbox: Any, rsa2048: Any
) -> None:
    server = openemr_sandbox
    alias = {"Host": "emr.internal:8443"}
    smart = httpx.get(f"{server.api_url}/fhir/.well-known/smart-configuration", headers=alias)
    assert smart.json()["token_endpoint"] == "http://emr.internal:8443/oauth2/default/token"
    forwarded = httpx.get(
        f"{server.api_url}/fhir/.well-known/smart-configuration",
        headers={"X-Forwarded-Host": "emr.example.test"},
    )
    assert forwarded.json()["token_endpoint"] == "http://emr.example.test/oauth2/default/token"

    client_id = register(server, rsa2048)["client_id"]  # user scope: a client_credentials
    # token would carry no system scope, but the grant itself is what is checked here
    as_typed = assertion(server, rsa2048, client_id)  # aud = http://127.0.0.1:PORT/…
    refused = token_request(server, as_typed, headers=alias)
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_client")
    aliased = assertion(
        server, rsa2048, client_id, aud="http://emr.internal:8443/oauth2/default/token"
    )
    assert token_request(server, aliased, headers=alias).status_code == 200


# -- registration --------------------------------------------------------------------------------
def test_registration_answer_per_version(emr: Any, rsa2048: Any, version: str) -> None:
    body = {
        "application_type": "private",
        "redirect_uris": [REDIRECT],
        "scope": USER_SCOPE,
        "jwks": jwks((rsa2048, None)),  # no kid: fine, OpenEMR never reads it
        "contacts": ["ops@example.org"],
    }
    answer = register_raw(emr, body)
    assert answer.status_code == 200
    document = answer.json()
    assert document["client_id"] and document["registration_access_token"]
    assert document["client_secret"]  # private → a secret, whatever the auth method
    assert document["client_secret_expires_at"] == 0
    assert document["client_role"] == "user"
    assert document["registration_client_uri"].startswith(f"{emr.oauth_url}/client/")
    assert abs(document["client_id_issued_at"] - time.time()) < 10
    assert (document["scope"], document["redirect_uris"]) == (USER_SCOPE, [REDIRECT])
    assert document["jwks"] == body["jwks"] and document["contacts"] == ["ops@example.org"]
    if version == "7.0.3":  # withHeader results discarded: PHP's defaults
        assert answer.headers["content-type"].startswith("text/html")
        assert "cache-control" not in answer.headers
    else:
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["cache-control"] == "no-store"
    public = register_raw(emr, {"redirect_uris": [REDIRECT], "scope": "openid api:fhir"})
    assert public.status_code == 200
    assert (public.json()["client_secret"], public.json()["client_role"]) == ("", "patient")


def test_private_key_jwt_auth_method_per_version(emr: Any, rsa2048: Any, version: str) -> None:
    body = {
        "application_type": "private",
        "redirect_uris": [REDIRECT],
        "scope": USER_SCOPE,
        "jwks": jwks((rsa2048, "k1")),
    }
    answer = register_raw(emr, {**body, "token_endpoint_auth_method": "private_key_jwt"})
    if version == "7.0.3":
        assert answer.status_code == 400
        assert answer.json() == {
            "error": "invalid_client_metadata",
            "error_description": "Unsupported token_endpoint_auth_method value : private_key_jwt",
            "message": "Unsupported token_endpoint_auth_method value : private_key_jwt",
        }
    else:
        assert answer.status_code == 200
        assert answer.json()["token_endpoint_auth_method"] == "private_key_jwt"
    secret = register_raw(emr, {**body, "token_endpoint_auth_method": "client_secret_post"})
    assert secret.status_code == 200
    bogus = register_raw(emr, {**body, "token_endpoint_auth_method": "none"})
    assert (bogus.status_code, bogus.json()["error"]) == (400, "invalid_client_metadata")


@pytest.mark.parametrize(
    ("change", "error", "hint_or_description"),
    [
        ({"scope": "openid user/Patient.frobnicate"}, "invalid_scope", "user/Patient.frobnicate"),
        ({"scope": None}, "invalid_scope", "Check the `` scope"),
        ({"scope": "openid system/Patient.read", "jwks": None}, "invalid_client_metadata", "jwks"),
        ({"scope": "openid system/Patient.write"}, "invalid_scope", "system/Patient.write"),
        ({"application_type": None}, "invalid_client_metadata", "confidential clients"),
        ({"redirect_uris": None}, "invalid_redirect_uri", "redirect_uris is invalid"),
    ],
    ids=[
        "unknown",
        "no-scope",
        "system-without-jwks",
        "system-write",
        "public-user",
        "no-redirect",
    ],
)
def test_registration_refusals(
    emr: Any, rsa2048: Any, change: dict[str, Any], error: str, hint_or_description: str
) -> None:
    body = {
        "application_type": "private",
        "redirect_uris": [REDIRECT],
        "scope": USER_SCOPE,
        "jwks": jwks((rsa2048, "k1")),
        **change,
    }
    answer = register_raw(emr, {k: v for k, v in body.items() if v is not None})
    assert answer.status_code == 400
    document = answer.json()
    assert document["error"] == error
    assert document["message"] == document["error_description"]
    assert hint_or_description in document.get("hint", document["error_description"])
    if error == "invalid_scope":
        assert document["hint"].startswith("Check the `")
    assert emr.clients() == []


def test_registration_needs_json(openemr_sandbox: Any) -> None:
    as_form = httpx.post(f"{openemr_sandbox.oauth_url}/registration", data={"scope": "openid"})
    assert as_form.status_code == 400
    assert as_form.json()["error_description"] == "Unexpected content type"
    broken = register_raw(openemr_sandbox, b"{nope")
    assert broken.json()["error_description"] == "Invalid JSON"


def test_system_scopes_exist_only_when_turned_on(make_openemr_sandbox: Make, rsa2048: Any) -> None:
    off = make_openemr_sandbox()
    body = {
        "application_type": "private",
        "redirect_uris": [REDIRECT],
        "scope": "openid system/Patient.read",
        "jwks": jwks((rsa2048, "k1")),
    }
    refused = register_raw(off, body)
    assert (refused.status_code, refused.json()["hint"]) == (
        400,
        "Check the `system/Patient.read` scope",
    )
    on = make_openemr_sandbox(system_scopes=True)
    assert register_raw(on, body).status_code == 200
    export = register_raw(on, {**body, "scope": "system/*.$export system/Patient.$export"})
    assert export.status_code == 200


@pytest.mark.parametrize(
    ("scope", "on_703", "on_704"),
    [
        ("user/Patient.c", False, True),
        ("user/Patient.rs", False, True),
        ("user/Patient.cruds", False, False),
        ("user/Patient.crus", False, False),
        ("user/Patient.write", True, True),
        ("user/patient.write", True, True),
    ],
)
def test_v2_scopes_per_version(
    emr: Any, rsa2048: Any, version: str, scope: str, on_703: bool, on_704: bool
) -> None:
    body = {
        "application_type": "private",
        "redirect_uris": [REDIRECT],
        "scope": f"openid {scope}",
        "jwks": jwks((rsa2048, "k1")),
    }
    accepted = register_raw(emr, body).status_code == 200
    assert accepted == (on_703 if version == "7.0.3" else on_704)


# -- enablement ----------------------------------------------------------------------------------
def test_new_confidential_clients_with_user_or_system_scopes_start_disabled(
    emr: Any, rsa2048: Any
) -> None:
    client_id = register(emr, rsa2048, f"{USER_SCOPE} {SYSTEM_SCOPE}", enable=False)["client_id"]
    assert emr.clients() == [
        {
            "client_id": client_id,
            "enabled": False,
            "scope": f"{USER_SCOPE} {SYSTEM_SCOPE}",
            "client_name": "cwsctl tests",
            "client_role": "user",
        }
    ]
    for answer in (
        token_request(emr, assertion(emr, rsa2048, client_id), scope=SYSTEM_SCOPE),
        authorize(emr, client_id, USER_SCOPE),
    ):
        assert answer.status_code == 401
        assert answer.json() == {
            "error": "invalid_client",
            "error_description": "Client authentication failed",
            "message": "Client authentication failed",
        }
    assert emr.enable_client(client_id) is True
    assert emr.clients()[0]["enabled"] is True
    assert system_token(emr, rsa2048, client_id)
    assert emr.enable_client("nobody") is False


def test_other_clients_start_enabled_unless_manual_approval(
    make_openemr_sandbox: Make, rsa2048: Any
) -> None:
    server = make_openemr_sandbox()
    plain = register(server, rsa2048, "openid api:fhir", enable=False)["client_id"]
    public = register(server, rsa2048, "openid api:fhir", application_type=None, enable=False)
    assert {c["client_id"]: c["enabled"] for c in server.clients()} == {
        plain: True,
        public["client_id"]: True,
    }
    strict = make_openemr_sandbox(manual_approval=True)
    register(strict, rsa2048, "openid api:fhir", enable=False)
    assert [c["enabled"] for c in strict.clients()] == [False]


def test_enable_client_command_works_while_the_server_runs(
    openemr_sandbox: Any, rsa2048: Any, cli: Any
) -> None:
    server = openemr_sandbox
    client_id = register(server, rsa2048, enable=False)["client_id"]
    listed = cli("sandbox", "openemr", "clients", "--data-dir", str(server.data_dir))
    assert listed.exit_code == 0 and f"{client_id}  disabled" in listed.stdout
    result = cli(
        "sandbox", "openemr", "enable-client", client_id, "--data-dir", str(server.data_dir)
    )
    assert result.exit_code == 0, result.stderr
    assert f"Enabled client {client_id}" in result.stderr
    assert user_login(server, rsa2048, client_id).status_code == 200  # the running server sees it
    unknown = cli(
        "sandbox", "openemr", "enable-client", "nobody", "--data-dir", str(server.data_dir)
    )
    assert unknown.exit_code == 2
    assert "no client 'nobody'" in unknown.stderr


def test_admin_commands_refuse_a_file_that_is_not_a_database(tmp_path: Any, cli: Any) -> None:
    """A damaged or foreign openemr.db is a one-line usage error (exit 2), not a traceback."""
    (tmp_path / "openemr.db").write_bytes(b"not sqlite at all\n" * 8)
    data_dir = ["--data-dir", str(tmp_path)]
    for command in (["clients", *data_dir], ["enable-client", *data_dir, "--", "-abc"]):
        result = cli("sandbox", "openemr", *command)
        assert result.exit_code == 2, (command, result.stderr)
        assert "is not a usable sandbox database" in result.stderr
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr


# -- client assertions ---------------------------------------------------------------------------
def test_first_rsa_key_verifies_and_kid_is_ignored(
    openemr_sandbox: Any, rsa2048: Any, rsa2048_other: Any
) -> None:
    server = openemr_sandbox
    key_set = jwks((rsa2048, "first"), (rsa2048_other, "second"))
    client_id = register(server, rsa2048, "openid api:fhir", jwks=key_set)["client_id"]
    by_first = assertion(server, rsa2048, client_id, kid="second")  # kid names the other key
    assert token_request(server, by_first).status_code == 200
    by_second = assertion(server, rsa2048_other, client_id, kid="second")
    answer = token_request(server, by_second)
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_client")
    assert answer.json()["error_description"] == "Client authentication failed"


@pytest.mark.parametrize(
    ("options", "claims", "status"),
    [
        ({}, {"aud": "http://127.0.0.1:1/oauth2/default/token"}, 400),
        ({}, {"aud": ["https://elsewhere.example/token", "TOKEN_URL"]}, 200),
        ({"alg": "RS256"}, {}, 400),
        ({}, {"iat": -200, "exp": -120}, 400),
        ({}, {"iat": -90, "exp": -30}, 200),
        ({}, {"iat": 120, "exp": 180}, 400),
        ({}, {"nbf": 120}, 400),
        ({}, {"exp": None}, 200),
        ({}, {"jti": None}, 400),
    ],
    ids=[
        "other-aud",
        "aud-array",
        "rs256",
        "expired",
        "expired-within-leeway",
        "iat-future",
        "nbf-future",
        "no-exp",
        "no-jti",
    ],
)
def test_assertion_constraints(
    emr: Any,
    rsa2048: Any,
    client: str,
    options: dict[str, Any],
    claims: dict[str, Any],
    status: int,
) -> None:
    now = int(time.time())
    claims = {
        k: now + v if k in ("iat", "exp", "nbf") and v is not None else v for k, v in claims.items()
    }
    if isinstance(claims.get("aud"), list):
        claims["aud"] = [emr.token_url if a == "TOKEN_URL" else a for a in claims["aud"]]
    answer = token_request(emr, assertion(emr, rsa2048, client, **options, **claims))
    assert answer.status_code == status, answer.text
    if status == 400:
        assert answer.json()["error"] == "invalid_client"


def test_jwks_uri_is_fetched_on_every_token_request(openemr_sandbox: Any, rsa2048: Any) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    served: list[int] = []

    class Keys(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.append(1)
            body = json.dumps(jwks((rsa2048, None))).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Keys) as keys_server:
        threading.Thread(target=keys_server.serve_forever, daemon=True).start()
        uri = f"http://127.0.0.1:{keys_server.server_address[1]}/jwks.json"
        client_id = register(openemr_sandbox, rsa2048, "openid api:fhir", jwks=None, jwks_uri=uri)[
            "client_id"
        ]
        for _ in range(2):
            signed = assertion(openemr_sandbox, rsa2048, client_id)
            assert token_request(openemr_sandbox, signed).status_code == 200
        keys_server.shutdown()
    assert len(served) == 2  # not cached
    remote = register(
        openemr_sandbox, rsa2048, "openid", jwks=None, jwks_uri="https://keys.example.org/jwks"
    )["client_id"]
    refused = token_request(openemr_sandbox, assertion(openemr_sandbox, rsa2048, remote))
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_client")


def test_replayed_jti_is_refused(emr: Any, rsa2048: Any, client: str) -> None:
    signed = assertion(emr, rsa2048, client)
    assert token_request(emr, signed, scope=SYSTEM_SCOPE).status_code == 200
    again = token_request(emr, signed, scope=SYSTEM_SCOPE)
    assert (again.status_code, again.json()["error"]) == (400, "invalid_client")


@pytest.mark.parametrize(
    "claims",
    [{"iss": "someone-else"}, {"exp": 25 * 3600}, {"iat": -600, "exp": 60}],
    ids=["iss-not-sub", "exp-over-24h", "iat-over-5-min-old"],
)
def test_checks_704_added(
    emr: Any, rsa2048: Any, client: str, version: str, claims: dict[str, Any]
) -> None:
    now = int(time.time())
    claims = {k: now + v if k in ("iat", "exp") else v for k, v in claims.items()}
    answer = token_request(emr, assertion(emr, rsa2048, client, **claims))
    if "iss" in claims:  # 7.0.3: the IssuedBy constraint; 7.0.4+: performAdditionalValidations
        expected = (400, "invalid_client" if version == "7.0.3" else "invalid_request")
        assert (answer.status_code, answer.json()["error"]) == expected
    elif version == "7.0.3":
        assert answer.status_code == 200, answer.text
    else:
        assert (answer.status_code, answer.json()["error"]) == (400, "invalid_request")


def test_unknown_client_or_missing_assertion_is_401(emr: Any, rsa2048: Any) -> None:
    stranger = token_request(emr, assertion(emr, rsa2048, "not-registered"))
    assert (stranger.status_code, stranger.json()["error"]) == (401, "invalid_client")
    bare = token_request(emr, None)
    assert (bare.status_code, bare.json()["error"]) == (401, "invalid_client")
    password = token_request(emr, None, grant_type="password")
    assert password.status_code == 400
    assert password.json()["error"] == "unsupported_grant_type"
    as_json = httpx.post(emr.token_url.replace(emr.base_url, emr.url), json={"grant_type": "x"})
    assert (as_json.status_code, as_json.json()["error"]) == (400, "unsupported_grant_type")


# -- grants, roles, scopes -----------------------------------------------------------------------
def test_client_credentials_token_belongs_to_the_system_user(
    emr: Any, rsa2048: Any, client: str, version: str
) -> None:
    answer = token_request(emr, assertion(emr, rsa2048, client), scope=SYSTEM_SCOPE)
    document = answer.json()
    assert (document["token_type"], document["expires_in"]) == ("Bearer", 300)
    assert document["scope"] == SYSTEM_SCOPE and "refresh_token" not in document
    assert answer.headers["cache-control"] == "no-store"
    with httpx.Client(base_url=emr.api_url, headers=bearer(document["access_token"])) as http:
        assert http.get("/fhir/Patient").status_code == 200
        assert_unauthorized(http.post("/fhir/Patient", json=patient()), version)
        standard = http.get("/api/patient")
        if version == "7.0.3":
            assert (standard.status_code, standard.content) == (401, b"")
        else:
            assert standard.status_code == 403
            assert "insufficient permissions" in standard.json()["message"]
    assert emr.count_patients() == 0


def test_client_credentials_scopes(emr: Any, rsa2048: Any, client: str) -> None:
    unknown = token_request(emr, assertion(emr, rsa2048, client), scope="system/Patient.write")
    assert (unknown.status_code, unknown.json()["hint"]) == (
        400,
        "Check the `system/Patient.write` scope",
    )
    # a known scope the client did not register is dropped; user/ scopes buy nothing here
    mixed = token_request(
        emr, assertion(emr, rsa2048, client), scope="user/Patient.write system/Encounter.read"
    )
    assert mixed.status_code == 200
    assert mixed.json()["scope"] == "user/Patient.write"
    posted = httpx.post(
        f"{emr.api_url}/fhir/Patient", json=patient(), headers=bearer(mixed.json()["access_token"])
    )
    assert posted.status_code == 401
    assert emr.count_patients() == 0


def test_code_grant_gives_user_tokens(emr: Any, rsa2048: Any, client: str) -> None:
    tokens = user_tokens(emr, rsa2048, client)
    assert tokens["expires_in"] == 3600 and tokens["refresh_token"]
    assert tokens["scope"] == USER_SCOPE
    created = httpx.post(
        f"{emr.api_url}/fhir/Patient", json=patient(), headers=bearer(tokens["access_token"])
    )
    assert created.status_code == 201
    online = user_tokens(emr, rsa2048, client, "openid api:fhir user/Patient.read")
    assert "refresh_token" not in online  # no offline_access, no refresh token


def test_missing_scope_is_401_per_version(
    emr: Any, rsa2048: Any, client: str, version: str
) -> None:
    token = user_tokens(emr, rsa2048, client, "openid api:fhir user/Patient.read")["access_token"]
    with httpx.Client(base_url=emr.api_url, headers=bearer(token)) as http:
        assert http.get("/fhir/Patient").status_code == 200
        assert_unauthorized(http.post("/fhir/Patient", json=patient()), version)
    assert emr.count_patients() == 0


def test_v2_permission_letters_704(make_openemr_sandbox: Make, rsa2048: Any) -> None:
    server = make_openemr_sandbox(version="7.0.4")
    client_id = register(server, rsa2048, "openid api:fhir user/Patient.c")["client_id"]
    token = user_tokens(server, rsa2048, client_id, "openid api:fhir user/Patient.c")
    with httpx.Client(base_url=server.api_url, headers=bearer(token["access_token"])) as http:
        assert http.post("/fhir/Patient", json=patient()).status_code == 201
        assert_unauthorized(http.get("/fhir/Patient"), "7.0.4")  # no s


def test_standard_api_needs_api_oemr_and_the_lowercase_scope(
    emr: Any, rsa2048: Any, version: str
) -> None:
    client_id = register(emr, rsa2048, f"{STANDARD_SCOPE} api:fhir user/Patient.write")["client_id"]
    record = {"fname": "Ada", "lname": "Lovelace", "DOB": "1815-12-10", "sex": "Female"}
    no_oemr = user_tokens(emr, rsa2048, client_id, "openid api:fhir user/patient.write")
    answer = httpx.post(
        f"{emr.api_url}/api/patient", json=record, headers=bearer(no_oemr["access_token"])
    )
    assert answer.status_code == (401 if version == "7.0.3" else 403)
    fhir_case = user_tokens(emr, rsa2048, client_id, "openid api:oemr user/Patient.write")
    answer = httpx.post(
        f"{emr.api_url}/api/patient", json=record, headers=bearer(fhir_case["access_token"])
    )
    assert_unauthorized(answer, version)
    tokens = user_tokens(emr, rsa2048, client_id, STANDARD_SCOPE)
    with httpx.Client(base_url=emr.api_url, headers=bearer(tokens["access_token"])) as http:
        created = http.post("/api/patient", json={**record, "pubpid": "B-1"})
        assert created.status_code == 201
        document = created.json()
        assert (document["validationErrors"], document["internalErrors"], document["links"]) == (
            [],
            [],
            [],
        )
        assert set(document["data"]) == {"pid", "uuid"}
        found = http.get("/api/patient", params={"pubpid": "B-1"}).json()["data"]
        assert [p["uuid"] for p in found] == [document["data"]["uuid"]]
        one = http.get(f"/api/patient/{document['data']['uuid']}").json()["data"]
        assert (one["fname"], one["pid"]) == ("Ada", str(document["data"]["pid"]))
        invalid = http.post("/api/patient", json={**record, "lname": "L", "sex": "F"})
        assert invalid.status_code == 400
        assert set(invalid.json()["validationErrors"]) == {"lname", "sex"}


def test_refresh_rotates_and_revokes_the_old_access_token(
    emr: Any, rsa2048: Any, client: str, version: str
) -> None:
    tokens = user_tokens(emr, rsa2048, client)
    renewed = refresh(emr, rsa2048, client, tokens["refresh_token"])
    assert renewed.status_code == 200, renewed.text
    new = renewed.json()
    assert new["refresh_token"] != tokens["refresh_token"] and new["expires_in"] == 3600
    old_access = httpx.get(f"{emr.api_url}/fhir/Patient", headers=bearer(tokens["access_token"]))
    assert old_access.status_code == 401
    assert (
        httpx.get(f"{emr.api_url}/fhir/Patient", headers=bearer(new["access_token"])).status_code
        == 200
    )
    reused = refresh(emr, rsa2048, client, tokens["refresh_token"])
    assert reused.status_code == 400
    assert reused.json() == {
        "error": "invalid_grant",
        "error_description": "The refresh token is invalid.",
        "hint": "Token has been revoked",
        "message": "The refresh token is invalid.",
    }
    garbage = refresh(emr, rsa2048, client, "nope")
    assert (garbage.status_code, garbage.json()["error"]) == (400, "invalid_grant")


def test_logout_ends_user_tokens_not_system_ones(
    emr: Any, rsa2048: Any, client: str, version: str
) -> None:
    tokens = user_tokens(emr, rsa2048, client)
    system = system_token(emr, rsa2048, client)
    assert emr.logout() == 1
    answer = httpx.get(f"{emr.api_url}/fhir/Patient", headers=bearer(tokens["access_token"]))
    assert answer.status_code == 400
    if version == "7.0.3":
        assert answer.json() == {
            "error": "invalid _request",
            "error_description": LOGGED_OUT,
            "message": LOGGED_OUT,
        }
    else:
        assert answer.json() == {"error": "An error occurred", "message": LOGGED_OUT, "code": 0}
    again = refresh(emr, rsa2048, client, tokens["refresh_token"])
    assert (again.status_code, again.json()["error"]) == (400, "invalid_grant")
    assert httpx.get(f"{emr.api_url}/fhir/Patient", headers=bearer(system)).status_code == 200
    fresh = user_tokens(emr, rsa2048, client)  # a new login works again
    assert (
        httpx.get(f"{emr.api_url}/fhir/Patient", headers=bearer(fresh["access_token"])).status_code
        == 200
    )


def test_bad_tokens_are_401_per_version(emr: Any, rsa2048: Any, client: str, version: str) -> None:
    url = f"{emr.api_url}/fhir/Patient"
    token = system_token(emr, rsa2048, client)
    assert emr.revoke_tokens() == 1
    for answer, hint in (
        (httpx.get(url), 'Missing "Authorization" header'),
        (httpx.get(url, headers=bearer("nope")), "The JWT string must have two dots"),
        (httpx.get(url, headers=bearer(token)), "Access token has been revoked"),
    ):
        assert answer.status_code == 401
        assert "www-authenticate" not in answer.headers
        if version == "7.0.3":
            assert answer.json() == {
                "error": "access_denied",
                "error_description": DENIED,
                "hint": hint,
                "message": DENIED,
            }
        else:
            assert answer.json() == {"error": "An error occurred", "message": DENIED, "code": 0}
    assert httpx.get(f"{emr.api_url}/fhir/metadata").status_code == 200


@pytest.mark.timing
@pytest.mark.slow
def test_token_lifetime_override_and_expiry(make_openemr_sandbox: Make, rsa2048: Any) -> None:
    server = make_openemr_sandbox(token_lifetime=1, system_scopes=True)
    client_id = register(server, rsa2048, f"{USER_SCOPE} {SYSTEM_SCOPE}")["client_id"]
    answer = token_request(server, assertion(server, rsa2048, client_id), scope=SYSTEM_SCOPE)
    assert answer.json()["expires_in"] == 1
    assert user_tokens(server, rsa2048, client_id)["expires_in"] == 1
    token = answer.json()["access_token"]
    time.sleep(1.1)
    expired = httpx.get(f"{server.api_url}/fhir/Patient", headers=bearer(token))
    assert expired.status_code == 401


# -- authorize -----------------------------------------------------------------------------------
def test_authorize_rules(emr: Any, rsa2048: Any, client: str) -> None:
    _, challenge = pkce()
    s256 = {"code_challenge": challenge, "code_challenge_method": "S256"}
    # 127.0.0.1 (not localhost) matches on any port
    anyport = authorize(emr, client, USER_SCOPE, redirect_uri="http://127.0.0.1:54321/callback")
    assert redirect_query(anyport)["state"] == ["xyz"]
    elsewhere = authorize(emr, client, "openid", redirect_uri="https://evil.example/callback")
    assert elsewhere.status_code == 401 and "location" not in elsewhere.headers
    plain = authorize(emr, client, "openid", code_challenge=challenge)  # method defaults to plain
    assert (plain.status_code, plain.json()["error"]) == (400, "invalid_request")
    unknown = authorize(emr, client, "openid user/Patient.frobnicate", **s256)
    assert redirect_query(unknown)["error"] == ["invalid_scope"]
    aud = authorize(emr, client, "openid", aud="https://elsewhere.example/fhir", **s256)
    assert (aud.status_code, aud.json()["error"]) == (400, "invalid_request")
    assert redirect_query(authorize(emr, client, "openid", aud=emr.fhir_url, **s256))["code"]


def test_code_is_single_use_and_pkce_checked(emr: Any, rsa2048: Any, client: str) -> None:
    verifier, challenge = pkce()
    s256 = {"code_challenge": challenge, "code_challenge_method": "S256"}
    code = redirect_query(authorize(emr, client, USER_SCOPE, **s256))["code"][0]

    wrong = code_exchange(emr, rsa2048, client, code, pkce()[0])
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_grant")
    again = code_exchange(emr, rsa2048, client, code, verifier)
    assert again.json()["error"] == "invalid_grant"  # used up by the first try
    # a confidential client may skip PKCE; unregistered (but known) scopes are dropped
    bare = redirect_query(authorize(emr, client, "openid user/Encounter.read"))["code"][0]
    tokens = token_request(
        emr,
        assertion(emr, rsa2048, client),
        grant_type="authorization_code",
        client_id=client,
        code=bare,
        redirect_uri=REDIRECT,
    )
    assert tokens.status_code == 200 and tokens.json()["scope"] == "openid"


def test_assertion_on_code_grant_checked_from_704(
    emr: Any, rsa2048: Any, client: str, version: str
) -> None:
    verifier, challenge = pkce()
    query = {"code_challenge": challenge, "code_challenge_method": "S256"}
    code = redirect_query(authorize(emr, client, USER_SCOPE, **query))["code"][0]
    bad = assertion(emr, rsa2048, client, aud="https://elsewhere.example/token")
    answer = token_request(
        emr,
        bad,
        grant_type="authorization_code",
        client_id=client,
        code=code,
        redirect_uri=REDIRECT,
        code_verifier=verifier,
    )
    if version == "7.0.3":  # an assertion is ignored on this grant
        assert answer.status_code == 200, answer.text
    else:
        assert (answer.status_code, answer.json()["error"]) == (400, "invalid_client")


# -- FHIR Patient --------------------------------------------------------------------------------
def test_fhir_create_answers_pid_and_uuid_only(user: httpx.Client, emr: Any) -> None:
    created = user.post("/fhir/Patient", json=patient())
    assert created.status_code == 201, created.text
    assert created.headers["content-type"] == "application/json"
    assert "location" not in created.headers and "etag" not in created.headers
    document = created.json()
    assert set(document) == {"pid", "uuid"} and isinstance(document["pid"], int)
    read = user.get(f"/fhir/Patient/{document['uuid']}").json()
    assert read["id"] == document["uuid"]
    assert read["name"][0] == {
        "use": "official",
        "family": "Hopper",
        "given": ["Grace", "Brewster"],
    }
    assert (read["gender"], read["birthDate"]) == ("female", "1906-12-09")
    assert emr.patients()[0].record["pubpid"] == "10000:A1"


def test_only_the_official_name_is_read(user: httpx.Client, emr: Any) -> None:
    unnamed = {**patient(), "name": [{"family": "Hopper", "given": ["Grace"]}]}
    answer = user.post("/fhir/Patient", json=unnamed)
    assert answer.status_code == 400
    errors = answer.json()["validationErrors"]
    assert set(errors) == {"fname", "lname"}
    assert "Required::NON_EXISTENT_KEY" in errors["lname"]
    two = {
        **patient(),
        "name": [
            {"use": "usual", "family": "Usual", "given": ["Nick"]},
            {"use": "official", "family": "Hopper", "given": ["Grace"]},
        ],
    }
    assert user.post("/fhir/Patient", json=two).status_code == 201
    assert (emr.patients()[0].record["fname"], emr.patients()[0].record["lname"]) == (
        "Grace",
        "Hopper",
    )


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"name": [{"use": "official", "family": "L", "given": ["Ada"]}]}, "lname", "TOO_SHORT"),
        ({"name": [{"use": "official", "family": "Li", "given": [""]}]}, "fname", "NotEmpty"),
        ({"gender": "F"}, "sex", "TOO_SHORT"),
        ({"birthDate": "09/12/1906"}, "DOB", "Datetime::INVALID_VALUE"),
    ],
    ids=["lname-1-char", "fname-empty", "sex-code", "dob-format"],
)
def test_patient_validator_rules(
    user: httpx.Client, emr: Any, change: dict[str, Any], field: str, rule: str
) -> None:
    answer = user.post("/fhir/Patient", json=patient(**change))
    assert answer.status_code == 400
    errors = answer.json()["validationErrors"]
    assert any(rule in code for code in errors[field]), errors
    assert emr.count_patients() == 0
    if field != "lname":  # a two-letter family name is fine
        ok = patient(name=[{"use": "official", "family": "Li", "given": ["Ada"]}])
        assert user.post("/fhir/Patient", json=ok).status_code == 201


def test_if_none_exist_is_ignored_every_post_creates(user: httpx.Client, emr: Any) -> None:
    conditional = {"If-None-Exist": "identifier=urn:cwsctl:facility:10000|10000:A1"}
    first = user.post("/fhir/Patient", json=patient(), headers=conditional)
    second = user.post("/fhir/Patient", json=patient(), headers=conditional)
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["uuid"] != second.json()["uuid"]
    assert emr.count_patients() == 2


def test_identifier_system_is_dropped_and_search_matches_the_value(
    user: httpx.Client, emr: Any
) -> None:
    in_a = patient(
        identifier=[
            {"system": "urn:facility:A", "type": PT_TYPE, "value": "X-1"},
            {"system": "urn:other", "value": "dropped"},
        ]
    )
    in_b = patient(
        family="Lovelace", identifier=[{"system": "urn:ssa", "type": SS_TYPE, "value": "X-1"}]
    )
    user.post("/fhir/Patient", json=in_a)
    user.post("/fhir/Patient", json=in_b)
    stored = emr.patients()
    assert stored[0].record["pubpid"] == "X-1" and "ss" not in stored[0].record
    assert stored[1].record["ss"] == "X-1" and stored[1].record["pubpid"] == str(stored[1].pid)
    bundle = user.get("/fhir/Patient", params={"identifier": "urn:facility:B|X-1"}).json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    assert bundle["total"] == 2  # any system; ss or pubpid
    assert {e["resource"]["id"] for e in bundle["entry"]} == {p.uuid for p in stored}
    read = user.get(f"/fhir/Patient/{stored[0].uuid}").json()
    values = {(i["system"], i["value"]) for i in read["identifier"]}
    assert values == {("http://terminology.hl7.org/CodeSystem/v2-0203", "X-1")}
    assert user.get("/fhir/Patient", params={"identifier": "dropped"}).json()["total"] == 0


def test_search_details(user: httpx.Client) -> None:
    user.post("/fhir/Patient", json=patient())
    nothing = user.get("/fhir/Patient", params={"_id": "not-a-uuid"})
    assert nothing.status_code == 200
    assert nothing.json()["total"] == 0 and "entry" not in nothing.json()
    assert user.get("/fhir/Patient", params={"family": "hop"}).json()["total"] == 1
    assert user.get("/fhir/Patient", params={"birthdate": "1906-12-09"}).json()["total"] == 1
    missing = user.get("/fhir/Patient/0b8f8f8e-0000-4000-8000-000000000000")
    assert (missing.status_code, missing.json()["resourceType"]) == (404, "OperationOutcome")


@pytest.mark.parametrize(
    "resource",
    [{**patient(), "resourceType": "Observation"}, {**patient(), "favouriteColour": "blue"}],
    ids=["not-a-patient", "unknown-element"],
)
def test_structural_errors_are_operation_outcomes(
    user: httpx.Client, emr: Any, resource: dict[str, Any]
) -> None:
    answer = user.post("/fhir/Patient", json=resource)
    assert answer.status_code == 400
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert emr.count_patients() == 0


def test_metadata_is_public_and_offers_no_conditional_create(openemr_sandbox: Any) -> None:
    document = httpx.get(f"{openemr_sandbox.api_url}/fhir/metadata").json()
    assert document["resourceType"] == "CapabilityStatement"
    (resource,) = document["rest"][0]["resource"]
    assert "conditionalCreate" not in resource


# -- envelope: faults, body limit, access log, restart, the CLI -----------------------------------
def test_faults_hit_patient_routes_only(make_openemr_sandbox: Make, rsa2048: Any) -> None:
    from cwsctl.sandbox.faults import Faults

    server = make_openemr_sandbox(error_rate=1.0)
    client_id = register(server, rsa2048)["client_id"]
    token = user_tokens(server, rsa2048, client_id)["access_token"]  # OAuth is not faulty
    failed = httpx.post(f"{server.api_url}/fhir/Patient", json=patient(), headers=bearer(token))
    assert failed.status_code == 500
    assert server.count_patients() == 0
    server.faults = Faults(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{server.api_url}/fhir/Patient", json=patient(), headers=bearer(token))
    assert server.count_patients() == 1  # processed, then the answer was cut off


def test_body_limit_applies(openemr_sandbox: Any) -> None:
    answer = httpx.post(openemr_sandbox.token_url, content=b"a=" + b"x" * (1024 * 1024 + 1))
    assert answer.status_code == 413


def test_access_log_names_the_client_never_a_token(
    openemr_sandbox: Any, rsa2048: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client_id = register(openemr_sandbox, rsa2048)["client_id"]
    token = user_tokens(openemr_sandbox, rsa2048, client_id)["access_token"]
    httpx.get(
        f"{openemr_sandbox.api_url}/fhir/Patient",
        params={"family": "Secretname"},
        headers=bearer(token),
    )
    token_request(openemr_sandbox, assertion(openemr_sandbox, rsa2048, "nobody"))
    log = capsys.readouterr().err
    assert "GET /apis/default/fhir/Patient 200" in log and f"user={client_id}" in log
    assert "token refused: the assertion's sub is not a registered client_id" in log
    assert token not in log and "Secretname" not in log


def test_state_survives_a_restart(tmp_path: Any, rsa2048: Any) -> None:
    from cwsctl.sandbox.faults import Faults
    from cwsctl.targets.openemr.sandbox.server import OpenEmrSandboxServer

    data_dir = tmp_path / "emr"
    with OpenEmrSandboxServer(data_dir, faults=Faults(), access_log=False) as server:
        client_id = register(server, rsa2048)["client_id"]
        tokens = user_tokens(server, rsa2048, client_id)
        httpx.post(
            f"{server.api_url}/fhir/Patient", json=patient(), headers=bearer(tokens["access_token"])
        )
    with OpenEmrSandboxServer(data_dir, faults=Faults(), access_log=False) as server:
        assert [p.pubpid for p in server.patients()] == ["10000:A1"]
        assert server.clients()[0]["enabled"] is True
        assert refresh(server, rsa2048, client_id, tokens["refresh_token"]).status_code == 200
    assert not (data_dir / "sandbox.db").exists()  # the CWS store is not touched
    assert (data_dir / "openemr.db").stat().st_mode & 0o077 == 0


def test_serve_kind_openemr_subprocess(tmp_path: Any, rsa2048: Any, run_cwsctl: Any) -> None:
    data_dir = tmp_path / "emr"
    args = ("--kind", "openemr", "--openemr-version", "7.0.3", "--system-scopes")
    with serve_sandbox(
        tmp_path, *args, "--data-dir", str(data_dir), ready="Press Ctrl-C"
    ) as served:
        url = served.url
        assert f"OpenEMR 7.0.3 sandbox listening on {url}" in served.startup
        assert f"Token URL (the assertion's aud): {url}/oauth2/default/token" in served.startup
        assert "cwsctl sandbox openemr enable-client --data-dir" in served.startup
        assert "System scopes: on" in served.startup

        class Site:
            site = "default"
            oauth_url = f"{url}/oauth2/default"
            token_url = f"{url}/oauth2/default/token"
            api_url = f"{url}/apis/default"

        site = Site()
        site.url = url  # type: ignore[attr-defined]
        body = {
            "application_type": "private",
            "redirect_uris": [REDIRECT],
            "scope": SYSTEM_SCOPE,
            "jwks": jwks((rsa2048, None)),
        }
        client_id = register_raw(site, body).json()["client_id"]
        disabled = token_request(site, assertion(site, rsa2048, client_id), scope=SYSTEM_SCOPE)
        assert disabled.status_code == 401
        enabled = run_cwsctl(
            "sandbox", "openemr", "enable-client", "--data-dir", str(data_dir), "--", client_id
        )
        assert enabled.returncode == 0, enabled.stderr
        answer = token_request(site, assertion(site, rsa2048, client_id), scope=SYSTEM_SCOPE)
        assert answer.status_code == 200 and answer.json()["expires_in"] == 300
        token = answer.json()["access_token"]
        assert httpx.get(f"{site.api_url}/fhir/Patient", headers=bearer(token)).status_code == 200
    assert served.returncode == 0
    assert "GET /apis/default/fhir/Patient 200" in served.log
    assert "Sandbox stopped (SIGTERM)" in served.log
    assert token not in served.log
    assert not (data_dir / "server.pem").exists()  # no CWS key made for this kind


@pytest.mark.slow
def test_openemr_options_need_kind_openemr(cli: Any) -> None:
    result = cli("sandbox", "serve", "--kind", "cws", "--system-scopes", "--port", "0")
    assert result.exit_code == 2
    assert "--system-scopes applies only to --kind openemr" in result.stderr

"""The OpenEMR flavour of the sandbox, spoken to directly with httpx and PyJWT (no cwsctl client)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.sandbox_plugin import serve_sandbox

jwt = pytest.importorskip("jwt")
pytest.importorskip("starlette")

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
KID = "test-key-1"
REDIRECT = "http://127.0.0.1/callback"
SCOPE = "openid offline_access api:oemr api:fhir user/patient.read user/patient.write system/Patient.read"
EXT_SYSTEM = "urn:cwsctl:external-id:10000"


def jwks(key: Any, kid: str = KID) -> dict[str, Any]:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {"keys": [{**jwk, "kid": kid, "alg": "RS384", "use": "sig"}]}


def register(server: Any, key: Any, **extra: Any) -> dict[str, Any]:
    body = {
        "application_type": "private",
        "token_endpoint_auth_method": "private_key_jwt",
        "client_name": "cwsctl tests",
        "contacts": ["ops@example.org"],
        "redirect_uris": [REDIRECT],
        "scope": SCOPE,
        "jwks": jwks(key),
        **extra,
    }
    answer = httpx.post(f"{server.url}/oauth2/{server.site}/registration", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def assertion(
    server: Any, key: Any, client_id: str, *, kid: str = KID, alg: str = "RS384", **claims: Any
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


def token_request(server: Any, signed: str | None, **form: str) -> httpx.Response:
    data = {"grant_type": "client_credentials", **form}
    if signed is not None:
        data |= {"client_assertion_type": JWT_BEARER, "client_assertion": signed}
    return httpx.post(server.token_url, data=data)


def access_token(server: Any, key: Any, client_id: str) -> str:
    answer = token_request(server, assertion(server, key, client_id))
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(openemr_sandbox: Any, rsa2048: Any) -> dict[str, Any]:
    return register(openemr_sandbox, rsa2048)


@pytest.fixture
def api(openemr_sandbox: Any, rsa2048: Any, client: dict[str, Any]) -> httpx.Client:
    token = access_token(openemr_sandbox, rsa2048, client["client_id"])
    with httpx.Client(base_url=openemr_sandbox.api_url, headers=bearer(token)) as http:
        yield http


# -- registration ---------------------------------------------------------------------------------
def test_registration_answers_a_client_id_and_no_secret(openemr_sandbox: Any, rsa2048: Any) -> None:
    answer = register(openemr_sandbox, rsa2048)
    assert answer["client_id"] and answer["registration_access_token"]
    assert abs(answer["client_id_issued_at"] - time.time()) < 10
    assert answer["scope"] == SCOPE
    assert answer["token_endpoint_auth_method"] == "private_key_jwt"
    assert answer["jwks"] == jwks(rsa2048)
    assert answer["redirect_uris"] == [REDIRECT]
    assert "client_secret" not in answer
    assert register(openemr_sandbox, rsa2048)["client_id"] != answer["client_id"]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"redirect_uris": None}, "invalid_redirect_uri"),
        ({"token_endpoint_auth_method": "client_secret_post"}, "invalid_client_metadata"),
        ({"jwks": None}, "invalid_client_metadata"),
        (
            {"jwks": None, "jwks_uri": "https://keys.example.org/jwks.json"},
            "invalid_client_metadata",
        ),
        ({"jwks": {"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}}, "invalid_client_metadata"),
        ({"scope": "openid\tapi:fhir"}, "invalid_client_metadata"),
    ],
    ids=[
        "no-redirect",
        "secret-method",
        "no-keys",
        "remote-jwks-uri",
        "jwk-without-kid",
        "bad-scope",
    ],
)
def test_registration_refusals(
    openemr_sandbox: Any, rsa2048: Any, change: dict[str, Any], error: str
) -> None:
    body = {
        "application_type": "private",
        "token_endpoint_auth_method": "private_key_jwt",
        "redirect_uris": [REDIRECT],
        "jwks": jwks(rsa2048),
        **change,
    }
    body = {k: v for k, v in body.items() if v is not None}
    answer = httpx.post(f"{openemr_sandbox.url}/oauth2/default/registration", json=body)
    assert answer.status_code == 400
    assert answer.json()["error"] == error


def test_registration_refuses_private_key_material(openemr_sandbox: Any, rsa2048: Any) -> None:
    private = jwt.algorithms.RSAAlgorithm.to_jwk(rsa2048, as_dict=True)
    body = {
        "token_endpoint_auth_method": "private_key_jwt",
        "redirect_uris": [REDIRECT],
        "jwks": {"keys": [{**private, "kid": KID}]},
    }
    answer = httpx.post(f"{openemr_sandbox.url}/oauth2/default/registration", json=body)
    assert answer.status_code == 400
    assert "private key material" in answer.json()["error_description"]


# -- client credentials ---------------------------------------------------------------------------
def test_client_credentials_token_opens_the_api(
    openemr_sandbox: Any, rsa2048: Any, client: dict[str, Any]
) -> None:
    answer = token_request(
        openemr_sandbox,
        assertion(openemr_sandbox, rsa2048, client["client_id"]),
        scope="system/Patient.read",
    )
    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert document["token_type"] == "Bearer"
    assert document["expires_in"] == 60
    assert document["scope"] == "system/Patient.read"
    assert "refresh_token" not in document
    assert answer.headers["cache-control"] == "no-store"
    api = httpx.get(
        f"{openemr_sandbox.api_url}/fhir/Patient", headers=bearer(document["access_token"])
    )
    assert api.status_code == 200
    assert httpx.get(f"{openemr_sandbox.api_url}/fhir/Patient").status_code == 401


def test_replayed_jti_is_refused(
    openemr_sandbox: Any, rsa2048: Any, client: dict[str, Any]
) -> None:
    signed = assertion(openemr_sandbox, rsa2048, client["client_id"])
    assert token_request(openemr_sandbox, signed).status_code == 200
    again = token_request(openemr_sandbox, signed)
    assert again.status_code == 401
    assert again.json()["error"] == "invalid_client"
    assert "replayed" in again.json()["error_description"]


@pytest.mark.parametrize(
    ("claims", "words"),
    [
        ({"aud": "http://127.0.0.1:1/oauth2/default/token"}, "aud must be"),
        ({"iat": -400, "exp": -100}, "expired"),
        ({"kid": "nobody"}, "no key with kid"),
        ({"alg": "RS256"}, "must be signed RS384"),
        ({"sub": "someone-else"}, "sub must equal"),
        ({"exp": 600}, "more than 5 minutes"),
        ({"iat": 120, "exp": 180}, "future"),
        ({"jti": None}, "jti"),
    ],
    ids=[
        "wrong-aud",
        "expired",
        "unknown-kid",
        "rs256",
        "iss-not-sub",
        "too-long",
        "iat-future",
        "no-jti",
    ],
)
def test_bad_assertions_are_invalid_client(
    openemr_sandbox: Any, rsa2048: Any, client: dict[str, Any], claims: dict[str, Any], words: str
) -> None:
    options = {k: claims.pop(k) for k in ("kid", "alg") if k in claims}
    now = int(time.time())  # iat and exp are given relative to now
    claims = {k: now + v if k in ("iat", "exp") else v for k, v in claims.items()}
    signed = assertion(openemr_sandbox, rsa2048, client["client_id"], **options, **claims)
    answer = token_request(openemr_sandbox, signed)
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"
    assert words in answer.json()["error_description"]


def test_assertion_signed_by_another_key_or_client_is_refused(
    openemr_sandbox: Any, rsa2048: Any, rsa2048_other: Any, client: dict[str, Any]
) -> None:
    forged = token_request(
        openemr_sandbox, assertion(openemr_sandbox, rsa2048_other, client["client_id"])
    )
    assert forged.status_code == 401
    assert "does not verify" in forged.json()["error_description"]
    stranger = token_request(openemr_sandbox, assertion(openemr_sandbox, rsa2048, "not-registered"))
    assert stranger.status_code == 401
    assert stranger.json()["error"] == "invalid_client"
    bare = token_request(openemr_sandbox, None)
    assert (bare.status_code, bare.json()["error"]) == (401, "invalid_client")


def test_other_token_refusals(openemr_sandbox: Any, rsa2048: Any, client: dict[str, Any]) -> None:
    signed = assertion(openemr_sandbox, rsa2048, client["client_id"])
    password = token_request(openemr_sandbox, signed, grant_type="password")
    assert (password.status_code, password.json()["error"]) == (400, "unsupported_grant_type")
    scope = token_request(
        openemr_sandbox,
        assertion(openemr_sandbox, rsa2048, client["client_id"]),
        scope="system/*.$export",
    )
    assert (scope.status_code, scope.json()["error"]) == (400, "invalid_scope")
    as_json = httpx.post(openemr_sandbox.token_url, json={"grant_type": "client_credentials"})
    assert (as_json.status_code, as_json.json()["error"]) == (400, "invalid_request")


def test_tokens_expire_and_revocation_gets_401(make_openemr_sandbox: Any, rsa2048: Any) -> None:
    server = make_openemr_sandbox(token_lifetime=1)
    client_id = register(server, rsa2048)["client_id"]
    answer = token_request(server, assertion(server, rsa2048, client_id))
    assert answer.json()["expires_in"] == 1
    token = answer.json()["access_token"]
    url = f"{server.api_url}/api/patient"
    assert httpx.get(url, headers=bearer(token)).status_code == 200
    time.sleep(1.2)
    expired = httpx.get(url, headers=bearer(token))
    assert expired.status_code == 401
    assert 'error="invalid_token"' in expired.headers["www-authenticate"]
    assert expired.json()["error"] == "invalid_token"

    server.token_lifetime = 60
    fresh = access_token(server, rsa2048, client_id)
    assert httpx.get(url, headers=bearer(fresh)).status_code == 200
    assert server.revoke_tokens() >= 1
    revoked = httpx.get(url, headers=bearer(fresh))
    assert revoked.status_code == 401
    assert revoked.headers["www-authenticate"].startswith("Bearer ")
    renewed = access_token(server, rsa2048, client_id)
    assert httpx.get(url, headers=bearer(renewed)).status_code == 200


def test_no_token_is_401_without_error_code_but_metadata_is_open(openemr_sandbox: Any) -> None:
    missing = httpx.get(f"{openemr_sandbox.api_url}/api/patient")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="OpenEMR"'
    garbage = httpx.get(f"{openemr_sandbox.api_url}/api/patient", headers=bearer("nope"))
    assert garbage.status_code == 401
    assert 'error="invalid_token"' in garbage.headers["www-authenticate"]
    assert httpx.get(f"{openemr_sandbox.api_url}/fhir/metadata").status_code == 200


# -- authorization code, PKCE, refresh -------------------------------------------------------------
def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    return verifier, challenge


def _authorize(
    server: Any, client_id: str, challenge: str, redirect: str, scope: str
) -> httpx.Response:
    return httpx.get(
        f"{server.url}/oauth2/{server.site}/authorize",
        params={
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect,
            "scope": scope,
            "state": "xyz",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "aud": server.api_url + "/fhir",
        },
    )


def test_authorization_code_with_pkce_then_rotating_refresh(
    openemr_sandbox: Any, rsa2048: Any, client: dict[str, Any]
) -> None:
    server, client_id = openemr_sandbox, client["client_id"]
    redirect = "http://127.0.0.1:54321/callback"  # registered without a port: loopback matches any
    verifier, challenge = _pkce()

    def code() -> str:
        answer = _authorize(
            server, client_id, challenge, redirect, "openid offline_access api:oemr"
        )
        assert answer.status_code == 302
        location = urlsplit(answer.headers["location"])
        assert f"{location.scheme}://{location.netloc}{location.path}" == redirect
        query = parse_qs(location.query)
        assert query["state"] == ["xyz"]
        return query["code"][0]

    def exchange(the_code: str, the_verifier: str) -> httpx.Response:
        return token_request(
            server,
            assertion(server, rsa2048, client_id),
            grant_type="authorization_code",
            code=the_code,
            redirect_uri=redirect,
            code_verifier=the_verifier,
        )

    first = code()
    wrong = exchange(first, _pkce()[0])
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_grant")
    assert exchange(first, verifier).json()["error"] == "invalid_grant"  # a code is single-use

    tokens = exchange(code(), verifier)
    assert tokens.status_code == 200, tokens.text
    assert tokens.json()["scope"] == "openid offline_access api:oemr"
    assert (
        httpx.get(
            f"{server.api_url}/api/patient", headers=bearer(tokens.json()["access_token"])
        ).status_code
        == 200
    )

    def refresh(refresh_token: str) -> httpx.Response:
        return token_request(
            server,
            assertion(server, rsa2048, client_id),
            grant_type="refresh_token",
            refresh_token=refresh_token,
        )

    old = tokens.json()["refresh_token"]
    renewed = refresh(old)
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["refresh_token"] != old
    assert renewed.json()["access_token"] != tokens.json()["access_token"]
    reused = refresh(old)
    assert (reused.status_code, reused.json()["error"]) == (400, "invalid_grant")
    assert refresh(renewed.json()["refresh_token"]).status_code == 200


def test_authorize_refusals(openemr_sandbox: Any, client: dict[str, Any]) -> None:
    server, client_id = openemr_sandbox, client["client_id"]
    _, challenge = _pkce()
    elsewhere = _authorize(server, client_id, challenge, "https://evil.example/callback", "openid")
    assert elsewhere.status_code == 400  # never redirected to an unregistered URI
    assert "location" not in elsewhere.headers
    other_path = _authorize(server, client_id, challenge, "http://127.0.0.1:5000/other", "openid")
    assert other_path.status_code == 400
    too_much = _authorize(server, client_id, challenge, REDIRECT, "openid user/Patient.write")
    assert too_much.status_code == 302
    assert parse_qs(urlsplit(too_much.headers["location"]).query)["error"] == ["invalid_scope"]
    no_pkce = _authorize(server, client_id, "", REDIRECT, "openid")
    assert parse_qs(urlsplit(no_pkce.headers["location"]).query)["error"] == ["invalid_request"]


def test_no_refresh_token_without_offline_access(
    openemr_sandbox: Any, rsa2048: Any, client: dict[str, Any]
) -> None:
    verifier, challenge = _pkce()
    answer = _authorize(
        openemr_sandbox, client["client_id"], challenge, REDIRECT, "openid api:fhir"
    )
    code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
    tokens = token_request(
        openemr_sandbox,
        assertion(openemr_sandbox, rsa2048, client["client_id"]),
        grant_type="authorization_code",
        code=code,
        redirect_uri=REDIRECT,
        code_verifier=verifier,
    )
    assert tokens.status_code == 200
    assert "refresh_token" not in tokens.json()


# -- Standard API -------------------------------------------------------------------------------
PATIENT = {
    "fname": "Ada",
    "lname": "Lovelace",
    "DOB": "1815-12-10",
    "sex": "Female",
    "pubpid": "B-1",
}


def test_standard_api_create_search_get(api: httpx.Client, openemr_sandbox: Any) -> None:
    created = api.post("/api/patient", json=PATIENT)
    assert created.status_code == 201
    document = created.json()
    assert document["validationErrors"] == [] and document["internalErrors"] == []
    pid, patient_uuid = document["data"]["pid"], document["data"]["uuid"]
    assert isinstance(pid, int) and uuid.UUID(patient_uuid)
    api.post("/api/patient", json={**PATIENT, "pubpid": "B-2", "fname": "Byron"})

    found = api.get("/api/patient", params={"pubpid": "B-1"}).json()["data"]
    assert [p["uuid"] for p in found] == [patient_uuid]
    assert found[0]["fname"] == "Ada" and found[0]["pid"] == str(pid)
    assert len(api.get("/api/patient", params={"lname": "lovelace"}).json()["data"]) == 2
    assert api.get("/api/patient", params={"pubpid": "nobody"}).json()["data"] == []

    one = api.get(f"/api/patient/{patient_uuid}")
    assert one.status_code == 200
    assert one.json()["data"]["DOB"] == "1815-12-10"
    unknown = api.get(f"/api/patient/{uuid.uuid4()}")
    assert unknown.status_code == 404
    assert unknown.json()["data"] is None
    assert api.get("/api/patient/not-a-uuid").status_code == 400
    assert openemr_sandbox.count_patients() == 2


def test_standard_api_validation_errors(api: httpx.Client, openemr_sandbox: Any) -> None:
    answer = api.post(
        "/api/patient", json={"fname": "Ada", "lname": "L", "DOB": "10/12/1815", "sex": "F"}
    )
    assert answer.status_code == 400
    document = answer.json()
    assert document["data"] is None and document["internalErrors"] == []
    errors = document["validationErrors"]
    assert set(errors) == {"lname", "DOB", "sex"}
    assert "LengthBetween::TOO_SHORT" in errors["lname"]
    missing = api.post("/api/patient", json={"fname": "Ada"}).json()["validationErrors"]
    assert "Required::NON_EXISTENT_KEY" in missing["lname"]
    assert (
        api.post(
            "/api/patient", content=b"{nope", headers={"Content-Type": "application/json"}
        ).status_code
        == 400
    )
    assert openemr_sandbox.count_patients() == 0


def test_empty_pubpid_becomes_the_pid(api: httpx.Client) -> None:
    data = api.post("/api/patient", json={**PATIENT, "pubpid": ""}).json()["data"]
    read = api.get(f"/api/patient/{data['uuid']}").json()["data"]
    assert read["pubpid"] == str(data["pid"])


# -- FHIR ---------------------------------------------------------------------------------------
FHIR_PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"system": EXT_SYSTEM, "value": "A123"}],
    "name": [{"use": "official", "family": "Hopper", "given": ["Grace", "Brewster"]}],
    "gender": "female",
    "birthDate": "1906-12-09",
}
FHIR_HEADERS = {"Content-Type": "application/fhir+json"}


def test_fhir_metadata(openemr_sandbox: Any) -> None:
    answer = httpx.get(f"{openemr_sandbox.api_url}/fhir/metadata")
    assert answer.headers["content-type"].startswith("application/fhir+json")
    document = answer.json()
    assert document["resourceType"] == "CapabilityStatement"
    assert document["fhirVersion"] == "4.0.1"
    assert document["software"]["name"] == "cwsctl sandbox (OpenEMR flavour)"
    (patient,) = document["rest"][0]["resource"]
    assert {i["code"] for i in patient["interaction"]} == {"create", "read", "search-type"}
    assert {p["name"] for p in patient["searchParam"]} >= {
        "_id",
        "identifier",
        "name",
        "family",
        "given",
        "birthdate",
    }


def test_fhir_create_read_search_and_conditional_create(
    api: httpx.Client, openemr_sandbox: Any
) -> None:
    created = api.post("/fhir/Patient", json=FHIR_PATIENT, headers=FHIR_HEADERS)
    assert created.status_code == 201, created.text
    assert created.headers["content-type"].startswith("application/fhir+json")
    resource = created.json()
    assert created.headers["location"].endswith(f"/fhir/Patient/{resource['id']}")
    assert resource["name"][0]["family"] == "Hopper" and resource["birthDate"] == "1906-12-09"
    assert resource["identifier"] == [{"system": EXT_SYSTEM, "value": "A123"}]

    read = api.get(f"/fhir/Patient/{resource['id']}")
    assert read.status_code == 200 and read.json()["id"] == resource["id"]
    missing = api.get(f"/fhir/Patient/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"

    conditional = {**FHIR_HEADERS, "If-None-Exist": f"identifier={EXT_SYSTEM}|A123"}
    again = api.post("/fhir/Patient", json=FHIR_PATIENT, headers=conditional)
    assert again.status_code == 200
    assert again.json()["id"] == resource["id"]
    assert openemr_sandbox.count_patients() == 1

    bundle = api.get("/fhir/Patient", params={"identifier": f"{EXT_SYSTEM}|A123"}).json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    assert bundle["total"] == 1 and bundle["entry"][0]["resource"]["id"] == resource["id"]
    nobody = api.get("/fhir/Patient", params={"identifier": "other|A123"}).json()
    assert nobody["total"] == 0
    assert "entry" not in nobody  # FHIR JSON has no empty arrays
    assert api.get("/fhir/Patient", params={"identifier": "A123"}).json()["total"] == 1
    assert api.get("/fhir/Patient", params={"name": "gra"}).json()["total"] == 1
    assert (
        api.get("/fhir/Patient", params={"family": "hopper", "birthdate": "1906-12-09"}).json()[
            "total"
        ]
        == 1
    )
    assert api.get("/fhir/Patient", params={"given": "Hopper"}).json()["total"] == 0

    # the same patient through the Standard API: pubpid is the identifier's value
    standard = api.get(f"/api/patient/{resource['id']}").json()["data"]
    assert (standard["pubpid"], standard["fname"], standard["sex"]) == ("A123", "Grace", "Female")


def test_conditional_create_with_several_matches_is_412(
    api: httpx.Client, openemr_sandbox: Any
) -> None:
    for _ in range(2):  # the Standard API does not refuse a duplicate pubpid, like OpenEMR
        assert api.post("/api/patient", json={**PATIENT, "pubpid": "DUP"}).status_code == 201
    pt = "http://terminology.hl7.org/CodeSystem/v2-0203"
    found = api.get("/fhir/Patient", params={"identifier": f"{pt}|DUP"}).json()
    assert found["total"] == 2
    answer = api.post(
        "/fhir/Patient",
        json=FHIR_PATIENT,
        headers={**FHIR_HEADERS, "If-None-Exist": f"identifier={pt}|DUP"},
    )
    assert answer.status_code == 412
    assert answer.json()["issue"][0]["severity"] == "error"
    assert openemr_sandbox.count_patients() == 2


@pytest.mark.parametrize(
    "resource",
    [
        {**FHIR_PATIENT, "resourceType": "Observation"},
        {k: v for k, v in FHIR_PATIENT.items() if k != "birthDate"},
        {**FHIR_PATIENT, "gender": "F"},
        {**FHIR_PATIENT, "identifier": [{"system": EXT_SYSTEM}]},
    ],
    ids=["not-patient", "no-birthdate", "bad-gender", "identifier-without-value"],
)
def test_invalid_fhir_patient_is_400_operation_outcome(
    api: httpx.Client, openemr_sandbox: Any, resource: dict[str, Any]
) -> None:
    answer = api.post("/fhir/Patient", json=resource, headers=FHIR_HEADERS)
    assert answer.status_code == 400
    issue = answer.json()["issue"][0]
    assert issue["severity"] == "error" and issue["diagnostics"]
    assert openemr_sandbox.count_patients() == 0


# -- envelope: faults, body limit, access log ------------------------------------------------------
def test_faults_hit_patient_routes_only(make_openemr_sandbox: Any, rsa2048: Any) -> None:
    server = make_openemr_sandbox(error_rate=1.0)
    client_id = register(server, rsa2048)["client_id"]
    token = access_token(server, rsa2048, client_id)  # the token endpoint is not faulty
    assert httpx.get(f"{server.api_url}/fhir/metadata").status_code == 200
    failed = httpx.post(f"{server.api_url}/api/patient", json=PATIENT, headers=bearer(token))
    assert failed.status_code == 500
    assert server.count_patients() == 0

    from cwsctl.sandbox.faults import Faults

    server.faults = Faults(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(
            f"{server.api_url}/fhir/Patient",
            json=FHIR_PATIENT,
            headers={**FHIR_HEADERS, **bearer(token)},
        )
    assert server.count_patients() == 1  # processed, then the answer was cut off


def test_body_limit_applies(openemr_sandbox: Any) -> None:
    answer = httpx.post(openemr_sandbox.token_url, content=b"a=" + b"x" * (1024 * 1024 + 1))
    assert answer.status_code == 413


def test_access_log_has_no_tokens_or_query(
    openemr_sandbox: Any, rsa2048: Any, client: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    token = access_token(openemr_sandbox, rsa2048, client["client_id"])
    httpx.get(
        f"{openemr_sandbox.api_url}/api/patient",
        params={"lname": "Secretname"},
        headers=bearer(token),
    )
    log = capsys.readouterr().err
    assert "GET /apis/default/api/patient 200" in log
    assert f"user={client['client_id']}" in log
    assert "POST /oauth2/default/token 200" in log
    assert token not in log and "Secretname" not in log


def test_patients_survive_a_restart(tmp_path: Any, rsa2048: Any) -> None:
    from cwsctl.sandbox.faults import Faults
    from cwsctl.sandbox.openemr import OpenEmrSandboxServer

    with OpenEmrSandboxServer(tmp_path / "emr", faults=Faults(), access_log=False) as server:
        client_id = register(server, rsa2048)["client_id"]
        token = access_token(server, rsa2048, client_id)
        httpx.post(f"{server.api_url}/api/patient", json=PATIENT, headers=bearer(token))
    with OpenEmrSandboxServer(tmp_path / "emr", faults=Faults(), access_log=False) as server:
        assert [p.record["pubpid"] for p in server.patients()] == ["B-1"]
        assert token_request(server, assertion(server, rsa2048, client_id)).status_code == 200
    assert {"openemr.db"} <= {p.name for p in (tmp_path / "emr").iterdir()}
    assert not (tmp_path / "emr" / "sandbox.db").exists()  # the CWS store is not touched
    assert (tmp_path / "emr" / "openemr.db").stat().st_mode & 0o077 == 0


def test_serve_kind_openemr_subprocess(tmp_path: Any, rsa2048: Any) -> None:
    data_dir = tmp_path / "emr"
    args = ("--kind", "openemr", "--token-lifetime", "5", "--data-dir", str(data_dir))
    with serve_sandbox(tmp_path, *args, ready="Press Ctrl-C") as served:
        url = served.url
        assert f"OpenEMR sandbox listening on {url}" in served.startup
        assert f"Tokens: POST {url}/oauth2/default/token (5-second access tokens)" in served.startup
        site = SimpleNamespace(
            url=url,
            site="default",
            token_url=f"{url}/oauth2/default/token",
            api_url=f"{url}/apis/default",
        )
        client_id = register(site, rsa2048)["client_id"]
        answer = token_request(site, assertion(site, rsa2048, client_id))
        assert answer.json()["expires_in"] == 5
        created = httpx.post(
            f"{site.api_url}/api/patient",
            json=PATIENT,
            headers=bearer(answer.json()["access_token"]),
        )
        assert created.status_code == 201
    assert served.returncode == 0
    log = served.log
    assert "POST /apis/default/api/patient 201" in log
    assert "Sandbox stopped (SIGTERM)" in log
    assert answer.json()["access_token"] not in log and "Lovelace" not in log
    assert not (data_dir / "server.pem").exists()  # no CWS key made for this kind

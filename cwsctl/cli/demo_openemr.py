"""`cwsctl demo --kind openemr`: key → JWKS → registration → token → FHIR patient → read back.

Runs against an in-process OpenEMR flavour of the sandbox on 127.0.0.1, in the caller's temporary
directory, through the same core code the commands use (the bounded client, the OAuth2 token
source, the openemr kind's patient mapping).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cwsctl.core.errors import ClientRequestError, ServerFailureError
from cwsctl.core.patients import WALKTHROUGH_EXAMPLE

PROFILE = "emr"
DEMO_SCOPE = "openid offline_access api:fhir user/Patient.read user/Patient.write"
Step = Callable[..., None]


def run_openemr_demo(step: Step, root: Path, bits: int) -> None:
    """Every step of the OpenEMR backend-services dance, each shown with its cwsctl command."""
    from cwsctl.core import keys, oauth
    from cwsctl.core.exchange import bounded_client
    from cwsctl.core.jwks import jwk_set, key_id
    from cwsctl.core.kinds import kind_of
    from cwsctl.core.patients import prepare_patient
    from cwsctl.core.profile import Config, Profile, Store
    from cwsctl.sandbox.faults import Faults
    from cwsctl.sandbox.openemr import OpenEmrSandboxServer

    store = Store(root / "home")
    private_key = keys.generate_private_key(bits)
    keys.save_private_key(store.private_key_path(PROFILE), private_key, None, overwrite=False)
    public_key = private_key.public_key()
    step(
        "Make your key pair",
        f"cwsctl -p {PROFILE} keygen --bits {bits}",
        fingerprint=keys.fingerprint(public_key),
    )

    with OpenEmrSandboxServer(root / "sandbox", faults=Faults(), access_log=False) as server:
        profile = Profile(PROFILE, url=server.url, kind="openemr", scope=DEMO_SCOPE)
        store.save(Config(default_profile=PROFILE, profiles={PROFILE: profile}))
        step(
            "Point a profile at OpenEMR",
            f"cwsctl profile init {PROFILE} --kind openemr --url {server.url} --scope '{DEMO_SCOPE}'",
            site=profile.site,
        )
        jwks = jwk_set([public_key])
        step(
            "Publish the public key as a JWK Set (RS384)",
            f"cwsctl -p {PROFILE} keys jwks > jwks.json",
            kid=key_id(public_key),
        )

        document = oauth.registration_document(
            client_name="cwsctl demo",
            scope=DEMO_SCOPE,
            redirect_uris=["http://127.0.0.1/callback"],
            jwks=jwks,
        )
        with bounded_client() as http:
            registration = oauth.run_flow(oauth.registration_flow(profile, document), http)
            profile = oauth.record_registration(store, PROFILE, registration)
            step(
                "Register the client (private_key_jwt, JWKS inline)",
                f"cwsctl -p {PROFILE} oauth register --client-name 'cwsctl demo'",
                client_id=registration.client_id,
            )
            source = oauth.TokenSource(profile, store, private_key)
            token = oauth.run_flow(source.token_flow(), http)
        step(
            "Get a token: client credentials with a JWT signed by your key",
            f"cwsctl -p {PROFILE} oauth token",
            token_type=token.token_type,
            expires_in=f"{max(0, round(token.expires_at - token.obtained_at))} s",
            cached="in the profile's 0600 token file, reused until shortly before it expires",
        )

        kind = kind_of(profile)
        mapping = kind.patients(profile)
        create = mapping.create_request(prepare_patient(WALKTHROUGH_EXAMPLE))
        with kind.open_client(profile, store, passphrase=None, audit=None) as client:
            first = client.request(*create)
            _require(first.status == 201, first)
            patient_id = mapping.verdict(first).patient_id
            step(
                "Create the walkthrough's patient through FHIR (conditional create)",
                f"cwsctl -p {PROFILE} patients create --external-id "
                f"{WALKTHROUGH_EXAMPLE['external_id']} --facility 10000 …",
                status=f"{first.status} {first.reason}",
                patient_id=patient_id,
            )
            again = client.request(*create)
            _require(again.status == 200, again)
            step(
                "Send the same patient again: OpenEMR finds it, nothing is created twice",
                "(the same command; If-None-Exist: identifier=…)",
                status=f"{again.status} {again.reason}",
                patients_stored=server.count_patients(),
            )
            read = client.request("GET", f"/apis/{profile.site}/fhir/Patient/{patient_id}")
            _require(read.ok, read)
            resource = json.loads(read.body)
            step(
                "Read it back through FHIR",
                f"cwsctl -p {PROFILE} request GET /apis/{profile.site}/fhir/Patient/{patient_id}",
                name=_name(resource),
                birth_date=resource.get("birthDate"),
                token_requests=f"{source.token_requests + _token_requests(client.auth)} "
                "(one token served every call, from the cache)",
            )

    step(
        "The same by hand, for comparison",
        "openssl / curl / a JWT library",
        jwks="convert rsa.public to a JWK (n, e base64url) and POST it to /oauth2/default/registration",
        assertion="build {iss, sub, aud, iat, exp, jti}, sign header.payload with RS384 "
        "(openssl dgst -sha384 -sign rsa.private), base64url it",
        grant="curl -X POST URL/oauth2/default/token --data-urlencode grant_type=client_credentials "
        "--data-urlencode client_assertion_type=… --data-urlencode client_assertion=JWT",
        create="curl -X POST URL/apis/default/fhir/Patient -H 'Authorization: Bearer …' "
        "-H 'Content-Type: application/fhir+json' --data @patient.json  # every 60 s: a new JWT",
    )


def _require(ok: bool, response: Any) -> None:
    if ok:
        return
    error = ServerFailureError if response.status >= 500 else ClientRequestError
    raise error(f"the demo sandbox answered {response.status}: {response.error_message()}")


def _token_requests(auth: object) -> int:
    from cwsctl.core.oauth import OAuthBearerAuth

    return auth.source.token_requests if isinstance(auth, OAuthBearerAuth) else 0


def _name(resource: dict[str, Any]) -> str:
    names = resource.get("name") or [{}]
    return " ".join([*names[0].get("given", []), names[0].get("family", "")]).strip()

"""`cwsctl demo --kind openemr`: what a real OpenEMR asks for, step by step, against the sandbox.

key → discovery → JWK Set → registration → the administrator's enable step → a person's sign-in
(authorization code + PKCE, against the sandbox's auto-approving authorize page) → the patient
looked up, not found, created once → the same row again found by look-up, not re-created → read
back. Runs against an in-process OpenEMR flavour of the sandbox (7.0.4 behaviour) on 127.0.0.1,
in the caller's temporary directory, through the same core code the commands use.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cwsctl.core.bulk.rows import WALKTHROUGH_EXAMPLE
from cwsctl.core.errors import ClientRequestError, ServerFailureError

PROFILE = "emr"
Step = Callable[..., None]
#: What the demo showed, said last.
DONE = "discovered, registered, enabled, signed in; patient created once, found again, read back"


def run_openemr_demo(step: Step, root: Path, bits: int) -> str:
    """Every step of getting patients into OpenEMR, each shown with its cwsctl command."""
    from cwsctl.core import keys
    from cwsctl.core.bulk.rows import patient_key, prepare_patient
    from cwsctl.core.bulk.runner import lookup_patient
    from cwsctl.core.profile import Config, Profile, Store
    from cwsctl.core.transport.bounded import bounded_client
    from cwsctl.protocols.oauth2.grants import run_flow
    from cwsctl.protocols.oauth2.jwks import jwk_set, key_id
    from cwsctl.protocols.oauth2.login import LOOPBACK_REDIRECT_URI
    from cwsctl.registry import kind_of
    from cwsctl.sandbox.faults import Faults
    from cwsctl.targets.openemr.discovery import apply_discovery, discover
    from cwsctl.targets.openemr.registration import (
        record_registration,
        registration_document,
        registration_flow,
    )
    from cwsctl.targets.openemr.sandbox.server import OpenEmrSandboxServer
    from cwsctl.targets.openemr.scopes import effective_scope
    from cwsctl.targets.openemr.settings import OpenEmrSettings
    from cwsctl.targets.openemr.tokens import TokenSource

    store = Store(root / "home")
    private_key = keys.generate_private_key(bits)
    keys.save_private_key(store.private_key_path(PROFILE), private_key, None, overwrite=False)
    public_key = private_key.public_key()
    step(
        "Make your key pair",
        f"cwsctl -p {PROFILE} keygen --bits {bits}",
        fingerprint=keys.fingerprint(public_key),
    )

    data_dir = root / "sandbox"
    with OpenEmrSandboxServer(data_dir, faults=Faults(), access_log=False) as server:
        settings = OpenEmrSettings()
        profile = Profile(PROFILE, url=server.url, kind="openemr", settings=settings)
        found = discover(server.url, settings.site)
        apply_discovery(profile, found)
        store.save(Config(default_profile=PROFILE, profiles={PROFILE: profile}))
        step(
            "Point a profile at OpenEMR; cwsctl reads its discovery documents",
            f"cwsctl profile init {PROFILE} --kind openemr --url {server.url}",
            token_endpoint=f"{settings.token_endpoint} (the aud of every client assertion)",
            scope=effective_scope(profile),
        )
        jwks = jwk_set([public_key])
        step(
            "Publish the public key as a JWK Set (RS384)",
            f"cwsctl -p {PROFILE} keys jwks > jwks.json",
            kid=f"{key_id(public_key)} (OpenEMR ignores it and uses the set's first key)",
        )

        document = registration_document(
            client_name="cwsctl demo",
            scope=effective_scope(profile),
            redirect_uris=[LOOPBACK_REDIRECT_URI],
            jwks=jwks,
        )
        with bounded_client() as http:
            registration = run_flow(registration_flow(profile, document), http)
        profile = record_registration(store, PROFILE, registration)
        step(
            "Register the client (confidential, JWKS inline)",
            f"cwsctl -p {PROFILE} oauth register --client-name 'cwsctl demo'",
            client_id=registration.client_id,
            enabled="no: OpenEMR disables a new confidential client with user/ scopes",
        )
        server.enable_client(registration.client_id)
        step(
            "An OpenEMR administrator enables it (Administration → System → API Clients)",
            f"cwsctl sandbox openemr enable-client --data-dir {data_dir} -- "
            f"{registration.client_id}  (the sandbox's stand-in for that page)",
        )

        source = TokenSource(profile, store, private_key)
        granted = _sign_in(profile, source)
        step(
            "Sign in once as an OpenEMR user (authorization code + PKCE, loopback redirect)",
            f"cwsctl -p {PROFILE} oauth login",
            refresh="refresh token stored in the profile's 0600 token file: cron renews with it",
            access_token_lifetime=f"{round(granted.token.lifetime)} s",
            note="client credentials cannot write patients in OpenEMR: writes need a user",
        )

        kind = kind_of(profile)
        mapping = kind.patients(profile)
        record = prepare_patient(WALKTHROUGH_EXAMPLE)
        mapping.check(record)
        external_id, facility = patient_key(record)
        with kind.open_client(profile, store, passphrase=None, audit=None) as client:
            lookup, existing = lookup_patient(client, mapping, external_id, facility)
            _require(lookup.status == 200 and existing is None, lookup)
            created = client.request(*mapping.create_request(record))
            _require(created.status == 201, created)
            patient_id = mapping.verdict(created).patient_id
            step(
                "Create the walkthrough's patient: looked up first, not found, created",
                f"cwsctl -p {PROFILE} patients create --external-id {external_id} "
                f"--facility {facility} …",
                status=f"{created.status} {created.reason}",
                answer=created.body.decode("utf-8", "replace"),
                pubpid=f"{facility}:{external_id} (unique per facility)",
            )
            lookup, existing = lookup_patient(client, mapping, external_id, facility)
            _require(existing == patient_id, lookup)
            step(
                "Send the same row again: found by look-up, nothing created",
                "(the same command; OpenEMR ignores If-None-Exist, so cwsctl always looks first)",
                found=existing,
                patients_stored=server.count_patients(),
            )
            read = client.request("GET", f"/apis/{settings.site}/fhir/Patient/{patient_id}")
            _require(read.ok, read)
            resource = json.loads(read.body)
            step(
                "Read it back through FHIR",
                f"cwsctl -p {PROFILE} request GET /apis/{settings.site}/fhir/Patient/{patient_id}",
                name=_name(resource),
                birth_date=resource.get("birthDate"),
                token_requests=f"{source.token_requests + _token_requests(client.auth)} (the "
                "sign-in's code exchange; its cached access token served every call since)",
            )

    step(
        "The same by hand, for comparison",
        "openssl / curl / a JWT library / a browser",
        jwks="convert rsa.public to a JWK (n, e base64url) and POST it to /oauth2/default/registration",
        enable="ask an administrator to enable the client in Administration → System → API Clients",
        login="build a PKCE pair, open /oauth2/default/authorize?… in a browser, catch the redirect, "
        "then POST the code with a client assertion (RS384 JWT, aud = the discovered token URL)",
        create="curl -G URL/apis/default/fhir/Patient --data-urlencode identifier=… first, then "
        "curl -X POST URL/apis/default/fhir/Patient -H 'Authorization: Bearer …' --data @patient.json",
        renew="every hour: a refresh-token grant with a new assertion, keeping the rotated refresh token",
    )
    return DONE


def _sign_in(profile: Any, source: Any) -> Any:
    """``oauth login`` with the demo itself as the browser (the sandbox approves at once)."""
    import httpx

    from cwsctl.protocols.oauth2.grants import run_flow
    from cwsctl.protocols.oauth2.login import LoopbackReceiver, new_state, pkce_pair
    from cwsctl.targets.openemr.scopes import user_scope
    from cwsctl.targets.openemr.tokens import authorize_url

    pkce = pkce_pair()
    state = new_state()
    with LoopbackReceiver() as receiver:
        url = authorize_url(
            profile,
            redirect_uri=receiver.redirect_uri,
            state=state,
            code_challenge=pkce.challenge,
            scope=user_scope(source.scope),
        )
        httpx.get(url, follow_redirects=True, timeout=10.0)  # what the person's browser does
        code = receiver.wait(state, 10.0)
    return run_flow(source.code_flow(code, receiver.redirect_uri, pkce.verifier))


def _require(ok: bool, response: Any) -> None:
    if ok:
        return
    error = ServerFailureError if response.status >= 500 else ClientRequestError
    raise error(f"the demo sandbox answered {response.status}: {response.error_message()}")


def _token_requests(auth: object) -> int:
    from cwsctl.protocols.oauth2.bearer import OAuthBearerAuth

    return auth.source.token_requests if isinstance(auth, OAuthBearerAuth) else 0


def _name(resource: dict[str, Any]) -> str:
    names = resource.get("name") or [{}]
    return " ".join([*names[0].get("given", []), names[0].get("family", "")]).strip()

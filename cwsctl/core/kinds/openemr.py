"""OpenEMR: OAuth2 bearer tokens got with a JWT signed by the profile's key; patients via FHIR R4.

Patients go to ``POST /apis/{site}/fhir/Patient`` rather than the Standard API because FHIR lets
the server itself refuse a duplicate: the external id is an identifier in the facility's
namespace, and ``If-None-Exist`` makes the create conditional (an existing match answers 200 and
nothing is created). The look-up of an in-doubt row is the same identifier search.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from cwsctl.core.client import ApiClient
from cwsctl.core.kinds import Kind, PatientMapping, PatientRequest, Verdict, json_field

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cryptography.hazmat.primitives.asymmetric import rsa

    from cwsctl.core.audit import AuditLog
    from cwsctl.core.client import ApiResponse
    from cwsctl.core.doctor import Check
    from cwsctl.core.keys import PassphraseSource
    from cwsctl.core.profile import Profile, Store

FHIR_JSON = "application/fhir+json"
#: The identifier system holding CorEMR's external ids of one facility.
EXTERNAL_ID_SYSTEM = "urn:cwsctl:external-id:facility:{facility}"
IDENTIFIER_TYPES = "http://terminology.hl7.org/CodeSystem/v2-0203"
_GENDERS = {"M": "male", "F": "female", "U": "unknown"}


def external_id_system(facility: str) -> str:
    """The FHIR identifier system for external ids of ``facility``."""
    return EXTERNAL_ID_SYSTEM.format(facility=facility)


def fhir_patient(record: dict[str, Any]) -> dict[str, Any]:
    """A validated patient record as a FHIR R4 Patient resource."""
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [
            {
                # Typed PT (patient external identifier): OpenEMR keeps that one as pubpid.
                "type": {"coding": [{"system": IDENTIFIER_TYPES, "code": "PT"}]},
                "system": external_id_system(str(record["facility"])),
                "value": str(record["external_id"]),
            }
        ],
    }
    name = {
        key: value
        for key, value in (("family", record.get("lname")), ("given", [record.get("fname")]))
        if value and value != [None]
    }
    if name:
        patient["name"] = [name]
    if record.get("sex") in _GENDERS:
        patient["gender"] = _GENDERS[record["sex"]]
    if record.get("dob"):
        patient["birthDate"] = str(record["dob"])[:10]  # FHIR dates carry no time of day
    return patient


class OpenEmrPatients(PatientMapping):
    """FHIR Patient with a conditional create on the external-id identifier."""

    unsent_fields = ("agency", "billing_agency", "booking_no", "booking_date")

    def __init__(self, site: str) -> None:
        self.path = f"/apis/{site}/fhir/Patient"

    def create_request(self, record: dict[str, Any]) -> PatientRequest:
        """``POST …/fhir/Patient`` with ``If-None-Exist: identifier=SYSTEM|ID``."""
        body = json.dumps(fhir_patient(record), separators=(",", ":")).encode()
        token = f"{external_id_system(str(record['facility']))}|{record['external_id']}"
        headers = {"Content-Type": FHIR_JSON, "If-None-Exist": urlencode({"identifier": token})}
        return PatientRequest("POST", self.path, body, headers)

    def verdict(self, response: ApiResponse) -> Verdict:
        """201 created; 200 the conditional create found the patient; else rejected or failed."""
        patient_id = json_field(response.body, "id")
        if response.status == 201:
            return Verdict("created", patient_id or _id_from_location(response))
        if response.status == 200:
            return Verdict("exists", patient_id, "already in OpenEMR (conditional create)")
        outcome = "failed" if response.status >= 500 or response.status < 200 else "rejected"
        return Verdict(outcome, None, response.error_message())

    def lookup_path(self, external_id: str, facility: str) -> str:
        """``GET …/fhir/Patient?identifier=SYSTEM|ID``."""
        token = f"{external_id_system(facility)}|{external_id}"
        return f"{self.path}?{urlencode({'identifier': token})}"

    def found_id(self, response: ApiResponse) -> Any:
        """The first matching Patient's id in the search Bundle, or None."""
        return json_field(response.body, "entry", 0, "resource", "id")


def _id_from_location(response: ApiResponse) -> str | None:
    location = response.headers.get("location", "")
    parts = [p for p in urlsplit(location).path.split("/") if p]
    if "Patient" in parts and parts.index("Patient") + 1 < len(parts):
        return parts[parts.index("Patient") + 1]
    return None


class OpenEmrClient(ApiClient):
    """Bearer-token requests to OpenEMR's Standard and FHIR APIs (answers are not signed)."""

    credentials_stay_home = True
    server_name = "OpenEMR"

    def default_headers(self, url: str, body: bytes) -> dict[str, str]:
        """FHIR paths speak ``application/fhir+json``; the Standard API plain JSON."""
        if "/fhir/" in urlsplit(url).path + "/":
            headers = {"Accept": FHIR_JSON}
            return {**headers, "Content-Type": FHIR_JSON} if body else headers
        return super().default_headers(url, body)

    def unauthorized_hint(self) -> str:
        """OpenEMR refused a fresh token too: the client lacks the scope, or was disabled."""
        return (
            "OpenEMR refused the access token (a fresh one too): check that the client is "
            "enabled in OpenEMR and has the scope for this path; see cwsctl oauth token"
        )


class OpenEmrKind(Kind):
    """OpenEMR: the profile key signs OAuth2 client assertions (private_key_jwt, RS384)."""

    name = "openemr"

    def open_client(
        self,
        profile: Profile,
        store: Store,
        *,
        passphrase: PassphraseSource | None,
        audit: AuditLog | None,
        verify_responses: bool = True,
        **options: Any,
    ) -> ApiClient:
        """A client whose ``OAuthBearerAuth`` gets, caches and renews the profile's tokens."""
        from cwsctl.core.identity import load_profile_key
        from cwsctl.core.oauth import bearer_auth

        auth = bearer_auth(profile, store, load_profile_key(store, profile.name, passphrase))
        return OpenEmrClient(auth, base_url=profile.url, audit=audit, **options)

    def patients(self, profile: Profile) -> PatientMapping:
        """FHIR Patient on the profile's site."""
        return OpenEmrPatients(profile.site)

    def summary(self, profile: Profile) -> str:
        """``https://… site 'default' as client 'abc…'``."""
        client = f"client {profile.client_id!r}" if profile.client_id else "no client registered"
        return f"{profile.url} site {profile.site!r}, {client}, scope {profile.scope!r}"

    def incomplete(self, profile: Profile) -> str | None:
        """An OpenEMR profile needs the server's URL."""
        if profile.url:
            return None
        return f"cwsctl profile init {profile.name} --kind openemr --url https://…"

    def key_note(self, profile: Profile) -> str:
        """OpenEMR knows the key from the client's JWKS."""
        return "OpenEMR must know this key from the client's JWKS (cwsctl keys jwks)"

    def local_checks(self, profile: Profile, store: Store) -> Iterator[Check]:
        """Tokens need a registered client; answers are not signed (say so)."""
        from cwsctl.core.doctor import failed, passed
        from cwsctl.core.errors import ExitStatus

        if not profile.client_id:
            yield failed(
                "client",
                "no OAuth2 client registered for this profile",
                "cwsctl oauth register  (or, for a client made in OpenEMR's admin pages: "
                "cwsctl oauth register --client-id ID)",
                ExitStatus.LOCAL_KEY,
            )
            return
        yield passed("client", f"client_id {profile.client_id}")
        yield passed(
            "response signatures",
            "OpenEMR does not sign its answers: only TLS protects them (use https)",
        )

    def doctor_path(self, profile: Profile) -> str:
        """The FHIR CapabilityStatement: public, and it says which server answers."""
        return f"/apis/{profile.site}/fhir/metadata"

    def remote_checks(
        self,
        profile: Profile,
        store: Store,
        private_key: rsa.RSAPrivateKey | None,
        path: str,
        timeout: float,
    ) -> Iterator[Check]:
        """A token, then an authenticated search that matches nobody (so no PHI comes back)."""
        from cwsctl.core.doctor import request_check
        from cwsctl.core.oauth import bearer_auth

        assert private_key is not None  # the doctor loads it: this kind uses a key
        client = OpenEmrClient(
            bearer_auth(profile, store, private_key),
            base_url=profile.url,
            timeout=timeout,
            allow_http=True,
        )
        yield request_check(
            "token and API",
            client,
            f"/apis/{profile.site}/fhir/Patient?_id=cwsctl-doctor-check",
            "check the client's scopes in OpenEMR (Administration → API Clients), "
            "or run cwsctl oauth login",
        )


KIND = OpenEmrKind()

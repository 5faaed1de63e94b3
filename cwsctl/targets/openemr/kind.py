"""OpenEMR: OAuth2 bearer tokens got with a JWT signed by the profile's key; patients via FHIR R4.

Patients go to ``POST /apis/{site}/fhir/Patient``. OpenEMR cannot refuse a duplicate: it ignores
``If-None-Exist`` and every POST creates a patient, so each patient is looked up before it is
created (:attr:`OpenEmrPatients.lookup_first`). OpenEMR keeps only the value of the identifier
typed PT (as ``pubpid``) and drops its system, so the value itself says the facility:
``{facility}:{external_id}`` (see :func:`pubpid`). Its identifier search matches ``ss`` or
``pubpid`` and ignores the system, so a match counts only when its PT identifier is that very
value. The new patient's id is the ``uuid`` of the 201 answer ``{"pid": …, "uuid": …}``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from cwsctl.core.client import ApiClient
from cwsctl.core.kind import Kind, PatientMapping, PatientRequest, Verdict, json_field
from cwsctl.targets.openemr.settings import OpenEmrSettings

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cryptography.hazmat.primitives.asymmetric import rsa

    from cwsctl.core.audit import AuditLog
    from cwsctl.core.checks import Check
    from cwsctl.core.client import ApiResponse
    from cwsctl.core.keys import PassphraseSource
    from cwsctl.core.profile import Profile, Store

FHIR_JSON = "application/fhir+json"
#: The identifier system holding CorEMR's external ids of one facility (sent for servers that
#: follow FHIR; OpenEMR drops it).
EXTERNAL_ID_SYSTEM = "urn:cwsctl:external-id:facility:{facility}"
IDENTIFIER_TYPES = "http://terminology.hl7.org/CodeSystem/v2-0203"
#: The identifier type OpenEMR keeps (as pubpid): "patient external identifier".
PUBPID_TYPE = "PT"
#: OpenEMR's PatientValidator: lname 2–255 characters (fname 1–255).
MIN_LNAME = 2
#: Characters OpenEMR's token search splits a value on (',' = OR, '|' = system|value), with no
#: escape: a pubpid holding one could never be found again, so it is refused before sending.
SEARCH_SEPARATORS = ",|"
_GENDERS = {"M": "male", "F": "female", "U": "unknown"}


def external_id_system(facility: str) -> str:
    """The FHIR identifier system for external ids of ``facility``."""
    return EXTERNAL_ID_SYSTEM.format(facility=facility)


def pubpid(external_id: str, facility: str) -> str:
    """The PT identifier value (OpenEMR's ``pubpid``) of a patient: ``{facility}:{external_id}``.

    OpenEMR keeps only this value (not the identifier's system), so the facility is part of it:
    the same external id in two facilities is two patients.
    """
    return f"{facility}:{external_id}"


def fhir_patient(record: dict[str, Any]) -> dict[str, Any]:
    """A validated patient record as a FHIR R4 Patient resource."""
    facility, external_id = str(record["facility"]), str(record["external_id"])
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [
            {
                # Typed PT (patient external identifier): OpenEMR keeps that one as pubpid.
                "type": {"coding": [{"system": IDENTIFIER_TYPES, "code": PUBPID_TYPE}]},
                "system": external_id_system(facility),
                "value": pubpid(external_id, facility),
            }
        ],
    }
    name: dict[str, Any] = {"use": "official"}  # OpenEMR reads no other name
    if record.get("lname"):
        name["family"] = record["lname"]
    if record.get("fname"):
        name["given"] = [record["fname"]]
    if len(name) > 1:
        patient["name"] = [name]
    if record.get("sex") in _GENDERS:
        patient["gender"] = _GENDERS[record["sex"]]
    if record.get("dob"):
        patient["birthDate"] = str(record["dob"])[:10]  # FHIR dates carry no time of day
    return patient


class OpenEmrPatients(PatientMapping):
    """FHIR Patient, looked up by its pubpid before every create (OpenEMR creates on every POST)."""

    unsent_fields = ("agency", "billing_agency", "booking_no", "booking_date")
    lookup_first = True

    def __init__(self, site: str) -> None:
        self.path = f"/apis/{site}/fhir/Patient"

    def check(self, record: dict[str, Any]) -> None:
        """Refuse what OpenEMR would refuse or could not find again (exit 2, nothing sent)."""
        from cwsctl.core.bulk.rows import PatientValidationError

        if len(str(record.get("lname", "")).strip()) < MIN_LNAME:
            raise PatientValidationError(
                f"field 'lname' must be at least {MIN_LNAME} characters for OpenEMR",
                status=422,
                field="lname",
                hint="OpenEMR's patient validator refuses a shorter last name",
            )
        for name in ("external_id", "facility"):
            if any(char in str(record.get(name, "")) for char in SEARCH_SEPARATORS):
                raise PatientValidationError(
                    f"field {name!r} must not contain ',' or '|' for OpenEMR",
                    status=422,
                    field=name,
                    hint="OpenEMR's identifier search splits on them: "
                    "the patient could not be found again",
                )

    def create_request(self, record: dict[str, Any]) -> PatientRequest:
        """``POST …/fhir/Patient`` (no ``If-None-Exist``: OpenEMR ignores it)."""
        body = json.dumps(fhir_patient(record), separators=(",", ":")).encode()
        return PatientRequest("POST", self.path, body, {"Content-Type": FHIR_JSON})

    def verdict(self, response: ApiResponse) -> Verdict:
        """2xx created (id: OpenEMR's ``uuid``, else a FHIR server's ``id`` or Location); 5xx
        failed; else rejected."""
        if response.ok:
            patient_id = (
                json_field(response.body, "uuid")
                or json_field(response.body, "id")
                or _id_from_location(response)
            )
            return Verdict("created", patient_id)
        outcome = "failed" if response.status >= 500 or response.status < 200 else "rejected"
        return Verdict(outcome, None, response.error_message())

    def lookup_path(self, external_id: str, facility: str) -> str:
        """``GET …/fhir/Patient?identifier=SYSTEM|PUBPID`` (OpenEMR ignores the system)."""
        token = f"{external_id_system(facility)}|{pubpid(external_id, facility)}"
        return f"{self.path}?{urlencode({'identifier': token})}"

    def found_id(self, response: ApiResponse) -> Any:
        """The first Patient's id in the search Bundle, or None (unchecked: see :meth:`match`)."""
        return json_field(response.body, "entry", 0, "resource", "id")

    def match(self, response: ApiResponse, external_id: str, facility: str) -> Any:
        """The id of the Patient in the Bundle whose PT identifier is exactly this pubpid.

        OpenEMR's search also matches ``ss`` (and, in MySQL, case and trailing blanks loosely):
        another patient found that way is not this facility's patient.
        """
        wanted = pubpid(external_id, facility)
        for entry in _list(json_field(response.body, "entry")):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict) and _has_pubpid(resource, wanted):
                found = resource.get("id")
                return found if isinstance(found, str) and found else None
        return None


def _list(value: Any) -> list[Any]:
    """``value`` if the server sent a JSON array there, else nothing (a hostile or broken answer
    must not crash the look-up)."""
    return value if isinstance(value, list) else []


def _has_pubpid(resource: dict[str, Any], value: str) -> bool:
    for identifier in _list(resource.get("identifier")):
        if not isinstance(identifier, dict) or identifier.get("value") != value:
            continue
        kind = identifier.get("type")
        codings = kind.get("coding") if isinstance(kind, dict) else None
        if isinstance(codings, list) and any(
            isinstance(c, dict) and c.get("code") == PUBPID_TYPE for c in codings
        ):
            return True
    return False


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
            "OpenEMR answers 401 when the token's scopes do not cover the path (writes need a "
            "user's sign-in: cwsctl oauth login; the Standard API needs api:oemr: cwsctl oauth "
            "register --standard-api) or when an administrator disabled the client "
            "(Administration → System → API Clients)"
        )

    def explain(self, status: int) -> str:
        """A 401 from OpenEMR names nothing (7.0.3: an empty body): say what it means."""
        if status == 401:
            return "the token lacks a scope for this path, or the client is disabled"
        return ""


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
        from cwsctl.core.profile import load_profile_key
        from cwsctl.targets.openemr.tokens import bearer_auth

        auth = bearer_auth(profile, store, load_profile_key(store, profile.name, passphrase))
        return OpenEmrClient(auth, base_url=profile.url, audit=audit, **options)

    def patients(self, profile: Profile) -> PatientMapping:
        """FHIR Patient on the profile's site."""
        return OpenEmrPatients(OpenEmrSettings.of(profile).site)

    def summary(self, profile: Profile) -> str:
        """``https://… site 'default' as client 'abc…'``."""
        from cwsctl.targets.openemr.scopes import effective_scope

        settings = OpenEmrSettings.of(profile)
        client = f"client {settings.client_id!r}" if settings.client_id else "no client registered"
        from cwsctl.core.urls import without_userinfo

        return f"{without_userinfo(profile.url)} site {settings.site!r}, {client}, scope {effective_scope(profile)!r}"

    def incomplete(self, profile: Profile) -> str | None:
        """An OpenEMR profile needs the server's URL."""
        if profile.url:
            return None
        return f"cwsctl profile init {profile.name} --kind openemr --url https://…"

    def key_note(self, profile: Profile) -> str:
        """OpenEMR knows the key from the client's JWKS."""
        return "OpenEMR must know this key from the client's JWKS (cwsctl keys jwks)"

    def keygen_next(self, profile: Profile | None, name: str, next_key: bool) -> list[str]:
        """OpenEMR keeps a client's JWKS for life: a new key means a new client."""
        return [
            "Next: switch to it with cwsctl keys rotate --reregister (a new client)"
            if next_key
            else "Next: register it with OpenEMR: cwsctl oauth register (it sends cwsctl keys jwks)"
        ]

    def local_checks(self, profile: Profile, store: Store) -> Iterator[Check]:
        """Tokens need a registered client; answers are not signed (say so)."""
        from cwsctl.core.checks import failed, passed
        from cwsctl.core.errors import ExitStatus

        yield from _endpoint_checks(profile)
        client_id = OpenEmrSettings.of(profile).client_id
        if not client_id:
            yield failed(
                "client",
                "no OAuth2 client registered for this profile",
                "cwsctl oauth register  (or, for a client made in OpenEMR's admin pages: "
                "cwsctl oauth register --client-id ID)",
                ExitStatus.LOCAL_KEY,
            )
            return
        yield passed("client", f"client_id {client_id}")
        yield passed(
            "response signatures",
            "OpenEMR does not sign its answers: only TLS protects them (use https)",
        )

    def doctor_path(self, profile: Profile) -> str:
        """The FHIR CapabilityStatement: public, and it says which server answers."""
        return f"/apis/{OpenEmrSettings.of(profile).site}/fhir/metadata"

    def remote_checks(
        self,
        profile: Profile,
        store: Store,
        private_key: rsa.RSAPrivateKey | None,
        path: str,
        timeout: float,
    ) -> Iterator[Check]:
        """A token, then an authenticated search that matches nobody (so no PHI comes back)."""
        from cwsctl.core.checks import request_check
        from cwsctl.targets.openemr.tokens import bearer_auth

        assert private_key is not None  # the doctor loads it: this kind uses a key
        client = OpenEmrClient(
            bearer_auth(profile, store, private_key),
            base_url=profile.url,
            timeout=timeout,
            allow_http=True,
        )
        yield from _discovery_drift(profile, timeout)
        check = request_check(
            "token and API",
            client,
            f"/apis/{OpenEmrSettings.of(profile).site}/fhir/Patient?_id=cwsctl-doctor-check",
            "the token's scopes do not cover FHIR Patient reads, or the client is disabled: "
            "check it in OpenEMR (Administration → System → API Clients), or run "
            f"cwsctl -p {profile.name} oauth login",
        )
        yield check


def _endpoint_checks(profile: Profile) -> Iterator[Check]:
    """Which endpoints are in force (discovered or documented) and whether OpenEMR's site
    address differs from the URL cwsctl was given."""
    from cwsctl.core.checks import passed
    from cwsctl.targets.openemr.endpoints import endpoints, origin, site_address

    ends = endpoints(profile)
    how = "discovered" if ends.discovered else "documented paths (cwsctl oauth discover)"
    yield passed("endpoints", f"token {ends.audience}, FHIR {ends.fhir_base} ({how})")
    address = site_address(profile)
    if address is None:
        return
    typed = origin(profile.url)
    if address == typed:
        yield passed("site address", f"{address} (the same as the profile URL)")
    else:
        yield passed(
            "site address",
            f"OpenEMR's site address {address} differs from the profile URL {typed}: requests "
            f"go to {typed}, assertions name {ends.audience}",
        )


def _discovery_drift(profile: Profile, timeout: float) -> Iterator[Check]:
    """Read the discovery documents again; fail when they name another token endpoint."""
    from cwsctl.core.checks import failed, passed
    from cwsctl.core.errors import ExitStatus
    from cwsctl.targets.openemr.discovery import discover
    from cwsctl.targets.openemr.endpoints import endpoints

    found = discover(profile.url, OpenEmrSettings.of(profile).site, timeout=timeout)
    in_force = endpoints(profile).audience
    if not found.token_endpoint:
        yield passed("discovery", f"not readable ({'; '.join(found.problems)}); using {in_force}")
    elif found.token_endpoint != in_force:
        yield failed(
            "discovery",
            f"OpenEMR now names token endpoint {found.token_endpoint}, the profile uses "
            f"{in_force}: every assertion's aud would be refused",
            f"cwsctl -p {profile.name} oauth discover",
            ExitStatus.LOCAL_KEY,
        )
    else:
        yield passed("discovery", f"OpenEMR names the token endpoint in force ({in_force})")


KIND = OpenEmrKind()

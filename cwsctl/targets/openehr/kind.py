"""openEHR REST (the released API, as EHRbase serves it): one EHR per patient, basic or bearer auth.

A patient row provisions the patient's EHR: ``POST /ehr`` with an EHR_STATUS whose subject is a
PARTY_SELF with an external reference — the external id in the facility's namespace. A second EHR
for the same subject is refused by the server (409), and an in-doubt row is looked up with
``GET /ehr?subject_id=…&subject_namespace=…`` before it is sent again. openEHR keeps demographics
elsewhere, so names, dates of birth and booking data are not sent.
"""

from __future__ import annotations

import base64
import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx

from cwsctl.core.client import ApiClient
from cwsctl.core.kind import Kind, PatientMapping, PatientRequest, Verdict, json_field
from cwsctl.core.transport.http_auth import authorized_copy

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator

    from cryptography.hazmat.primitives.asymmetric import rsa

    from cwsctl.core.audit import AuditLog
    from cwsctl.core.checks import Check
    from cwsctl.core.client import ApiResponse
    from cwsctl.core.keys import PassphraseSource
    from cwsctl.core.profile import Profile, Store

#: The subject namespace holding CorEMR's external ids of one facility (as on OpenEMR).
SUBJECT_NAMESPACE = "urn:cwsctl:external-id:facility:{facility}"
#: The namespace of a facility code that holds characters EHRbase refuses, escaped.
ENCODED_SUBJECT_NAMESPACE = "urn:cwsctl:external-id:facility-enc:{facility}"
#: What EHRbase accepts as a subject namespace (``ValidationServiceImp``; else 400).
NAMESPACE_RULE = "[a-zA-Z][a-zA-Z0-9-_:/&+?]*"
_NAMESPACE = re.compile(r"[a-zA-Z][a-zA-Z0-9\-_:/&+?]*")
#: Characters kept as they are in an encoded facility code (the rule's, less the escape ``+``).
_KEPT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_:/&?")
#: A harmless, authenticated GET that says which server answers (the release's template list).
IDENTITY_PATH = "/definition/template/adl1.4"


def subject_namespace(facility: str) -> str:
    """The EHR subject namespace for external ids of ``facility``.

    ``urn:cwsctl:external-id:facility:FACILITY`` when that is a namespace EHRbase accepts (every
    integer facility, and codes of letters, digits and ``- _ : / & + ?``). A code holding any
    other character (``.``, a space, ``#``, non-ASCII…) would make every row a 400, so it is
    escaped instead: ``urn:cwsctl:external-id:facility-enc:`` followed by the code with each
    such byte of its UTF-8, and ``+`` itself, written ``+XX`` (upper-case hex) — ``MAIN.NORTH``
    becomes ``…:facility-enc:MAIN+2ENORTH``. The two prefixes differ, so no two facilities share
    a namespace, and codes that were valid keep the namespace they always had.
    """
    plain = SUBJECT_NAMESPACE.format(facility=facility)
    if _NAMESPACE.fullmatch(plain):
        return plain
    escaped = "".join(
        chr(byte) if chr(byte) in _KEPT else f"+{byte:02X}" for byte in facility.encode("utf-8")
    )
    return ENCODED_SUBJECT_NAMESPACE.format(facility=escaped)


def namespace_problem(namespace: str) -> str | None:
    """Why EHRbase would refuse ``namespace`` as a subject namespace (400), or None."""
    if _NAMESPACE.fullmatch(namespace):
        return None
    if not namespace:
        return "it is empty"
    if not namespace[0].isascii() or not namespace[0].isalpha():
        return f"it must start with a letter, not {namespace[0]!r}"
    position, char = next(
        (i, c) for i, c in enumerate(namespace) if not _NAMESPACE.fullmatch("a" + c)
    )
    return f"{char!r} (at position {position + 1}) is not allowed"


def ehr_status(subject_id: str, namespace: str) -> dict[str, Any]:
    """An EHR_STATUS for a new EHR: a PARTY_SELF subject, queryable and modifiable."""
    return {
        "_type": "EHR_STATUS",
        "archetype_node_id": "openEHR-EHR-EHR_STATUS.generic.v1",
        "name": {"value": "EHR Status"},
        "subject": {
            "_type": "PARTY_SELF",
            "external_ref": {
                "_type": "PARTY_REF",
                "id": {"_type": "GENERIC_ID", "value": subject_id, "scheme": "id_scheme"},
                "namespace": namespace,
                "type": "PERSON",
            },
        },
        "is_queryable": True,
        "is_modifiable": True,
    }


def ehr_create_request(subject_id: str, namespace: str) -> PatientRequest:
    """``POST /ehr`` with the subject's EHR_STATUS, asking for the EHR back."""
    body = json.dumps(ehr_status(subject_id, namespace), separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "Prefer": "return=representation"}
    return PatientRequest("POST", "/ehr", body, headers)


def ehr_lookup_path(subject_id: str, namespace: str) -> str:
    """``/ehr?subject_id=…&subject_namespace=…``: the EHR of a subject."""
    return f"/ehr?{urlencode({'subject_id': subject_id, 'subject_namespace': namespace})}"


def ehr_id_of(response: ApiResponse) -> str | None:
    """The ehr_id in an EHR answer's body, else its ETag or Location."""
    value = json_field(response.body, "ehr_id", "value")
    if isinstance(value, str) and value:
        return value
    etag = response.headers.get("etag", "").strip().removeprefix("W/").strip('"')
    if etag:
        return etag
    location = response.headers.get("location", "").rstrip("/")
    return location.rsplit("/", 1)[-1] or None if "/ehr/" in location else None


class OpenEhrPatients(PatientMapping):
    """A patient row is an EHR keyed by subject (external id in the facility's namespace)."""

    unsent_fields = (
        "fname",
        "lname",
        "dob",
        "sex",
        "agency",
        "billing_agency",
        "booking_no",
        "booking_date",
    )

    def check(self, record: dict[str, Any]) -> None:
        """Refuse a row whose subject namespace EHRbase would refuse (exit 2, nothing sent).

        :func:`subject_namespace` escapes every facility code into a valid namespace, so this
        only guards that promise: a row it ever failed for is reported invalid, the rest go on.
        """
        from cwsctl.core.bulk.rows import PatientValidationError

        namespace = subject_namespace(str(record["facility"]))
        problem = namespace_problem(namespace)
        if problem is not None:
            raise PatientValidationError(
                f"field 'facility' gives the subject namespace {namespace!r}, which EHRbase "
                f"refuses: {problem}",
                status=422,
                field="facility",
                hint=f"a subject namespace must match {NAMESPACE_RULE}",
            )

    def create_request(self, record: dict[str, Any]) -> PatientRequest:
        """``POST /ehr`` with the subject's EHR_STATUS; the EHR comes back in the answer."""
        facility = str(record["facility"])
        return ehr_create_request(str(record["external_id"]), subject_namespace(facility))

    def verdict(self, response: ApiResponse) -> Verdict:
        """201 created; 409 the subject already has an EHR (its id is looked up); else refused."""
        if response.status == 201:
            return Verdict("created", ehr_id_of(response))
        if response.status == 409:
            return Verdict("exists", None, "the subject already has an EHR")
        outcome = "failed" if response.status >= 500 or response.status < 200 else "rejected"
        return Verdict(outcome, None, response.error_message())

    def lookup_path(self, external_id: str, facility: str) -> str:
        """The EHR of the external id's subject."""
        return ehr_lookup_path(external_id, subject_namespace(facility))

    def found_id(self, response: ApiResponse) -> Any:
        """The ehr_id of the subject's EHR."""
        return ehr_id_of(response)


class SecretAuth(httpx.Auth):
    """Basic or bearer credentials, sent on a copy of each request (never on the caller's)."""

    def __init__(self, authorization: str) -> None:
        self._authorization = authorization

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Send the request with the credentials."""
        yield authorized_copy(request, self._authorization)

    def __repr__(self) -> str:
        return "SecretAuth(<redacted>)"


def basic_authorization(username: str, password: str) -> str:
    """The ``Authorization`` value of HTTP basic auth (RFC 7617)."""
    userpass = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {userpass}"


def credentials(profile: Profile, store: Store) -> httpx.Auth | None:
    """The profile's ``auth``: nothing, basic as ``username``, or a bearer token."""
    from cwsctl.core.errors import ProfileError
    from cwsctl.core.secrets import SECRET_FOR_AUTH, check_secret, resolve_secret

    if profile.auth == "none":
        return None
    secret = resolve_secret(store, profile.name, SECRET_FOR_AUTH[profile.auth])
    if profile.auth == "basic":
        check_secret(profile.username, "username", f"profile {profile.name!r}", ProfileError)
        return SecretAuth(basic_authorization(profile.username, secret))
    return SecretAuth(f"Bearer {secret}")


class OpenEhrClient(ApiClient):
    """Requests to an openEHR REST server; answers are not signed."""

    credentials_stay_home = True
    server_name = "the openEHR server"

    def default_headers(self, url: str, body: bytes) -> dict[str, str]:
        """openEHR speaks JSON both ways."""
        return {"Accept": "application/json", **super().default_headers(url, body)}

    def unauthorized_hint(self) -> str:
        """The server refused the credentials."""
        return (
            "the openEHR server refused the credentials: check the user and CWSCTL_PASSWORD / "
            "CWSCTL_TOKEN (or their _FILE variants, or the secret kept with --store-secret)"
        )


class OpenEhrKind(Kind):
    """openEHR REST: EHRs, versioned compositions, AQL."""

    name = "openehr"

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
        """A client with the profile's credentials (no key is involved)."""
        return OpenEhrClient(
            credentials(profile, store), base_url=profile.url, audit=audit, **options
        )

    def patients(self, profile: Profile) -> PatientMapping:
        """One EHR per patient."""
        return OpenEhrPatients()

    def summary(self, profile: Profile) -> str:
        """``https://…/openehr/v1, auth basic as 'loader'``."""
        who = f" as {profile.username!r}" if profile.auth == "basic" else ""
        from cwsctl.core.urls import without_userinfo

        return f"{without_userinfo(profile.url)}, auth {profile.auth}{who}"

    def incomplete(self, profile: Profile) -> str | None:
        """A URL, and a username for basic auth."""
        if profile.url and (profile.auth != "basic" or profile.username):
            return None
        return (
            f"cwsctl profile init {profile.name} --kind openehr --url https://…/openehr/v1 "
            "--auth none|basic|bearer [--username USER]"
        )

    def uses_key(self) -> bool:
        """openEHR servers know no client key."""
        return False

    def key_note(self, profile: Profile) -> str:
        """Not used: openehr profiles have no key."""
        return "not used by openEHR servers"

    def local_checks(self, profile: Profile, store: Store) -> Iterator[Check]:
        """The credentials can be found; answers are not signed (say so)."""
        from cwsctl.core.checks import failed, passed
        from cwsctl.core.errors import CwsError, ExitStatus

        try:
            credentials(profile, store)
        except CwsError as exc:
            yield failed("credentials", exc.message, exc.hint or "", ExitStatus.LOCAL_KEY)
            return
        yield passed("credentials", f"auth {profile.auth}: found")
        yield passed(
            "response signatures",
            "openEHR servers do not sign their answers: only TLS protects them (use https)",
        )

    def doctor_path(self, profile: Profile) -> str:
        """The template list: authenticated, harmless, and it shows the server speaks openEHR."""
        return IDENTITY_PATH

    def remote_checks(
        self,
        profile: Profile,
        store: Store,
        private_key: rsa.RSAPrivateKey | None,
        path: str,
        timeout: float,
    ) -> Iterator[Check]:
        """An authenticated GET of the template list; then the templates the server holds."""
        from cwsctl.core.checks import request_check
        from cwsctl.targets.openehr.templates import templates_check

        def client() -> OpenEhrClient:
            return OpenEhrClient(
                credentials(profile, store), base_url=profile.url, timeout=timeout, allow_http=True
            )

        reached = request_check(
            "credentials and server",
            client(),
            path,
            "check the user and password/token the server expects (CWSCTL_PASSWORD, CWSCTL_TOKEN)",
        )
        yield reached
        if reached.ok:
            yield templates_check(client())


KIND = OpenEhrKind()

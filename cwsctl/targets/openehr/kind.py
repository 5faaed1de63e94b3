"""openEHR REST (the released API, as EHRbase serves it): one EHR per patient, basic or bearer auth.

A patient row provisions the patient's EHR: ``POST /ehr`` with an EHR_STATUS whose subject is a
PARTY_SELF with an external reference — the external id in the facility's namespace. A second EHR
for the same subject is refused by the server (409), and an in-doubt row is looked up with
``GET /ehr?subject_id=…&subject_namespace=…`` before it is sent again. openEHR keeps demographics
elsewhere, so names, dates of birth and booking data are not sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cwsctl.core.client import ApiClient
from cwsctl.core.kind import Kind, PatientMapping, PatientRequest, Verdict
from cwsctl.targets.openehr.auth import credentials
from cwsctl.targets.openehr.settings import OpenEhrSettings
from cwsctl.targets.openehr.subject import (
    NAMESPACE_RULE,
    ehr_create_request,
    ehr_id_of,
    ehr_lookup_path,
    namespace_problem,
    subject_namespace,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cryptography.hazmat.primitives.asymmetric import rsa

    from cwsctl.core.audit import AuditLog
    from cwsctl.core.checks import Check
    from cwsctl.core.client import ApiResponse
    from cwsctl.core.keys import PassphraseSource
    from cwsctl.core.profile import Profile, Store

#: A harmless, authenticated GET that says which server answers (the release's template list).
IDENTITY_PATH = "/definition/template/adl1.4"


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


def templates_check(client: ApiClient, shown: int = 10) -> Check:
    """The doctor's line for an openehr profile: the templates the server holds (closing
    ``client``). None uploaded passes, with the upload as advice; an unreadable list fails."""
    from cwsctl.core.checks import failed, passed
    from cwsctl.core.errors import CwsError
    from cwsctl.targets.openehr.templates import list_templates

    try:
        with client:
            found = list_templates(client)
    except CwsError as exc:
        return failed("templates", exc.message, exc.hint or "", exc.exit_status)
    if not found:
        return passed(
            "templates",
            "none uploaded: compositions need their template first "
            "(cwsctl template upload FILE.opt)",
        )
    names = [t.template_id for t in found]
    listed = ", ".join(names[:shown]) + (
        f" and {len(names) - shown} more" if len(names) > shown else ""
    )
    return passed("templates", f"{len(names)} uploaded: {listed}")


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
        settings = OpenEhrSettings.of(profile)
        who = f" as {settings.username!r}" if settings.auth == "basic" else ""
        from cwsctl.core.urls import without_userinfo

        return f"{without_userinfo(profile.url)}, auth {settings.auth}{who}"

    def incomplete(self, profile: Profile) -> str | None:
        """A URL, and a username for basic auth."""
        settings = OpenEhrSettings.of(profile)
        if profile.url and (settings.auth != "basic" or settings.username):
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

    def keygen_next(self, profile: Profile | None, name: str, next_key: bool) -> list[str]:
        """An openehr profile has no key of its own; `keygen` says what it always has (as for a
        cws profile), with the profile's username."""
        username = OpenEhrSettings.of(profile).username if profile is not None else "USERNAME"
        lines = [
            "Next: in CorEMR open Administration → Public Keys, press +, paste the public key "
            f"above into Contents and use the username {username!r}."
        ]
        if profile is None:
            lines.append(f"Then: cwsctl profile init {name} --url https://… --username USER")
        if next_key:
            lines.append("Once CorEMR has it, switch to it with: cwsctl keys rotate")
        return lines

    def local_checks(self, profile: Profile, store: Store) -> Iterator[Check]:
        """The credentials can be found; answers are not signed (say so)."""
        from cwsctl.core.checks import failed, passed
        from cwsctl.core.errors import CwsError, ExitStatus

        try:
            credentials(profile, store)
        except CwsError as exc:
            yield failed("credentials", exc.message, exc.hint or "", ExitStatus.LOCAL_KEY)
            return
        yield passed("credentials", f"auth {OpenEhrSettings.of(profile).auth}: found")
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

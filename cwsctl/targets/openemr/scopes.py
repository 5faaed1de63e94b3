"""The scopes cwsctl asks OpenEMR for, where its admin pages turn them on, and scope helpers.

:data:`DEFAULT_SCOPE` is what a default OpenEMR install accepts (FHIR, a user's patient read and
write, a refresh token). ``system/*`` scopes exist only once an administrator enables them and are
asked for only on request (:data:`SYSTEM_SCOPES`, :data:`EXPORT_SCOPES`); ``api:oemr`` (the
Standard API) likewise.
"""

from __future__ import annotations

from cwsctl.core.profile import Profile
from cwsctl.targets.openemr.settings import OpenEmrSettings

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


def effective_scope(profile: Profile) -> str:
    """The scopes a profile asks for: its own, else :data:`DEFAULT_SCOPE`."""
    return " ".join(OpenEmrSettings.of(profile).scope.split()) or DEFAULT_SCOPE


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

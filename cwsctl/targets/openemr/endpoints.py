"""Where an openemr profile's OAuth2 exchanges go: discovered or documented, pinned to its origin.

The discovered endpoints, else the documented paths ``{url}/oauth2/{site}/token``,
``…/registration``, ``…/authorize`` and ``{url}/apis/{site}/fhir``. Requests always go to the
profile URL's scheme, host and port with the endpoint's *path*, so credentials never follow a
host named by a document; the client assertion's ``aud`` is the discovered token endpoint,
string for string.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from cwsctl.core.errors import ProfileError
from cwsctl.core.profile import Profile
from cwsctl.targets.openemr.settings import OpenEmrSettings


@dataclass(frozen=True)
class Endpoints:
    """Where a profile's OAuth2 exchanges go.

    ``token``, ``registration`` and ``authorize`` are what cwsctl sends to (the profile URL's
    scheme, host and port); ``audience`` is the token endpoint as OpenEMR names it (the
    assertion's ``aud``) and ``fhir_base`` the FHIR base as OpenEMR names it (the authorization
    request's ``aud``). Without discovery both are built from the profile URL.
    """

    token: str
    registration: str
    authorize: str
    fhir_base: str
    audience: str
    discovered: bool = False


def documented_endpoints(url: str, site: str) -> dict[str, str]:
    """OpenEMR's documented endpoint URLs under base ``url`` for ``site``."""
    base = url.rstrip("/")
    site_part = quote(site or "default", safe="")
    oauth = f"{base}/oauth2/{site_part}"
    return {
        "token_endpoint": f"{oauth}/token",
        "registration_endpoint": f"{oauth}/registration",
        "authorization_endpoint": f"{oauth}/authorize",
        "fhir_base": f"{base}/apis/{site_part}/fhir",
    }


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (lower-cased scheme and host, as written otherwise)."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def at_origin(home: str, url: str) -> str:
    """``url``'s path and query on ``home``'s scheme, host and port: where a discovered
    endpoint is actually sent, so that no credential follows a host named by a document."""
    parts = urlsplit(url)
    path = parts.path or "/"
    return f"{origin(home)}{path}" + (f"?{parts.query}" if parts.query else "")


def endpoints(profile: Profile) -> Endpoints:
    """The OAuth2 endpoints of an openemr profile: the discovered ones, else the documented."""
    if not profile.url:
        raise ProfileError(
            f"profile {profile.name!r} has no URL",
            hint=f"set it: cwsctl profile init {profile.name} --kind openemr --url https://…",
        )
    settings = OpenEmrSettings.of(profile)
    documented = documented_endpoints(profile.url, settings.site)
    token = settings.token_endpoint or documented["token_endpoint"]
    registration = settings.registration_endpoint or documented["registration_endpoint"]
    authorize = settings.authorization_endpoint or documented["authorization_endpoint"]
    return Endpoints(
        token=at_origin(profile.url, token),
        registration=at_origin(profile.url, registration),
        authorize=at_origin(profile.url, authorize),
        fhir_base=settings.fhir_base or documented["fhir_base"],
        audience=token,
        discovered=bool(settings.token_endpoint),
    )


def site_address(profile: Profile) -> str | None:
    """The origin OpenEMR builds its URLs from (its Site Address), when discovery told it."""
    settings = OpenEmrSettings.of(profile)
    named = settings.token_endpoint or settings.issuer
    return origin(named) if named else None

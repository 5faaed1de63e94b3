"""An openemr profile's settings: the OpenEMR site, the OAuth2 client and scopes, and the
endpoints OpenEMR's discovery documents named."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cwsctl.core.errors import CwsError, InputError
from cwsctl.core.profile import NAME_RE, ProfileSettings

DEFAULT_OPENEMR_SITE = "default"
#: What an openemr profile keeps from OpenEMR's discovery documents (absent in older profiles).
DISCOVERED_FIELDS = (
    "token_endpoint",
    "authorization_endpoint",
    "registration_endpoint",
    "fhir_base",
    "issuer",
)


def validate_site_name(site: str, error: type[CwsError] = InputError) -> str:
    """An OpenEMR site becomes a path segment (``/oauth2/<site>/…``): same alphabet as a profile."""
    if not NAME_RE.fullmatch(site):
        raise error(
            f"invalid OpenEMR site {site!r}",
            hint="use letters, digits, '.', '_' and '-' (up to 64 characters), e.g. 'default'",
        )
    return site


@dataclass
class OpenEmrSettings(ProfileSettings):
    """OAuth2 tokens for ``client_id`` on OpenEMR site ``site``, with a JWT signed by the
    profile's key.

    It also keeps what OpenEMR's discovery documents said (empty when discovery was not reached:
    the documented paths are used): ``token_endpoint`` (exactly as OpenEMR wrote it, the ``aud``
    of client assertions), ``authorization_endpoint``, ``registration_endpoint``, ``fhir_base``
    and ``issuer``. Requests still go to the profile URL's host; only the paths come from
    discovery.
    """

    site: str = DEFAULT_OPENEMR_SITE
    client_id: str = ""
    scope: str = ""
    token_endpoint: str = ""
    authorization_endpoint: str = ""
    registration_endpoint: str = ""
    fhir_base: str = ""
    issuer: str = ""

    def check(self) -> None:
        """The site ends up in paths."""
        validate_site_name(self.site)

    @classmethod
    def from_toml(cls, table: Mapping[str, Any]) -> OpenEmrSettings:
        """``site``, ``client_id``, ``scope`` and the discovered endpoints (each optional)."""
        return cls(
            site=str(table.get("site", DEFAULT_OPENEMR_SITE)),
            client_id=str(table.get("client_id", "")),
            scope=str(table.get("scope", "")),
            **{name: str(table.get(name, "")) for name in DISCOVERED_FIELDS},
        )

    def to_toml(self) -> dict[str, Any]:
        """Site, client and scope, then the discovered endpoints that are known."""
        table = {"site": self.site, "client_id": self.client_id, "scope": self.scope}
        discovered = {name: getattr(self, name) for name in DISCOVERED_FIELDS}
        return {**table, **{k: v for k, v in discovered.items() if v}}

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], previous: Mapping[str, Any]
    ) -> OpenEmrSettings:
        """``--site``, ``--client-id`` and ``--scope``, else the previous ones; the endpoints
        are discovered again (`profile init`'s step for this kind)."""
        site, client_id, scope = options["site"], options["client_id"], options["scope"]
        return cls(
            site=site or str(previous.get("site", DEFAULT_OPENEMR_SITE)),
            client_id=client_id if client_id is not None else str(previous.get("client_id", "")),
            scope=scope if scope is not None else str(previous.get("scope", "")),
        )

"""OpenEMR's discovery documents, and keeping what they name in a profile (7.0.3 and 7.0.4).

``{url}/oauth2/{site}/.well-known/openid-configuration`` and
``{url}/apis/{site}/fhir/.well-known/smart-configuration`` say the token, authorization and
registration endpoints as OpenEMR builds them (from its Site Address, which may differ from the
URL cwsctl was given). They are kept in the profile (see :mod:`cwsctl.targets.openemr.endpoints`
for where requests then go).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from cwsctl.core.errors import NetworkError
from cwsctl.core.profile import Profile
from cwsctl.protocols.oauth2.grants import run_flow
from cwsctl.protocols.oauth2.token_response import json_object
from cwsctl.targets.openemr.endpoints import documented_endpoints
from cwsctl.targets.openemr.settings import DISCOVERED_FIELDS, OpenEmrSettings

#: Seconds the discovery documents may take (``profile init``, ``oauth discover``) by default.
DISCOVERY_TIMEOUT_S = 10.0


@dataclass
class Discovery:
    """What OpenEMR's two discovery documents said, and what could not be read."""

    token_endpoint: str = ""
    authorization_endpoint: str = ""
    registration_endpoint: str = ""
    fhir_base: str = ""
    issuer: str = ""
    auth_methods: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """True when both documents were read and named a token endpoint."""
        return not self.problems and bool(self.token_endpoint)


def discovery_urls(url: str, site: str) -> tuple[str, str]:
    """The OpenID configuration and SMART configuration URLs under ``url`` for ``site``."""
    ends = documented_endpoints(url, site)
    oauth = ends["token_endpoint"].removesuffix("/token")
    return (
        f"{oauth}/.well-known/openid-configuration",
        f"{ends['fhir_base']}/.well-known/smart-configuration",
    )


def _discovered_url(document: dict[str, Any], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str):
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or not value.isprintable():
        return ""
    return value


def discovery_flow(url: str, site: str) -> Generator[httpx.Request, httpx.Response, Discovery]:
    """GET both discovery documents (at ``url``'s host); return what they name.

    A document that cannot be read is noted in ``problems`` (nothing is raised for an answer);
    network failures surface from :func:`~cwsctl.protocols.oauth2.grants.run_flow` as NetworkError.
    """
    found: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for label, address in zip(("openid", "smart"), discovery_urls(url, site), strict=True):
        response = yield httpx.Request(
            "GET", address, headers={"Accept": "application/json", "Accept-Encoding": "identity"}
        )
        body = json_object(response)
        if response.status_code != 200 or body is None:
            problems.append(f"{urlsplit(address).path} answered HTTP {response.status_code}")
            continue
        found[label] = body
    openid, smart = found.get("openid", {}), found.get("smart", {})

    def first(name: str) -> str:
        return _discovered_url(openid, name) or _discovered_url(smart, name)

    token = first("token_endpoint")
    issuer = _discovered_url(openid, "issuer")
    fhir_base = _discovered_url(smart, "issuer")  # 7.0.4+: the FHIR base
    named = token or issuer
    if not fhir_base and named:
        # 7.0.3's SMART document has no issuer: the FHIR base sits beside /oauth2/{site}.
        site_part = quote(site or "default", safe="")
        marker = f"/oauth2/{site_part}"
        head = named.split(marker, 1)[0] if marker in named else ""
        fhir_base = f"{head}/apis/{site_part}/fhir" if head else ""
    methods = smart.get("token_endpoint_auth_methods_supported")
    return Discovery(
        token_endpoint=token,
        authorization_endpoint=first("authorization_endpoint"),
        registration_endpoint=first("registration_endpoint"),
        fhir_base=fhir_base,
        issuer=issuer,
        auth_methods=tuple(str(m) for m in methods) if isinstance(methods, list) else (),
        problems=tuple(problems) if token else (*problems, "no token_endpoint named"),
    )


def discover(
    url: str,
    site: str,
    *,
    timeout: float = DISCOVERY_TIMEOUT_S,
    max_response_size: int | None = 1 << 20,
) -> Discovery:
    """Read the discovery documents through a bounded client; an unreachable server or an
    unreadable answer gives a :class:`Discovery` whose ``problems`` say why (never raises for
    those, so the caller can fall back to the documented paths)."""
    try:
        return run_flow(
            discovery_flow(url, site), timeout=timeout, max_response_size=max_response_size
        )
    except NetworkError as exc:
        return Discovery(problems=(exc.message,))


def apply_discovery(profile: Profile, found: Discovery) -> bool:
    """Keep what ``found`` names in ``profile`` (all of it, or nothing when it named no token
    endpoint); True when the token endpoint changed."""
    settings = OpenEmrSettings.of(profile)
    before = settings.token_endpoint
    if not found.token_endpoint:
        for name in DISCOVERED_FIELDS:
            setattr(settings, name, "")
    else:
        settings.token_endpoint = found.token_endpoint
        settings.authorization_endpoint = found.authorization_endpoint
        settings.registration_endpoint = found.registration_endpoint
        settings.fhir_base = found.fhir_base
        settings.issuer = found.issuer
    return settings.token_endpoint != before

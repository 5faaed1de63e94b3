"""Where requests go: joining paths to the profile's URL, and when plain http is acceptable.

Kept apart from :mod:`.client` so that the doctor and the sandbox can apply the same rules
without importing httpx.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from cwsctl.core.errors import InputError, ProfileError


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses, where plain http is acceptable."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_url(base_url: str, path_or_url: str) -> str:
    """Join a path to the profile's base URL; a full URL is used as given."""
    if "://" in path_or_url:
        return path_or_url
    if not base_url:
        raise ProfileError(
            f"cannot resolve {path_or_url!r}: the profile has no URL",
            hint="give a full https:// URL or run: cwsctl profile init NAME --url URL --username USER",
        )
    return base_url.rstrip("/") + "/" + path_or_url.lstrip("/")


def check_transport_security(url: str, *, allow_http: bool) -> None:
    """https only, except loopback hosts or an explicit ``allow_http``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"not an http(s) URL: {url!r}")
    if parts.scheme == "http" and not allow_http and not is_loopback(parts.hostname):
        raise InputError(
            f"refusing to send patient data over plain http to {parts.hostname}",
            hint="use https, or pass --allow-http if you really mean it",
        )

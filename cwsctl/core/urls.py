"""Where requests go: parsing the URLs a user gives, joining paths to the profile's URL, and
when plain http is acceptable.

Kept apart from :mod:`.client` so that the doctor, the sandbox and the CLI's option parsing can
apply the same rules without importing httpx.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from urllib.parse import urlsplit

from cwsctl.core.errors import InputError, ProfileError

URL_RULE = "must be an http:// or https:// URL with a valid host (and port 1-65535, if given)"
HOST_RULE = "must be a host name or an IP address"

_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")
# A scheme at the very start (RFC 3986): what makes PATH_OR_URL a full URL. A query string may
# hold "://" (an identifier system such as http://hl7.org/fhir/sid/us-ssn) and stays a path.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_full_url(text: str) -> bool:
    """True when ``text`` starts with a scheme and ``://`` (else it is a path)."""
    return bool(_SCHEME.match(text))


def without_userinfo(text: str) -> str:
    """``text`` with any ``user:password@`` of its authority replaced by ``***@``, for messages."""
    return re.sub(r"(://)[^/?#]*@", r"\1***@", text)


def has_control_character(text: str) -> bool:
    """True when ``text`` holds a control or invisible format character (never valid in a URL)."""
    return any(unicodedata.category(ch) in ("Cc", "Cf") for ch in text)


def has_control_or_space(text: str) -> bool:
    """True when ``text`` holds whitespace or a control character (never valid in a URL)."""
    return any(ch.isspace() for ch in text) or has_control_character(text)


def is_valid_host(host: str) -> bool:
    """True for an IPv4 address, an IPv6 address (brackets optional) or a DNS host name.

    A name is dot-separated labels of letters, digits, ``-`` and ``_`` (no label starts or ends
    with ``-``), at most 253 characters, one trailing dot allowed; a non-ASCII name must encode
    to IDNA. A name whose last label is all digits must be an IPv4 address (``1.2.3.4.5`` is
    neither).
    """
    if not host or has_control_or_space(host):
        return False
    if host.startswith("[") and host.endswith("]"):  # brackets hold only IPv6 addresses
        try:
            return ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    name = host[:-1] if host.endswith(".") else host
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return False
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        return False
    return not labels[-1].isdigit()


def parse_http_url(text: str) -> str:
    """Check that ``text`` is a usable http(s) URL and return it unchanged.

    Rejected with :class:`InputError` (exit 2): whitespace or control characters, a scheme other
    than http/https, no host, a host that is not a name or IP address (``http://[::1``), and a
    port that is not a number from 1 to 65535.
    """
    shown = repr(without_userinfo(text))
    if has_control_or_space(text):
        raise InputError(f"{shown} is not a valid URL: it holds a space or control character")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InputError(f"{shown} is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InputError(f"{shown} is not an http:// or https:// URL")
    host = parts.hostname
    if not host:
        raise InputError(f"{shown} has no host")
    if not is_valid_host(host if ":" not in host else f"[{host}]"):
        raise InputError(f"{shown} has an invalid host {host!r}")
    if port == 0:
        raise InputError(f"{shown} has port 0; a port must be from 1 to 65535")
    if "@" in parts.netloc:
        raise InputError(
            f"{shown} holds a user name or password (user:password@host): cwsctl does not take "
            "credentials from a URL, where they show in listings, logs and errors",
            hint="give the URL without them; credentials come from the profile (keys, "
            "CWSCTL_PASSWORD_FILE, CWSCTL_TOKEN_FILE, cwsctl oauth login)",
        )
    return text


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses, where plain http is acceptable."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_url(base_url: str, path_or_url: str) -> str:
    """Join a path to the profile's base URL; a full URL is checked and used as given.

    A malformed full URL raises :class:`InputError`; a malformed base URL (a hand-edited
    config) raises :class:`ProfileError`.
    """
    if is_full_url(path_or_url):
        return parse_http_url(path_or_url)
    if not base_url:
        raise ProfileError(
            f"cannot resolve {path_or_url!r}: the profile has no URL",
            hint="give a full https:// URL or run: cwsctl profile init NAME --url URL --username USER",
        )
    try:
        parse_http_url(base_url)
    except InputError as exc:
        raise ProfileError(
            f"the profile's URL is unusable: {exc.message}",
            hint="fix it: cwsctl profile init NAME --url https://HOST --username USER",
        ) from None
    if has_control_character(path_or_url):
        raise InputError(f"{path_or_url!r} is not a valid path: it holds a control character")
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


def origin(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an http(s) URL, the port made explicit."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def check_same_server(url: str, base_url: str) -> None:
    """InputError unless ``url`` is on the server of ``base_url`` (same scheme, host and port).

    Kinds whose requests carry a reusable credential (a bearer token, a password) call this, so
    a full URL given to ``request`` can never carry the profile's credential to another host.
    """
    if origin(url) != origin(base_url):
        scheme, host, port = origin(base_url)
        raise InputError(
            f"refusing to send this profile's credentials to {urlsplit(url).netloc}: "
            f"the profile's server is {scheme}://{host}:{port}",
            hint="give a path on the profile's server, use a profile made for that server, or "
            "pass --allow-other-host if you mean to send them there",
        )

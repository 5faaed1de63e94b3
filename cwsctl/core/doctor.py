"""`cwsctl doctor`: check a setup step by step and say how to fix what is wrong.

Most CWS trouble is a bare 401. The checks go from the local end to the server, each with its
exit class, and a failed prerequisite skips the checks that depend on it.
"""

from __future__ import annotations

import socket
import stat
import time
from collections.abc import Callable, Generator, Iterator
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cwsctl.core import keys
from cwsctl.core.checks import Check, failed, passed
from cwsctl.core.errors import CwsError, ExitStatus
from cwsctl.core.profile import Profile, Store

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from cwsctl.core.kind import Kind

MAX_CLOCK_SKEW_S = 300


def run_checks(
    store: Store,
    requested_profile: str | None,
    passphrase: keys.PassphraseSource | None,
    *,
    kind_of: Callable[[Profile], Kind],
    path: str | None = None,
    timeout: float = 10.0,
) -> Iterator[Check]:
    """Yield the checks in order; stop early where later checks cannot mean anything.

    The profile's kind adds its own checks (CWS: pinned key, signed request; OpenEMR: client
    registration, FHIR server, token) and picks the default ``path`` to reach.
    """
    try:
        config = store.load()
    except CwsError as exc:
        yield failed(
            "config", exc.message, exc.hint or "fix or move config.toml", ExitStatus.LOCAL_KEY
        )
        return
    yield passed(
        "config", f"{store.config_path} parses" if store.config_path.exists() else "no config yet"
    )
    from cwsctl.core.files import loose_dir_warning

    loose = loose_dir_warning(store.root)
    if loose is not None:  # a warning, not a failure: a shared home may be meant
        yield Check("home", True, f"warning: {loose}", f"chmod go-w {store.root} (unless shared)")
    name = store.active_profile_name(requested_profile, config)
    profile = config.profiles.get(name)
    kind = kind_of(profile) if profile is not None else None
    fix = kind.incomplete(profile) if kind is not None and profile is not None else None
    if profile is None or kind is None or fix is not None:
        yield failed(
            "profile",
            f"profile {name!r} is missing or incomplete",
            fix or f"cwsctl profile init {name} --url https://… --username USER",
            ExitStatus.LOCAL_KEY,
        )
        return
    yield passed("profile", f"{name} ({kind.name}): {kind.summary(profile)}")
    private_key = None
    if kind.uses_key():
        private_key = yield from _key_checks(store, name, passphrase, kind.key_note(profile))
    local = list(kind.local_checks(profile, store))
    yield from local
    url_ok = _url_check(profile)
    yield url_ok
    key_missing = kind.uses_key() and private_key is None
    if key_missing or not all(c.ok for c in local) or not url_ok.ok:
        return
    path = path or kind.doctor_path(profile)
    reach = list(_reach_checks(profile.url, path, timeout))
    yield from reach
    if not all(c.ok for c in reach):
        return
    yield from kind.remote_checks(profile, store, private_key, path, timeout)


def _key_checks(
    store: Store, name: str, passphrase: keys.PassphraseSource | None, note: str
) -> Generator[Check, None, rsa.RSAPrivateKey | None]:
    """Yield the key's checks; return the loaded key, or None if any check failed.

    The key is reused for the server checks, so an encrypted key is unlocked (and its
    passphrase asked for) once.
    """
    path = store.private_key_path(name)
    if not path.exists():
        yield failed(
            "private key",
            f"no key at {path}",
            "cwsctl keygen  (or: cwsctl keys import rsa.private)",
            ExitStatus.LOCAL_KEY,
        )
        return None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        yield failed(
            "key permissions",
            f"{path} is mode {mode:04o}",
            f"chmod 600 {path}",
            ExitStatus.LOCAL_KEY,
        )
        return None
    yield passed("key permissions", f"{path} is mode {mode:04o}")
    dir_mode = stat.S_IMODE(path.parent.stat().st_mode)
    if dir_mode & 0o077:
        yield failed(
            "key directory",
            f"{path.parent} is mode {dir_mode:04o}",
            f"chmod 700 {path.parent}",
            ExitStatus.LOCAL_KEY,
        )
        return None
    yield passed("key directory", f"{path.parent} is mode {dir_mode:04o}")
    try:
        key = keys.load_private_key(path, passphrase)
    except CwsError as exc:
        yield failed(
            "key readable",
            exc.message,
            exc.hint or "check the key and its passphrase",
            ExitStatus.LOCAL_KEY,
        )
        return None
    yield passed("key readable", f"RSA {key.key_size} bits")
    yield passed("key fingerprint", f"{keys.fingerprint(key.public_key())} — {note}")
    return key


def _url_check(profile: Profile) -> Check:
    from cwsctl.core.urls import is_loopback, without_userinfo

    parts = urlsplit(profile.url)
    if "@" in parts.netloc:  # a hand-edited URL with user:password@ (profile init refuses it)
        return failed(
            "https",
            f"{without_userinfo(profile.url)} holds a user name or password",
            f"cwsctl profile init {profile.name} --kind {profile.kind} --url https://HOST",
            ExitStatus.LOCAL_KEY,
        )
    if parts.scheme == "https":
        return passed("https", profile.url)
    if parts.scheme == "http" and is_loopback(parts.hostname or ""):
        return passed("https", f"{profile.url} (plain http, but loopback)")
    return failed(
        "https",
        f"{profile.url} is not https",
        f"cwsctl profile init {profile.name} --kind {profile.kind} --url https://…",
        ExitStatus.LOCAL_KEY,
    )


def _reach_checks(url: str, path: str, timeout: float) -> Iterator[Check]:
    import httpx

    from cwsctl.core.transport.bounded import bounded_client
    from cwsctl.core.transport.proxies import describe_proxy, proxy_for

    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    yield passed("proxy", describe_proxy(url))
    try:
        addresses = {
            str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        }
    except OSError as exc:
        if proxy_for(url) is None:
            yield failed(
                "dns",
                f"cannot resolve {host}: {exc}",
                "check the host name in the profile URL",
                ExitStatus.NETWORK,
            )
            return
        addresses = {"not resolvable here; the proxy resolves it"}  # behind a proxy
    yield passed("dns", f"{host} → {', '.join(sorted(addresses))}")
    try:
        # Only the head matters here; the body is read (and bounded) but not used.
        with bounded_client(timeout=timeout) as http:
            response = http.get(url.rstrip("/") + path)
    except httpx.HTTPError as exc:
        what = "TLS handshake" if parts.scheme == "https" else "connection"
        yield failed(
            "reach",
            f"{what} to {parts.netloc} failed: {exc or type(exc).__name__}",
            "check the URL/port, VPN, firewall or certificate",
            ExitStatus.NETWORK,
        )
        return
    via = "TLS ok" if parts.scheme == "https" else "plain http"
    yield passed("reach", f"{parts.netloc} answered ({via})")
    yield _clock_check(response.headers.get("date"))


def _clock_check(date_header: str | None) -> Check:
    if not date_header:
        return passed("clock", "the server sends no Date header; skew unknown")
    try:
        server_time = parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError):
        return passed("clock", f"unreadable Date header {date_header!r}; skew unknown")
    skew = server_time - time.time()
    detail = f"server clock {skew:+.0f} s from ours"
    if abs(skew) > MAX_CLOCK_SKEW_S:
        return failed(
            "clock",
            detail,
            "fix the clock (NTP) here or on the server: certificates and logs depend on it",
            ExitStatus.NETWORK,
        )
    return passed("clock", detail)

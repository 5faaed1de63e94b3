"""What `keys rotate` does for a cws profile: the next key is made active once CorEMR accepts a
signed request made with it (the registry sends openehr profiles, which have no key, here too)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cwsctl.cli.common import passphrase_source
from cwsctl.core.errors import LocalKeyError

if TYPE_CHECKING:
    from pathlib import Path

    from cwsctl.cli.output import Output
    from cwsctl.core.profile import Store


def rotate(
    out: Output,
    store: Store,
    profile: str,
    *,
    reregister: bool,
    passphrase_file: Path | None,
    timeout: float,
    force: bool,
) -> None:
    """Promote the next key once the server knows it (``reregister`` is for openemr)."""
    from cwsctl.core.rotation import promote_next_key

    next_path = store.next_key_path(profile)
    if not next_path.exists():
        raise LocalKeyError(
            f"profile {profile!r} has no next key", hint="run: cwsctl keygen --next"
        )
    _check_next_key(out, store, profile, next_path, passphrase_file, timeout, force)
    retired = promote_next_key(store, profile)
    if out.settings.json:
        out.json(
            {
                "profile": profile,
                "active": str(store.private_key_path(profile)),
                "retired": str(retired),
            }
        )
    out.success(f"The next key is now active; the old one is kept as {retired}")
    out.info(
        "When CorEMR no longer needs the old key, remove it there and here: cwsctl keys remove LABEL"
    )


def _check_next_key(
    out: Output,
    store: Store,
    profile: str,
    next_path: Path,
    passphrase_file: Path | None,
    timeout: float,
    force: bool,
) -> None:
    from cwsctl.core.errors import ClientRequestError, NetworkError
    from cwsctl.targets.cws.client import CwsClient
    from cwsctl.targets.cws.identity import load_identity
    from cwsctl.targets.cws.settings import CwsSettings

    config = store.load()
    known = config.profiles.get(profile)
    if known is None or not known.url or not CwsSettings.of(known).trusted:
        out.warn(
            "no server and pinned key in this profile: cannot check that CorEMR knows the next key"
        )
        return
    settings = CwsSettings.of(known)
    identity = load_identity(
        profile,
        store=store,
        key_path=next_path,
        username=settings.username,
        algorithm=settings.algorithm,
        passphrase=passphrase_source(passphrase_file),
    )
    try:
        with CwsClient(
            identity, settings.trusted, base_url=known.url, timeout=timeout, allow_http=True
        ) as client:
            response = client.request("GET", "/ws/")
    except NetworkError as exc:
        out.warn(
            f"could not reach the server to check the next key ({exc.message}); rotating anyway"
        )
        return
    if response.ok:
        out.info(f"the server accepts the next key ({identity.fingerprint})")
        return
    message = f"the server answered {response.status} {response.reason} to the next key ({identity.fingerprint})"
    if force:
        out.warn(message + "; rotating anyway (--force)")
        return
    raise ClientRequestError(
        message,
        hint=f"register it in CorEMR under {settings.username!r} first (cwsctl keys list shows it), or pass --force",
    )

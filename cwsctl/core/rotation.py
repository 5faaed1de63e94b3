"""Key rotation: a next key beside the active one, promoted once the server knows it.

Files under ``$CWSCTL_HOME/keys/`` for profile P: ``P.pem`` (active), ``P.next.pem`` (made by
``keygen --next``, to register in CorEMR), ``P.retired-YYYYmmddTHHMMSSZ.pem`` (earlier active
keys, kept until ``keys remove``, so a rotation can be undone by hand).

OpenEMR cannot learn a next key: a registered client's inline JWKS is fixed for its life, and
OpenEMR verifies assertions with the first RSA key of it whatever their ``kid``. An openemr
profile therefore rotates only together with a new registration
(:func:`rotate_with_new_client`): the next key is registered as a new client first, and only
when OpenEMR accepted that is it made active and the new client id recorded.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from cwsctl.core.errors import InputError, LocalKeyError
from cwsctl.core.profile import Store

if TYPE_CHECKING:
    from cwsctl.core.keys import PassphraseSource
    from cwsctl.targets.openemr.oauth import Registration


class KeyFile(NamedTuple):
    """One of a profile's private key files."""

    role: str  # "active", "next" or "retired"
    label: str  # "active", "next" or the retirement time
    path: Path


def profile_keys(store: Store, profile: str) -> list[KeyFile]:
    """The profile's key files: active, next, then retired ones oldest first."""
    found = []
    if store.private_key_path(profile).exists():
        found.append(KeyFile("active", "active", store.private_key_path(profile)))
    if store.next_key_path(profile).exists():
        found.append(KeyFile("next", "next", store.next_key_path(profile)))
    prefix = f"{profile}.retired-"
    if store.keys_dir.is_dir():
        for path in sorted(store.keys_dir.glob(f"{prefix}*.pem")):
            found.append(KeyFile("retired", path.name[len(prefix) : -len(".pem")], path))
    return found


def promote_next_key(store: Store, profile: str) -> Path:
    """Retire the active key (kept, named by time) and make the next key active; return the retired path."""
    next_path = store.next_key_path(profile)
    active = store.private_key_path(profile)
    if not next_path.exists():
        raise LocalKeyError(
            f"profile {profile!r} has no next key to rotate to",
            hint="make one with: cwsctl keygen --next, then register it in CorEMR",
        )
    label = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    retired = store.retired_key_path(profile, label)
    if active.exists():
        os.replace(active, retired)
    os.replace(next_path, active)
    return retired


def remove_retired_key(store: Store, profile: str, label: str) -> Path:
    """Delete a retired key by its label (see ``profile_keys``); active and next are refused."""
    if label in ("active", "next"):
        raise InputError(
            f"refusing to remove the {label} key", hint="only retired keys can be removed"
        )
    path = store.retired_key_path(profile, label)
    if not path.exists():
        raise LocalKeyError(
            f"no retired key {label!r} for profile {profile!r}", hint="see: cwsctl keys list"
        )
    path.unlink()
    return path


def rotate_with_new_client(
    store: Store,
    profile: str,
    passphrase: PassphraseSource | None,
    *,
    client_name: str = "cwsctl",
    timeout: float = 30.0,
    max_response_size: int | None = None,
) -> tuple[Registration, Path]:
    """Register the next key as a new OpenEMR client, then make it active and record the
    client (old tokens are forgotten); return the registration and the retired key's path.

    Nothing changes when the registration fails: the old key and client keep working.
    """
    from cwsctl.core import keys
    from cwsctl.core.jwks import jwk_set
    from cwsctl.targets.openemr import oauth

    settings = store.get_profile(profile)
    oauth.require_openemr(settings)
    next_path = store.next_key_path(profile)
    if not next_path.exists():
        raise LocalKeyError(
            f"profile {profile!r} has no next key to rotate to",
            hint="make one with: cwsctl keygen --next, then: cwsctl keys rotate --reregister",
        )
    next_key = keys.load_private_key(next_path, passphrase)
    document = oauth.registration_document(
        client_name=client_name,
        scope=oauth.effective_scope(settings),
        redirect_uris=[oauth.LOOPBACK_REDIRECT_URI],
        jwks=jwk_set([next_key.public_key()]),
    )
    registration = oauth.run_flow(
        oauth.registration_flow(settings, document),
        timeout=timeout,
        max_response_size=max_response_size,
    )
    retired = promote_next_key(store, profile)
    oauth.record_registration(store, profile, registration)
    return registration, retired

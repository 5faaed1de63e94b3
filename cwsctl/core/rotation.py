"""Key rotation: a next key beside the active one, promoted once the server knows it.

Files under ``$CWSCTL_HOME/keys/`` for profile P: ``P.pem`` (active), ``P.next.pem`` (made by
``keygen --next``, to register in CorEMR), ``P.retired-YYYYmmddTHHMMSSZ.pem`` (earlier active
keys, kept until ``keys remove``, so a rotation can be undone by hand). An openemr profile
rotates together with a new registration: :mod:`cwsctl.targets.openemr.rotation`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NamedTuple

from cwsctl.core.errors import InputError, LocalKeyError
from cwsctl.core.profile import Store


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

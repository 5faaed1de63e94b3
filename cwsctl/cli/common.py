"""Helpers shared by command modules: the store, the active profile, passphrases, input files."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cwsctl.cli.output import Settings
from cwsctl.core.errors import InputError, LocalKeyError, ProfileError
from cwsctl.core.files import read_bytes
from cwsctl.core.keys import PassphraseSource, read_passphrase_file
from cwsctl.registry import kind_of, target

if TYPE_CHECKING:
    from cwsctl.core.client import ApiClient
    from cwsctl.core.kind import PatientMapping
    from cwsctl.core.profile import Store


def store_and_profile(settings: Settings) -> tuple[Store, str]:
    """The on-disk store and the name of the profile in force."""
    from cwsctl.core.profile import Store

    store = Store()
    return store, store.active_profile_name(settings.profile)


def passphrase_file_from(option: Path | None) -> Path | None:
    """``--passphrase-file``, else ``$CWSCTL_PASSPHRASE_FILE``, else None."""
    if option is not None:
        return option
    env = os.environ.get("CWSCTL_PASSPHRASE_FILE")
    return Path(env) if env else None


def passphrase_source(option: Path | None) -> PassphraseSource:
    """Where to get a passphrase if a key turns out to be encrypted; prompts only on a terminal."""

    def source() -> bytes:
        path = passphrase_file_from(option)
        if path is not None:
            return read_passphrase_file(path)
        if sys.stdin is not None and sys.stdin.isatty():
            return getpass.getpass("Passphrase for private key: ").encode("utf-8")
        raise LocalKeyError(
            "the private key is encrypted and no passphrase is available",
            hint="pass --passphrase-file FILE or set CWSCTL_PASSPHRASE_FILE (stdin is not a terminal)",
        )

    return source


def read_body(path: str) -> bytes:
    """The exact bytes of a body file, or of stdin when ``path`` is ``-``."""
    if path == "-":
        return sys.stdin.buffer.read()
    return read_bytes(Path(path), what="body file", error=InputError)


def open_client(
    settings: Settings,
    *,
    passphrase_file: Path | None = None,
    timeout: float = 30.0,
    max_response_size: int | None = None,
    verify_responses: bool = True,
    allow_http: bool = False,
    max_connections: int = 10,
    allow_other_host: bool = False,
) -> ApiClient:
    """A client for the profile in force, authenticating as its kind does (``max_response_size``
    None: 64 MiB). ``verify_responses`` matters only to kinds whose servers sign answers."""
    from cwsctl.core.audit import AuditLog

    store, name = store_and_profile(settings)
    profile = store.get_profile(name)
    return kind_of(profile).open_client(
        profile,
        store,
        passphrase=passphrase_source(passphrase_file),
        audit=AuditLog(store.root, name),
        verify_responses=verify_responses,
        timeout=timeout,
        max_response_size=max_response_size,
        allow_http=allow_http,
        max_connections=max_connections,
        allow_other_host=allow_other_host,
    )


def patient_mapping(settings: Settings, *, dry_run: bool = False) -> PatientMapping:
    """How the profile in force creates and finds patients. A dry run needs no profile: without
    one, rows are checked (and shown) as CWS bodies."""
    from cwsctl.core.profile import Profile

    store, name = store_and_profile(settings)
    config = store.load()
    profile = config.profiles.get(name)
    if profile is None:
        profile = Profile(name) if dry_run else store.get_profile(name, config)
    return kind_of(profile).patients(profile)


def require_kind(settings: Settings, kind: str, commands: str) -> None:
    """ProfileError (exit 3) unless the profile in force is of ``kind``: ``commands`` exist only
    for that kind's API, and must not send their bodies (and credentials) to another one.
    ``kind`` is a target's name in the registry (KeyError otherwise: a bug in the caller)."""
    kind = target(kind).name
    store, name = store_and_profile(settings)
    profile = store.get_profile(name)
    if profile.kind != kind:
        raise ProfileError(
            f"profile {name!r} is of kind {profile.kind}; {commands} work on {kind} profiles",
            hint=f"pick one with -p NAME, or make one: cwsctl profile init NAME --kind {kind} --url …",
        )


def load_target(settings: Settings) -> str:
    """What a bulk load's journal is tied to: the profile's kind and server URL."""
    store, name = store_and_profile(settings)
    profile = store.get_profile(name)
    return f"{profile.kind} {profile.url}"

"""`cwsctl profile trust` (added to the profile group through the registry): pin the CorEMR
public keys a cws profile's responses must be signed with."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cwsctl.cli.common import store_and_profile
from cwsctl.cli.options import with_globals
from cwsctl.cli.output import Output
from cwsctl.core import keys
from cwsctl.core.errors import InputError, ProfileError
from cwsctl.core.files import read_bytes
from cwsctl.protocols.cws_signature import DEFAULT_SERVER_USERNAME, TrustedKey
from cwsctl.targets.cws.settings import CwsSettings


@with_globals
def trust(
    out: Output,
    public_key_file: Annotated[
        Path,
        typer.Argument(
            metavar="PUBLIC_KEY_FILE", help="CorEMR's public key PEM (from its Public Keys page)."
        ),
    ],
    username: Annotated[
        str, typer.Option("--username", metavar="USER", help="Name CorEMR signs responses as.")
    ] = DEFAULT_SERVER_USERNAME,
    remove: Annotated[bool, typer.Option("--remove", help="Unpin this key instead.")] = False,
) -> None:
    """Pin CorEMR's public key so responses signed with it are trusted (several allowed, for rotation)."""
    store, name = store_and_profile(out.settings)
    config = store.load()
    settings = CwsSettings.of(store.get_profile(name, config))
    key = keys.parse_public_key(
        read_bytes(public_key_file, what="public key file", error=InputError),
        source=str(public_key_file),
    )
    pem = keys.public_key_pem(key).decode("ascii")
    fingerprint = keys.fingerprint(key)
    same = [t for t in settings.trusted if t.username == username and t.fingerprint == fingerprint]
    if remove:
        if not same:
            raise ProfileError(
                f"key {fingerprint} is not pinned for {username!r} in profile {name!r}"
            )
        settings.trusted = [t for t in settings.trusted if t not in same]
        message = f"Unpinned {username} {fingerprint} from profile {name!r}"
    elif same:
        message = f"Already pinned: {username} {fingerprint}"
    else:
        settings.trusted.append(TrustedKey(username, pem))
        message = f"Pinned {username} {fingerprint} for profile {name!r}"
    store.save(config)
    if out.settings.json:
        out.json(
            {
                "profile": name,
                "trusted": [
                    {"username": t.username, "fingerprint": t.fingerprint} for t in settings.trusted
                ],
            }
        )
    out.success(message)

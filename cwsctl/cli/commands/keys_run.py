"""What `cwsctl keys show` does, free of typer so the fast start-up path (cli/fast.py) runs the
same code as the Typer command (cli/commands/keys.py declares the options), and the key document the
other `keys` commands print."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cwsctl.cli.common import passphrase_source, store_and_profile
from cwsctl.cli.output import Output
from cwsctl.core import keys
from cwsctl.core.profile import existing_key_path

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey


def key_document(profile: str, path: Path, key: RSAPrivateKey) -> dict[str, object]:
    """The JSON document of a profile's key (its public half, size and fingerprint)."""
    public = key.public_key()
    return {
        "profile": profile,
        "key_path": str(path),
        "bits": key.key_size,
        "fingerprint": keys.fingerprint(public),
        "public_key": keys.public_key_pem(public).decode("ascii"),
    }


def show_public(
    out: Output, document: dict[str, object], extra: dict[str, object] | None = None
) -> None:
    """The public key PEM on stdout, or the whole document (and ``extra``) with --json."""
    if out.settings.json:
        out.json({**document, **(extra or {})})
    else:
        out.data(str(document["public_key"]))


def show_command(out: Output, passphrase_file: Path | None = None) -> None:
    """`cwsctl keys show`: the profile's public key PEM on stdout, its fingerprint on stderr."""
    store, profile = store_and_profile(out.settings)
    path = existing_key_path(store, profile)
    key = keys.load_private_key(path, passphrase_source(passphrase_file))
    document = key_document(profile, path, key)
    show_public(out, document)
    out.info(f"Fingerprint: {document['fingerprint']}")

"""`cwsctl keygen` and `cwsctl keys …`: the client's own key pair (walkthrough "Security Setup")."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from cwsctl.cli.common import passphrase_file_from, passphrase_source, store_and_profile
from cwsctl.cli.options import with_globals
from cwsctl.cli.output import Output
from cwsctl.core import keys
from cwsctl.core.errors import InputError, LocalKeyError
from cwsctl.core.files import atomic_write, read_bytes
from cwsctl.core.identity import existing_key_path, read_passphrase_file

app = typer.Typer(
    help="Manage the profile's private key and show its public key.", no_args_is_help=True
)

PassphraseFileOption = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        help="File whose first line is the key passphrase [env: CWSCTL_PASSPHRASE_FILE].",
        show_default=False,
    ),
]
ForceOption = Annotated[bool, typer.Option("--force", help="Replace the profile's existing key.")]


def _key_document(profile: str, path: Path, key: RSAPrivateKey) -> dict[str, object]:
    public = key.public_key()
    return {
        "profile": profile,
        "key_path": str(path),
        "bits": key.key_size,
        "fingerprint": keys.fingerprint(public),
        "public_key": keys.public_key_pem(public).decode("ascii"),
    }


def _show_public(
    out: Output, document: dict[str, object], extra: dict[str, object] | None = None
) -> None:
    if out.settings.json:
        out.json({**document, **(extra or {})})
    else:
        out.data(str(document["public_key"]))


@with_globals
def keygen(
    out: Output,
    bits: Annotated[
        int, typer.Option("--bits", help="RSA key size: 2048, 3072 or 4096.")
    ] = keys.DEFAULT_BITS,
    passphrase_file: PassphraseFileOption = None,
    force: ForceOption = False,
    public_out: Annotated[
        Path | None, typer.Option("--public-out", help="Also write the public key PEM to FILE.")
    ] = None,
) -> None:
    """Generate the profile's RSA key pair and print the public key to register in CorEMR.

    The private key is stored as PKCS#8 PEM, mode 0600, encrypted when a passphrase file is given.
    The public key PEM goes to stdout (same bytes as `openssl rsa -pubout`).
    """
    if bits not in keys.ALLOWED_BITS:
        raise InputError(f"--bits must be one of {', '.join(map(str, keys.ALLOWED_BITS))}")
    store, profile = store_and_profile(out.settings)
    path = store.private_key_path(profile)
    if path.exists() and not force:
        raise LocalKeyError(
            f"profile {profile!r} already has a key at {path}",
            hint="pass --force to replace it (the old key is lost), or use another --profile",
        )
    pass_path = passphrase_file_from(passphrase_file)
    passphrase = read_passphrase_file(pass_path) if pass_path else None
    out.info(f"Generating a {bits}-bit RSA key for profile {profile!r}…")
    key = keys.generate_private_key(bits)
    keys.save_private_key(path, key, passphrase, overwrite=force)
    document = _key_document(profile, path, key)
    if public_out is not None:
        atomic_write(public_out, keys.public_key_pem(key.public_key()))
    _show_public(out, document, {"encrypted": passphrase is not None})
    config = store.load()
    username = config.profiles[profile].username if profile in config.profiles else "USERNAME"
    out.success(f"Private key saved to {path} (mode 0600{', encrypted' if passphrase else ''})")
    out.info(f"Fingerprint: {document['fingerprint']}")
    out.info(
        "Next: in CorEMR open Administration → Public Keys, press +, paste the public key above "
        f"into Contents and use the username {username!r}."
    )
    if profile not in config.profiles:
        out.info(f"Then: cwsctl profile init {profile} --url https://… --username USER")


@app.command("import")
@with_globals
def import_key(
    out: Output,
    file: Annotated[
        Path, typer.Argument(help="Existing private key, e.g. the walkthrough's rsa.private.")
    ],
    passphrase_file: PassphraseFileOption = None,
    force: ForceOption = False,
) -> None:
    """Import an existing RSA private key (PKCS#1 or PKCS#8, encrypted or not) into the profile.

    The key is stored re-encoded as PKCS#8 PEM with mode 0600; if it was encrypted, it stays
    encrypted with the same passphrase.
    """
    store, profile = store_and_profile(out.settings)
    path = store.private_key_path(profile)
    if path.exists() and not force:
        raise LocalKeyError(
            f"profile {profile!r} already has a key at {path}",
            hint="pass --force to replace it, or import into another --profile",
        )
    data = read_bytes(file, what="key file", error=LocalKeyError)
    asked: list[bytes] = []
    source = passphrase_source(passphrase_file)

    def remember() -> bytes:
        asked.append(source())
        return asked[-1]

    key = keys.parse_private_key(data, remember, source=str(file), validate=True)
    keys.save_private_key(path, key, asked[-1] if asked else None, overwrite=force)
    document = _key_document(profile, path, key)
    _show_public(out, document)
    out.success(f"Imported {key.key_size}-bit key into profile {profile!r}: {path}")
    out.info(f"Fingerprint: {document['fingerprint']} (compare with CorEMR's Public Keys page)")


@app.command("show")
@with_globals
def show(out: Output, passphrase_file: PassphraseFileOption = None) -> None:
    """Print the profile's public key PEM on stdout and its fingerprint on stderr."""
    store, profile = store_and_profile(out.settings)
    path = existing_key_path(store, profile)
    key = keys.load_private_key(path, passphrase_source(passphrase_file))
    document = _key_document(profile, path, key)
    _show_public(out, document)
    out.info(f"Fingerprint: {document['fingerprint']}")


@app.command("export-public")
@with_globals
def export_public(
    out: Output,
    file: Annotated[
        Path | None, typer.Argument(help="Write the PEM here instead of stdout.")
    ] = None,
    passphrase_file: PassphraseFileOption = None,
) -> None:
    """Export the profile's public key (SubjectPublicKeyInfo PEM) to FILE or stdout."""
    store, profile = store_and_profile(out.settings)
    path = existing_key_path(store, profile)
    key = keys.load_private_key(path, passphrase_source(passphrase_file))
    document = _key_document(profile, path, key)
    if file is None:
        _show_public(out, document)
        return
    atomic_write(file, str(document["public_key"]).encode("ascii"))
    if out.settings.json:
        out.json({**document, "path": str(file)})
    out.success(f"Public key written to {file} ({document['fingerprint']})")

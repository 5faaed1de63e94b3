"""`cwsctl keygen` and `cwsctl keys …`: the client's own key pair (walkthrough "Security Setup").

The targets add their own sub-commands (registry ``extends``) and do `keys rotate` their way
(registry ``keys_rotate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cwsctl.cli.app import add_extensions
from cwsctl.cli.commands.keys_run import key_document, show_command, show_public
from cwsctl.cli.common import passphrase_file_from, passphrase_source, store_and_profile
from cwsctl.cli.options import KEY_BITS, PassphraseFileOption, RotateTimeoutOption, with_globals
from cwsctl.cli.output import Output
from cwsctl.cli.params import OutputFile
from cwsctl.core import keys
from cwsctl.core.errors import LocalKeyError
from cwsctl.core.files import atomic_write, read_bytes
from cwsctl.core.keys import read_passphrase_file
from cwsctl.core.profile import DEFAULT_KIND, existing_key_path
from cwsctl.registry import resolve, target

app = typer.Typer(
    help="Manage the profile's private key and show its public key.", no_args_is_help=True
)

ForceOption = Annotated[bool, typer.Option("--force", help="Replace the profile's existing key.")]


@with_globals
def keygen(
    out: Output,
    bits: Annotated[
        int,
        typer.Option(
            "--bits", metavar="BITS", parser=KEY_BITS, help="RSA key size: 2048, 3072 or 4096."
        ),
    ] = keys.DEFAULT_BITS,
    passphrase_file: PassphraseFileOption = None,
    force: ForceOption = False,
    public_out: Annotated[
        Path | None,
        typer.Option(
            "--public-out",
            metavar="FILE",
            parser=OutputFile("public key file"),
            help="Also write the public key PEM to FILE.",
        ),
    ] = None,
    next_key: Annotated[
        bool,
        typer.Option("--next", help="Make a second key beside the active one, for `keys rotate`."),
    ] = False,
) -> None:
    """Generate the profile's RSA key pair and print the public key to register in CorEMR.

    The private key is stored as PKCS#8 PEM, mode 0600, encrypted when a passphrase file is given.
    The public key PEM goes to stdout (same bytes as `openssl rsa -pubout`).
    """
    store, profile = store_and_profile(out.settings)
    path = store.next_key_path(profile) if next_key else store.private_key_path(profile)
    if path.exists() and not force:
        which = "next key" if next_key else "key"
        raise LocalKeyError(
            f"profile {profile!r} already has a {which} at {path}",
            hint="pass --force to replace it (the old key is lost); to change keys safely use "
            "keygen --next then keys rotate",
        )
    pass_path = passphrase_file_from(passphrase_file)
    passphrase = read_passphrase_file(pass_path) if pass_path else None
    out.info(f"Generating a {bits}-bit RSA key for profile {profile!r}…")
    key = keys.generate_private_key(bits)
    keys.save_private_key(path, key, passphrase, overwrite=force)
    document = key_document(profile, path, key)
    if public_out is not None:
        atomic_write(public_out, keys.public_key_pem(key.public_key()), mode=0o644)
    show_public(out, document, {"encrypted": passphrase is not None})
    config = store.load()
    known = config.profiles.get(profile)
    out.success(f"Private key saved to {path} (mode 0600{', encrypted' if passphrase else ''})")
    out.info(f"Fingerprint: {document['fingerprint']}")
    # Where the server learns the key depends on the kind (a profile yet to be made: the default).
    kind = resolve(target(known.kind if known is not None else DEFAULT_KIND).kind)
    for line in kind.keygen_next(known, profile, next_key):
        out.info(line)


@app.command("import")
@with_globals
def import_key(
    out: Output,
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", help="Existing private key, e.g. the walkthrough's rsa.private."
        ),
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
    document = key_document(profile, path, key)
    show_public(out, document)
    out.success(f"Imported {key.key_size}-bit key into profile {profile!r}: {path}")
    out.info(f"Fingerprint: {document['fingerprint']} (compare with CorEMR's Public Keys page)")


@app.command("show")
@with_globals
def show(out: Output, passphrase_file: PassphraseFileOption = None) -> None:
    """Print the profile's public key PEM on stdout and its fingerprint on stderr."""
    show_command(out, passphrase_file)


@app.command("export-public")
@with_globals
def export_public(
    out: Output,
    file: Annotated[
        Path | None,
        typer.Argument(
            metavar="FILE",
            parser=OutputFile("public key file"),
            help="Write the PEM here instead of stdout.",
        ),
    ] = None,
    passphrase_file: PassphraseFileOption = None,
) -> None:
    """Export the profile's public key (SubjectPublicKeyInfo PEM) to FILE or stdout."""
    store, profile = store_and_profile(out.settings)
    path = existing_key_path(store, profile)
    key = keys.load_private_key(path, passphrase_source(passphrase_file))
    document = key_document(profile, path, key)
    if file is None:
        show_public(out, document)
        return
    atomic_write(file, str(document["public_key"]).encode("ascii"), mode=0o644)
    if out.settings.json:
        out.json({**document, "path": str(file)})
    out.success(f"Public key written to {file} ({document['fingerprint']})")


# Commands the targets add here (`keys jwks`), in their place in the listing.
add_extensions(app, "keys")


@app.command("list")
@with_globals
def list_keys(out: Output) -> None:
    """List the profile's keys: active, next (from keygen --next) and retired ones."""
    from cwsctl.core.rotation import profile_keys

    store, profile = store_and_profile(out.settings)
    documents = [
        {
            "role": k.role,
            "label": k.label,
            "path": str(k.path),
            "fingerprint": keys.fingerprint_if_readable(k.path),
        }
        for k in profile_keys(store, profile)
    ]
    if out.settings.json:
        out.json({"profile": profile, "keys": documents})
        return
    if not documents:
        out.info(f"profile {profile!r} has no keys: cwsctl keygen")
    for doc in documents:
        out.line(f"{doc['label']:<18} {doc['fingerprint'] or '(encrypted)'}  {doc['path']}")


@app.command("rotate")
@with_globals
def rotate(
    out: Output,
    force: Annotated[
        bool, typer.Option("--force", help="Rotate even if the server rejects the next key.")
    ] = False,
    reregister: Annotated[
        bool,
        typer.Option(
            "--reregister",
            help="openemr: register the next key as a new OAuth client first (OpenEMR cannot "
            "change a client's key), then rotate and use the new client.",
        ),
    ] = False,
    passphrase_file: PassphraseFileOption = None,
    timeout: RotateTimeoutOption = 15.0,
) -> None:
    """Make the next key (keygen --next) active once the server knows it; the old key is kept.

    cws: when the profile's server is reachable, a signed GET /ws/ with the next key must
    succeed first (a 401 means it is not registered yet: exit 4). openemr: OpenEMR cannot
    learn a new key for a registered client, so the rotation is refused (exit 3) unless
    --reregister, which registers the next key as a new client, then rotates; the new client
    stays disabled until an administrator enables it, and a user must sign in again. The old
    key is kept as a retired key until `cwsctl keys remove LABEL`.
    """
    store, profile = store_and_profile(out.settings)
    settings = store.load().profiles.get(profile)
    kind = settings.kind if settings is not None else DEFAULT_KIND
    rotation = resolve(target(kind).keys_rotate)
    rotation(
        out,
        store,
        profile,
        reregister=reregister,
        passphrase_file=passphrase_file,
        timeout=timeout,
        force=force,
    )


@app.command("remove")
@with_globals
def remove(
    out: Output,
    label: Annotated[
        str, typer.Argument(metavar="LABEL", help="Label of a retired key (see: cwsctl keys list).")
    ],
) -> None:
    """Delete a retired key for good (the active and next keys cannot be removed here)."""
    from cwsctl.core.rotation import remove_retired_key

    store, profile = store_and_profile(out.settings)
    path = remove_retired_key(store, profile, label)
    if out.settings.json:
        out.json({"profile": profile, "removed": str(path)})
    out.success(f"Removed {path}")

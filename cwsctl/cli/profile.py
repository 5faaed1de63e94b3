"""`cwsctl profile …`: servers, usernames and pinned CorEMR keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cwsctl.cli.common import store_and_profile
from cwsctl.cli.options import with_globals
from cwsctl.cli.output import Output
from cwsctl.cli.params import HttpUrl
from cwsctl.core import keys
from cwsctl.core.errors import InputError, ProfileError
from cwsctl.core.files import read_bytes
from cwsctl.core.profile import (
    DEFAULT_SERVER_USERNAME,
    Profile,
    Store,
    TrustedKey,
    validate_profile_name,
)
from cwsctl.core.signing import Algorithm

app = typer.Typer(
    help="Create, list, select profiles and pin CorEMR's public key.", no_args_is_help=True
)

AlgorithmChoice = Annotated[
    str,
    typer.Option(
        "--algorithm",
        metavar="sha256|sha1",
        help="Signature algorithm: sha256 (recommended) or sha1.",
    ),
]


def _describe(store: Store, profile: Profile, default: str | None) -> dict[str, object]:
    key_path = store.private_key_path(profile.name)
    # An encrypted key is not decrypted here: no fingerprint then, and no prompt.
    fingerprint = keys.fingerprint_if_readable(key_path) if key_path.exists() else None
    return {
        "name": profile.name,
        "default": profile.name == (default or "default"),
        "url": profile.url,
        "username": profile.username,
        "algorithm": profile.algorithm.value,
        "key_path": str(key_path) if key_path.exists() else None,
        "key_fingerprint": fingerprint,
        "trusted": [
            {"username": t.username, "fingerprint": t.fingerprint} for t in profile.trusted
        ],
    }


def _check_url(url: str) -> str:
    if not url.startswith(("https://", "http://")):
        raise InputError(f"--url must start with https:// (got {url!r})")
    return url.rstrip("/")


@app.command("init")
@with_globals
def init(
    out: Output,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Profile name, e.g. prod or test.")],
    url: Annotated[
        str,
        typer.Option(
            "--url",
            metavar="URL",
            parser=HttpUrl(),
            help="CWS base URL, e.g. https://coremr.example.org",
        ),
    ],
    username: Annotated[
        str,
        typer.Option(
            "--username",
            metavar="USER",
            help="Username your public key is registered under in CorEMR.",
        ),
    ],
    algorithm: AlgorithmChoice = "sha256",
    default: Annotated[
        bool, typer.Option("--default", help="Make this the default profile.")
    ] = False,
) -> None:
    """Create or update a profile."""
    validate_profile_name(name)
    store = Store()
    config = store.load()
    existing = config.profiles.get(name)
    profile = Profile(
        name=name,
        url=_check_url(url),
        username=username,
        algorithm=Algorithm.from_name(algorithm),
        trusted=existing.trusted if existing else [],
    )
    config.profiles[name] = profile
    if default or config.default_profile is None:
        config.default_profile = name
    store.save(config)
    if out.settings.json:
        out.json(_describe(store, profile, config.default_profile))
    out.success(f"Profile {name!r} saved in {store.config_path}")
    if not store.private_key_path(name).exists():
        out.info(f"Next: cwsctl -p {name} keygen  (or: cwsctl -p {name} keys import rsa.private)")


@app.command("list")
@with_globals
def list_profiles(out: Output) -> None:
    """List profiles; the default one is marked with '*'."""
    store = Store()
    config = store.load()
    documents = [_describe(store, p, config.default_profile) for p in config.profiles.values()]
    if out.settings.json:
        out.json({"default": config.default_profile, "profiles": documents})
        return
    if not documents:
        out.info("No profiles yet: cwsctl profile init NAME --url URL --username USER")
    for doc in documents:
        mark = "*" if doc["default"] else " "
        out.line(f"{mark} {doc['name']}\t{doc['url']}\t{doc['username']}")


@app.command("show")
@with_globals
def show(
    out: Output,
    name: Annotated[
        str | None,
        typer.Argument(metavar="NAME", help="Profile to show (default: the active one)."),
    ] = None,
) -> None:
    """Show one profile: URL, username, algorithm, key and pinned server keys."""
    store = Store()
    config = store.load()
    profile = store.get_profile(
        name or store.active_profile_name(out.settings.profile, config), config
    )
    doc = _describe(store, profile, config.default_profile)
    if out.settings.json:
        out.json(doc)
        return
    out.line(f"name:        {doc['name']}{' (default)' if doc['default'] else ''}")
    out.line(f"url:         {doc['url']}")
    out.line(f"username:    {doc['username']}")
    out.line(f"algorithm:   {doc['algorithm']}")
    out.line(f"private key: {doc['key_path'] or '(none: run cwsctl keygen)'}")
    if doc["key_fingerprint"]:
        out.line(f"fingerprint: {doc['key_fingerprint']}")
    trusted = profile.trusted
    if not trusted:
        out.line("trusted:     (none: run cwsctl profile trust COREMR_PUBLIC_KEY.pem)")
    for t in trusted:
        out.line(f"trusted:     {t.username} {t.fingerprint}")


@app.command("use")
@with_globals
def use(
    out: Output,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Profile to make the default.")],
) -> None:
    """Make NAME the default profile."""
    store = Store()
    config = store.load()
    store.get_profile(name, config)
    config.default_profile = name
    store.save(config)
    if out.settings.json:
        out.json({"default": name})
    out.success(f"Default profile is now {name!r}")


@app.command("trust")
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
    profile = store.get_profile(name, config)
    key = keys.parse_public_key(
        read_bytes(public_key_file, what="public key file", error=InputError),
        source=str(public_key_file),
    )
    pem = keys.public_key_pem(key).decode("ascii")
    fingerprint = keys.fingerprint(key)
    same = [t for t in profile.trusted if t.username == username and t.fingerprint == fingerprint]
    if remove:
        if not same:
            raise ProfileError(
                f"key {fingerprint} is not pinned for {username!r} in profile {name!r}"
            )
        profile.trusted = [t for t in profile.trusted if t not in same]
        message = f"Unpinned {username} {fingerprint} from profile {name!r}"
    elif same:
        message = f"Already pinned: {username} {fingerprint}"
    else:
        profile.trusted.append(TrustedKey(username, pem))
        message = f"Pinned {username} {fingerprint} for profile {name!r}"
    store.save(config)
    if out.settings.json:
        out.json(
            {
                "profile": name,
                "trusted": [
                    {"username": t.username, "fingerprint": t.fingerprint} for t in profile.trusted
                ],
            }
        )
    out.success(message)

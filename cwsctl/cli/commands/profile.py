"""`cwsctl profile …`: servers, usernames and pinned CorEMR keys.

`profile init` takes every target's options (each declared in ``targets/<t>/cli/options.py`` and
tagged with its target); targets add their own sub-commands (`profile trust`) via the registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cwsctl.cli.app import add_extensions
from cwsctl.cli.options import option_owners, with_globals
from cwsctl.cli.output import Output
from cwsctl.cli.params import Choice, HttpUrl
from cwsctl.core import keys
from cwsctl.core.errors import InputError
from cwsctl.core.profile import (
    DEFAULT_KIND,
    KINDS,
    Profile,
    Store,
    settings_class,
    validate_profile_name,
)
from cwsctl.core.text import printable
from cwsctl.registry import kind_of, resolve, target
from cwsctl.targets.cws.cli.options import AlgorithmOption, UsernameOption
from cwsctl.targets.openehr.cli.options import (
    AuthOption,
    PasswordFileOption,
    StoreSecretOption,
    TokenFileOption,
)
from cwsctl.targets.openemr.cli.options import (
    ClientIdOption,
    DiscoveryTimeoutOption,
    ScopeOption,
    SiteOption,
    check_client_id,
)

app = typer.Typer(
    help="Create, list, select profiles and pin CorEMR's public key.", no_args_is_help=True
)


def _describe(store: Store, profile: Profile, default: str | None) -> dict[str, object]:
    key_path = store.private_key_path(profile.name)
    # An encrypted key is not decrypted here: no fingerprint then, and no prompt.
    fingerprint = keys.fingerprint_if_readable(key_path) if key_path.exists() else None
    settings = profile.to_toml()  # the kind's own settings, as config.toml holds them
    trusted = settings.pop("trusted", None)
    document: dict[str, object] = {
        "name": profile.name,
        "default": profile.name == (default or "default"),
        "kind": profile.kind,
        **settings,
    }
    if kind_of(profile).uses_key():
        document["key_path"] = str(key_path) if key_path.exists() else None
        document["key_fingerprint"] = fingerprint
    if trusted is not None:  # pinned keys are shown by fingerprint, not by PEM
        document["trusted"] = [
            {"username": t["username"], "fingerprint": _fingerprint(t["public_key"])}
            for t in trusted
        ]
    return document


def _fingerprint(public_key_pem: str) -> str:
    """The fingerprint of a pinned key, from its PEM as config.toml holds it."""
    return keys.fingerprint(
        keys.parse_public_key(public_key_pem.encode("ascii"), source="pinned key")
    )


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
            help="The server's base URL, e.g. https://coremr.example.org (cws), https://emr.example.org:9300 (openemr), https://cdr.example.org/ehrbase/rest/openehr/v1 "
            "(openehr).",
        ),
    ],
    username: UsernameOption = None,
    algorithm: AlgorithmOption = "sha256",
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            metavar="|".join(KINDS),
            parser=Choice(KINDS),
            help="Which API the profile talks to: cws (CorEMR, signed bodies), openemr "
            "(OAuth2 with a JWT signed by the profile key) or openehr (openEHR REST).",
        ),
    ] = DEFAULT_KIND,
    site: SiteOption = None,
    client_id: ClientIdOption = None,
    scope: ScopeOption = None,
    auth: AuthOption = None,
    password_file: PasswordFileOption = None,
    token_file: TokenFileOption = None,
    store_secret: StoreSecretOption = False,
    default: Annotated[
        bool, typer.Option("--default", help="Make this the default profile.")
    ] = False,
    timeout: DiscoveryTimeoutOption = 10.0,
) -> None:
    """Create or update a profile.

    An openemr profile reads OpenEMR's discovery documents (URL/oauth2/SITE/.well-known/
    openid-configuration and URL/apis/SITE/fhir/.well-known/smart-configuration) and keeps the
    endpoints they name; requests still go to URL's host, and client assertions name the
    discovered token endpoint. When they cannot be read it says so and uses the documented
    paths (redo later: cwsctl oauth discover).

    Examples: cwsctl profile init prod --url https://coremr.example.org --username my-site;
    cwsctl profile init emr --kind openemr --url https://emr.example.org:9300 --scope
    'openid api:fhir user/Patient.read user/Patient.write'; cwsctl profile init cdr --kind
    openehr --url https://cdr.example.org/ehrbase/rest/openehr/v1 --auth basic --username
    loader --password-file pw.txt --store-secret. Secrets are never taken on the command line.
    """
    given = locals()  # every target's options (tagged with their owner), by parameter name:
    options = {option: given[option] for option in option_owners(init)}
    validate_profile_name(name)
    if client_id is not None:
        check_client_id(client_id)
    store = Store()
    config = store.load()
    existing = config.profiles.get(name)
    for each in KINDS:  # a value no settings could take is refused whatever the kind
        settings_class(each).check_options(options)
    # The kind's settings from its options; what they leave unsaid is kept from the profile
    # this one replaces (as config.toml holds it, whatever its kind).
    settings = settings_class(kind).from_options(options, existing.to_toml() if existing else {})
    profile = Profile(name=name, url=url.rstrip("/"), kind=kind, settings=settings)
    missing = kind_of(profile).incomplete(profile)
    if missing is not None:
        raise InputError(f"a {kind} profile needs more settings", hint=missing)
    discovery: dict[str, object] | None = None
    step = target(profile.kind).profile_init  # e.g. openemr reads OpenEMR's discovery documents
    if step:
        discovery = resolve(step)(out, profile, timeout)
    if store_secret:
        _keep_secret(store, profile, password_file, token_file)
    config.profiles[name] = profile
    if default or config.default_profile is None:
        config.default_profile = name
    store.save(config)
    if out.settings.json:
        document = _describe(store, profile, config.default_profile)
        if discovery is not None:
            document["discovery"] = discovery
        out.json(document)
    out.success(f"Profile {name!r} saved in {store.config_path}")
    if kind_of(profile).uses_key() and not store.private_key_path(name).exists():
        out.info(f"Next: cwsctl -p {name} keygen  (or: cwsctl -p {name} keys import rsa.private)")


def _keep_secret(
    store: Store, profile: Profile, password_file: Path | None, token_file: Path | None
) -> None:
    """Store the password or token the profile's auth needs, read from its file or variable."""
    from cwsctl.core.secrets import SECRET_FOR_AUTH, read_secret_file, resolve_secret
    from cwsctl.core.secrets import store_secret as keep

    owner = option_owners(init)["store_secret"][1]  # the kind whose settings say its auth
    what = SECRET_FOR_AUTH.get(profile.settings.auth) if profile.kind == owner else None
    if what is None:
        raise InputError("--store-secret is for openehr profiles with --auth basic or bearer")
    given = password_file if what == "password" else token_file
    value = (
        read_secret_file(given, what)
        if given is not None
        else resolve_secret(store, profile.name, what)
    )
    keep(store, profile.name, what, value)


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
        who = doc.get("username") or doc.get("client_id") or ""
        shown = (printable(v, limit=None) for v in (doc["name"], doc["kind"], doc["url"], who))
        out.line(mark + " " + "\t".join(shown))


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
    for key, value in doc.items():
        if key not in ("name", "default", "key_path", "key_fingerprint", "trusted"):
            label, value = key + ":", printable(value, limit=None)
            out.line(f"{label:<13}{value}" if len(label) < 13 else f"{label} {value}")
    if "key_path" in doc:
        out.line(f"private key: {doc['key_path'] or '(none: run cwsctl keygen)'}")
    if doc.get("key_fingerprint"):
        out.line(f"fingerprint: {doc['key_fingerprint']}")
    if "trusted" not in doc:
        return
    if not doc["trusted"]:
        out.line("trusted:     (none: run cwsctl profile trust COREMR_PUBLIC_KEY.pem)")
    for t in doc["trusted"]:
        out.line(f"trusted:     {printable(t['username'], limit=None)} {t['fingerprint']}")


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


# Commands the targets add here (`profile trust`), in their place in the listing.
add_extensions(app, "profile")

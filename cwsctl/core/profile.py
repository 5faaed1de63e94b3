"""Profiles on disk: ``$CWSCTL_HOME/config.toml`` plus private keys under ``$CWSCTL_HOME/keys/``.

A profile names one CWS server and the identity used there: base URL, username registered in
CorEMR's Public Keys page, signature algorithm, and the pinned CorEMR public keys that responses
must be signed with (more than one while CorEMR rotates its key).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from cwsctl.core import keys
from cwsctl.core.errors import CwsError, InputError, LocalKeyError, ProfileError
from cwsctl.core.files import atomic_write, ensure_private_dir, exclusive_lock
from cwsctl.protocols.cws_signature import Algorithm
from cwsctl.registry import DEFAULT_KIND as REGISTRY_DEFAULT_KIND
from cwsctl.registry import NAMES

DEFAULT_PROFILE = "default"
DEFAULT_SERVER_USERNAME = "coremr"
# Used with fullmatch: "$" would also match before a trailing newline.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: Name of the lock file that serialises config.toml's read-modify-write (see Store.save).
CONFIG_LOCK = ".config.lock"


def _tomllib() -> Any:
    """The TOML reader, imported only when a config file exists (keeps `sign` start-up fast)."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib


def cwsctl_home() -> Path:
    """Root of config, keys and state: ``$CWSCTL_HOME`` or the platform's user config dir."""
    env = os.environ.get("CWSCTL_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs  # imported here: only needed when no CWSCTL_HOME is set

    return platformdirs.user_config_path("cwsctl")


def validate_profile_name(name: str) -> str:
    """Profile names become file names, so keep them to a safe alphabet.

    An empty name is a usage error (exit 2), never "the default profile": a script whose
    ``-p "$PROFILE"`` lost its variable must not run against whatever the default is.
    """
    if name == "":
        raise InputError(
            "empty profile name",
            hint="name the profile (-p NAME / CWSCTL_PROFILE=NAME), or leave both unset "
            "for the configured default",
        )
    if not _NAME_RE.fullmatch(name):
        raise ProfileError(
            f"invalid profile name {name!r}",
            hint="use letters, digits, '.', '_' and '-' (up to 64 characters)",
        )
    return name


def validate_site_name(site: str, error: type[CwsError] = InputError) -> str:
    """An OpenEMR site becomes a path segment (``/oauth2/<site>/…``): same alphabet as a profile."""
    if not _NAME_RE.fullmatch(site):
        raise error(
            f"invalid OpenEMR site {site!r}",
            hint="use letters, digits, '.', '_' and '-' (up to 64 characters), e.g. 'default'",
        )
    return site


def validate_basic_username(username: str, error: type[CwsError] = InputError) -> str:
    """A basic-auth user name cannot hold ':' (it ends the name in the Authorization header)."""
    if ":" in username:
        raise error(
            f"a basic-auth username cannot contain ':' ({username!r})",
            hint="HTTP basic auth separates the user name from the password with ':'",
        )
    return username


@dataclass
class TrustedKey:
    """A pinned server public key: responses signed by ``username`` must verify with it."""

    username: str
    public_key_pem: str

    @cached_property
    def public_key(self) -> rsa.RSAPublicKey:
        """The key object (parsed from the stored PEM once: responses are verified per request)."""
        return keys.parse_public_key(self.public_key_pem.encode("ascii"), source="pinned key")

    @cached_property
    def fingerprint(self) -> str:
        """Fingerprint of the pinned key."""
        return keys.fingerprint(self.public_key)


#: Profile kinds: which EMR API a profile talks to (see cwsctl.core.kind), one per target.
KINDS = NAMES
#: How an openehr profile authenticates (the secret, if any, never lives in config.toml).
OPENEHR_AUTH = ("none", "basic", "bearer")
DEFAULT_KIND = REGISTRY_DEFAULT_KIND
DEFAULT_OPENEMR_SITE = "default"
#: What an openemr profile keeps from OpenEMR's discovery documents (absent in older profiles).
DISCOVERED_FIELDS = (
    "token_endpoint",
    "authorization_endpoint",
    "registration_endpoint",
    "fhir_base",
    "issuer",
)


@dataclass
class Profile:
    """One server and the identity used with it.

    ``kind`` decides how requests are authenticated: ``cws`` signs bodies as ``username`` and
    verifies responses against ``trusted`` keys; ``openemr`` gets OAuth2 tokens for ``client_id``
    on OpenEMR site ``site`` with a JWT signed by the profile's key; ``openehr`` talks to an
    openEHR REST server with ``auth`` none, basic (as ``username``) or bearer.

    An openemr profile also keeps what OpenEMR's discovery documents said (empty when discovery
    was not reached: the documented paths are used): ``token_endpoint`` (exactly as OpenEMR
    wrote it, the ``aud`` of client assertions), ``authorization_endpoint``,
    ``registration_endpoint``, ``fhir_base`` and ``issuer``. Requests still go to ``url``'s
    host; only the paths come from discovery.
    """

    name: str
    url: str = ""
    username: str = ""
    algorithm: Algorithm = Algorithm.SHA256
    trusted: list[TrustedKey] = field(default_factory=list)
    kind: str = DEFAULT_KIND
    site: str = DEFAULT_OPENEMR_SITE
    client_id: str = ""
    scope: str = ""
    auth: str = "none"
    token_endpoint: str = ""
    authorization_endpoint: str = ""
    registration_endpoint: str = ""
    fhir_base: str = ""
    issuer: str = ""

    def __post_init__(self) -> None:
        # Values that end up in paths or headers are checked however the profile is made.
        if self.kind == "openemr":
            validate_site_name(self.site)
        if self.kind == "openehr" and self.auth == "basic":
            validate_basic_username(self.username)

    def trusted_for(self, username: str) -> list[TrustedKey]:
        """Pinned keys whose signer name matches ``username``."""
        return [t for t in self.trusted if t.username == username]

    def to_toml(self) -> dict[str, Any]:
        """The TOML table for this profile (a cws profile keeps the shape it always had)."""
        if self.kind == "openehr":
            table = {"kind": self.kind, "url": self.url, "auth": self.auth}
            return {**table, "username": self.username} if self.auth == "basic" else table
        if self.kind == "openemr":
            table = {
                "kind": self.kind,
                "url": self.url,
                "site": self.site,
                "client_id": self.client_id,
                "scope": self.scope,
            }
            discovered = {name: getattr(self, name) for name in DISCOVERED_FIELDS}
            return {**table, **{k: v for k, v in discovered.items() if v}}
        return {
            "url": self.url,
            "username": self.username,
            "algorithm": self.algorithm.value,
            "trusted": [
                {"username": t.username, "public_key": t.public_key_pem} for t in self.trusted
            ],
        }

    @classmethod
    def from_toml(cls, name: str, table: dict[str, Any]) -> Profile:
        """Build a profile from its TOML table, rejecting wrong types with a clear error."""
        kind = str(table.get("kind", DEFAULT_KIND))
        if kind not in KINDS:
            raise ProfileError(
                f"profile {name!r} in config.toml has unknown kind {kind!r}",
                hint=f"kinds this cwsctl knows: {', '.join(KINDS)}",
            )
        try:
            return cls(
                name=name,
                kind=kind,
                site=str(table.get("site", DEFAULT_OPENEMR_SITE)),
                client_id=str(table.get("client_id", "")),
                scope=str(table.get("scope", "")),
                auth=str(table.get("auth", "none")),
                token_endpoint=str(table.get("token_endpoint", "")),
                authorization_endpoint=str(table.get("authorization_endpoint", "")),
                registration_endpoint=str(table.get("registration_endpoint", "")),
                fhir_base=str(table.get("fhir_base", "")),
                issuer=str(table.get("issuer", "")),
                url=str(table.get("url", "")),
                username=str(table.get("username", "")),
                algorithm=Algorithm.from_name(str(table.get("algorithm", "sha256"))),
                trusted=[
                    TrustedKey(str(t["username"]), str(t["public_key"]))
                    for t in table.get("trusted", [])
                ],
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ProfileError(f"profile {name!r} in config.toml is malformed ({exc})") from None
        except InputError as exc:  # a stored value a profile cannot hold: the profile's problem
            raise ProfileError(
                f"profile {name!r} in config.toml: {exc.message}", exc.hint
            ) from None


@dataclass
class Config:
    """The whole of ``config.toml``."""

    default_profile: str | None = None
    profiles: dict[str, Profile] = field(default_factory=dict)
    #: What the file held when this config was loaded (None: not loaded from a file): save()
    #: applies only what changed since, on top of what is on disk then.
    loaded: _Snapshot | None = field(default=None, repr=False, compare=False)

    def snapshot(self) -> _Snapshot:
        """The default profile and each profile's TOML table, as they would be written now."""
        return self.default_profile, {n: p.to_toml() for n, p in self.profiles.items()}


_Snapshot = tuple[str | None, dict[str, dict[str, Any]]]


class Store:
    """Everything cwsctl keeps on disk under one root directory."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else cwsctl_home()

    @property
    def config_path(self) -> Path:
        """Where config.toml lives."""
        return self.root / "config.toml"

    @property
    def keys_dir(self) -> Path:
        """Directory of private keys (mode 0700)."""
        return self.root / "keys"

    def private_key_path(self, profile: str) -> Path:
        """Where the active private key of ``profile`` is kept."""
        return self.keys_dir / f"{validate_profile_name(profile)}.pem"

    def next_key_path(self, profile: str) -> Path:
        """Where ``keygen --next`` puts the key waiting to be registered and rotated in."""
        return self.keys_dir / f"{validate_profile_name(profile)}.next.pem"

    def retired_key_path(self, profile: str, label: str) -> Path:
        """Where a key retired by ``keys rotate`` is kept until ``keys remove``."""
        return self.keys_dir / f"{validate_profile_name(profile)}.retired-{label}.pem"

    def load(self) -> Config:
        """Read config.toml; a missing file is an empty config."""
        try:
            raw = self.config_path.read_bytes()
        except FileNotFoundError:
            return Config(loaded=(None, {}))
        except OSError as exc:
            raise ProfileError(f"cannot read {self.config_path}: {exc.strerror}") from None
        tomllib = _tomllib()
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ProfileError(
                f"{self.config_path} is not valid TOML: {exc}",
                hint="fix the file by hand or move it away and run 'cwsctl profile init'",
            ) from None
        profiles_table = data.get("profiles", {})
        if not isinstance(profiles_table, dict):
            raise ProfileError(f"{self.config_path}: 'profiles' must be a table")
        config = Config(
            default_profile=data.get("default_profile"),
            profiles={n: Profile.from_toml(n, t) for n, t in profiles_table.items()},
        )
        config.loaded = config.snapshot()
        return config

    def save(self, config: Config) -> None:
        """Write config.toml atomically (temp file + rename), readable by the owner only.

        The read-modify-write is serialised by an exclusive lock, and only what changed since
        ``config`` was loaded is applied to what the file holds now: two ``profile init`` at once
        both keep their profile. (A config not loaded from this store replaces the file.) When
        both changed the default profile, the one already on disk stays (the first one made).
        """
        import tomli_w  # writing is rare; keep it off the signing path

        ensure_private_dir(self.root)
        with self._config_lock():
            merged = self._merge(config)
            data: dict[str, Any] = {}
            if merged.default_profile:
                data["default_profile"] = merged.default_profile
            data["profiles"] = {n: p.to_toml() for n, p in sorted(merged.profiles.items())}
            atomic_write(
                self.config_path,
                tomli_w.dumps(data).encode("utf-8"),
                what="config",
                error=ProfileError,
            )
        config.profiles = dict(merged.profiles)
        config.default_profile = merged.default_profile
        config.loaded = merged.snapshot()

    def _merge(self, config: Config) -> Config:
        if config.loaded is None:
            return config
        base_default, base = config.loaded
        disk = self.load()
        profiles = dict(disk.profiles)
        for name in set(base) | set(config.profiles):
            mine = config.profiles.get(name)
            if (mine.to_toml() if mine else None) == base.get(name):
                continue  # not changed here: keep what is on disk now
            if mine is None:
                profiles.pop(name, None)
            else:
                profiles[name] = mine
        default = disk.default_profile
        if config.default_profile != base_default and (
            disk.default_profile == base_default or disk.default_profile not in profiles
        ):
            default = config.default_profile
        return Config(default, profiles)

    @contextlib.contextmanager
    def _config_lock(self) -> Iterator[None]:
        """Hold the exclusive lock on ``$CWSCTL_HOME/.config.lock`` (blocking; a dead holder's
        lock is dropped by the kernel)."""
        with exclusive_lock(self.root / CONFIG_LOCK, error=ProfileError):
            yield

    def active_profile_name(self, requested: str | None, config: Config | None = None) -> str:
        """The profile in force: the one requested, else the configured default, else 'default'."""
        if requested is not None:
            return validate_profile_name(requested)
        if os.environ.get("CWSCTL_PROFILE") == "":
            raise InputError(
                "empty profile name (CWSCTL_PROFILE is set but empty)",
                hint="set CWSCTL_PROFILE to a profile's name, or unset it for the configured "
                "default",
            )
        config = config if config is not None else self.load()
        return config.default_profile or DEFAULT_PROFILE

    def get_profile(self, name: str, config: Config | None = None) -> Profile:
        """Return profile ``name`` or raise ProfileError with a hint to create it."""
        config = config if config is not None else self.load()
        try:
            return config.profiles[name]
        except KeyError:
            raise ProfileError(
                f"no profile named {name!r}",
                hint=f"create it: cwsctl profile init {name} --url URL --username USER",
            ) from None


def existing_key_path(store: Store, profile_name: str) -> Path:
    """The profile's private key path, or LocalKeyError telling how to create one."""
    path = store.private_key_path(profile_name)
    if not path.exists():
        raise LocalKeyError(
            f"profile {profile_name!r} has no private key",
            hint="create one with 'cwsctl keygen' or bring yours with 'cwsctl keys import rsa.private'",
        )
    return path


def load_profile_key(
    store: Store, profile_name: str, passphrase: keys.PassphraseSource | None = None
) -> rsa.RSAPrivateKey:
    """The profile's active private key (LocalKeyError telling how to make one if it has none)."""
    return keys.load_private_key(existing_key_path(store, profile_name), passphrase)

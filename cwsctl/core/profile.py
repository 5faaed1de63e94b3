"""Profiles on disk: ``$CWSCTL_HOME/config.toml`` plus private keys under ``$CWSCTL_HOME/keys/``.

A profile names one server, the kind of API it speaks, and what that kind needs to talk to it
(its settings, one class per target: ``cwsctl/targets/<t>/settings.py``).
"""

from __future__ import annotations

import contextlib
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric import rsa

from cwsctl.core import keys
from cwsctl.core.errors import InputError, LocalKeyError, ProfileError
from cwsctl.core.files import atomic_write, ensure_private_dir, exclusive_lock
from cwsctl.registry import DEFAULT_KIND as REGISTRY_DEFAULT_KIND
from cwsctl.registry import NAMES, resolve, target

DEFAULT_PROFILE = "default"
#: Profile names, and other names that become file names or path segments. Used with fullmatch:
#: "$" would also match before a trailing newline.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
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
    if not NAME_RE.fullmatch(name):
        raise ProfileError(
            f"invalid profile name {name!r}",
            hint="use letters, digits, '.', '_' and '-' (up to 64 characters)",
        )
    return name


#: Profile kinds: which EMR API a profile talks to (see cwsctl.core.kind), one per target.
KINDS = NAMES
DEFAULT_KIND = REGISTRY_DEFAULT_KIND

S = TypeVar("S", bound="ProfileSettings")


class ProfileSettings(ABC):
    """What a profile of one kind keeps besides its name, kind and URL (each target's
    ``targets/<t>/settings.py``, named by its ``settings`` entry in ``cwsctl.registry``).

    A subclass is a dataclass whose fields all have defaults: ``cls()`` is a new profile's
    settings. Its values are checked however it is made (:meth:`check`, run on creation).
    """

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse a value that would end up in a path or header (InputError); none by default."""
        return None

    @classmethod
    @abstractmethod
    def from_toml(cls: type[S], table: Mapping[str, Any]) -> S:
        """The settings in a profile's config.toml table (its ``kind`` and ``url`` included).

        A wrong type raises KeyError, TypeError or AttributeError, a value no profile can hold
        InputError: :meth:`Profile.from_toml` turns both into the profile's ProfileError.
        """

    @abstractmethod
    def to_toml(self) -> dict[str, Any]:
        """The settings' part of the profile's TOML table, in order (after ``kind`` and ``url``)."""

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Refuse a `profile init` option value this kind's settings could never take, whatever
        the kind of the profile being made (every kind is asked); nothing by default."""
        return None

    @classmethod
    @abstractmethod
    def from_options(cls: type[S], options: Mapping[str, Any], previous: Mapping[str, Any]) -> S:
        """The settings `profile init` makes: ``options`` are its target options by parameter
        name (None: not given), ``previous`` the TOML table of the profile it replaces (of any
        kind; empty for a new one), which keeps what the options leave unsaid."""

    @classmethod
    def of(cls: type[S], profile: Profile) -> S:
        """``profile``'s settings when it is of this kind; a profile of another kind reads as
        its TOML table does (the keys the kinds share, defaults for the rest)."""
        if isinstance(profile.settings, cls):
            return profile.settings
        return cls.from_toml(profile.to_toml())


def settings_class(kind: str) -> type[ProfileSettings]:
    """The settings class of ``kind``'s profiles (its module is imported only now)."""
    found: type[ProfileSettings] = resolve(target(kind).settings)
    return found


@dataclass(init=False, slots=True)  # slots: a field no profile has is an error
class Profile:
    """One server and the identity used with it.

    ``kind`` decides how requests are authenticated (:mod:`cwsctl.core.kind`); ``settings``
    holds what else the kind needs: a :class:`ProfileSettings` of that kind (the kind's
    defaults when none is given).
    """

    name: str
    url: str
    kind: str
    settings: ProfileSettings

    def __init__(
        self,
        name: str,
        url: str = "",
        kind: str = DEFAULT_KIND,
        settings: ProfileSettings | None = None,
    ) -> None:
        self.name, self.url, self.kind = name, url, kind
        expected = settings_class(kind)
        self.settings = settings if settings is not None else expected()
        if not isinstance(self.settings, expected):
            raise TypeError(
                f"a {kind} profile holds {expected.__name__}, not {type(self.settings).__name__}"
            )

    def to_toml(self) -> dict[str, Any]:
        """The TOML table for this profile (a profile of the default kind names no kind: the
        shape every profile had before kinds existed)."""
        head = (
            {"url": self.url} if self.kind == DEFAULT_KIND else {"kind": self.kind, "url": self.url}
        )
        return {**head, **self.settings.to_toml()}

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
            settings = settings_class(kind).from_toml(table)
            return cls(name=name, url=str(table.get("url", "")), kind=kind, settings=settings)
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

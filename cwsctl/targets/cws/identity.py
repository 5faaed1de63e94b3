"""Who signs: the private key, username and algorithm in force for a command."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from cryptography.hazmat.primitives.asymmetric import rsa

from cwsctl.core import keys
from cwsctl.core.errors import LocalKeyError, ProfileError
from cwsctl.core.files import no_core_dumps, read_bytes
from cwsctl.protocols import cws_signature as signing
from cwsctl.protocols.cws_signature import Algorithm, AuthorizationHeader

if TYPE_CHECKING:
    from cwsctl.core.profile import Store


class SigningIdentity(NamedTuple):
    """A loaded private key with the CWS username and algorithm to sign as."""

    private_key: rsa.RSAPrivateKey
    username: str
    algorithm: Algorithm
    key_path: Path

    @property
    def fingerprint(self) -> str:
        """Fingerprint of our public key: the one CorEMR's Public Keys page should show."""
        return keys.fingerprint(self.private_key.public_key())

    def authorize(self, body: bytes) -> AuthorizationHeader:
        """Sign ``body`` and return the Authorization header for it."""
        signature = signing.sign(self.private_key, body, self.algorithm)
        return AuthorizationHeader(self.algorithm, self.username, signature)


def load_identity(
    requested_profile: str | None,
    *,
    key_path: Path | None = None,
    username: str | None = None,
    algorithm: Algorithm | None = None,
    passphrase: keys.PassphraseSource | None = None,
    store: Store | None = None,
) -> SigningIdentity:
    """Resolve the signing identity: explicit options first, then the profile.

    With both ``key_path`` and ``username`` no profile is read at all (algorithm: the one given,
    else SHA-256), so a walkthrough user can sign with their ``rsa.private`` directly, and
    scripts signing once per request skip loading the config.
    """
    if key_path is not None and username:
        return SigningIdentity(
            keys.load_private_key(key_path, passphrase),
            username,
            algorithm or Algorithm.SHA256,
            key_path,
        )
    if store is None:
        from cwsctl.core.profile import Store

        store = Store()
    config = store.load()
    profile_name = store.active_profile_name(requested_profile, config)
    profile = config.profiles.get(profile_name)
    resolved_username = username or (profile.username if profile else "")
    if not resolved_username:
        raise ProfileError(
            f"no username to sign as (profile {profile_name!r} is not set up)",
            hint="pass --username USER, or run: cwsctl profile init NAME --url URL --username USER",
        )
    path = key_path or existing_key_path(store, profile_name)
    return SigningIdentity(
        private_key=keys.load_private_key(path, passphrase),
        username=resolved_username,
        algorithm=algorithm or (profile.algorithm if profile else Algorithm.SHA256),
        key_path=path,
    )


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


def read_passphrase_file(path: Path) -> bytes:
    """Read a passphrase file: its first line, without the line ending (like ``-passin file:``)."""
    data = read_bytes(path, what="passphrase file", error=LocalKeyError)
    no_core_dumps()  # the passphrase is in memory from now on
    passphrase = data.splitlines()[0] if data.strip(b"\r\n") else b""
    if not passphrase:
        raise LocalKeyError(f"passphrase file {path} is empty")
    return passphrase

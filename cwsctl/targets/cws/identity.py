"""Who signs: the private key, username and algorithm in force for a command."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from cryptography.hazmat.primitives.asymmetric import rsa

from cwsctl.core import keys
from cwsctl.core.errors import ProfileError
from cwsctl.core.profile import existing_key_path
from cwsctl.protocols import cws_signature as signing
from cwsctl.protocols.cws_signature import Algorithm, AuthorizationHeader
from cwsctl.targets.cws.settings import CwsSettings

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
    settings = CwsSettings.of(profile) if profile else None
    resolved_username = username or (settings.username if settings else "")
    if not resolved_username:
        raise ProfileError(
            f"no username to sign as (profile {profile_name!r} is not set up)",
            hint="pass --username USER, or run: cwsctl profile init NAME --url URL --username USER",
        )
    path = key_path or existing_key_path(store, profile_name)
    return SigningIdentity(
        private_key=keys.load_private_key(path, passphrase),
        username=resolved_username,
        algorithm=algorithm or (settings.algorithm if settings else Algorithm.SHA256),
        key_path=path,
    )

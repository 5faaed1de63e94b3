"""`cwsctl keys jwks` (added to the keys group through the registry) and what `keys rotate` does
for an openemr profile: a new key only together with a new client registration."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cwsctl.cli.common import passphrase_source, store_and_profile
from cwsctl.cli.options import PassphraseFileOption, with_globals
from cwsctl.cli.output import Output

if TYPE_CHECKING:
    from pathlib import Path

    from cwsctl.core.profile import Store


@with_globals
def jwks(out: Output, passphrase_file: PassphraseFileOption = None) -> None:
    """Print the profile's public key(s) as a JWK Set, for OpenEMR client registration.

    Each key is an RSA JWK with use "sig", alg "RS384" and kid = the SHA-256 digest of its
    fingerprint in unpadded base64url (`keys show` prints the same digest in base64); the
    client assertions cwsctl signs carry the same kid. The active (signing) key comes first:
    OpenEMR ignores kid and verifies with the first RSA key of the set. While a rotation is
    pending (keygen --next) the next key follows it. The set goes to stdout (--json prints the
    same document).
    """
    from cwsctl.protocols.oauth2.jwks import jwk_set, profile_public_keys

    store, profile = store_and_profile(out.settings)
    key_set = jwk_set(profile_public_keys(store, profile, passphrase_source(passphrase_file)))
    out.json(key_set)
    for entry in key_set["keys"]:
        out.info(f"kid {entry['kid']}")
    if len(key_set["keys"]) > 1:
        out.info(
            "The set holds the active (signing) key first, then the next one (rotation pending)"
        )


def rotate(
    out: Output,
    store: Store,
    profile: str,
    *,
    reregister: bool,
    passphrase_file: Path | None,
    timeout: float,
    force: bool,
) -> None:
    """An openemr profile's key changes only together with a new client registration
    (``timeout`` and ``force`` are for the cws check: no request is checked here)."""
    from cwsctl.core.errors import ProfileError
    from cwsctl.targets.openemr.rotation import rotate_with_new_client
    from cwsctl.targets.openemr.scopes import has_user_scope

    if not reregister:
        raise ProfileError(
            f"refusing to rotate the key of openemr profile {profile!r}: OpenEMR keeps the key "
            "a client registered with, so tokens would fail; register the new key with "
            "cwsctl oauth register (or: cwsctl keys rotate --reregister)",
        )
    out.info("Registering the next key as a new OpenEMR client …")
    registration, retired = rotate_with_new_client(
        store, profile, passphrase_source(passphrase_file)
    )
    if out.settings.json:
        out.json(
            {
                "profile": profile,
                "client_id": registration.client_id,
                "active": str(store.private_key_path(profile)),
                "retired": str(retired),
            }
        )
    else:
        out.line(registration.client_id)
    out.success(
        f"The next key is now active with new client {registration.client_id!r}; the old key is "
        f"kept as {retired}"
    )
    if registration.starts_disabled:
        from cwsctl.targets.openemr.cli.oauth import warn_disabled

        warn_disabled(out, registration)
    if has_user_scope(registration.scope):
        out.info(f"Then sign in again for the new client: cwsctl -p {profile} oauth login")
    out.info("Disable the old client in OpenEMR once nothing uses it")

"""Rotating an openemr profile's key: only together with a new client registration.

OpenEMR cannot learn a next key: a registered client's inline JWKS is fixed for its life, and
OpenEMR verifies assertions with the first RSA key of it whatever their ``kid``. An openemr
profile therefore rotates only together with a new registration
(:func:`rotate_with_new_client`): the next key is registered as a new client first, and only
when OpenEMR accepted that is it made active and the new client id recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cwsctl.core.errors import LocalKeyError
from cwsctl.core.profile import Store
from cwsctl.core.rotation import promote_next_key
from cwsctl.protocols.oauth2.grants import run_flow
from cwsctl.protocols.oauth2.login import LOOPBACK_REDIRECT_URI
from cwsctl.targets.openemr.client_id import require_openemr
from cwsctl.targets.openemr.registration import (
    Registration,
    record_registration,
    registration_document,
    registration_flow,
)
from cwsctl.targets.openemr.scopes import effective_scope

if TYPE_CHECKING:
    from cwsctl.core.keys import PassphraseSource


def rotate_with_new_client(
    store: Store,
    profile: str,
    passphrase: PassphraseSource | None,
    *,
    client_name: str = "cwsctl",
    timeout: float = 30.0,
    max_response_size: int | None = None,
) -> tuple[Registration, Path]:
    """Register the next key as a new OpenEMR client, then make it active and record the
    client (old tokens are forgotten); return the registration and the retired key's path.

    Nothing changes when the registration fails: the old key and client keep working.
    """
    from cwsctl.core import keys
    from cwsctl.protocols.oauth2.jwks import jwk_set

    known = store.get_profile(profile)
    require_openemr(known)
    next_path = store.next_key_path(profile)
    if not next_path.exists():
        raise LocalKeyError(
            f"profile {profile!r} has no next key to rotate to",
            hint="make one with: cwsctl keygen --next, then: cwsctl keys rotate --reregister",
        )
    next_key = keys.load_private_key(next_path, passphrase)
    document = registration_document(
        client_name=client_name,
        scope=effective_scope(known),
        redirect_uris=[LOOPBACK_REDIRECT_URI],
        jwks=jwk_set([next_key.public_key()]),
    )
    registration = run_flow(
        registration_flow(known, document),
        timeout=timeout,
        max_response_size=max_response_size,
    )
    retired = promote_next_key(store, profile)
    record_registration(store, profile, registration)
    return registration, retired

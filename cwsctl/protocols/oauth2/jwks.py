"""The profile's public keys as a JSON Web Key Set (RFC 7517), for private_key_jwt registration.

Each key becomes an RSA JWK (built by PyJWT, nothing hand-rolled) with ``use`` ``sig``, ``alg``
``RS384`` and a ``kid`` derived from the key's cwsctl fingerprint: the same SHA-256 digest of the
DER SubjectPublicKeyInfo that ``cwsctl keys show`` prints as ``SHA256:<base64>``, written in
unpadded base64url (``+/`` become ``-_``). The client assertions cwsctl signs carry the same
``kid`` in their header. OpenEMR ignores it and verifies with the first RSA key of the set, so
the active (signing) key always comes first; during a rotation the next key follows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from cwsctl.core import keys
from cwsctl.core.keys import PassphraseSource
from cwsctl.core.profile import Store

#: The JWS algorithm of client assertions (OpenEMR requires it; SMART Backend Services allows it).
JWS_ALGORITHM = "RS384"


def key_id(public_key: rsa.RSAPublicKey) -> str:
    """The ``kid`` of ``public_key``: its fingerprint's SHA-256 digest in unpadded base64url."""
    digest = keys.fingerprint(public_key).removeprefix("SHA256:")
    return digest.replace("+", "-").replace("/", "_")


def jwk(public_key: rsa.RSAPublicKey) -> dict[str, Any]:
    """One public JWK: ``kty`` RSA, ``n``, ``e``, ``use`` sig, ``alg`` RS384 and ``kid``."""
    from jwt.algorithms import RSAAlgorithm

    document = dict(RSAAlgorithm.to_jwk(public_key, as_dict=True))
    # PyJWT adds key_ops; RFC 7517 §4.3 advises against giving both it and "use".
    document.pop("key_ops", None)
    document.update({"use": "sig", "alg": JWS_ALGORITHM, "kid": key_id(public_key)})
    return document


def jwk_set(public_keys: Sequence[rsa.RSAPublicKey]) -> dict[str, Any]:
    """A JWK Set ``{"keys": [...]}`` holding each key once, in the order given."""
    seen: set[str] = set()
    entries = []
    for public_key in public_keys:
        entry = jwk(public_key)
        if entry["kid"] not in seen:
            seen.add(entry["kid"])
            entries.append(entry)
    return {"keys": entries}


def profile_public_keys(
    store: Store, profile: str, passphrase: PassphraseSource | None = None
) -> list[rsa.RSAPublicKey]:
    """The public halves of the profile's active key and, during a rotation, its next key
    (in that order: the signing key first).

    The active key must exist (LocalKeyError with a hint otherwise); the next key is included
    when ``keygen --next`` made one.
    """
    from cwsctl.core.profile import load_profile_key

    found = [load_profile_key(store, profile, passphrase).public_key()]
    next_path = store.next_key_path(profile)
    if next_path.exists():
        found.append(keys.load_private_key(next_path, passphrase).public_key())
    return found

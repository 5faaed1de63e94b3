"""The RFC 7523 client assertion: a JWT the client signs with its own RSA key (private_key_jwt).

Header ``alg`` RS384, ``typ`` JWT, ``kid`` as in :func:`cwsctl.protocols.oauth2.jwks.key_id`; claims ``iss`` =
``sub`` = client id, ``aud`` = the token endpoint, ``iat`` now, ``exp`` ``ASSERTION_LIFETIME_S``
later (under the 5 minutes OpenEMR allows, leaving a minute for clock skew), a fresh uuid4
``jti``. Signed by PyJWT.
"""

from __future__ import annotations

import time
import uuid

from cryptography.hazmat.primitives.asymmetric import rsa

from cwsctl.protocols.oauth2.jwks import JWS_ALGORITHM, key_id

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Seconds a client assertion is valid (OpenEMR refuses more than 300).
ASSERTION_LIFETIME_S = 240
MAX_ASSERTION_LIFETIME_S = 300


def client_assertion(
    private_key: rsa.RSAPrivateKey,
    client_id: str,
    audience: str,
    *,
    now: float | None = None,
    lifetime: int = ASSERTION_LIFETIME_S,
) -> str:
    """A compact JWS (RS384) proving ``client_id`` holds ``private_key``, for ``audience``.

    ``audience`` is the token endpoint URL. Every call gets a new ``jti``, so an assertion is
    never sent twice.
    """
    import jwt

    if not 0 < lifetime <= MAX_ASSERTION_LIFETIME_S:
        raise ValueError(f"assertion lifetime must be 1..{MAX_ASSERTION_LIFETIME_S} s")
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": issued,
        "exp": issued + lifetime,
        "jti": str(uuid.uuid4()),
    }
    headers = {"kid": key_id(private_key.public_key()), "typ": "JWT"}
    return jwt.encode(claims, private_key, algorithm=JWS_ALGORITHM, headers=headers)

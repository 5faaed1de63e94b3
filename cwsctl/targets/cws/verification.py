"""Deciding whether a signed body is authentic: which keys to try, and why it failed if it did."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import rsa

from cwsctl.core import keys
from cwsctl.core.errors import SignatureError
from cwsctl.core.verdict import VerificationResult
from cwsctl.protocols import cws_signature as signing
from cwsctl.protocols.cws_signature import Algorithm, AuthorizationHeader, TrustedKey


@dataclass(frozen=True)
class Candidate:
    """A public key that may have made a signature, with the name it signs under."""

    public_key: rsa.RSAPublicKey
    username: str | None = None
    fingerprint: str = ""  # computed when not given

    def __post_init__(self) -> None:
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", keys.fingerprint(self.public_key))

    @classmethod
    def pinned(cls, trusted: TrustedKey) -> Candidate:
        """A pinned key, with its parsed key and fingerprint cached on the TrustedKey."""
        return cls(trusted.public_key, trusted.username, trusted.fingerprint)


def verify_with_candidates(
    body: bytes,
    signature: bytes,
    algorithm: Algorithm,
    candidates: list[Candidate],
    signer: str | None = None,
) -> VerificationResult:
    """Try each candidate key; the first that verifies wins."""
    if not candidates:
        return VerificationResult(False, "no key to verify with", signer)
    for candidate in candidates:
        if signing.verify(candidate.public_key, body, signature, algorithm):
            return VerificationResult(
                True,
                f"signature valid ({algorithm.scheme})",
                signer or candidate.username,
                candidate.fingerprint,
            )
    tried = ", ".join(c.fingerprint for c in candidates)
    return VerificationResult(
        False,
        f"{algorithm.scheme} signature does not match the body with key {tried}",
        signer,
        candidates[0].fingerprint if len(candidates) == 1 else None,
    )


def verify_response(
    body: bytes, header_value: str | None, trusted: list[TrustedKey]
) -> VerificationResult:
    """Verify a CWS response: its Authorization header over its raw body, against pinned keys.

    Fails closed: a missing or malformed header, a signer with no pinned key, or a bad signature
    each raise SignatureError.
    """
    if not header_value:
        raise SignatureError(
            "response carries no Authorization signature",
            hint="the answer may not come from CorEMR; it was not trusted",
        )
    header = AuthorizationHeader.parse(header_value)
    pinned = [t for t in trusted if t.username == header.username]
    if not pinned:
        raise SignatureError(
            f"response signed as {header.username!r}, which has no pinned key",
            hint=f"if CorEMR really signs as {header.username!r}, pin its key: "
            f"cwsctl profile trust KEY.pem --username {header.username}",
        )
    result = verify_with_candidates(
        body,
        header.signature,
        header.algorithm,
        [Candidate.pinned(t) for t in pinned],
        signer=header.username,
    )
    if not result.verified:
        raise SignatureError(
            f"response signature is invalid: {result.reason}",
            hint="the body was altered on the way or was not signed by CorEMR; it was not trusted",
        )
    return result

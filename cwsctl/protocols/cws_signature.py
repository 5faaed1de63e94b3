"""Sign and verify bodies the way CWS does, and read and write its Authorization header.

CWS signs the exact body bytes with RSA PKCS#1 v1.5 over SHA-256 (or legacy SHA-1), the same as
``openssl dgst -sha256 -sign``. PKCS#1 v1.5 is deterministic, so our signature equals openssl's
byte for byte. The header is ``CWS-SHA256 Access=USERNAME, Signature=BASE64``. A pinned key
(:class:`TrustedKey`) is a server key answers must be signed with, under the name CorEMR signs as.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from cwsctl.core import keys
from cwsctl.core.errors import InputError, SignatureError


class Algorithm(str, Enum):
    """A CWS signature algorithm; the value is the name used in options and config."""

    SHA256 = "sha256"
    SHA1 = "sha1"

    @property
    def scheme(self) -> str:
        """The Authorization scheme name, e.g. ``CWS-SHA256``."""
        return f"CWS-{self.value.upper()}"

    @property
    def is_legacy(self) -> bool:
        """SHA-1 is accepted by CWS but no longer collision resistant."""
        return self is Algorithm.SHA1

    def hash(self) -> hashes.HashAlgorithm:
        """A fresh cryptography hash object for this algorithm."""
        return hashes.SHA256() if self is Algorithm.SHA256 else hashes.SHA1()  # noqa: S303

    @classmethod
    def from_name(cls, name: str) -> Algorithm:
        """Accept ``sha256``, ``SHA-256``, ``CWS-SHA256`` and the like."""
        key = name.strip().lower().removeprefix("cws-").replace("-", "")
        for algorithm in cls:
            if algorithm.value == key:
                return algorithm
        raise InputError(
            f"unsupported signature algorithm {name!r}",
            hint="CWS accepts CWS-SHA256 (recommended) and CWS-SHA1.",
        )


def sign(private_key: rsa.RSAPrivateKey, body: bytes, algorithm: Algorithm) -> bytes:
    """Return the raw RSA PKCS#1 v1.5 signature of ``body``, as openssl writes it."""
    return private_key.sign(body, padding.PKCS1v15(), algorithm.hash())


def verify(
    public_key: rsa.RSAPublicKey, body: bytes, signature: bytes, algorithm: Algorithm
) -> bool:
    """Return True when ``signature`` is a valid signature of ``body`` by ``public_key``."""
    try:
        public_key.verify(signature, body, padding.PKCS1v15(), algorithm.hash())
    except (InvalidSignature, ValueError):
        return False
    return True


_HEADER_RE = re.compile(
    r"""^\s*(?:authorization\s*:\s*)?      # tolerate a pasted "Authorization:" prefix
        (?P<scheme>[A-Za-z0-9-]+)\s+
        Access\s*=\s*(?P<username>[^,\s]+)\s*,\s*
        Signature\s*=\s*(?P<signature>\S+)\s*$""",
    re.IGNORECASE | re.VERBOSE,
)


class AuthorizationHeader(NamedTuple):
    """A parsed ``Authorization: CWS-… Access=…, Signature=…`` value."""

    algorithm: Algorithm
    username: str
    signature: bytes

    @property
    def signature_b64(self) -> str:
        """The signature as single-line base64 (``openssl enc -A -base64``)."""
        return base64.b64encode(self.signature).decode("ascii")

    def format(self) -> str:
        """The header value exactly as CWS expects it."""
        return f"{self.algorithm.scheme} Access={self.username}, Signature={self.signature_b64}"

    @classmethod
    def parse(cls, value: str) -> AuthorizationHeader:
        """Parse a header value; raise SignatureError with a precise reason if it is malformed."""
        match = _HEADER_RE.match(value)
        if match is None:
            raise SignatureError(
                "malformed Authorization header",
                hint="expected 'CWS-SHA256 Access=USERNAME, Signature=BASE64'",
            )
        scheme = match["scheme"]
        if not scheme.upper().startswith("CWS-"):
            raise SignatureError(f"Authorization scheme {scheme!r} is not a CWS scheme")
        try:
            algorithm = Algorithm.from_name(scheme)
        except InputError as exc:
            raise SignatureError(exc.message, hint=exc.hint) from None
        return cls(algorithm, match["username"], decode_base64_signature(match["signature"]))


def decode_base64_signature(text: str) -> bytes:
    """Decode a base64 signature strictly; raise SignatureError if it is not base64."""
    try:
        signature = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("signature is not valid base64") from None
    if not signature:
        raise SignatureError("signature is empty")
    return signature


_BASE64_RE = re.compile(rb"^[A-Za-z0-9+/]+={0,2}$")


class SignatureInput(NamedTuple):
    """A signature as the user supplied it, with what its form told us."""

    signature: bytes
    form: str  # "header", "base64" or "binary"
    algorithm: Algorithm | None = None
    username: str | None = None


def detect_signature_input(data: bytes) -> SignatureInput:
    """Read a signature given as a header value, bare base64, or raw binary (as openssl writes).

    Raw RSA signatures are random-looking bytes, so one that happens to be printable base64
    of a plausible length is astronomically unlikely; text is therefore tried first.
    """
    text = data.strip()
    if not text:
        raise SignatureError("signature input is empty")
    lowered = text[:32].lower()
    if lowered.startswith((b"cws-", b"authorization")):
        try:
            header = AuthorizationHeader.parse(text.decode("ascii"))
        except UnicodeDecodeError:
            raise SignatureError("malformed Authorization header (not ASCII)") from None
        return SignatureInput(header.signature, "header", header.algorithm, header.username)
    compact = b"".join(text.split())  # `openssl enc -base64` without -A wraps lines
    if _BASE64_RE.match(compact) and len(compact) % 4 == 0:
        return SignatureInput(decode_base64_signature(compact.decode("ascii")), "base64")
    return SignatureInput(bytes(data), "binary")


#: The name CorEMR signs its answers as (the sandbox's too): what a pinned key is pinned for
#: unless told otherwise.
DEFAULT_SERVER_USERNAME = "coremr"


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

"""RSA keys: generate, load (every PEM flavour the walkthrough produces), save safely, fingerprint.

Private keys are written as PKCS#8 PEM, mode 0600, optionally encrypted. Reading accepts PKCS#1
(``BEGIN RSA PRIVATE KEY``, what ``openssl genrsa -traditional`` writes), PKCS#8 (OpenSSL 3's
default), both encrypted or not, and DER. Public keys are SubjectPublicKeyInfo PEM, byte-identical
to ``openssl rsa -pubout -outform PEM``.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InternalError, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from cwsctl.core.errors import LocalKeyError
from cwsctl.core.files import atomic_write, ensure_private_dir, no_core_dumps, read_bytes

MIN_BITS = 2048
ALLOWED_BITS = (2048, 3072, 4096)
DEFAULT_BITS = 4096  # the walkthrough's recommendation

#: Called only when a key turns out to be encrypted; returns the passphrase or raises.
PassphraseSource = Callable[[], bytes]


def generate_private_key(bits: int = DEFAULT_BITS) -> rsa.RSAPrivateKey:
    """Generate a new RSA key (public exponent 65537, like ``openssl genrsa``)."""
    if bits not in ALLOWED_BITS:
        raise LocalKeyError(f"unsupported key size {bits}; choose one of {ALLOWED_BITS}")
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def private_key_pem(key: rsa.RSAPrivateKey, passphrase: bytes | None = None) -> bytes:
    """Serialise a private key as PKCS#8 PEM, encrypted when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def public_key_pem(key: rsa.RSAPublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM, as ``openssl rsa -pubout -outform PEM`` writes it."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(key: rsa.RSAPublicKey) -> str:
    """``SHA256:`` + unpadded base64 of SHA-256 over the DER SubjectPublicKeyInfo (ssh style)."""
    import hashlib

    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = base64.b64encode(hashlib.sha256(der).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def check_private_key_permissions(path: Path) -> None:
    """Refuse a private key file that group or others can read or write."""
    if os.name != "posix":
        return
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return  # reading it will report the real problem
    if mode & 0o077:
        raise LocalKeyError(
            f"private key {path} is accessible by others (mode {mode:04o})",
            hint=f"run: chmod 600 {path}",
        )


def load_private_key(path: Path, passphrase: PassphraseSource | None = None) -> rsa.RSAPrivateKey:
    """Load an RSA private key file after checking its permissions."""
    data = read_bytes(path, what="private key", error=LocalKeyError)
    check_private_key_permissions(path)
    return parse_private_key(data, passphrase, source=str(path))


def fingerprint_if_readable(path: Path) -> str | None:
    """Fingerprint of a private key file, or None when it cannot be read without a passphrase
    (or at all): for listings, which must never prompt."""
    try:
        return fingerprint(load_private_key(path).public_key())
    except LocalKeyError:
        return None


def parse_private_key(
    data: bytes,
    passphrase: PassphraseSource | None = None,
    *,
    source: str = "key",
    validate: bool = False,
) -> rsa.RSAPrivateKey:
    """Parse PEM or DER private key bytes; ask ``passphrase`` only if the key is encrypted."""
    _reject_obvious_non_private(data, source)
    load = (
        serialization.load_pem_private_key
        if b"-----BEGIN" in data
        else serialization.load_der_private_key
    )

    def loader(data: bytes, password: bytes | None) -> PrivateKeyTypes:
        # Full RSA key validation costs ~300 ms for a 4096-bit key on every load. Keys are fully
        # validated once, when they enter cwsctl (keygen/import: validate=True); openssl's own
        # tools do not validate either, and OpenSSL checks each CRT signature it computes.
        return load(data, password=password, unsafe_skip_rsa_key_validation=not validate)

    try:
        key = loader(data, password=None)
    except TypeError:  # encrypted, and we gave no password
        if passphrase is None:
            raise LocalKeyError(f"{source} is encrypted and no passphrase was given") from None
        secret = passphrase()
        no_core_dumps()  # a passphrase is in memory from now on
        try:
            key = loader(data, password=secret)
        except (ValueError, TypeError):
            raise LocalKeyError(
                f"wrong passphrase for {source}", hint="check the passphrase file"
            ) from None
        except (UnsupportedAlgorithm, InternalError):
            raise LocalKeyError(f"{source} holds a key type CWS cannot use (not RSA)") from None
    except (ValueError, UnsupportedAlgorithm, InternalError):
        raise LocalKeyError(
            f"{source} is not a readable private key (expected PEM or DER RSA key)"
        ) from None
    return _require_rsa_private(key, source)


def load_public_key(path: Path, passphrase: PassphraseSource | None = None) -> rsa.RSAPublicKey:
    """Load a public key file; a private key file is accepted too and its public half used."""
    data = read_bytes(path, what="key", error=LocalKeyError)
    if b"PRIVATE KEY" in data:
        check_private_key_permissions(path)
        return parse_private_key(data, passphrase, source=str(path)).public_key()
    return parse_public_key(data, source=str(path))


def parse_public_key(data: bytes, *, source: str = "key") -> rsa.RSAPublicKey:
    """Parse SubjectPublicKeyInfo or PKCS#1 (``RSA PUBLIC KEY``) PEM, or DER."""
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm, InternalError):
        raise LocalKeyError(f"{source} is not a readable public key (expected PEM)") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise LocalKeyError(f"{source} is a {_kind(key)} key; CWS uses RSA keys")
    _require_size(key.key_size, source)
    return key


def save_private_key(
    path: Path, key: rsa.RSAPrivateKey, passphrase: bytes | None, *, overwrite: bool
) -> None:
    """Store a private key as PKCS#8 PEM, mode 0600, in a 0700 directory, atomically."""
    ensure_private_dir(path.parent)
    if path.exists() and not overwrite:
        raise LocalKeyError(f"a key already exists at {path}", hint="pass --force to replace it")
    atomic_write(
        path,
        private_key_pem(key, passphrase),
        overwrite=overwrite,
        what="private key",
        error=LocalKeyError,
    )


def _reject_obvious_non_private(data: bytes, source: str) -> None:
    if not data.strip():
        raise LocalKeyError(f"{source} is empty")
    if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        raise LocalKeyError(
            f"{source} is a public key; a private key is needed here",
            hint="use the rsa.private file, not rsa.public",
        )


def _require_rsa_private(key: object, source: str) -> rsa.RSAPrivateKey:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise LocalKeyError(f"{source} is a {_kind(key)} key; CWS uses RSA keys")
    _require_size(key.key_size, source)
    return key


def _require_size(bits: int, source: str) -> None:
    if bits < MIN_BITS:
        raise LocalKeyError(
            f"{source} is a {bits}-bit RSA key; at least {MIN_BITS} bits are required",
            hint="make a new key with: cwsctl keygen",
        )


def _kind(key: object) -> str:
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519

    kinds: list[tuple[tuple[type, ...], str]] = [
        ((ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey), "EC"),
        ((ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey), "Ed25519"),
        ((ed448.Ed448PrivateKey, ed448.Ed448PublicKey), "Ed448"),
        ((dsa.DSAPrivateKey, dsa.DSAPublicKey), "DSA"),
    ]
    return next((name for types, name in kinds if isinstance(key, types)), "non-RSA")


def read_passphrase_file(path: Path) -> bytes:
    """Read a passphrase file: its first line, without the line ending (like ``-passin file:``)."""
    data = read_bytes(path, what="passphrase file", error=LocalKeyError)
    no_core_dumps()  # the passphrase is in memory from now on
    passphrase = data.splitlines()[0] if data.strip(b"\r\n") else b""
    if not passphrase:
        raise LocalKeyError(f"passphrase file {path} is empty")
    return passphrase

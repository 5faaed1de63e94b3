"""Keys made by the real `openssl` binary, the way walkthrough users make them."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

PASSPHRASE = "correct horse battery staple"


@dataclass(frozen=True)
class OpenSSLKey:
    label: str
    private: Path
    public: Path
    passphrase: str | None = None

    @property
    def passin(self) -> list[str]:
        return ["-passin", f"pass:{self.passphrase}"] if self.passphrase else []


def make_openssl_key(
    directory: Path, label: str, bits: int, *extra: str, passphrase: str | None = None
) -> OpenSSLKey:
    """`openssl genrsa` (PKCS#8 by default in OpenSSL 3; `-traditional` for PKCS#1) + `rsa -pubout`."""
    private = directory / f"{label}.private"
    public = directory / f"{label}.public"
    cmd = ["openssl", "genrsa", *extra, "-out", str(private)]
    if passphrase:
        cmd += ["-aes256", "-passout", f"pass:{passphrase}"]
    subprocess.run([*cmd, str(bits)], check=True, capture_output=True)
    private.chmod(0o600)
    passin = ["-passin", f"pass:{passphrase}"] if passphrase else []
    subprocess.run(
        [
            "openssl",
            "rsa",
            "-in",
            str(private),
            *passin,
            "-out",
            str(public),
            "-pubout",
            "-outform",
            "PEM",
        ],
        check=True,
        capture_output=True,
    )
    return OpenSSLKey(label, private, public, passphrase)


def openssl_sign(key: OpenSSLKey, body: Path, algorithm: str = "sha256") -> bytes:
    """`openssl dgst -sha256 -sign rsa.private body.txt`: the raw signature bytes."""
    return subprocess.run(
        ["openssl", "dgst", f"-{algorithm}", "-sign", str(key.private), *key.passin, str(body)],
        check=True,
        capture_output=True,
    ).stdout


def openssl_verify(
    public: Path, body: Path, signature: Path, algorithm: str = "sha256"
) -> subprocess.CompletedProcess[bytes]:
    """`openssl dgst -sha256 -verify rsa.public -signature sig body.txt`."""
    return subprocess.run(
        [
            "openssl",
            "dgst",
            f"-{algorithm}",
            "-verify",
            str(public),
            "-signature",
            str(signature),
            str(body),
        ],
        capture_output=True,
    )

"""What `cwsctl sign` does, free of typer so the fast start-up path (cli/fast.py) can share it."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from cwsctl.cli.common import passphrase_source, read_body
from cwsctl.cli.output import Output
from cwsctl.core.files import atomic_write
from cwsctl.core.identity import load_identity
from cwsctl.core.signing import Algorithm, body_sha256


class SignRequest(NamedTuple):
    """The options of `cwsctl sign`."""

    file: str
    key: Path | None = None
    passphrase_file: Path | None = None
    username: str | None = None
    algorithm: str | None = None
    signature_only: bool = False
    raw_out: Path | None = None
    explain: bool = False


def sign_file(out: Output, options: SignRequest) -> None:
    """Sign a body file and print the Authorization header (or what the options ask for)."""
    body = read_body(options.file)
    identity = load_identity(
        out.settings.profile,
        key_path=options.key,
        username=options.username,
        algorithm=Algorithm.from_name(options.algorithm) if options.algorithm else None,
        passphrase=passphrase_source(options.passphrase_file),
    )
    header = identity.authorize(body)
    if identity.algorithm.is_legacy:
        out.warn("CWS-SHA1 is legacy (SHA-1 is broken for collisions); prefer --algorithm sha256")
    if options.explain:
        from cwsctl.core.body_checks import inspect_body, openssl_sign_commands

        report = inspect_body(body)
        out.info(f"body: {report.size} bytes, sha256 {report.sha256}")
        for warning in report.warnings:
            out.warn(warning)
        out.info(f"key: {identity.key_path} ({identity.fingerprint})")
        out.info("openssl equivalent:")
        for command in openssl_sign_commands(
            options.file, str(identity.key_path), identity.algorithm
        ):
            out.info(f"  {command}")
    if options.raw_out is not None:
        atomic_write(options.raw_out, header.signature)
    if out.settings.json:
        out.json(
            {
                "header": header.format(),
                "signature": header.signature_b64,
                "algorithm": identity.algorithm.scheme,
                "username": identity.username,
                "body_sha256": body_sha256(body),
                "key_fingerprint": identity.fingerprint,
            }
        )
    elif options.signature_only:
        out.line(header.signature_b64)
    else:
        out.line(header.format())

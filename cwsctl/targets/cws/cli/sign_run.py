"""What `cwsctl sign` and `cwsctl verify` do, free of typer so the fast start-up path
(cli/fast.py) runs the same code as the Typer commands (targets/cws/cli/signature.py declares the options)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from cwsctl.cli.common import passphrase_source, read_body, store_and_profile
from cwsctl.cli.output import Output
from cwsctl.core import keys
from cwsctl.core.audit import body_sha256
from cwsctl.core.errors import InputError, LocalKeyError, SignatureError
from cwsctl.core.files import atomic_write, read_bytes
from cwsctl.core.verdict import VerificationResult
from cwsctl.protocols.cws_signature import (
    Algorithm,
    SignatureInput,
    decode_base64_signature,
    detect_signature_input,
)
from cwsctl.targets.cws.identity import load_identity
from cwsctl.targets.cws.settings import CwsSettings
from cwsctl.targets.cws.verification import Candidate, verify_with_candidates


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


def sign_command(out: Output, **options: Any) -> None:
    """`cwsctl sign` with its parameters named as in the Typer command."""
    sign_file(out, SignRequest(**options))


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
        from cwsctl.targets.cws.body_checks import inspect_body, openssl_sign_commands

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


def verify_command(
    out: Output,
    file: Path,
    key: Path | None = None,
    signature: str | None = None,
    signature_file: Path | None = None,
    header: str | None = None,
    algorithm: str | None = None,
) -> None:
    """`cwsctl verify`: check a body's signature; exit 7 (SignatureError) when it fails."""
    given = [s for s in (signature, signature_file, header) if s is not None]
    if len(given) > 1:
        raise InputError("give only one of --signature, --signature-file and --header")
    body = read_bytes(file, what="body file")
    sig_input = _signature_input(file, signature, signature_file, header)
    chosen = _algorithm(sig_input.algorithm, algorithm)
    candidates = _candidates(out, key, sig_input.username)
    result = verify_with_candidates(
        body, sig_input.signature, chosen, candidates, sig_input.username
    )
    _report(out, result)


def _signature_input(
    file: Path, signature: str | None, signature_file: Path | None, header: str | None
) -> SignatureInput:
    if header is not None:
        return detect_signature_input(header.encode("utf-8"))
    if signature is not None:
        if signature.strip().lower().startswith("cws-"):  # a whole header pasted: accept it
            return detect_signature_input(signature.encode("utf-8"))
        return SignatureInput(decode_base64_signature(signature), "base64")
    path = signature_file or file.with_name(file.name + ".sig")
    if signature_file is None and not path.exists():
        raise InputError(
            f"no signature given and {path} does not exist",
            hint="pass --signature B64, --signature-file F or --header VALUE",
        )
    return detect_signature_input(read_bytes(path, what="signature file"))


def _algorithm(from_header: Algorithm | None, option: str | None) -> Algorithm:
    chosen = Algorithm.from_name(option) if option else None
    if from_header and chosen and from_header is not chosen:
        raise InputError(f"--algorithm {option} contradicts the header's {from_header.scheme}")
    return from_header or chosen or Algorithm.SHA256


def _candidates(out: Output, key: Path | None, signer: str | None) -> list[Candidate]:
    if key is not None:
        return [Candidate(keys.load_public_key(key, passphrase_source(None)))]
    store, name = store_and_profile(out.settings)
    settings = CwsSettings.of(store.get_profile(name))
    pinned = settings.trusted_for(signer) if signer else settings.trusted
    if not pinned:
        who = f"signer {signer!r}" if signer else "any signer"
        raise LocalKeyError(
            f"profile {name!r} has no pinned key for {who}",
            hint="pass --key PUBLIC_KEY, or pin CorEMR's key: cwsctl profile trust KEY.pem",
        )
    return [Candidate.pinned(t) for t in pinned]


def _report(out: Output, result: VerificationResult) -> None:
    if out.settings.json:
        out.json(result.to_json())
    elif result.verified:
        out.line("Verified OK")
    if result.verified:
        who = f"{result.signer} " if result.signer else ""
        out.info(f"signed by {who}({result.key_fingerprint})")
        return
    raise SignatureError(f"Verification failure: {result.reason}")

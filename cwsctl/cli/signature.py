"""`cwsctl sign` and `cwsctl verify`: the walkthrough's openssl steps, one command each."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cwsctl.cli.common import passphrase_source, store_and_profile
from cwsctl.cli.options import PassphraseFileOption, with_globals
from cwsctl.cli.output import Output
from cwsctl.cli.sign_run import SignRequest, sign_file
from cwsctl.core import keys
from cwsctl.core.errors import InputError, LocalKeyError, SignatureError
from cwsctl.core.files import read_bytes
from cwsctl.core.signing import (
    Algorithm,
    SignatureInput,
    decode_base64_signature,
    detect_signature_input,
)
from cwsctl.core.verification import Candidate, VerificationResult, verify_with_candidates

AlgorithmOption = Annotated[
    str | None,
    typer.Option(
        "--algorithm",
        metavar="sha256|sha1",
        help="sha256 (default) or sha1 (legacy).",
        show_default=False,
    ),
]


@with_globals
def sign(
    out: Output,
    file: Annotated[
        str,
        typer.Argument(
            metavar="FILE|-", help="Body file to sign, exactly as it will be sent; '-' reads stdin."
        ),
    ],
    key: Annotated[
        Path | None,
        typer.Option(
            "--key", metavar="FILE", help="Private key file (default: the profile's key)."
        ),
    ] = None,
    passphrase_file: PassphraseFileOption = None,
    username: Annotated[
        str | None,
        typer.Option(
            "--username", metavar="USER", help="Access= username (default: the profile's)."
        ),
    ] = None,
    algorithm: AlgorithmOption = None,
    signature_only: Annotated[
        bool, typer.Option("--signature-only", help="Print only the base64 signature.")
    ] = False,
    raw_out: Annotated[
        Path | None,
        typer.Option(
            "--raw-out",
            metavar="FILE",
            help="Write the binary signature here (as openssl dgst -sign does).",
        ),
    ] = None,
    explain: Annotated[
        bool,
        typer.Option("--explain", help="Describe the body and the openssl equivalent on stderr."),
    ] = False,
) -> None:
    """Sign a body and print its Authorization header value.

    Prints one line: CWS-SHA256 Access=USER, Signature=BASE64. Works from the profile, or with
    --key and --username and no profile at all.
    """
    sign_file(
        out,
        SignRequest(
            file, key, passphrase_file, username, algorithm, signature_only, raw_out, explain
        ),
    )


@with_globals
def verify(
    out: Output,
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="The body exactly as received (raw bytes).")
    ],
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            metavar="FILE",
            help="Public (or private) key file (default: the profile's pinned keys).",
        ),
    ] = None,
    signature: Annotated[
        str | None, typer.Option("--signature", metavar="BASE64", help="The base64 signature.")
    ] = None,
    signature_file: Annotated[
        Path | None,
        typer.Option(
            "--signature-file",
            metavar="FILE",
            help="Signature file: header value, base64 or binary.",
        ),
    ] = None,
    header: Annotated[
        str | None,
        typer.Option("--header", metavar="VALUE", help="The Authorization header value."),
    ] = None,
    algorithm: AlgorithmOption = None,
) -> None:
    """Verify a signed body; by default the signature is read from FILE.sig.

    Prints 'Verified OK' on success (exit 0); otherwise 'Verification failure' and the reason
    on stderr (exit 7).
    """
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
    profile = store.get_profile(name)
    pinned = profile.trusted_for(signer) if signer else profile.trusted
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

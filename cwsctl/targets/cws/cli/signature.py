"""`cwsctl sign` and `cwsctl verify`: the walkthrough's openssl steps, one command each.

The options are declared here; what the commands do is in targets/cws/cli/sign_run.py, free of typer, so
that the fast start-up path (cli/fast.py) runs the same code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cwsctl.cli.options import PassphraseFileOption, with_globals
from cwsctl.cli.output import Output
from cwsctl.cli.params import OutputFile
from cwsctl.targets.cws.cli.sign_run import SignRequest, sign_file, verify_command

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
            parser=OutputFile("signature file"),
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
    verify_command(out, file, key, signature, signature_file, header, algorithm)

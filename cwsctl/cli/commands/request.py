"""`cwsctl request`: send one signed request and verify the signed answer (walkthrough steps 5-11).

The options are declared here; what the command does is in cli/commands/request_run.py, free of typer,
so that the fast start-up path (cli/fast.py) runs the same code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cwsctl.cli.commands.request_run import request_command
from cwsctl.cli.options import (
    AllowHttpOption,
    MaxResponseSizeOption,
    PassphraseFileOption,
    TimeoutOption,
    with_globals,
)
from cwsctl.cli.output import Output
from cwsctl.cli.params import Choice, OutputFile, PathOrUrl


@with_globals
def request(
    out: Output,
    method: Annotated[
        str, typer.Argument(metavar="METHOD", help="HTTP method: GET, POST, PUT, PATCH, DELETE.")
    ],
    path: Annotated[
        str,
        typer.Argument(
            metavar="PATH_OR_URL",
            parser=PathOrUrl(),
            help="Path joined to the profile URL, or a full http(s) URL.",
        ),
    ],
    body_file: Annotated[
        str | None,
        typer.Argument(metavar="BODY_FILE", help="Body file sent byte for byte; '-' reads stdin."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            parser=OutputFile("output file"),
            help="Save the exact response body here and its signature in FILE.sig.",
        ),
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option(
            "--header",
            "-H",
            metavar="'NAME: VALUE'",
            help="Extra header 'Name: value' (repeatable).",
        ),
    ] = None,
    if_match: Annotated[
        str | None,
        typer.Option(
            "--if-match",
            metavar="VERSION_UID",
            help='Send If-Match: "VERSION_UID" (openEHR optimistic locking; a stale one is 412). '
            'A server that refuses the quotes (EHRbase 2.0-2.31: 400 "UUID string too large", '
            "nothing written) gets it once more without them.",
            show_default=False,
        ),
    ] = None,
    prefer: Annotated[
        str | None,
        typer.Option(
            "--prefer",
            metavar="representation|minimal",
            parser=Choice(("representation", "minimal")),
            help="Send Prefer: return=representation|minimal (what an openEHR write answers with).",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the exact signed request; send nothing.")
    ] = False,
    curl: Annotated[
        bool, typer.Option("--curl", help="Print an equivalent curl command line; send nothing.")
    ] = False,
    timeout: TimeoutOption = 30.0,
    max_response_size: MaxResponseSizeOption = None,
    insecure_skip_verify: Annotated[
        bool,
        typer.Option(
            "--insecure-skip-verify", help="Do not verify the response signature (dangerous)."
        ),
    ] = False,
    allow_http: AllowHttpOption = False,
    allow_other_host: Annotated[
        bool,
        typer.Option(
            "--allow-other-host",
            help="Let a full URL on another server than the profile's (scheme, host, port) get "
            "this profile's credentials: the CWS signature, the bearer token or the password. "
            "Refused without it (exit 2); -v, --dry-run and --curl never show them for another "
            "host.",
        ),
    ] = False,
    show_body: Annotated[
        bool, typer.Option("--show-body", help="With -v, show body values instead of masking them.")
    ] = False,
    passphrase_file: PassphraseFileOption = None,
) -> None:
    """Send a request as the profile's kind does, and check the answer.

    cws: the body is signed and CorEMR's signed response verified (exit 7 when its signature is
    missing or invalid). openemr: an OAuth2 bearer token is got, cached and renewed for you;
    FHIR paths get Accept: application/fhir+json; OpenEMR does not sign its answers, so only TLS
    protects them. Examples: cwsctl request POST /ws/patients/ body.json;
    cwsctl -p emr request GET '/apis/default/fhir/Patient?name=Smith'. Exit 0 on a 2xx, 4 on
    4xx, 5 on 5xx, 6 on network failure, an answer past --timeout or --max-response-size.
    """
    request_command(
        out,
        method,
        path,
        body_file,
        output,
        header,
        if_match,
        prefer,
        dry_run,
        curl,
        timeout,
        max_response_size,
        insecure_skip_verify,
        allow_http,
        show_body,
        passphrase_file,
        allow_other_host,
    )

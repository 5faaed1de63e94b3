"""The cws options of `profile init` (tagged with their owner: cli/options.py ``Owner``)."""

from __future__ import annotations

from typing import Annotated

import typer

from cwsctl.cli.options import Owner

TARGET = "cws"

UsernameOption = Annotated[
    str | None,
    typer.Option(
        "--username",
        metavar="USER",
        help="cws: the username your public key is registered under in CorEMR.",
        show_default=False,
    ),
    Owner(TARGET),
]
AlgorithmOption = Annotated[
    str,
    typer.Option(
        "--algorithm",
        metavar="sha256|sha1",
        help="Signature algorithm: sha256 (recommended) or sha1.",
    ),
    Owner(TARGET),
]

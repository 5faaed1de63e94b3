"""The openemr options of `profile init` (tagged with their owner: cli/options.py ``Owner``),
and the check of a given client id."""

from __future__ import annotations

from typing import Annotated

import typer

from cwsctl.cli.options import Owner, timeout_option
from cwsctl.core.errors import InputError

TARGET = "openemr"

SiteOption = Annotated[
    str | None,
    typer.Option(
        "--site",
        metavar="SITE",
        help="openemr: the OpenEMR site (multisite), default 'default'.",
        show_default=False,
    ),
    Owner(TARGET),
]
ClientIdOption = Annotated[
    str | None,
    typer.Option(
        "--client-id",
        metavar="ID",
        help="openemr: a client registered in OpenEMR's admin pages (else: cwsctl oauth register).",
        show_default=False,
    ),
    Owner(TARGET),
]
ScopeOption = Annotated[
    str | None,
    typer.Option(
        "--scope",
        metavar="SCOPES",
        help="openemr: space-separated OAuth2 scopes to ask for.",
        show_default=False,
    ),
    Owner(TARGET),
]

DiscoveryTimeoutOption = Annotated[
    float,
    timeout_option(
        "openemr: seconds for each discovery document: connecting, sending and reading the "
        "answer to its last byte; past it, OpenEMR's documented paths are used, with a warning."
    ),
    Owner(TARGET),
]


def check_client_id(client_id: str) -> None:
    """InputError (exit 2) unless ``client_id`` is usable as an OAuth client id."""
    from cwsctl.targets.openemr.client_id import client_id_problem

    problem = client_id_problem(client_id)
    if problem is not None:
        raise InputError(f"--client-id is not a usable OAuth client id: {problem}")

"""The openehr options of `profile init` (tagged with their owner: cli/options.py ``Owner``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cwsctl.cli.options import Owner
from cwsctl.cli.params import Choice
from cwsctl.targets.openehr.settings import OPENEHR_AUTH

TARGET = "openehr"

AuthOption = Annotated[
    str | None,
    typer.Option(
        "--auth",
        metavar="|".join(OPENEHR_AUTH),
        parser=Choice(OPENEHR_AUTH),
        help="openehr: none, basic (as --username) or bearer [default: none].",
        show_default=False,
    ),
    Owner(TARGET),
]
PasswordFileOption = Annotated[
    Path | None,
    typer.Option(
        "--password-file",
        metavar="FILE",
        help="openehr basic auth: file whose first line is the password (kept only with "
        "--store-secret; else set CWSCTL_PASSWORD or CWSCTL_PASSWORD_FILE when running).",
        show_default=False,
    ),
    Owner(TARGET),
]
TokenFileOption = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        metavar="FILE",
        help="openehr bearer auth: file whose first line is the token (kept only with "
        "--store-secret; else set CWSCTL_TOKEN or CWSCTL_TOKEN_FILE when running).",
        show_default=False,
    ),
    Owner(TARGET),
]
StoreSecretOption = Annotated[
    bool,
    typer.Option(
        "--store-secret",
        help="openehr: keep the password/token in $CWSCTL_HOME/secrets/NAME.json (mode 0600).",
    ),
    Owner(TARGET),
]

"""The root Typer app: global options, and every command group assembled in one place."""

from __future__ import annotations

from typing import Annotated

import typer

from cwsctl import __version__
from cwsctl.cli import (
    audit,
    composition,
    demo,
    doctor,
    ehr,
    keys,
    oauth,
    patients,
    profile,
    query,
    request,
    sandbox,
    signature,
)
from cwsctl.cli.options import (
    DebugOption,
    JsonOption,
    ProfileOption,
    QuietOption,
    VerboseOption,
    merge_globals,
)

app = typer.Typer(
    name="cwsctl",
    help="Sign, send and verify CorEMR Web Services (CWS) requests.\n\n"
    "Exit codes: 0 ok, 1 bug, 2 usage/input, 3 key/profile, 4 HTTP 4xx, 5 HTTP 5xx, "
    "6 network, 7 signature, 130 interrupted.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cwsctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    profile_name: ProfileOption = None,
    json_output: JsonOption = None,
    quiet: QuietOption = None,
    verbose: VerboseOption = None,
    debug: DebugOption = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Global options may also be given after the command name."""
    merge_globals(
        ctx,
        {
            "profile": profile_name,
            "json_output": json_output,
            "quiet": quiet,
            "verbose": verbose,
            "debug": debug,
        },
    )


app.command("keygen")(keys.keygen)
app.add_typer(keys.app, name="keys")
app.add_typer(profile.app, name="profile")
app.add_typer(oauth.app, name="oauth")
app.command("sign")(signature.sign)
app.command("verify")(signature.verify)
app.command("request")(request.request)
app.add_typer(ehr.app, name="ehr")
app.add_typer(composition.app, name="composition")
app.command("query")(query.query)
app.command("demo")(demo.demo)
app.add_typer(patients.app, name="patients")
app.command("audit")(audit.audit)
app.command("doctor")(doctor.doctor)
app.add_typer(sandbox.app, name="sandbox")

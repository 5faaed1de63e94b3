"""The root Typer app: global options, and every command group, each loaded when it is used.

Building the whole command tree imports every command module (about 50 ms, and pydantic through
Typer's coercion of each parameter). The root group is a :class:`LazyGroup`: it knows each
command's name, module and one-line summary from :data:`COMMANDS`, and imports a module only when
its command runs (or when help, completion or the docs generator asks for the command itself).
``cwsctl --help`` lists the summaries without importing anything. tests/test_lazy_app.py checks
:data:`COMMANDS` against the real commands (names, order, summaries), so the two cannot drift.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any, NamedTuple

import typer
from typer.core import TyperGroup

from cwsctl import __version__
from cwsctl.cli.options import (
    DebugOption,
    JsonOption,
    ProfileOption,
    QuietOption,
    VerboseOption,
    merge_globals,
)


class Entry(NamedTuple):
    """One root command: ``module.attr`` is a command function, or a group's ``typer.Typer``."""

    module: str
    attr: str
    summary: str  # the first paragraph of the command's help, whitespace collapsed


def _command(module: str, attr: str, summary: str) -> Entry:
    return Entry(module, attr, summary)


def _group(module: str, summary: str) -> Entry:
    return Entry(module, "app", summary)


# Order is the order of `cwsctl --help`: commands first, then groups (as Typer lists them).
COMMANDS: dict[str, Entry] = {
    "keygen": _command(
        "cwsctl.cli.commands.keys",
        "keygen",
        "Generate the profile's RSA key pair and print the public key to register in CorEMR.",
    ),
    "sign": _command(
        "cwsctl.targets.cws.cli.signature",
        "sign",
        "Sign a body and print its Authorization header value.",
    ),
    "verify": _command(
        "cwsctl.targets.cws.cli.signature",
        "verify",
        "Verify a signed body; by default the signature is read from FILE.sig.",
    ),
    "request": _command(
        "cwsctl.cli.commands.request",
        "request",
        "Send a request as the profile's kind does, and check the answer.",
    ),
    "query": _command(
        "cwsctl.targets.openehr.cli.query",
        "query",
        "Run an AQL query on an openehr profile (POST /query/aql) and write its rows.",
    ),
    "export": _command(
        "cwsctl.targets.openemr.cli.export",
        "export",
        "Bulk FHIR export ($export) from an openemr profile into DIR, resumable from cron.",
    ),
    "demo": _command(
        "cwsctl.cli.commands.demo",
        "demo",
        "Run a walkthrough end to end against a throw-away local sandbox; leaves nothing behind.",
    ),
    "audit": _command(
        "cwsctl.cli.commands.audit",
        "audit",
        "Show the profile's audit log (one line per request; no patient data).",
    ),
    "doctor": _command(
        "cwsctl.cli.commands.doctor",
        "doctor",
        "Check config, profile, key (present, 0600, 0700 dir, readable), https, DNS, TLS, clock skew, and what the profile's kind needs: on cws, pinned server keys and a signed request whose response must verify; on openemr, the registered client, a token and an authenticated FHIR search (OpenEMR's answers carry no signature: only TLS protects them).",
    ),
    "keys": _group(
        "cwsctl.cli.commands.keys", "Manage the profile's private key and show its public key."
    ),
    "profile": _group(
        "cwsctl.cli.commands.profile", "Create, list, select profiles and pin CorEMR's public key."
    ),
    "oauth": _group(
        "cwsctl.targets.openemr.cli.oauth",
        "OAuth2 with OpenEMR for an openemr profile: register the client, get tokens, sign in.",
    ),
    "ehr": _group(
        "cwsctl.targets.openehr.cli.ehr",
        "openEHR EHRs: create one per subject, show it by id or subject, read and update its EHR_STATUS.",
    ),
    "composition": _group(
        "cwsctl.targets.openehr.cli.composition",
        "openEHR compositions: create, read (any version), update and delete without ever overwriting a change you did not see, and list their revision history.",
    ),
    "template": _group(
        "cwsctl.targets.openehr.cli.template",
        "openEHR operational templates (ADL 1.4 OPTs): list, upload (once, before the first composition that uses one), read as OPT or web template, and example compositions.",
    ),
    "patients": _group(
        "cwsctl.cli.commands.patients",
        "Create patients in the profile's EMR (CorEMR, OpenEMR or openEHR), one or thousands.",
    ),
    "sandbox": _group(
        "cwsctl.cli.commands.sandbox",
        "Run a local sandbox server (CorEMR, OpenEMR or EHRbase stand-in) for demos and tests.",
    ),
}


class LazyGroup(TyperGroup):
    """A Typer group whose commands are imported from :data:`COMMANDS` on first use."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*COMMANDS, *(name for name in self.commands if name not in COMMANDS)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self.commands[cmd_name] = load_command(cmd_name, self.rich_markup_mode)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """The command list of ``--help`` from the summaries, importing nothing."""
        from typer._click.utils import make_default_short_help

        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in COMMANDS and name not in self.commands:
                rows.append((name, make_default_short_help(COMMANDS[name].summary, limit)))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def load_command(name: str, rich_markup_mode: Any = None) -> Any:
    """Import the module of root command ``name`` and build its Click command as Typer would."""
    entry = COMMANDS[name]
    target = getattr(importlib.import_module(entry.module), entry.attr)
    holder = typer.Typer(rich_markup_mode=rich_markup_mode, pretty_exceptions_enable=False)
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
    else:
        holder.command(name)(target)
    return typer.main.get_group(holder).commands[name]


app = typer.Typer(
    name="cwsctl",
    cls=LazyGroup,
    help="Signed, verified requests and bulk loads for CorEMR (CWS), OpenEMR and openEHR.\n\n"
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

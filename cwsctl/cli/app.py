"""The root Typer app: global options, and every command group, each loaded when it is used.

Building the whole command tree imports every command module (about 50 ms, and pydantic through
Typer's coercion of each parameter). The root group is a :class:`LazyGroup`: it knows each
command's name, module and one-line summary from :data:`COMMANDS` (the shared commands here and
every target's from :mod:`cwsctl.registry`), and imports a module only when its command runs
(or when help, completion or the docs generator asks for the command itself). ``cwsctl --help``
lists the summaries without importing anything. tests/cli/test_lazy_app.py checks :data:`COMMANDS`
against the real commands (names, order, summaries), so the two cannot drift.
"""

from __future__ import annotations

from typing import Annotated, Any

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
from cwsctl.registry import ROOT_ORDER, TARGETS, Entry, extensions, resolve

# The target-neutral root commands; each target's own are its `commands` in cwsctl.registry.
SHARED: dict[str, Entry] = {
    "keygen": Entry(
        "cwsctl.cli.commands.keys:keygen",
        "Generate the profile's RSA key pair and print the public key to register in CorEMR.",
    ),
    "request": Entry(
        "cwsctl.cli.commands.request:request",
        "Send a request as the profile's kind does, and check the answer.",
    ),
    "demo": Entry(
        "cwsctl.cli.commands.demo:demo",
        "Run a walkthrough end to end against a throw-away local sandbox; leaves nothing behind.",
    ),
    "audit": Entry(
        "cwsctl.cli.commands.audit:audit",
        "Show the profile's audit log (one line per request; no patient data).",
    ),
    "doctor": Entry(
        "cwsctl.cli.commands.doctor:doctor",
        "Check config, profile, key (present, 0600, 0700 dir, readable), https, DNS, TLS, clock skew, and what the profile's kind needs: on cws, pinned server keys and a signed request whose response must verify; on openemr, the registered client, a token and an authenticated FHIR search (OpenEMR's answers carry no signature: only TLS protects them).",
    ),
    "keys": Entry(
        "cwsctl.cli.commands.keys:app", "Manage the profile's private key and show its public key."
    ),
    "profile": Entry(
        "cwsctl.cli.commands.profile:app",
        "Create, list, select profiles and pin CorEMR's public key.",
    ),
    "patients": Entry(
        "cwsctl.cli.commands.patients:app",
        "Create patients in the profile's EMR (CorEMR, OpenEMR or openEHR), one or thousands.",
    ),
    "sandbox": Entry(
        "cwsctl.cli.commands.sandbox:app",
        "Run a local sandbox server (CorEMR, OpenEMR or EHRbase stand-in) for demos and tests.",
    ),
}


def _root_commands() -> dict[str, Entry]:
    every = dict(SHARED)
    for target in TARGETS:
        every.update(target.commands)
    return {name: every[name] for name in ROOT_ORDER}


#: Every root command (``module:attr`` is a command function, or a group's ``typer.Typer``), in
#: the order of `cwsctl --help` (registry.ROOT_ORDER).
COMMANDS: dict[str, Entry] = _root_commands()


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
    target = resolve(COMMANDS[name].where)
    holder = typer.Typer(rich_markup_mode=rich_markup_mode, pretty_exceptions_enable=False)
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
    else:
        holder.command(name)(target)
    return typer.main.get_group(holder).commands[name]


def add_extensions(group: typer.Typer, name: str) -> None:
    """Add to the shared group ``name`` the commands the targets give it (registry ``extends``),
    here in its listing: a group module calls this where they belong in its order."""
    for command, entry in extensions(name).items():
        group.command(command)(resolve(entry.where))


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

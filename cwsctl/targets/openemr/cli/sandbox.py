"""The OpenEMR flavour of `cwsctl sandbox`: its server and ready banner for `serve`, and
`sandbox openemr enable-client | clients | seed` (what OpenEMR's admin pages do).

The flavour interface `cwsctl sandbox serve` dispatches to is described in
:mod:`cwsctl.cli.commands.sandbox`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cwsctl.cli.options import with_globals
from cwsctl.cli.output import Output
from cwsctl.cli.params import WholeNumber
from cwsctl.cli.sandbox_options import DataDirOption, resolve_data_dir
from cwsctl.core.errors import InputError

if TYPE_CHECKING:
    from cwsctl.sandbox.server import BaseSandboxServer

#: The serve options only --kind openemr takes, in the order "applies only to" names them.
OPTIONS = (
    "--token-lifetime",
    "--site-address",
    "--system-scopes",
    "--manual-approval",
    "--openemr-version",
    "--export-mode",
    "--export-delay",
)

openemr_app = typer.Typer(
    help="Administer the OpenEMR sandbox's state (what OpenEMR's admin pages do).",
    no_args_is_help=True,
)


def extend(group: typer.Typer) -> None:
    """Add `openemr enable-client | clients | seed` to the `sandbox` group."""
    group.add_typer(openemr_app, name="openemr")


def server_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenEMR server's own keyword arguments, from serve's options (checked together)."""
    if options["export_delay"] and options["export_mode"] != "spec":
        raise InputError("--export-delay applies only to --export-mode spec")
    return {
        "version": options["openemr_version"],
        "site_address": options["site_address"],
        "system_scopes": options["system_scopes"],
        "manual_approval": options["manual_approval"],
        "token_lifetime": options["token_lifetime"],
        "export_mode": options["export_mode"],
        "export_delay": options["export_delay"],
    }


def build(
    out: Output, data_dir: Path, own: dict[str, Any], common: dict[str, Any]
) -> BaseSandboxServer:
    """The OpenEMR sandbox."""
    from cwsctl.targets.openemr.sandbox.server import OpenEmrSandboxServer

    return OpenEmrSandboxServer(data_dir, **own, **common)


def ready(out: Output, server: BaseSandboxServer) -> None:
    """The banner once the OpenEMR sandbox listens."""
    from cwsctl.targets.openemr.sandbox.server import OpenEmrSandboxServer

    assert isinstance(server, OpenEmrSandboxServer)
    lifetimes = (
        f"{server.token_lifetime}-second access tokens"
        if server.token_lifetime is not None
        else "access tokens: 300 s client credentials, 3600 s user"
    )
    if out.settings.json:
        out.json(
            {
                "kind": "openemr",
                "url": server.url,
                "site": server.site,
                "openemr_version": server.version,
                "site_address": server.site_address,
                "system_scopes": server.system_scopes,
                "manual_approval": server.manual_approval,
                "data_dir": str(server.data_dir),
                "token_url": server.token_url,
                "fhir_url": server.fhir_url,
                "api_url": server.api_url,
                "token_lifetime": server.token_lifetime,
                "export_mode": server.export_mode,
                "export_delay": server.export_delay,
                "faults": server.faults.to_json(),
            }
        )
    out.success(
        f"OpenEMR {server.version} sandbox listening on {server.url} (data: {server.data_dir})"
    )
    out.info(f"Discovery: {server.fhir_url}/.well-known/smart-configuration")
    out.info(f"Register: POST {server.oauth_url}/registration")
    out.info(f"Token URL (the assertion's aud): {server.token_url} ({lifetimes})")
    out.info(f"APIs: {server.api_url}/api/patient and {server.api_url}/fhir/Patient")
    scopes = "on" if server.system_scopes else "off (--system-scopes turns them on)"
    out.info(f"System scopes: {scopes}")
    delay = f", {server.export_delay:g} s of 202s" if server.export_mode == "spec" else ""
    out.info(
        f"Bulk export ({server.export_mode} mode{delay}): GET {server.api_url}/fhir/$export, "
        f"/Patient/$export, /Group/{server.group_id}/$export"
    )
    out.info(
        "New confidential clients with user/ or system/ scopes start disabled"
        f"{' (with --manual-approval: every new client)' if server.manual_approval else ''}: "
        f"cwsctl sandbox openemr enable-client --data-dir {server.data_dir} -- CLIENT_ID"
    )
    if server.faults.active:
        out.warn(f"fault injection on the patient routes: {server.faults.describe()}")
    out.info("Press Ctrl-C to stop.")


@openemr_app.command("enable-client")
@with_globals
def enable_client(
    out: Output,
    client_id: Annotated[
        str, typer.Argument(metavar="CLIENT_ID", help="The client_id registration answered.")
    ],
    data_dir: DataDirOption = None,
) -> None:
    """Enable a registered client, like OpenEMR's Admin → System → API Clients → Enable.

    Works while the server runs (same SQLite file); the client's next grant succeeds. Client
    ids are base64url and may begin with "-": put "--" before one
    (`cwsctl sandbox openemr enable-client --data-dir DIR -- CLIENT_ID`).
    """
    from cwsctl.targets.openemr.sandbox.store import enable_client as enable

    directory = resolve_data_dir(data_dir)
    client = enable(directory, client_id)
    if client is None:
        raise InputError(
            f"no client {client_id!r} is registered in {directory}",
            hint=f"list them: cwsctl sandbox openemr clients --data-dir {directory}",
        )
    if out.settings.json:
        out.json({"data_dir": str(directory), **client.to_json()})
    out.success(f"Enabled client {client.client_id} in {directory}")


@openemr_app.command("clients")
@with_globals
def list_clients(out: Output, data_dir: DataDirOption = None) -> None:
    """List the registered OAuth clients: id, enabled or not, scopes."""
    from cwsctl.targets.openemr.sandbox.store import list_clients as registered

    directory = resolve_data_dir(data_dir)
    clients = registered(directory)
    if out.settings.json:
        out.json({"data_dir": str(directory), "clients": [c.to_json() for c in clients]})
        return
    if not clients:
        out.info(f"No OAuth clients registered in {directory}.")
        return
    for client in clients:
        state = "enabled " if client.enabled else "disabled"
        out.line(f"{client.client_id}  {state}  {client.scope}")


@openemr_app.command("seed")
@with_globals
def seed_patients(
    out: Output,
    patients: Annotated[
        int,
        typer.Option(
            "--patients",
            metavar="N",
            parser=WholeNumber(1, 10_000_000),
            help="How many generated (fake) patients to add.",
        ),
    ],
    data_dir: DataDirOption = None,
    facility: Annotated[
        str,
        typer.Option("--facility", metavar="ID", help="Facility part of each public id."),
    ] = "10000",
    prefix: Annotated[
        str,
        typer.Option("--prefix", metavar="TEXT", help="Prefix of each public id's number."),
    ] = "P",
) -> None:
    """Add N generated patients to an OpenEMR sandbox's data dir at once (for exports and
    benchmarks): public ids FACILITY:PREFIXk, k counting on from the patients already there,
    in one transaction (100,000 take a few seconds). Works while the server runs.
    """
    import time

    from cwsctl.targets.openemr.sandbox.store import OpenEmrStore

    directory = resolve_data_dir(data_dir)
    started = time.perf_counter()
    with OpenEmrStore(directory) as store:
        added = store.seed_patients(patients, facility=facility, prefix=prefix)
        total = store.count_patients()
    elapsed = time.perf_counter() - started
    if out.settings.json:
        out.json(
            {"data_dir": str(directory), "added": added, "patients": total, "seconds": elapsed}
        )
    out.success(f"Added {added} patients in {elapsed:.1f} s ({total} in {directory})")

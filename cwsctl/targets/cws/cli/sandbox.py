"""The CWS flavour of `cwsctl sandbox`: its server and ready banner for `serve`, and
`sandbox add-key | keys | server-key` (CorEMR's Administration → Public Keys).

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
from cwsctl.cli.sandbox_options import DataDirOption, KeyBitsOption, resolve_data_dir
from cwsctl.core.keys import DEFAULT_BITS

if TYPE_CHECKING:
    from cwsctl.sandbox.server import BaseSandboxServer

#: The serve options only --kind cws takes ("applies only to --kind cws"): none is checked.
OPTIONS: tuple[str, ...] = ()


def extend(group: typer.Typer) -> None:
    """Add `add-key`, `keys` and `server-key` to the `sandbox` group."""
    group.command("add-key")(add_key)
    group.command("keys")(list_keys)
    group.command("server-key")(server_key)


def server_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The CWS server's own keyword arguments, from serve's options."""
    return {"key_bits": options["key_bits"]}


def build(
    out: Output, data_dir: Path, own: dict[str, Any], common: dict[str, Any]
) -> BaseSandboxServer:
    """The CWS sandbox, saying first when it has to make its server key."""
    from cwsctl.targets.cws.sandbox.server import SandboxServer
    from cwsctl.targets.cws.sandbox.store import SERVER_KEY_FILE

    if not (data_dir / SERVER_KEY_FILE).exists():
        out.info(f"Generating the sandbox's {own['key_bits']}-bit server key in {data_dir}…")
    return SandboxServer(data_dir, **own, **common)


def ready(out: Output, server: BaseSandboxServer) -> None:
    """The banner once the CWS sandbox listens."""
    from cwsctl.targets.cws.sandbox.server import SandboxServer

    assert isinstance(server, SandboxServer)
    if out.settings.json:
        out.json(
            {
                "url": server.url,
                "data_dir": str(server.data_dir),
                "server_username": server.trusted_key.username,
                "server_key_fingerprint": server.fingerprint,
                "faults": server.faults.to_json(),
            }
        )
    out.success(f"CWS sandbox listening on {server.url} (data: {server.data_dir})")
    out.info(f"Responses are signed as 'coremr' with {server.fingerprint}")
    if server.faults.active:
        out.warn(f"fault injection on /ws/patients: {server.faults.describe()}")
    registered = server.store.client_keys()
    if not registered:
        out.warn(
            "no client keys registered yet; every request will get 401. "
            "Register one: cwsctl sandbox add-key USERNAME PUBLIC_KEY.pem"
        )
    out.info("Press Ctrl-C to stop.")


@with_globals
def add_key(
    out: Output,
    username: Annotated[
        str, typer.Argument(metavar="USERNAME", help="Username the client signs as (Access=…).")
    ],
    public_key_file: Annotated[
        Path,
        typer.Argument(
            metavar="PUBLIC_KEY_FILE",
            help="The client's public key PEM (a private key file works too).",
        ),
    ],
    data_dir: DataDirOption = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace a different key already registered.")
    ] = False,
) -> None:
    """Register a client's public key, like CorEMR's Administration → Public Keys → +.

    Works while the server runs; it sees the key on the next request.
    """
    from cwsctl.core import keys
    from cwsctl.targets.cws.sandbox.store import register_client_key

    key = keys.load_public_key(public_key_file)
    directory = resolve_data_dir(data_dir)
    entry = register_client_key(directory, username, key, replace=replace)
    if out.settings.json:
        out.json({"data_dir": str(directory), **entry.to_json()})
    out.success(f"Registered {entry.username} {entry.fingerprint} in {directory}")


@with_globals
def list_keys(out: Output, data_dir: DataDirOption = None) -> None:
    """List registered client usernames and key fingerprints."""
    from cwsctl.targets.cws.sandbox.store import list_client_keys

    directory = resolve_data_dir(data_dir)
    entries = list_client_keys(directory)
    if out.settings.json:
        out.json({"data_dir": str(directory), "keys": [e.to_json() for e in entries]})
        return
    if not entries:
        out.info(f"No client keys registered in {directory}.")
        out.info("Register one: cwsctl sandbox add-key USERNAME PUBLIC_KEY.pem")
        return
    width = max(len(e.username) for e in entries)
    for entry in entries:
        out.line(f"{entry.username:<{width}}  {entry.fingerprint}")


@with_globals
def server_key(
    out: Output, data_dir: DataDirOption = None, key_bits: KeyBitsOption = DEFAULT_BITS
) -> None:
    """Print the sandbox's public key PEM (made if the data dir is new), to pin with profile trust.

    The sandbox signs responses as `coremr`:
    `cwsctl sandbox server-key > sandbox.pem && cwsctl profile trust sandbox.pem`.
    """
    from cwsctl.core import keys
    from cwsctl.targets.cws.sandbox.store import (
        SERVER_KEY_FILE,
        SERVER_USERNAME,
        load_or_create_server_key,
    )

    directory = resolve_data_dir(data_dir)
    if not (directory / SERVER_KEY_FILE).exists():
        out.info(f"Generating the sandbox's {key_bits}-bit server key in {directory}…")
    public = load_or_create_server_key(directory, key_bits).public_key()
    pem = keys.public_key_pem(public).decode("ascii")
    fingerprint = keys.fingerprint(public)
    if out.settings.json:
        out.json(
            {
                "data_dir": str(directory),
                "username": SERVER_USERNAME,
                "bits": public.key_size,
                "fingerprint": fingerprint,
                "public_key": pem,
            }
        )
        return
    out.data(pem)
    out.info(f"Fingerprint: {fingerprint} (signs as {SERVER_USERNAME!r})")
    out.info(
        f"Pin it: cwsctl sandbox server-key > sandbox.pem && cwsctl profile trust sandbox.pem "
        f"--username {SERVER_USERNAME}"
    )

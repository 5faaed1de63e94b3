"""The openEHR flavour of `cwsctl sandbox serve`: its auth files, its server and its ready banner.

The flavour interface `cwsctl sandbox serve` dispatches to is described in
:mod:`cwsctl.cli.commands.sandbox`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cwsctl.cli.output import Output
from cwsctl.core.errors import InputError

if TYPE_CHECKING:
    from cwsctl.sandbox.server import BaseSandboxServer

#: The serve options only --kind openehr takes, in the order "applies only to" names them.
OPTIONS = (
    "--basic-auth-file",
    "--bearer-token-file",
    "--if-match",
    "--max-fetch",
    "--fetch-precedence",
    "--default-limit",
)


def extend(group: typer.Typer) -> None:
    """The openEHR sandbox has no `sandbox` commands of its own."""


def server_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The openEHR server's own keyword arguments, from serve's options: checked together, and
    the credentials read from the files they name (their content never goes into an error)."""
    basic_auth_file: Path | None = options["basic_auth_file"]
    bearer_token_file: Path | None = options["bearer_token_file"]
    if basic_auth_file is not None and bearer_token_file is not None:
        raise InputError("--basic-auth-file and --bearer-token-file exclude each other")
    basic_auth = None
    bearer_tokens = None
    if basic_auth_file is not None:
        from cwsctl.targets.openehr.sandbox.app import read_basic_auth_file

        basic_auth = read_basic_auth_file(basic_auth_file.expanduser())
    if bearer_token_file is not None:
        from cwsctl.targets.openehr.sandbox.app import read_bearer_token_file

        bearer_tokens = read_bearer_token_file(bearer_token_file.expanduser())
    return {
        "basic_auth": basic_auth,
        "bearer_tokens": bearer_tokens,
        "if_match": options["if_match"],
        "max_fetch": options["max_fetch"],
        "fetch_precedence": options["fetch_precedence"],
        "default_limit": options["default_limit"],
    }


def build(
    out: Output, data_dir: Path, own: dict[str, Any], common: dict[str, Any]
) -> BaseSandboxServer:
    """The openEHR sandbox."""
    from cwsctl.targets.openehr.sandbox.server import OpenEhrSandboxServer

    return OpenEhrSandboxServer(data_dir, **own, **common)


def ready(out: Output, server: BaseSandboxServer) -> None:
    """The banner once the openEHR sandbox listens."""
    from cwsctl.targets.openehr.sandbox.server import OpenEhrSandboxServer

    assert isinstance(server, OpenEhrSandboxServer)
    auth = server.basic_auth
    bearer = server.bearer_tokens is not None
    if out.settings.json:
        out.json(
            {
                "kind": "openehr",
                "url": server.url,
                "base_url": server.base_url,
                "status_url": server.status_url,
                "system_id": server.system_id,
                "data_dir": str(server.data_dir),
                "auth": "basic" if auth else "bearer" if bearer else "none",
                "username": auth[0] if auth else None,
                "if_match": server.if_match,
                "ehrbase_version": server.ehrbase_version,
                "max_fetch": server.max_fetch,
                "fetch_precedence": server.fetch_precedence,
                "default_limit": server.default_limit,
                "templates": server.template_ids(),
                "faults": server.faults.to_json(),
            }
        )
    out.success(f"openEHR sandbox listening on {server.url} (data: {server.data_dir})")
    out.info(f"Base URL (profile --url): {server.base_url}")
    quoting = (
        'a quoted If-Match is refused (400 "UUID string too large")'
        if server.if_match == "ehrbase"
        else "If-Match quoted as the specification says (bare accepted too)"
    )
    out.info(f"Behaves like EHRbase {server.ehrbase_version}: {quoting}")
    limits = [f"fetch precedence {server.fetch_precedence}"]
    if server.max_fetch is not None:
        limits.append(f"max fetch {server.max_fetch}")
    if server.default_limit is not None:
        limits.append(f"default limit {server.default_limit}")
    out.info("AQL: " + ", ".join(limits))
    templates = server.template_ids()
    out.info(
        f"Templates uploaded: {', '.join(templates)}"
        if templates
        else "No templates uploaded yet: compositions need one (POST "
        f"{server.base_url}/definition/template/adl1.4, Content-Type and Accept application/xml)"
    )
    if auth:
        out.info(f"Basic auth required, user {auth[0]!r} (password from the --basic-auth-file)")
    elif bearer:
        out.info("Bearer token required (one of those in the --bearer-token-file)")
    else:
        out.info("No authentication required (use --basic-auth-file or --bearer-token-file)")
    if server.faults.active:
        out.warn(f"fault injection on {server.base_url}/ehr…: {server.faults.describe()}")
    out.info("Press Ctrl-C to stop.")

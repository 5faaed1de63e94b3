"""The root group loads command modules lazily: its registry (cli/app.py COMMANDS) must match
the real commands, help must look as if everything were loaded, and start-up must stay lean."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import typer
from typer._click.utils import make_default_short_help
from typer.core import TyperGroup

from cwsctl.cli.app import COMMANDS, app, load_command
from tests.conftest import write_private

LISTING = "\n".join(
    [
        "import json, sys",
        "from cwsctl.cli.main import run",
        "code = run(sys.argv[1:])",
        "print(json.dumps({'code': code, 'modules': sorted(k for k, v in sys.modules.items() if v is not None)}), file=sys.stderr)",
    ]
)


def modules_after(argv, env=None):
    """The exit status and the modules imported by one fresh cwsctl process."""
    result = subprocess.run(
        [sys.executable, "-c", LISTING, *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )
    report = json.loads(result.stderr.strip().splitlines()[-1])
    return report["code"], set(report["modules"]), result


def test_registry_matches_the_real_commands():
    for name, entry in COMMANDS.items():
        command = load_command(name)
        assert command.name == name
        assert not command.hidden
        assert make_default_short_help(command.help, 10_000) == entry.summary, name
        if entry.attr == "app":
            assert isinstance(command, TyperGroup), name
        else:
            assert not isinstance(command, TyperGroup), name


def test_root_listing_equals_typer_rendering_of_the_loaded_commands():
    root = typer.main.get_command(app)
    ctx = typer.Context(root)
    for width in (40, 60, 80, 120):
        lazy = ctx.make_formatter()
        lazy.width = width
        root.format_commands(ctx, lazy)
        loaded = ctx.make_formatter()
        loaded.width = width
        TyperGroup.format_commands(root, ctx, loaded)  # loads every command
        assert lazy.getvalue() == loaded.getvalue(), width


def test_help_lists_every_command_and_imports_none(tmp_path):
    code, modules, result = modules_after(["--help"], {"CWSCTL_HOME": str(tmp_path)})
    assert code == 0
    for name in COMMANDS:
        assert f"\n  {name} " in result.stdout
    loaded = {entry.module for entry in COMMANDS.values()} & modules
    assert not loaded
    for heavy in ("httpx", "pydantic", "rich", "cryptography", "starlette", "uvicorn"):
        assert heavy not in modules, heavy


def test_commands_load_only_their_own_module(tmp_path):
    code, modules, _ = modules_after(["keys", "--help"], {"CWSCTL_HOME": str(tmp_path)})
    assert code == 0
    assert "cwsctl.cli.commands.keys" in modules
    assert "cwsctl.cli.commands.patients" not in modules
    assert "cwsctl.cli.commands.sandbox" not in modules


@pytest.mark.parametrize("word", ["sign", "verify"])
def test_fast_commands_do_not_import_typer(tmp_path, word):
    body = tmp_path / "body.json"
    body.write_bytes(b"{}")
    code, modules, _ = modules_after([word, str(body)], {"CWSCTL_HOME": str(tmp_path)})
    assert code in (2, 3)  # no profile / no signature: a clean error, without Typer
    assert "typer" not in modules
    assert "pydantic" not in modules


def test_request_dry_run_imports_httpx_without_its_cli(cli, tmp_path, rsa2048):
    cli("profile", "init", "prod", "--url", "https://cws.example.org", "--username", "alice")
    cli("keys", "import", str(write_private(tmp_path / "rsa.private", rsa2048)))
    body = tmp_path / "body.json"
    body.write_bytes(b'{"a": 1}')
    home = os.environ["CWSCTL_HOME"]
    code, modules, result = modules_after(
        ["request", "POST", "/ws/patients/", str(body), "--dry-run"], {"CWSCTL_HOME": home}
    )
    assert code == 0, result.stderr
    assert "authorization: cws-sha256 access=alice" in result.stdout.lower()
    assert "httpx" in modules
    for cli_only in ("httpx._main", "click", "pygments", "rich"):
        assert cli_only not in modules, cli_only


def test_httpx_still_has_its_fallback_main():
    import httpx

    assert sys.modules["httpx._main"] is None  # set in cwsctl/__init__.py
    assert callable(httpx.main)

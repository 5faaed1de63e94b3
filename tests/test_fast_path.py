"""The getopt fast path for `cwsctl sign` must behave exactly like the Typer command."""

from __future__ import annotations

import pytest

from cwsctl.cli.fast import try_fast_sign
from cwsctl.cli.main import run
from tests.conftest import write_private


@pytest.fixture
def setup(cli, tmp_path, rsa2048):
    cli("profile", "init", "prod", "--url", "https://cws.example.org", "--username", "alice")
    key = write_private(tmp_path / "rsa.private", rsa2048)
    cli("keys", "import", str(key))
    body = tmp_path / "body.json"
    body.write_bytes(b'{"a": 1}\n')
    return key, body


def variants(key, body, tmp_path):
    return [
        ["sign", str(body)],
        ["--json", "sign", str(body)],
        ["sign", str(body), "--json"],
        ["-q", "sign", str(body), "--explain"],
        ["sign", str(body), "--signature-only", "--algorithm", "sha1"],
        ["-p", "prod", "sign", "--key", str(key), str(body), "--username=bob"],
        ["sign", str(body), "--raw-out", str(tmp_path / "sig.bin")],
        ["sign", str(tmp_path / "missing.json")],
        ["-p", "nope", "sign", str(body)],
        ["sign", str(body), "--key", str(tmp_path / "nokey")],
    ]


def test_fast_path_matches_typer(setup, cli, tmp_path, capsys):
    key, body = setup
    for argv in variants(key, body, tmp_path):
        fast_code = try_fast_sign(argv)
        assert fast_code is not None, argv
        fast = capsys.readouterr()
        typer_result = cli(*argv)
        assert fast_code == typer_result.exit_code, argv
        assert fast.out == typer_result.stdout, argv
        assert fast.err == typer_result.stderr, argv


@pytest.mark.parametrize(
    "argv",
    [
        ["sign", "--help"],
        ["sign"],
        ["sign", "a", "b"],
        ["sign", "body", "--sig"],  # an abbreviation: Typer rejects it, so we must not accept it
        ["sign", "body", "--no-such-option"],
        ["verify", "sign"],
        ["--version", "sign"],
        ["sign", "--", "-weird-name"],
    ],
)
def test_fast_path_leaves_everything_else_to_typer(argv):
    assert try_fast_sign(argv) is None


def test_run_uses_typer_for_usage_errors(capsys):
    assert run(["sign", "body", "--sig"]) == 2
    assert capsys.readouterr().err.startswith("cwsctl: error: No such option")

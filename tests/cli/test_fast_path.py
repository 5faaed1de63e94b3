"""The fast path (cli/fast.py) must behave exactly like the Typer commands it serves, and its
table (cli/fast_table.py) must be the one generated from the Typer declarations."""

from __future__ import annotations

import inspect
import re
from importlib import import_module

import pytest

from cwsctl.cli import fast
from cwsctl.cli.fast import TARGETS, try_fast
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


def test_table_is_generated_from_the_typer_declarations():
    assert fast.main(["--check"]) == 0, "run: python -m cwsctl.cli.fast"


def test_every_target_takes_the_typer_commands_parameters():
    from cwsctl.cli.fast_table import COMMANDS, ROOT

    for path, target in TARGETS.items():
        module, _, name = target.partition(":")
        function = getattr(import_module(module), name)
        params = set(COMMANDS[path]["params"]) - set(ROOT["globals"])
        accepted = inspect.signature(function).parameters
        if any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
            continue  # sign_command(out, **options): SignRequest's fields are checked below
        assert set(accepted) - {"out"} == params, path
    from cwsctl.targets.cws.cli.sign_run import SignRequest

    assert set(SignRequest._fields) == set(COMMANDS["sign"]["params"]) - set(ROOT["globals"])


def sign_variants(key, body, tmp_path):
    return [
        ["sign", str(body)],
        ["--json", "sign", str(body)],
        ["sign", str(body), "--json"],
        ["-q", "sign", str(body), "--explain"],
        ["sign", str(body), "--signature-only", "--algorithm", "sha1"],
        ["-p", "prod", "sign", "--key", str(key), str(body), "--username=bob"],
        ["--profile=prod", "-v", "sign", str(body)],
        ["sign", str(body), "--raw-out", str(tmp_path / "sig.bin")],
        ["sign", str(tmp_path / "missing.json")],
        ["-p", "nope", "sign", str(body)],
        ["-p", "nope", "sign", str(body), "-p", "prod"],
        ["sign", str(body), "--key", str(tmp_path / "nokey")],
    ]


def verify_variants(key, body, tmp_path):
    sig = tmp_path / "body.json.sig"
    return [
        ["verify", str(body)],  # no FILE.sig yet
        ["verify", str(body), "--key", str(key)],
        ["verify", str(body), "--key", str(key), "--signature", "AAAA"],
        ["--json", "verify", str(body), "--key", str(key), "--signature-file", str(sig)],
        ["verify", str(body), "--signature", "x", "--header", "y"],
        ["-q", "verify", str(body), "--algorithm", "sha1", "--key", str(key)],
        ["verify", str(tmp_path / "missing.json"), "--key", str(key)],
    ]


def assert_same(cli, capsys, argv):
    fast_code = try_fast(argv)
    assert fast_code is not None, argv
    got = capsys.readouterr()
    typer_result = cli(*argv)
    assert fast_code == typer_result.exit_code, argv
    assert got.out == typer_result.stdout, argv
    assert got.err == typer_result.stderr, argv


def test_fast_sign_matches_typer(setup, cli, tmp_path, capsys):
    key, body = setup
    for argv in sign_variants(key, body, tmp_path):
        assert_same(cli, capsys, argv)


def test_fast_verify_matches_typer(setup, cli, tmp_path, capsys):
    key, body = setup
    for argv in verify_variants(key, body, tmp_path):
        assert_same(cli, capsys, argv)
    # With a signature in FILE.sig, and with the profile's pinned keys.
    header = cli("sign", str(body)).stdout
    (tmp_path / "body.json.sig").write_text(header)
    for argv in verify_variants(key, body, tmp_path):
        assert_same(cli, capsys, argv)


def test_fast_path_honours_environment_variables(setup, cli, tmp_path, capsys, monkeypatch):
    key, body = setup
    monkeypatch.setenv("CWSCTL_PROFILE", "nope")
    assert_same(cli, capsys, ["sign", str(body)])
    assert_same(cli, capsys, ["-p", "prod", "sign", str(body)])
    monkeypatch.setenv("CWSCTL_DEBUG", "1")  # a traceback: its frames differ, not its end
    argv = ["verify", str(body), "--key", str(key)]
    fast_code = try_fast(argv)
    got = capsys.readouterr()
    typer_result = cli(*argv)
    assert fast_code == typer_result.exit_code == 2
    assert got.err.startswith("Traceback")
    assert got.err.splitlines()[-2:] == typer_result.stderr.splitlines()[-2:]


def test_fast_keys_show_matches_typer(setup, cli, tmp_path, capsys):
    cli("profile", "init", "empty", "--url", "https://cws.example.org", "--username", "bob")
    for argv in [
        ["keys", "show"],
        ["--json", "keys", "show"],
        ["keys", "show", "--json"],
        ["-q", "keys", "show"],
        ["keys", "show", "-p", "prod", "-v"],
        ["keys", "show", "--passphrase-file", str(tmp_path / "none")],
        ["-p", "nope", "keys", "show"],
        ["-p", "empty", "keys", "show"],  # no key: exit 3
    ]:
        assert_same(cli, capsys, argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["sign", "--help"],
        ["sign"],
        ["sign", "a", "b"],
        ["sign", "body", "--sig"],  # an abbreviation: Typer rejects it, so we must not accept it
        ["sign", "body", "--no-such-option"],
        ["sign", "body", "--key"],  # a value missing
        ["sign", "body", "--json=yes"],
        ["verify", "--signature", "x"],
        ["--key", "k", "sign", "body"],  # a command's option before the command
        ["--version", "sign"],
        ["sign", "--", "-weird-name"],
        ["-qv", "sign", "body"],
        ["keys", "show", "--help"],
        ["keys", "show", "extra"],
        ["keys", "--json", "show"],
        ["keys", "list"],
        ["request", "GET", "/ws/", "--help"],
        ["request", "GET"],
        ["request", "GET", "/ws/", "body", "extra"],
        ["request", "GET", "/ws/", "--dry"],  # an abbreviation
        ["request", "GET", "/ws/", "-H"],
        ["request", "GET", "/ws/", "-HX: 1"],  # a value attached to a short option
        ["request", "GET", "/ws/", "--dry-run=1"],
        [],
    ],
)
def test_fast_path_leaves_everything_else_to_typer(argv):
    assert try_fast(argv) is None


def test_run_uses_typer_for_usage_errors(capsys):
    assert run(["sign", "body", "--sig"]) == 2
    assert capsys.readouterr().err.startswith("cwsctl: error: No such option")


def _same_answer(text: str) -> str:
    """An answer with what differs between two sends of the same request (time) masked."""
    text = re.sub(r"\d+(\.\d+)? ?ms\b", "N ms", text)
    return re.sub(r'"date": "[^"]*"', '"date": "D"', text)


def test_fast_request_matches_typer(cli, capsys, sandbox, sandbox_profile, tmp_path):
    body = tmp_path / "body.json"
    body.write_bytes(b'{"external_id": "x"}\n')
    url = f"{sandbox.url}/ws/"
    offline = [
        ["request", "POST", "/ws/patients/", str(body), "--dry-run"],
        ["-q", "request", "POST", "/ws/patients/", str(body), "--curl"],
        ["request", "GET", url, "--dry-run", "-H", "X-A: 1", "--header=X-B: 2", "-H", "X-A: 3"],
        [
            "request",
            "PUT",
            "/ws/x",
            str(body),
            "--dry-run",
            "--if-match",
            "v1",
            "--prefer",
            "MINIMAL",
        ],
        ["request", "GET", "/ws/", "--dry-run", "--timeout", "5", "--max-response-size", "1K"],
        ["request", "GET", "/ws/", "--dry-run", "-H", "no colon"],  # the command's own error
        ["-p", "nope", "request", "GET", "/ws/", "--dry-run"],
        ["request", "POST", "/ws/patients/", str(tmp_path / "missing"), "--dry-run"],
    ]
    for argv in offline:
        assert_same(cli, capsys, argv)
    sends = [
        ["request", "GET", "/ws/"],
        ["-q", "request", "GET", "/ws/", "-o", str(tmp_path / "out.json")],
        ["request", "GET", "/ws/", "--json", "--timeout=10"],
        ["request", "GET", "/ws/nothing-here"],  # 404: exit 4
        ["-v", "request", "GET", "/ws/", "--insecure-skip-verify"],
    ]
    for argv in sends:
        fast_code = try_fast(argv)
        assert fast_code is not None, argv
        got = capsys.readouterr()
        typer_result = cli(*argv)
        assert fast_code == typer_result.exit_code, argv
        assert _same_answer(got.out) == _same_answer(typer_result.stdout), argv
        assert _same_answer(got.err) == _same_answer(typer_result.stderr), argv


def test_fast_request_honours_environment_variables(
    cli, capsys, sandbox, sandbox_profile, monkeypatch
):
    monkeypatch.setenv("CWSCTL_TIMEOUT", "7")
    monkeypatch.setenv("CWSCTL_MAX_RESPONSE_SIZE", "2M")
    assert_same(cli, capsys, ["request", "GET", "/ws/", "--dry-run"])
    monkeypatch.setenv("CWSCTL_MAX_RESPONSE_SIZE", "10")  # an answer past it: exit 6
    argv = ["-q", "request", "GET", "/ws/"]
    assert try_fast(argv) == 6
    got = capsys.readouterr().err
    typer_result = cli(*argv)
    assert typer_result.exit_code == 6
    assert _same_answer(got) == _same_answer(typer_result.stderr)
    assert "the answer is larger than" in got, got


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["request", "GET", "/ws/", "--timeout", "nan"], {}, "Invalid value for '--timeout'"),
        (["request", "GET", "/ws/", "--timeout", "0"], {}, "Invalid value for '--timeout'"),
        (["request", "GET", "/ws/", "--dry-run"], {"CWSCTL_TIMEOUT": "x"}, "'--timeout'"),
        (["request", "GET", "/ws/", "--max-response-size", "1T"], {}, "'--max-response-size'"),
        (["request", "GET", "/ws/", "--prefer", "all"], {}, "Invalid value for '--prefer'"),
        (["request", "GET", "ftp://x/", "--dry-run"], {}, "Invalid value for 'PATH_OR_URL'"),
        (["request", "GET", "/ws/\x07"], {}, "Invalid value for 'PATH_OR_URL'"),
    ],
)
def test_fast_request_leaves_bad_values_to_typer(argv, env, message, capsys, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert try_fast(argv) is None
    assert capsys.readouterr() == ("", "")
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cwsctl: error: ") and message in err.splitlines()[0], err
    assert err.splitlines()[1].startswith("hint: see 'cwsctl request --help'"), err

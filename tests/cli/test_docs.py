"""The committed completions and man pages match the app, cover every command, and work."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from cwsctl.cli import docs
from cwsctl.cli.app import app

REPO = Path(__file__).resolve().parents[2]
BASH = shutil.which("bash")
GROFF = shutil.which("groff")
REGENERATE = "run `python -m cwsctl.cli.docs` and commit completions/ and man/"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh generation, written into an empty temp dir."""
    out = tmp_path_factory.mktemp("docs")
    docs.sync(out, docs.generate(), check=False)
    return out


def _tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for folder in ("completions", "man")
        for path in sorted((root / folder).glob("*"))
        if path.is_file()
    }


def _commands() -> list[tuple[tuple[str, ...], typer.Context]]:
    """Every visible command and subcommand, walked without cwsctl.cli.docs."""
    root = typer.main.get_command(app)
    found = []

    def walk(words: tuple[str, ...], ctx: typer.Context) -> None:
        found.append((words, ctx))
        group = ctx.command
        if hasattr(group, "list_commands"):
            for name in group.list_commands(ctx):
                sub = group.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    walk((*words, name), typer.Context(sub, info_name=name, parent=ctx))

    walk((), typer.Context(root, info_name="cwsctl"))
    return found


def test_committed_files_are_what_the_app_generates_now(generated: Path):
    fresh, committed = _tree(generated), _tree(REPO)
    missing = sorted(set(fresh) - set(committed))
    stale = sorted(set(committed) - set(fresh))
    outdated = sorted(p for p in set(fresh) & set(committed) if fresh[p] != committed[p])
    assert not (missing or stale or outdated), (
        f"generated docs are out of date (missing {missing}, stale {stale}, "
        f"outdated {outdated}): {REGENERATE}"
    )


def test_every_command_and_option_has_a_man_page_entry():
    root_page = (REPO / "man" / "cwsctl.1").read_text(encoding="utf-8")
    for words, ctx in _commands():
        name = "-".join(("cwsctl", *words))
        page = REPO / "man" / f"{name}.1"
        assert page.is_file(), f"no man page for '{' '.join(('cwsctl', *words))}': {REGENERATE}"
        text = page.read_text(encoding="utf-8")
        assert f'.TH "{docs.esc(name.upper())}" 1 ' in text
        for param in ctx.command.get_params(ctx):
            if param.param_type_name != "option" or param.hidden:
                continue
            flag = docs.esc(max(param.opts, key=len))
            assert f"\\fB{flag}\\fR" in text or f"\\fB{flag}\\fR" in root_page, (
                f"{flag} of {name} is not documented: {REGENERATE}"
            )


def test_root_page_has_exit_status_environment_and_no_date(generated: Path):
    from cwsctl import __version__
    from cwsctl.core.errors import ExitStatus

    text = (generated / "man" / "cwsctl.1").read_text(encoding="utf-8")
    th = next(line for line in text.splitlines() if line.startswith(".TH "))
    assert th == f'.TH "CWSCTL" 1 "" "cwsctl {__version__}" "cwsctl manual"'
    exit_section = text.split('.SH "EXIT STATUS"')[1].split(".SH ")[0]
    for status in ExitStatus:
        assert f".TP\n\\fB{int(status)}\\fR\n" in exit_section
    for var in ("CWSCTL_HOME", "CWSCTL_PROFILE", "CWSCTL_PASSPHRASE_FILE", "CWSCTL_TIMEOUT"):
        assert f".TP\n\\fB{var}\\fR\n" in text
    assert ".TP\n\\fBCWSCTL_SANDBOX_DROP_RATE\\fR\n" in text
    # global options live here only
    sign = (generated / "man" / "cwsctl-sign.1").read_text(encoding="utf-8")
    assert "\\-\\-profile" not in sign and "Global options: see \\fBcwsctl\\fR(1)." in sign
    assert '.SH "GLOBAL OPTIONS"' in text and "\\fB\\-\\-profile\\fR" in text


def test_root_page_files_section_has_every_row_of_readmes_files_table(generated: Path):
    readme = (REPO / "README.md").read_text(encoding="utf-8").split("\n## Files\n", 1)[1]
    rows = [
        line
        for line in readme.split("\n## ", 1)[0].splitlines()
        if line.startswith("|") and not line.startswith("|---")
    ][1:]  # without the header row
    text = (generated / "man" / "cwsctl.1").read_text(encoding="utf-8")
    files = text.split(".SH FILES\n")[1].split(".SH ")[0]
    assert files.count(".TP\n") == len(rows) > 0
    assert ".TP\n\\fB$CWSCTL_HOME/audit/<profile>.jsonl\\fR (mode 0600" in files
    assert ".SH FILES\n" not in (generated / "man" / "cwsctl-request.1").read_text()


def test_output_is_reproducible_and_machine_independent(generated: Path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "20")
    monkeypatch.setenv("CWSCTL_TIMEOUT", "3")
    monkeypatch.setenv("CWSCTL_PROFILE", "elsewhere")
    again = docs.generate()
    assert again == _tree(generated)
    for rel, data in again.items():
        for local in (str(Path.home()), str(REPO), os.getcwd()):
            assert local.encode() not in data, f"{rel} contains {local}"


@pytest.mark.skipif(GROFF is None, reason="groff not installed")
def test_man_pages_render_without_warnings(generated: Path):
    pages = sorted(str(p) for p in (generated / "man").glob("*.1"))
    result = subprocess.run(
        [GROFF, "-man", "-Tutf8", "-ww", "-z", *pages], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stderr == ""


def test_check_reports_and_write_removes_a_stale_page(generated: Path, tmp_path: Path, capsys):
    shutil.copytree(generated, tmp_path, dirs_exist_ok=True)
    gone = tmp_path / "man" / "cwsctl-gone.1"
    gone.write_text(".TH CWSCTL-GONE 1\n")
    (tmp_path / "man" / "cwsctl-sign.1").write_text("old\n")

    assert docs.main(["--check", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "stale: man/cwsctl-gone.1" in out and "outdated: man/cwsctl-sign.1" in out
    assert gone.exists()

    assert docs.main(["--root", str(tmp_path)]) == 0
    assert not gone.exists()
    assert docs.main(["--check", "--root", str(tmp_path)]) == 0


@pytest.mark.skipif(BASH is None, reason="bash not installed")
def test_bash_script_registers_and_completes_cwsctl(tmp_path: Path):
    # Stands in for the installed console script, so this works without it on PATH.
    wrapper = tmp_path / "cwsctl"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cwsctl "$@"\n')
    wrapper.chmod(0o755)
    script = REPO / "completions" / "cwsctl.bash"
    result = subprocess.run(
        [
            BASH,
            "--norc",
            "--noprofile",
            "-c",
            f'source "{script}"; complete -p cwsctl; '
            f"COMP_WORDS=(cwsctl pro); COMP_CWORD=1; _cwsctl_completion '{wrapper}'; "
            'printf "reply:%s\\n" "${COMPREPLY[@]}"',
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "complete -o default -F _cwsctl_completion cwsctl" in result.stdout
    assert "reply:profile" in result.stdout.splitlines()


def test_completion_protocol_offers_profile_for_pro(run_cwsctl):
    # Typer reads the instruction as <action>_<shell> (complete_bash); Click 8's bash_complete
    # order is not understood by Typer.
    result = run_cwsctl(
        env={"_CWSCTL_COMPLETE": "complete_bash", "COMP_WORDS": "cwsctl pro", "COMP_CWORD": "1"}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == ["profile"]

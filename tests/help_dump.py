"""Every command's ``--help`` at 80 columns, as one text: the golden file pins the CLI's surface.

Run ``python -m tests.help_dump --write`` after an intended change to the help texts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

GOLDEN = Path(__file__).parent / "golden" / "help-80.txt"


def command_paths() -> list[tuple[str, ...]]:
    """Every visible command path, root first, in the order ``--help`` lists them."""
    from cwsctl.cli.app import app

    found: list[tuple[str, ...]] = []

    def walk(words: tuple[str, ...], ctx: typer.Context) -> None:
        found.append(words)
        group = ctx.command
        if hasattr(group, "list_commands"):
            for name in group.list_commands(ctx):
                sub = group.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    walk((*words, name), typer.Context(sub, info_name=name, parent=ctx))

    walk((), typer.Context(typer.main.get_command(app), info_name="cwsctl"))
    return found


def dump() -> str:
    """The help of every command, each under a ``### cwsctl …`` heading."""
    from cwsctl.cli.app import app

    runner = CliRunner()
    parts = []
    for words in command_paths():
        result = runner.invoke(
            app, [*words, "--help"], env={"COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"}
        )
        parts.append(f"### {' '.join(('cwsctl', *words))} (exit {result.exit_code})\n")
        parts.append(result.stdout)
    return "".join(parts)


if __name__ == "__main__":
    text = dump()
    if "--write" in sys.argv:
        GOLDEN.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)

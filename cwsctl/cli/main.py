"""Entry point: run the app and turn usage errors into one line and exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def run(args: Sequence[str] | None = None) -> int:
    """Run cwsctl with ``args`` and return the exit status."""
    argv = list(sys.argv[1:] if args is None else args)
    from cwsctl.cli.fast import try_fast

    fast = try_fast(argv)
    if fast is not None:
        return fast

    import typer

    from cwsctl.cli.app import app
    from cwsctl.core.errors import ExitStatus

    command = typer.main.get_command(app)
    try:
        result = command.main(
            args=argv,
            prog_name="cwsctl",
            standalone_mode=False,
        )
    except typer.TyperException as exc:  # Click's usage errors: bad option, missing argument
        sys.stderr.write(f"cwsctl: error: {exc.format_message()}\n")
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx else "cwsctl"
        sys.stderr.write(f"hint: see '{where} --help'\n")
        return int(ExitStatus.USAGE)
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("cwsctl: error: interrupted\n")
        return int(ExitStatus.INTERRUPTED)
    return result if isinstance(result, int) else 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())

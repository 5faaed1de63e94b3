"""The one place an exception becomes a message and an exit status (no typer: the fast path uses it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cwsctl.cli.output import Output
from cwsctl.core.errors import CwsError, ExitStatus


def run_reporting_errors(out: Output, func: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Call ``func``; return 0, or print the one-line error and return its exit status.

    Expected failures (CwsError) print ``cwsctl: error: …`` and a hint; anything else is a bug
    and says how to report it. ``--debug`` shows the traceback (and re-raises bugs).
    """
    try:
        func(*args, **kwargs)
    except CwsError as exc:
        if out.settings.debug:
            import traceback

            traceback.print_exc()
        out.error(exc.message, exc.hint)
        return int(exc.exit_status)
    except KeyboardInterrupt:
        out.error("interrupted; work done so far is kept")
        return int(ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        # The reader went away (`| head`, `| true`): stop quietly, as a pipe filter should.
        silence_stdout()
        return 0
    except Exception as exc:
        if out.settings.debug:
            raise
        local = _local_file_error(exc)
        if local is not None:
            out.error(local[0])
            return int(local[1])
        out.error(
            f"internal error: {type(exc).__name__}: {exc}",
            "this is a bug in cwsctl; rerun with --debug and report the traceback",
        )
        return int(ExitStatus.INTERNAL)
    return 0


def _local_file_error(exc: Exception) -> tuple[str, ExitStatus] | None:
    """An OS error about a named local file (a path we did not check first): one line naming it,
    exit 3 inside CWSCTL_HOME (our state), 2 elsewhere (a file the user named). Any other
    exception, and an OSError without a file name (sockets), stays a bug."""
    if not isinstance(exc, OSError) or exc.filename is None:
        return None
    from pathlib import Path

    from cwsctl.core.profile import cwsctl_home

    path = Path(str(exc.filename))
    reason = exc.strerror or type(exc).__name__
    try:
        mine = path.resolve().is_relative_to(cwsctl_home().resolve())
    except (OSError, ValueError, RuntimeError):
        mine = False
    return f"{path}: {reason}", ExitStatus.LOCAL_KEY if mine else ExitStatus.USAGE


def silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush to a closed pipe is quiet."""
    import os
    import sys

    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # no usable stdout at all: nothing left to silence
    finally:
        os.close(devnull)

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
    except Exception as exc:
        if out.settings.debug:
            raise
        out.error(
            f"internal error: {type(exc).__name__}: {exc}",
            "this is a bug in cwsctl; rerun with --debug and report the traceback",
        )
        return int(ExitStatus.INTERNAL)
    return 0

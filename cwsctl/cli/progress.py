"""The bulk-load progress bar (rich, on a terminal only)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from cwsctl.cli.output import Output

if TYPE_CHECKING:
    from cwsctl.core.bulk.runner import RowResult


class BulkProgress:
    """A rich progress bar on a terminal (not with -q/--json); nothing otherwise.

    Rows are streamed, so their number is unknown up front: the bar follows the bytes read from
    the input file, which is what the ETA is computed from.
    """

    def __init__(self, out: Output, stream: Any) -> None:
        self._bar: Any = None
        if not out.stderr_isatty or out.settings.quiet:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._stream = stream
        try:
            total: int | None = os.fstat(stream.fileno()).st_size or None
        except (OSError, ValueError):
            total = None
        self._bar = Progress(
            BarColumn(),
            TextColumn(
                "{task.fields[rows]} rows · {task.fields[rate]:.0f}/s · {task.fields[status]}"
            ),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True, no_color=not out.color),
            transient=True,
        )
        self._task = self._bar.add_task("load", total=total, rows=0, rate=0.0, status="ok")
        self._started = time.perf_counter()
        self._rows = self._failures = 0
        self._bar.start()

    def advance(self, result: RowResult) -> None:
        """Count one finished row."""
        if self._bar is None:
            return
        self._rows += 1
        if not result.done:
            self._failures += 1
        try:
            position = self._stream.tell()
        except (OSError, ValueError):
            position = None
        rate = self._rows / max(time.perf_counter() - self._started, 1e-6)
        status = f"{self._failures} not created" if self._failures else "ok"
        self._bar.update(self._task, completed=position, rows=self._rows, rate=rate, status=status)

    def stop(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.stop()

"""The one object that owns stdout and stderr: TTY, colour, quiet and JSON decisions live here.

stdout carries results (bytes, a header, a PEM, one JSON document); stderr carries everything for
people. rich is imported only when stderr is a colour terminal, so scripts and cron stay fast.

Nothing written here can drive a terminal (see :mod:`cwsctl.core.text`): every message on stderr
has its control characters escaped, and so has everything written to stdout when stdout is a
terminal. Written to a file or a pipe, a result stays byte for byte what it was.
"""

from __future__ import annotations

import os
import sys
from typing import Any


class Settings:
    """Global options, given before or after the command name (mutable: merged as parsed).

    A plain class rather than a dataclass: importing dataclasses costs ~10 ms on the start-up
    path of `cwsctl sign`.
    """

    def __init__(
        self,
        profile: str | None = None,
        json: bool = False,
        quiet: bool = False,
        verbose: bool = False,
        debug: bool = False,
    ) -> None:
        self.profile = profile
        self.json = json
        self.quiet = quiet
        self.verbose = verbose
        self.debug = debug


#: a global option's parameter name -> its Settings attribute, where they differ
SETTING_FOR = {"json_output": "json"}


def apply_globals(settings: Settings, values: dict[str, Any]) -> Settings:
    """Copy every global option given (not None; keys are Settings attributes) into ``settings``."""
    for name, value in values.items():
        if value is not None:
            setattr(settings, name, value)
    if settings.json:
        settings.quiet = True  # a JSON document on stdout; people-messages would only clutter
    if os.environ.get("CWSCTL_DEBUG"):
        settings.debug = True
    return settings


class Output:
    """Writes results to stdout and messages to stderr, honouring --quiet, --json and NO_COLOR."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stdout_isatty = _isatty(sys.stdout)
        self.stderr_isatty = _isatty(sys.stderr)
        self.color = self.stderr_isatty and "NO_COLOR" not in os.environ
        self._console: Any = None

    # -- results (stdout) ---------------------------------------------------------------
    def data(self, payload: bytes | str) -> None:
        """Write a result: exactly as given to a file or a pipe; on a terminal, with its control
        characters escaped (``\\x1b``, ``\\u009b``) so that no answer can drive the terminal."""
        if self.stdout_isatty:
            from cwsctl.core.text import printable_block, printable_bytes

            shown = (
                printable_block(payload) if isinstance(payload, str) else printable_bytes(payload)
            )
            payload = shown.encode("utf-8")
        raw = payload.encode("utf-8") if isinstance(payload, str) else payload
        stream = getattr(sys.stdout, "buffer", None)
        if stream is None:  # pragma: no cover - exotic stdout replacements
            sys.stdout.write(raw.decode("utf-8", "replace"))
        else:
            sys.stdout.flush()
            stream.write(raw)
            stream.flush()

    def line(self, text: str) -> None:
        """Write one line of text to stdout."""
        self.data(text + "\n")

    def json(self, document: Any) -> None:
        """Write one JSON document to stdout (on a terminal, C1 and other invisible characters
        in its strings are written as ``\\u009b`` escapes: still the same JSON)."""
        import json

        self.line(json.dumps(document, indent=2, ensure_ascii=False))

    def pretty_json(self, document: Any) -> None:
        """A JSON document for people: highlighted on a colour terminal, else as :meth:`json`."""
        if not (self.stdout_isatty and self.color):
            self.json(document)
            return
        import json

        from rich.highlighter import JSONHighlighter
        from rich.text import Text

        from cwsctl.core.text import printable_block

        text = Text(printable_block(json.dumps(document, indent=2, ensure_ascii=False)))
        text.no_wrap = True
        text.overflow = None
        self.console().print(JSONHighlighter()(text), soft_wrap=True)

    def table(self, columns: list[Any], rows: list[list[Any]], **options: Any) -> None:
        """A rich table on stdout. ``columns`` are names or rich ``Column`` objects; headings
        and cells are plain text, never rich markup, with control characters escaped."""
        from rich.table import Column, Table
        from rich.text import Text

        from cwsctl.core.text import printable, printable_block

        shown = [c if isinstance(c, Column) else Column(str(c)) for c in columns]
        for column in shown:
            column.header = Text(printable(column.header, limit=None))
        if isinstance(options.get("title"), str):
            options["title"] = Text(printable(options["title"], limit=None))
        table = Table(*shown, **options)
        for row in rows:
            table.add_row(*(Text(printable_block("" if v is None else str(v))) for v in row))
        self.console().print(table)

    def console(self) -> Any:
        """A rich Console on stdout that follows the colour decision (NO_COLOR: no styling at
        all, so nothing but text reaches the terminal)."""
        from rich.console import Console

        if self.color:
            return Console(highlight=False)
        return Console(no_color=True, color_system=None, highlight=False)

    # -- messages (stderr) --------------------------------------------------------------
    def info(self, message: str, style: str | None = None) -> None:
        """A message for people; silenced by --quiet and --json."""
        if self.settings.quiet:
            return
        self._err(message, style)

    def success(self, message: str) -> None:
        """A success line (green on a terminal)."""
        self.info(message, "green")

    def warn(self, message: str) -> None:
        """A warning; silenced by --quiet."""
        if self.settings.quiet:
            return
        self._err(f"cwsctl: warning: {message}", "yellow")

    def error(self, message: str, hint: str | None = None) -> None:
        """The one-line error plus its hint; never silenced."""
        from cwsctl.core.text import printable

        self._err(f"cwsctl: error: {printable(message, limit=None)}", "bold red")
        if hint:
            self._err(f"hint: {printable(hint, limit=None)}", "dim")

    def _err(self, message: str, style: str | None) -> None:
        from cwsctl.core.text import printable_block

        message = printable_block(message)
        if self.color and style:
            if self._console is None:
                from rich.console import Console

                self._console = Console(stderr=True, highlight=False, soft_wrap=True)
            self._console.print(message, style=style, markup=False)
        else:
            sys.stderr.write(message + "\n")
            sys.stderr.flush()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False

"""The one object that owns stdout and stderr: TTY, colour, quiet and JSON decisions live here.

stdout carries results (bytes, a header, a PEM, one JSON document); stderr carries everything for
people. rich is imported only when stderr is a colour terminal, so scripts and cron stay fast.
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
        """Write a result exactly as given (bytes untouched)."""
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
        """Write one JSON document to stdout."""
        import json

        self.line(json.dumps(document, indent=2, ensure_ascii=False))

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
        self._err(f"cwsctl: error: {message}", "bold red")
        if hint:
            self._err(f"hint: {hint}", "dim")

    def _err(self, message: str, style: str | None) -> None:
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

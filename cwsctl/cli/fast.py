"""A fast start-up path for `cwsctl sign`, the command scripts call once per request.

Typer (with the pydantic it uses for coercion) costs ~150 ms to import, several times the cost
of signing itself. A plain `sign` invocation is therefore parsed here with getopt and run with
the same code as the Typer command (cli/sign_run.py). Anything this parser does not fully
understand (help, a typo, an unknown option) falls back to Typer, which owns usage errors and
help. tests/test_fast_path.py keeps both parsers in step.
"""

from __future__ import annotations

import getopt
import os
from collections.abc import Sequence
from pathlib import Path

# getopt rather than argparse: argparse (and the shutil it pulls in) costs ~11 ms at start-up.
_SHORT = "p:qv"
_FLAGS = ("json", "debug", "quiet", "verbose", "signature-only", "explain")
_VALUED = ("profile", "key", "passphrase-file", "username", "algorithm", "raw-out")
_LONG = [*_FLAGS, *(f"{name}=" for name in _VALUED)]
_SHORT_NAMES = {"-p": "profile", "-q": "quiet", "-v": "verbose"}


def _parse(argv: list[str]) -> tuple[dict[str, str | bool], list[str]] | None:
    """GNU-style parse (options anywhere); None for anything Typer should handle."""
    for arg in argv:
        if arg == "--":
            return None
        # getopt accepts unique prefixes of long options; Typer does not, so neither do we.
        if arg.startswith("--") and arg[2:].split("=", 1)[0] not in (*_FLAGS, *_VALUED):
            return None
    try:
        pairs, positional = getopt.gnu_getopt(argv, _SHORT, _LONG)
    except getopt.GetoptError:
        return None
    options: dict[str, str | bool] = {}
    for flag, value in pairs:
        name = _SHORT_NAMES.get(flag, flag.lstrip("-"))
        options[name] = value if name in _VALUED else True
    return options, positional


def try_fast_sign(argv: Sequence[str]) -> int | None:
    """Run a plain `cwsctl sign …` and return its exit status, or None to fall back to Typer."""
    if "sign" not in argv or any(arg in ("-h", "--help", "--version") for arg in argv):
        return None
    parsed = _parse(list(argv))
    if parsed is None:
        return None
    options, positional = parsed
    if len(positional) != 2 or positional[0] != "sign":
        return None

    from cwsctl.cli.errors import run_reporting_errors
    from cwsctl.cli.output import Output, Settings
    from cwsctl.cli.sign_run import SignRequest, sign_file

    def text(name: str) -> str | None:
        value = options.get(name)
        return value if isinstance(value, str) else None

    def path(name: str) -> Path | None:
        value = text(name)
        return Path(value) if value is not None else None

    as_json = bool(options.get("json"))
    settings = Settings(
        profile=text("profile") or os.environ.get("CWSCTL_PROFILE") or None,
        json=as_json,
        quiet=bool(options.get("quiet")) or as_json,
        verbose=bool(options.get("verbose")),
        debug=bool(options.get("debug")) or bool(os.environ.get("CWSCTL_DEBUG")),
    )
    request = SignRequest(
        positional[1],
        path("key"),
        path("passphrase-file"),
        text("username"),
        text("algorithm"),
        bool(options.get("signature-only")),
        path("raw-out"),
        bool(options.get("explain")),
    )
    out = Output(settings)
    return run_reporting_errors(out, sign_file, out, request)

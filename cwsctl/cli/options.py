"""Global options accepted before and after every command, and the one place errors become exits.

Typer has no built-in global options that also work after the subcommand (typer issue #153).
``with_globals`` adds ``--profile/--json/--quiet/--verbose/--debug`` to a command's signature,
merges any value given there into the root context's Settings, hands the command an ``Output``,
and maps every CwsError to its one-line message and exit status.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NamedTuple, TypeVar

import typer

from cwsctl.cli.errors import run_reporting_errors
from cwsctl.cli.output import SETTING_FOR, Output, Settings, apply_globals
from cwsctl.cli.params import ByteSize, Number, OneOf

ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile",
        "-p",
        envvar="CWSCTL_PROFILE",
        metavar="NAME",
        help="Profile to use [env: CWSCTL_PROFILE; default: the configured default].",
        show_envvar=False,
    ),
]
JsonOption = Annotated[
    bool | None,
    typer.Option("--json", help="Print one JSON document on stdout.", show_default=False),
]
QuietOption = Annotated[
    bool | None,
    typer.Option(
        "--quiet", "-q", help="Silent on success; only errors on stderr.", show_default=False
    ),
]
VerboseOption = Annotated[
    bool | None, typer.Option("--verbose", "-v", help="Say more on stderr.", show_default=False)
]
DebugOption = Annotated[
    bool | None,
    typer.Option("--debug", help="Show tracebacks for errors.", show_default=False),
]

# Options shared by several commands (not global: only where they mean something).
PassphraseFileOption = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        metavar="FILE",
        envvar="CWSCTL_PASSPHRASE_FILE",
        show_envvar=False,
        help="File whose first line is the key passphrase [env: CWSCTL_PASSPHRASE_FILE].",
        show_default=False,
    ),
]
# The documented ranges of numeric options (README lists them; tests/cli/test_bad_inputs.py checks them).
MAX_TIMEOUT_S = 86400  # one day: any longer is a hung job, not a slow server
CONCURRENCY_RANGE = (1, 64)
RETRIES_RANGE = (0, 10)
PORT_RANGE = (0, 65535)
MAX_LATENCY_MS = 600_000  # ten minutes
MAX_CLOCK_SKEW_S = 366 * 86400  # a year either way

SECONDS = Number("seconds", above=0, at_most=MAX_TIMEOUT_S)


def __getattr__(name: str) -> Any:
    # KEY_BITS needs core.keys, which imports cryptography's serialization (~12 ms): built on
    # first use so that `cwsctl --help` and commands without --bits do not pay for it.
    if name == "KEY_BITS":
        from cwsctl.core.keys import ALLOWED_BITS

        value = globals()[name] = OneOf(ALLOWED_BITS, "RSA key sizes in bits")
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def timeout_option(help_text: str) -> Any:
    """``--timeout SECONDS`` (env CWSCTL_TIMEOUT): finite, > 0, at most a day."""
    return typer.Option(
        "--timeout",
        metavar="SECONDS",
        envvar="CWSCTL_TIMEOUT",
        parser=SECONDS,
        help=help_text,
    )


TimeoutOption = Annotated[
    float,
    timeout_option(
        "Seconds for the whole exchange: connecting, sending and reading the answer to its "
        "last byte (a GET's retries included); past it, exit 6."
    ),
]
RowTimeoutOption = Annotated[
    float,
    timeout_option(
        "Seconds for each attempt of a row (its look-up, if any, and its send share them): "
        "connecting, sending and reading each answer to its last byte; past it, the attempt "
        "counts as a network failure (exit 6 when no retry succeeds)."
    ),
]
DoctorTimeoutOption = Annotated[
    float,
    timeout_option(
        "Seconds for each request the checks send: connecting, sending and reading the answer "
        "to its last byte; past it, that check fails (exit 6)."
    ),
]
RotateTimeoutOption = Annotated[
    float,
    timeout_option(
        "Seconds for the check that the server knows the next key: connecting, sending and "
        "reading the answer to its last byte; past it, the key is rotated anyway, with a warning."
    ),
]
MaxResponseSizeOption = Annotated[
    int | None,
    typer.Option(
        "--max-response-size",
        metavar="SIZE",
        envvar="CWSCTL_MAX_RESPONSE_SIZE",
        show_envvar=False,
        parser=ByteSize(),
        help="Stop reading an answer larger than this and exit 6 (default 64MiB) "
        "[env: CWSCTL_MAX_RESPONSE_SIZE].",
        show_default=False,
    ),
]
AllowHttpOption = Annotated[
    bool, typer.Option("--allow-http", help="Allow plain http to a non-loopback host.")
]


class Owner(NamedTuple):
    """Tags an option alias with the target it belongs to, for the commands that take every
    target's options: ``Annotated[str | None, typer.Option("--site", …), Owner("openemr")]``.
    Typer ignores it; :func:`option_owners` reads it."""

    target: str


def option_owners(command: Callable[..., Any]) -> dict[str, tuple[str, str]]:
    """Each option of ``command`` tagged with an :class:`Owner`, in signature order: parameter
    name → (the option's first flag, its target)."""
    owners: dict[str, tuple[str, str]] = {}
    for name, param in inspect.signature(command, eval_str=True).parameters.items():
        metadata = getattr(param.annotation, "__metadata__", ())
        owner = next((m.target for m in metadata if isinstance(m, Owner)), None)
        option = next((m for m in metadata if isinstance(m, typer.models.OptionInfo)), None)
        if owner is None or option is None:
            continue
        # In Annotated, typer.Option's first positional argument is its first flag.
        flags = [option.default] if isinstance(option.default, str) else []
        owners[name] = ([*flags, *(option.param_decls or ())][0], owner)
    return owners


_GLOBALS: dict[str, Any] = {
    "profile": ProfileOption,
    "json_output": JsonOption,
    "quiet": QuietOption,
    "verbose": VerboseOption,
    "debug": DebugOption,
}
_SETTING_FOR = SETTING_FOR

F = TypeVar("F", bound=Callable[..., Any])


def root_settings(ctx: typer.Context) -> Settings:
    """The Settings object stored on the root context (created on first use)."""
    root = ctx.find_root()
    if not isinstance(root.obj, Settings):
        root.obj = Settings()
    return root.obj


def merge_globals(ctx: typer.Context, values: dict[str, Any]) -> Settings:
    """Copy every global option given here (not None) into the root Settings."""
    settings = root_settings(ctx)
    apply_globals(settings, {_SETTING_FOR.get(name, name): value for name, value in values.items()})
    return settings


def with_globals(func: F) -> F:
    """Decorate a command taking ``out: Output`` as its first parameter; see module docstring."""
    signature = inspect.signature(func, eval_str=True)
    own = [p for name, p in signature.parameters.items() if name != "out"]
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
        for name, annotation in _GLOBALS.items()
    ]
    ctx_param = inspect.Parameter("_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx: typer.Context = kwargs.pop("_ctx")
        settings = merge_globals(ctx, {name: kwargs.pop(name) for name in _GLOBALS})
        out = Output(settings)
        code = run_reporting_errors(out, func, out, *args, **kwargs)
        if code:
            raise typer.Exit(code)

    wrapper.__signature__ = signature.replace(parameters=[*own, *extra, ctx_param])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {
        p.name: p.annotation for p in wrapper.__signature__.parameters.values()
    }  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]

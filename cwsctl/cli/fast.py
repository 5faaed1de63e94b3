"""A fast start-up path for the commands scripts call once per request, without Typer.

Typer costs ~40 ms to import and, when it parses, imports pydantic (~30 ms) for coercion:
several times the cost of signing a body. A plain invocation of a command listed in
:data:`TARGETS` is therefore parsed here and run with the same code the Typer command runs.

Nothing here declares an option. What the parser knows (each command's options, arguments,
flags, environment variables and defaults, and the root's global options) is the table in
``cli/fast_table.py``, generated from the Typer declarations by ``python -m cwsctl.cli.fast``;
tests/cli/test_fast_path.py checks that the table is current and that both paths give the same
output and exit status. A parameter is served when it needs no conversion beyond
``str``/``Path``/flag, or when its conversion is a ``parser=`` from cli/params.py (the table
carries how that parser was made, and the same parser runs here on the value from the command
line, the environment or the default, as Click runs it); a repeatable option (``-H``) is served
when it is a plain list of strings. The generator refuses anything else. Anything the parser does
not fully understand (help, ``--version``, ``--``, an unknown option, an abbreviation, a missing
or extra argument, a value its parser rejects) falls back to Typer, which owns usage errors
(the one-line message and exit 2) and help.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from cwsctl import registry

#: command path -> "module:function" taking (out, **params), free of typer; params are named as
#: in the Typer command (tests/cli/test_fast_path.py checks the signatures match).
TARGETS = {
    **{path: where for target in registry.TARGETS for path, where in target.fast.items()},
    "keys show": "cwsctl.cli.commands.keys_run:show_command",
    "request": "cwsctl.cli.commands.request_run:request_command",
}
#: root options that only Typer handles (their presence sends the call to Typer).
TYPER_ONLY = ("--version", "--install-completion", "--show-completion", "--help")


class _Fallback(Exception):
    """Let Typer handle this command line."""


def _parse(
    argv: list[str], table: dict[str, Any], values: dict[str, Any], positional: list[str]
) -> None:
    """Click-style options of one level (``--opt V``, ``--opt=V``, ``-o V``, flags) into
    ``values``; other words into ``positional``. Raises _Fallback for anything else."""
    options = table["options"]
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "-" or not arg.startswith("-"):
            positional.append(arg)
            continue
        flag, has_value, inline = arg.partition("=")
        if arg.startswith("--") and has_value:
            spec = options.get(flag)
        else:
            spec, inline = options.get(arg), None
        if spec is None:
            raise _Fallback
        name, kind = spec
        if kind == "flag":
            if inline is not None:
                raise _Fallback
            values[name] = True
            continue
        if inline is None:
            if i >= len(argv):
                raise _Fallback
            inline = argv[i]
            i += 1
        if kind == "multi":
            values.setdefault(name, []).append(inline)
        else:
            values[name] = inline


def _resolve(table: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """Every parameter's value, as Click resolves it: given, else env var, else default."""
    resolved: dict[str, Any] = {}
    for name, (kind, envvar, default, parser) in table["params"].items():
        value = given.get(name)
        if value is None and envvar:
            value = os.environ.get(envvar) or None
            if value is not None and kind == "flag":
                raise _Fallback  # Click's bool parsing of env values: leave it to Typer
        if value is None:
            value = default
        elif kind == "path":
            from pathlib import Path

            value = Path(value)
        if parser is not None and value is not None:
            from cwsctl.cli.params import from_spec

            try:
                value = from_spec(parser)(value)
            except Exception:
                raise _Fallback from None  # Typer reports the rejection (one line, exit 2)
        resolved[name] = value
    return resolved


def try_fast(argv: Sequence[str]) -> int | None:
    """Run a plain invocation of a command in :data:`TARGETS` and return its exit status, or
    None to fall back to Typer."""
    if any(arg in TYPER_ONLY or arg == "--" for arg in argv):
        return None
    from cwsctl.cli.fast_table import COMMANDS, ROOT

    words = list(argv)
    try:
        # Root options come before the command name (Click stops at the first other word).
        start = 0
        while start < len(words) and words[start].startswith("-") and words[start] != "-":
            spec = ROOT["options"].get(words[start].partition("=")[0])
            if spec is None:
                return None
            start += 2 if spec[1] != "flag" and "=" not in words[start] else 1
        for size in (2, 1):
            name = " ".join(words[start : start + size])
            if len(name.split()) == size and name in COMMANDS:
                root_given: dict[str, Any] = {}
                stray: list[str] = []
                _parse(words[:start], ROOT, root_given, stray)
                if stray:
                    return None
                return _run(name, words[start + size :], ROOT, root_given, COMMANDS[name])
    except _Fallback:
        return None
    return None


def _run(
    name: str, rest: list[str], root: dict[str, Any], root_given: dict[str, Any], table: Any
) -> int:
    given: dict[str, Any] = {}
    positional: list[str] = []
    _parse(rest, table, given, positional)
    arguments = table["arguments"]
    required = sum(1 for _, needed in arguments if needed)
    if not required <= len(positional) <= len(arguments):
        raise _Fallback
    given.update({arg: value for (arg, _), value in zip(arguments, positional, strict=False)})
    params = _resolve(table, given)

    from cwsctl.cli.errors import run_reporting_errors
    from cwsctl.cli.output import SETTING_FOR, Output, Settings, apply_globals

    settings = Settings()
    for values in (_resolve(root, root_given), params):
        apply_globals(
            settings,
            {SETTING_FOR.get(g, g): values.pop(g, None) for g in root["globals"]},
        )
    module, _, function = TARGETS[name].partition(":")
    import importlib

    target = getattr(importlib.import_module(module), function)
    out = Output(settings)
    return run_reporting_errors(out, target, out, **params)


# The generator: the table above, from the Typer declarations ---------------------------------
_ROOT_GLOBALS = {
    "profile_name": "profile",
    "json_output": "json_output",
    "quiet": "quiet",
    "verbose": "verbose",
    "debug": "debug",
}


def _kind(param: Any) -> tuple[str, Any]:
    """(kind, parser spec or None) of a Click parameter built by Typer; ValueError when the fast
    path cannot convert its values exactly as Typer does."""
    info = param.type_descriptor.parameter_info
    annotation = param.type_descriptor.annotation
    parser = getattr(info, "parser", None)
    from pathlib import Path

    from cwsctl.cli.params import from_spec

    cannot = ValueError(f"the fast path cannot serve {param.name!r}: it needs Typer's conversion")
    if (
        getattr(info, "click_type", None) is not None
        or param.nargs != 1
        or param.callback is not None
        or getattr(param, "count", False)
        or getattr(param, "secondary_opts", [])
    ):
        raise cannot
    if parser is not None:
        spec = getattr(parser, "spec", None)
        # Only a parser from cli/params.py, which the table can name and make again.
        if spec is None or param.multiple or getattr(param, "is_flag", False):
            raise cannot
        if from_spec(spec).spec != spec:
            raise cannot
        return "parsed", spec
    if param.multiple:
        # A repeatable option of strings, given on the command line only.
        if annotation != list[str] or param.envvar or param.default is not None:
            raise cannot
        return "multi", None
    if getattr(param, "is_flag", False):
        return "flag", None
    if annotation is Path:
        return "path", None
    if annotation is str:
        return "str", None
    raise ValueError(f"the fast path cannot serve {param.name!r} of type {annotation!r}")


def _table(params: Any, rename: dict[str, str] | None = None) -> dict[str, Any]:
    options: dict[str, tuple[str, str]] = {}
    arguments: list[tuple[str, bool]] = []
    described: dict[str, tuple[str, str | None, Any, Any]] = {}
    for param in params:
        if param.param_type_name == "option" and "--" + param.name.replace("_", "-") in (
            "--install-completion",
            "--show-completion",
            "--version",
        ):
            continue
        name = (rename or {}).get(param.name, param.name)
        kind, parser = _kind(param)
        if param.param_type_name == "argument":
            arguments.append((name, bool(param.required)))
        else:
            for opt in param.opts:
                options[opt] = (name, kind)
        default = param.default
        described[name] = (kind, param.envvar, default, parser)
    return {"options": options, "arguments": arguments, "params": described}


def build_table() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(root table, {command path: table}) from the live Typer commands."""
    import typer

    from cwsctl.cli.app import app

    root = typer.main.get_command(app)
    ctx = typer.Context(root)
    root_table = _table(root.params, _ROOT_GLOBALS)
    root_table["globals"] = sorted(_ROOT_GLOBALS.values())
    commands: dict[str, dict[str, Any]] = {}
    for path in TARGETS:
        command: Any = root
        for word in path.split():
            command = command.get_command(ctx, word)
        commands[path] = _table(command.params)
    return root_table, commands


def render_table() -> str:
    """The text of cli/fast_table.py."""
    import pprint

    root, commands = build_table()
    return (
        '"""Generated by `python -m cwsctl.cli.fast` from the Typer declarations: do not edit.\n\n'
        'What the fast path (cli/fast.py) may parse; tests/cli/test_fast_path.py checks it is current.\n"""\n\n'
        "# fmt: off\n"
        f"ROOT = {pprint.pformat(root, width=99, sort_dicts=True)}\n\n"
        f"COMMANDS = {pprint.pformat(commands, width=99, sort_dicts=True)}\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cwsctl.cli.fast [--check]``: write (or check) cli/fast_table.py."""
    import sys
    from pathlib import Path

    args = list(sys.argv[1:] if argv is None else argv)
    path = Path(__file__).with_name("fast_table.py")
    text = render_table()
    if args == ["--check"]:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            print(f"{path} is stale: run python -m cwsctl.cli.fast", file=sys.stderr)
            return 1
        return 0
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

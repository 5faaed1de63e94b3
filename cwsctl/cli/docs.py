"""Generate the committed shell completions and man pages from the Typer app.

Run ``python -m cwsctl.cli.docs`` in a source checkout after changing a command, an option, a help
text, README's "Exit codes" or "Files" table, or the version; ``--check`` writes nothing, lists what
is out of date and exits 1 (tests/cli/test_docs.py does the same).

- ``completions/``: the scripts the app itself prints for ``_CWSCTL_COMPLETE=source_{bash,zsh,fish}``,
  produced in-process, with the surrounding blank lines removed (zsh only recognises ``#compdef`` on
  the first line of a file in ``$fpath``).
- ``man/``: ``cwsctl.1`` plus one page per command and subcommand, roff written from the command
  tree. Global options are documented once, in cwsctl(1). Hidden commands and options are left
  out, as in ``--help``.

Why not click-man (0.6.0, compared with typer 0.29): Typer now vendors a trimmed Click
(``typer._click``) whose commands are not ``click.Command`` and which has no ``Option`` class at
all. ``click-man cwsctl`` stops with "Could not find click.Command object"; its library call
``write_man_pages("cwsctl", typer.main.get_command(app))`` writes a page per command, but none
has an OPTIONS section (it keeps only params that are ``click.Option``). Even with options
patched in, its pages lack ARGUMENTS, EXIT STATUS, ENVIRONMENT, FILES and SEE ALSO, cut short
help at 45 characters ("Send a signed request and verify CorEMR's..."), bold only an option's
first flag, repeat the global options on every page, put today's date in .TH unless
SOURCE_DATE_EPOCH is set, and leave hyphens and non-ASCII unescaped (groff -ww warns on the
latter); click-man 0.6.0 also needs Python 3.11 while cwsctl supports 3.10. Post-processing its
pages would mean rewriting most of each one, so this module stays.

Output is reproducible: no dates (the version goes in .TH), no paths from this machine, no terminal
width (Click's formatter is not used), commands in the app's own order, everything else sorted.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

PROG = "cwsctl"
COMPLETE_VAR = "_CWSCTL_COMPLETE"
COMPLETIONS = {
    "bash": "completions/cwsctl.bash",
    "zsh": "completions/_cwsctl",
    "fish": "completions/cwsctl.fish",
}
MAN_DIR = "man"
REPO_ROOT = Path(__file__).resolve().parents[2]

# Variables read by the code itself, shown first in this order; variables behind an option's
# default (envvar= or "[env: NAME]" in its help) are found in the command tree and follow, sorted.
ENVIRONMENT = {
    "CWSCTL_HOME": "Root of configuration, keys and state. Default: the platform's user "
    "configuration directory (`~/.config/cwsctl` on Linux).",
    "CWSCTL_PROFILE": "Profile to use when `--profile` is not given. Default: the profile "
    "marked as default.",
    "CWSCTL_PASSPHRASE_FILE": "File whose first line is the private key's passphrase, used "
    "when `--passphrase-file` is not given. Without either, cwsctl prompts only on a terminal.",
    "CWSCTL_TIMEOUT": "Seconds for each whole exchange with the server: connecting, sending and "
    "reading the answer to its last byte (a GET's retries included). Past it, exit 6.",
    "CWSCTL_MAX_RESPONSE_SIZE": "Largest answer read, in bytes or with a K/M/G (KiB/MiB/GiB) "
    "suffix; past it cwsctl stops reading and exits 6. Default 64MiB.",
    "CWSCTL_CONCURRENCY": "Requests in flight during a bulk load.",
    "CWSCTL_DEBUG": "If set to a non-empty value, act as if `--debug` were given.",
    "NO_COLOR": "If set, never colour the output (colour is used only when stderr is a terminal).",
}
_ENV_IN_HELP = re.compile(r"\benv(?: var)?: ([A-Z][A-Z0-9_]*)")
_ENV_NOTE = re.compile(r"\s*\[env(?: var)?: [^\]]*\]")


class DocsError(Exception):
    """The inputs cannot be documented (e.g. README's exit-code table disagrees with ExitStatus)."""


# -- the command tree ---------------------------------------------------------------------------


@dataclass
class Page:
    """One command or group and the man page it gets."""

    words: tuple[str, ...]  # () for the root, ("keys", "import") for `cwsctl keys import`
    command: Any
    ctx: typer.Context
    children: list[Page] = field(default_factory=list)

    @property
    def name(self) -> str:
        return "-".join((PROG, *self.words))

    @property
    def title(self) -> str:
        return " ".join((PROG, *self.words))

    def descendants(self) -> list[Page]:
        return [page for child in self.children for page in (child, *child.descendants())]


def command_tree() -> Page:
    """The root page of ``cwsctl.cli.app``, its descendants attached (hidden commands skipped)."""
    from cwsctl.cli.app import app

    root = typer.main.get_command(app)
    page = Page((), root, typer.Context(root, info_name=PROG))
    _attach_children(page)
    return page


def _attach_children(page: Page) -> None:
    group = page.command
    if not callable(getattr(group, "list_commands", None)):
        return
    for name in group.list_commands(page.ctx):
        sub = group.get_command(page.ctx, name)
        if sub is None or sub.hidden:
            continue
        child = Page((*page.words, name), sub, typer.Context(sub, info_name=name, parent=page.ctx))
        page.children.append(child)
        _attach_children(child)


def _params(page: Page, kind: str) -> list[Any]:
    return [
        p
        for p in page.command.get_params(page.ctx)
        if p.param_type_name == kind and not getattr(p, "hidden", False)
    ]


def _key(option: Any) -> tuple[str, ...]:
    return tuple(sorted((*option.opts, *option.secondary_opts)))


def global_option_keys(root: Page) -> set[tuple[str, ...]]:
    """The global options (--profile, --json, …) that ``with_globals`` adds to every command:
    documented once, in cwsctl(1). A command's own option of the same name (``composition get
    --version``) is not one of them."""
    from cwsctl.cli.options import _GLOBALS

    below = {
        _key(p)
        for page in root.descendants()
        for p in _params(page, "option")
        if p.name in _GLOBALS or p.name == "help"
    }
    return {_key(p) for p in _params(root, "option")} & below


# -- roff ---------------------------------------------------------------------------------------


def esc(text: str) -> str:
    """Escape text for roff: backslashes, hyphens as \\-, non-ASCII as \\[uXXXX]."""
    text = text.replace("\\", "\\e").replace("-", "\\-").replace("\t", " ")
    return "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)


def _line(text: str) -> str:
    """A text line that roff cannot mistake for a request."""
    return "\\&" + text if text[:1] in (".", "'") else text


def _arg(text: str) -> str:
    """A quoted macro argument."""
    return '"' + esc(text).replace('"', "\\(dq") + '"'


def _bold(text: str) -> str:
    return f"\\fB{esc(text)}\\fR"


def _inline(markdown: str) -> str:
    """Markdown inline text to roff: `code` and **strong** in bold, the rest escaped."""
    parts = re.split(r"(`[^`]+`|\*\*[^*]+\*\*)", markdown)
    # re.split with a group: odd items are the matches
    return "".join(_bold(part.strip("`*")) if i % 2 else esc(part) for i, part in enumerate(parts))


def _sentence(text: str) -> str:
    """Capitalised, ending with a full stop (for descriptions taken from tables)."""
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def _paragraphs(text: str) -> list[str]:
    """Click help text to roff paragraphs; a block opening with \\b keeps its line breaks."""
    lines: list[str] = []
    for block in re.split(r"\n\s*\n", inspect.cleandoc(text).partition("\f")[0].strip()):
        if lines:
            lines.append(".PP")
        rows = block.splitlines()
        if rows[0].strip() == "\b":
            lines += [".nf", *(_line(esc(row)) for row in rows[1:]), ".fi"]
        else:
            lines.append(_line(esc(" ".join(block.split()))))
    return lines


def _help(param: Any, ctx: typer.Context) -> str:
    record = param.get_help_record(ctx)
    return " ".join((record[1] if record else param.help or "").split())


def _option_tag(option: Any, ctx: typer.Context) -> str:
    def flags(opts: Sequence[str]) -> str:
        ordered = sorted(opts, key=lambda o: len(o) - len(o.lstrip("-/")))
        return ", ".join(_bold(o) for o in ordered)

    tag = flags(option.opts)
    if option.secondary_opts:
        tag += " / " + flags(option.secondary_opts)
    if not option.is_flag and not option.count:
        show = getattr(option, "display_type_rich", None)
        metavar = show(ctx=ctx) if show else option.make_metavar(ctx)
        if metavar:
            tag += f" \\fI{esc(metavar)}\\fR"
    return tag


def _arg_name(argument: Any) -> str:
    return (argument.metavar or argument.name).upper()


def _synopsis(page: Page) -> str:
    parts = [_bold(page.title), "[\\fIOPTIONS\\fR]"]
    if page.children:
        parts += ["\\fICOMMAND\\fR", "[\\fIARGS\\fR]..."]
    for argument in _params(page, "argument"):
        name = f"\\fI{esc(_arg_name(argument))}\\fR" + ("..." if argument.nargs == -1 else "")
        parts.append(name if argument.required else f"[{name}]")
    return " ".join(parts)


def _short_help(page: Page) -> str:
    return page.command.get_short_help_str(limit=10_000).rstrip(".")


def _options(page: Page, options: list[Any]) -> list[str]:
    lines: list[str] = []
    for option in options:
        lines += [".TP", _option_tag(option, page.ctx), _line(esc(_help(option, page.ctx)))]
    return lines


def render_page(page: Page, root: Page, globals_: set[tuple[str, ...]], extra: list[str]) -> str:
    """One man page; ``extra`` holds sections that only cwsctl(1) carries."""
    from cwsctl import __version__

    is_root = page is root
    lines = [
        '.\\" Generated by python -m cwsctl.cli.docs from the cwsctl command tree; do not edit.',
        f'.TH {_arg(page.name.upper())} 1 "" {_arg(f"{PROG} {__version__}")} '
        f"{_arg('cwsctl manual')}",
        ".nh",
        ".ad l",
        ".SH NAME",
        f"{esc(page.name)} \\- {esc(_short_help(page))}",
        ".SH SYNOPSIS",
        _synopsis(page),
        ".SH DESCRIPTION",
        *_paragraphs(page.command.help or _short_help(page)),
    ]
    if page.command.deprecated:
        lines += [".PP", "\\fBDeprecated.\\fR"]
    if page.command.epilog:
        lines += [".PP", *_paragraphs(page.command.epilog)]

    arguments = _params(page, "argument")
    if arguments:
        lines.append(".SH ARGUMENTS")
        for argument in arguments:
            tag = f"\\fI{esc(_arg_name(argument))}\\fR"
            lines += [".TP", tag, _line(esc(_help(argument, page.ctx)))]

    options = _params(page, "option")
    own = [o for o in options if _key(o) not in globals_]
    if is_root:
        shared = [o for o in options if _key(o) in globals_]
        if own:
            lines += [".SH OPTIONS", *_options(page, own)]
        if shared:
            lines += ['.SH "GLOBAL OPTIONS"', "Accepted before or after the command name."]
            lines += _options(page, shared)
    elif options:
        lines += [".SH OPTIONS", *_options(page, own)]
        if len(own) < len(options):
            lines += [".PP"] if own else []
            lines.append(f"Global options: see {_bold(PROG)}(1).")

    if page.children:
        lines.append(".SH COMMANDS")
        for sub in page.descendants():
            lines += [
                ".TP",
                _bold(" ".join(sub.words[len(page.words) :])),
                _line(f"{esc(_short_help(sub))}. See {_bold(sub.name)}(1)."),
            ]

    lines += extra
    if is_root:
        see_also = {p.name for p in root.descendants()}
    else:
        see_also = {root.name, "-".join((PROG, *page.words[:-1]))}
        see_also |= {p.name for p in page.descendants()}
    names = sorted(see_also)
    lines.append('.SH "SEE ALSO"')
    lines += [f".BR {esc(name)} (1)," for name in names[:-1]]
    lines.append(f".BR {esc(names[-1])} (1)")
    return "\n".join(lines) + "\n"


# -- cwsctl(1) only: exit status, environment, files ---------------------------------------------


def readme_table(readme: str, heading: str) -> list[list[str]]:
    """The body rows of the first Markdown table under ``## heading``."""
    lines = readme.splitlines()
    if f"## {heading}" not in lines:
        raise DocsError(f"README.md has no '## {heading}' section")
    rows: list[list[str]] = []
    for line in lines[lines.index(f"## {heading}") + 1 :]:
        if line.startswith("## ") or (rows and not line.startswith("|")):
            break
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
            rows.append([cell.strip().replace("\\|", "|") for cell in cells])
    body = [row for row in rows[1:] if not re.fullmatch(r"[\s:|-]*", "".join(row))]
    if not body:
        raise DocsError(f"README.md's '## {heading}' section has no table")
    return body


def exit_status_section(readme: str) -> list[str]:
    """EXIT STATUS: codes from ExitStatus, meanings from README's table (both must agree)."""
    from cwsctl.core.errors import ExitStatus

    meanings = {row[0].strip("`"): row[1] for row in readme_table(readme, "Exit codes")}
    codes = {str(int(status)) for status in ExitStatus}
    if set(meanings) != codes:
        raise DocsError(
            "README.md's exit-code table and cwsctl.core.errors.ExitStatus differ: "
            f"README only {sorted(set(meanings) - codes)}, ExitStatus only {sorted(codes - set(meanings))}"
        )
    lines = ['.SH "EXIT STATUS"']
    for status in sorted(ExitStatus):
        lines += [".TP", _bold(str(int(status))), _line(_inline(meanings[str(int(status))]))]
    return lines


def environment_section(root: Page, globals_: set[tuple[str, ...]]) -> list[str]:
    """ENVIRONMENT: the variables above, then every other one behind an option's default."""
    uses: dict[str, dict[str, list[str]]] = {}  # variable -> option flag -> commands
    helps: dict[str, str] = {}
    for page in (root, *root.descendants()):
        for option in _params(page, "option"):
            if page is not root and _key(option) in globals_:
                continue
            envvar = option.envvar
            names = {envvar} if isinstance(envvar, str) else set(envvar or ())
            names |= set(_ENV_IN_HELP.findall(_help(option, page.ctx)))
            flag = max(option.opts, key=len)
            for name in names:
                uses.setdefault(name, {}).setdefault(flag, []).append(page.title)
                helps.setdefault(name, _ENV_NOTE.sub("", option.help or "").strip())
    described = {**helps, **ENVIRONMENT}
    order = [*ENVIRONMENT, *sorted(set(described) - set(ENVIRONMENT))]
    lines = [".SH ENVIRONMENT"]
    for name in order:
        text = _inline(_sentence(described[name]))
        for flag, commands in sorted(uses.get(name, {}).items()):
            where = ", ".join(_bold(c) for c in sorted(commands) if c != PROG)
            text += f" Default of {_bold(flag)}" + (f" for {where}." if where else ".")
        lines += [".TP", _bold(name), _line(text)]
    return lines


def files_section(readme: str) -> list[str]:
    """FILES: README's "Files" table (what | where)."""
    lines = [".SH FILES"]
    for what, where, *_ in readme_table(readme, "Files"):
        lines += [".TP", _line(_inline(where)), _line(_inline(_sentence(what)))]
    return lines


# -- generation ---------------------------------------------------------------------------------


def completion_scripts() -> dict[str, str]:
    """What the app prints for ``_CWSCTL_COMPLETE=source_<shell>``, run in-process."""
    from typer.testing import CliRunner

    from cwsctl.cli.app import app

    scripts = {}
    for shell, path in COMPLETIONS.items():
        result = CliRunner().invoke(app, [], prog_name=PROG, env={COMPLETE_VAR: f"source_{shell}"})
        script = result.stdout.strip()
        if result.exit_code != 0 or f"{COMPLETE_VAR}=complete_{shell}" not in script:
            raise DocsError(f"no {shell} completion script from {COMPLETE_VAR}=source_{shell}")
        scripts[path] = script + "\n"
    return scripts


def man_pages(readme: str) -> dict[str, str]:
    """Every man page, by path relative to the checkout."""
    root = command_tree()
    globals_ = global_option_keys(root)
    root_extra = [
        *exit_status_section(readme),
        *environment_section(root, globals_),
        *files_section(readme),
    ]
    return {
        f"{MAN_DIR}/{page.name}.1": render_page(
            page, root, globals_, root_extra if page is root else []
        )
        for page in (root, *root.descendants())
    }


def generate(readme: str | None = None) -> dict[str, bytes]:
    """Every generated file's content, by path relative to the checkout, sorted."""
    if readme is None:
        readme_path = REPO_ROOT / "README.md"
        if not readme_path.is_file():
            raise DocsError(f"{readme_path} not found: run from a source checkout")
        readme = readme_path.read_text(encoding="utf-8")
    files = {**completion_scripts(), **man_pages(readme)}
    return {path: files[path].encode("utf-8") for path in sorted(files)}


def sync(root: Path, files: dict[str, bytes], *, check: bool) -> list[tuple[str, str]]:
    """Compare ``root`` with ``files`` and, unless ``check``, bring it up to date.

    Returns ``(state, path)`` for every file out of date: missing, outdated, or stale (a man page
    for a command that no longer exists; removed when writing).
    """
    changes = []
    for rel, data in files.items():
        path = root / rel
        current = path.read_bytes() if path.is_file() else None
        if current != data:
            changes.append(("missing" if current is None else "outdated", rel))
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
    for path in sorted((root / MAN_DIR).glob(f"{PROG}*.1")):
        rel = f"{MAN_DIR}/{path.name}"
        if rel not in files:
            changes.append(("stale", rel))
            if not check:
                path.unlink()
    return changes


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cwsctl.cli.docs [--check] [--root DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m cwsctl.cli.docs",
        description="Regenerate completions/ and man/ from the cwsctl command tree.",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; list out-of-date files and exit 1"
    )
    parser.add_argument(
        "--root", type=Path, default=REPO_ROOT, help="checkout to update (default: this one)"
    )
    args = parser.parse_args(argv)
    try:
        changes = sync(args.root, generate(), check=args.check)
    except DocsError as exc:
        print(f"docs: error: {exc}", file=sys.stderr)
        return 2
    for state, rel in changes:
        if args.check:
            print(f"{state}: {rel}" + (" (no such command)" if state == "stale" else ""))
        else:
            print(f"{'removed' if state == 'stale' else 'wrote'} {rel}")
    if args.check and changes:
        print("hint: run 'python -m cwsctl.cli.docs' and commit the result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

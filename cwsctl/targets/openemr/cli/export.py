"""`cwsctl export`: a bulk FHIR export into a directory, resumable (the logic:
protocols/fhir/exporter.py, built for the profile by targets/openemr/export.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cwsctl.cli.common import passphrase_source, require_kind, store_and_profile
from cwsctl.cli.options import PassphraseFileOption, timeout_option, with_globals
from cwsctl.cli.output import Output
from cwsctl.cli.params import ByteSize, Number, WholeNumber
from cwsctl.core.errors import InputError

if TYPE_CHECKING:
    from cwsctl.protocols.fhir.export_result import ExportResult

#: --parallel's range and --wait's maximum (a week: longer is a forgotten job).
PARALLEL_RANGE = (1, 16)
MAX_WAIT_S = 7 * 86400


class _StatusLine:
    """The one status line on a terminal (stderr), rewritten in place; nothing elsewhere or
    under -q/--json. Server text reaching it (X-Progress) is already sanitised by core."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self.live = out.stderr_isatty and not out.settings.quiet
        self.shown = False

    def note(self, message: str) -> None:
        self.clear()
        self.out.info(message)

    def progress(self, message: str) -> None:
        if not self.live:
            return
        from cwsctl.core.text import printable

        width = 100
        sys.stderr.write("\r\x1b[K" + printable(message, limit=width))
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False


def _files(count: int) -> str:
    return f"{count} file" + ("" if count == 1 else "s")


def _size(value: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= factor:
            return f"{value / factor:.1f} {unit}"
    return f"{value} bytes"


@with_globals
def export(
    out: Output,
    directory: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="DIR",
            envvar="CWSCTL_EXPORT_DIR",
            help="Directory that receives the files, manifest.json and the job's state "
            "(.cwsctl-export.json); made 0700 if missing [env: CWSCTL_EXPORT_DIR].",
            show_envvar=False,
            show_default=False,
        ),
    ],
    patient: Annotated[
        bool,
        typer.Option(
            "--patient", help="Patient-level export (/Patient/$export) instead of the system's."
        ),
    ] = False,
    group: Annotated[
        str | None,
        typer.Option(
            "--group",
            metavar="ID",
            help="Export a Group's patients (/Group/ID/$export).",
            show_default=False,
        ),
    ] = None,
    types: Annotated[
        str | None,
        typer.Option(
            "--type",
            metavar="Patient,Observation,…",
            help="Resource types to export (sent as _type and as type, which OpenEMR reads); "
            "default: all the token may read.",
            show_default=False,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="TIME|last",
            help="Only resources changed since this instant (2026-03-01T12:00:00Z); 'last': "
            "the transaction time of the last finished export in DIR (nightly increments).",
            show_default=False,
        ),
    ] = None,
    type_filter: Annotated[
        list[str] | None,
        typer.Option(
            "--type-filter",
            metavar="QUERY",
            help="_typeFilter, e.g. 'Patient?gender=female' (repeatable; OpenEMR ignores it).",
            show_default=False,
        ),
    ] = None,
    new: Annotated[
        bool,
        typer.Option(
            "--new",
            help="Start a new export when DIR holds a finished (or cancelled, failed, expired) "
            "one; an unfinished one is continued first.",
        ),
    ] = False,
    show_status: Annotated[
        bool, typer.Option("--status", help="Show the state of the export in DIR and exit.")
    ] = False,
    cancel: Annotated[
        bool,
        typer.Option(
            "--cancel", help="Cancel the export in DIR (DELETE its status URL) and mark it so."
        ),
    ] = False,
    parallel: Annotated[
        int,
        typer.Option(
            "--parallel",
            metavar="N",
            parser=WholeNumber(*PARALLEL_RANGE),
            help="Files downloaded at once, 1 to 16.",
        ),
    ] = 4,
    max_file_size: Annotated[
        int,
        typer.Option(
            "--max-file-size",
            metavar="SIZE",
            parser=ByteSize(),
            help="Stop a file larger than this (exit 6) [default: 16GiB].",
            show_default=False,
        ),
    ] = 16 << 30,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            metavar="SECONDS",
            parser=Number("seconds", above=0, at_most=MAX_WAIT_S),
            help="Most seconds this run waits for the server to finish the job (polling); past "
            "it, exit 6 with the job kept for the next run [default: 21600, 6 hours].",
            show_default=False,
        ),
    ] = 21600.0,
    timeout: Annotated[
        float,
        timeout_option(
            "Seconds each network step may take: a token, a poll, connecting, the next "
            "chunk of a file (the kick-off gets 180 s: OpenEMR exports inside it)."
        ),
    ] = 60.0,
    passphrase_file: PassphraseFileOption = None,
) -> None:
    """Bulk FHIR export ($export) from an openemr profile into DIR, resumable from cron.

    Kicks off with the client-credentials grant and the profile's system/ scopes (register them
    with: cwsctl oauth register --export-scopes), polls the status URL as the server asks,
    downloads every file in parallel, streaming, each checked (every line a resource of the
    file's type, the count the manifest gives) and renamed into place, then writes
    DIR/manifest.json. Running the same command again continues the same job: no second
    kick-off, finished files kept, partial ones fetched again. A finished DIR is reported as
    done (exit 0) unless --new is given.
    """
    from cwsctl.protocols.fhir.export_request import ExportRequest, check_since, parse_types
    from cwsctl.protocols.fhir.export_result import ExportOptions
    from cwsctl.targets.openemr.export import exporter_for

    if patient and group is not None:
        raise InputError("--patient and --group are exclusive")
    if show_status and cancel:
        raise InputError("--status and --cancel are exclusive")
    request = ExportRequest(
        level="group" if group is not None else "patient" if patient else "system",
        group=group,
        types=parse_types(types),
        since=check_since(since) if since is not None else None,
        type_filter=tuple(type_filter or ()),
    )
    if group is not None and not group.strip():
        raise InputError("--group needs a Group id")
    require_kind(out.settings, "openemr", "exports")
    store, name = store_and_profile(out.settings)
    profile = store.get_profile(name)
    from cwsctl.core.profile import load_profile_key

    if show_status and not _needs_server(directory):
        _print_status(out, _local_status(directory))
        return
    key = load_profile_key(store, name, passphrase_source(passphrase_file))
    options = ExportOptions(
        new=new, parallel=parallel, max_file_size=max_file_size, wait=wait, timeout=timeout
    )
    line = _StatusLine(out)
    from cwsctl.core.audit import AuditLog

    audit = AuditLog(store.root, name)
    with exporter_for(profile, store, key, directory, options, line, audit) as exporter:
        try:
            if show_status:
                _print_status(out, exporter.status())
                return
            if cancel:
                document = exporter.cancel()
                line.clear()
                if out.settings.json:
                    out.json(document)
                out.info(f"cancelled the export in {directory} ({document.get('server')})")
                return
            result = exporter.run(request)
        finally:
            line.clear()
    _report(out, result)


def _needs_server(directory: Path) -> bool:
    """--status asks the server only while the job runs there (no manifest yet)."""
    from cwsctl.protocols.fhir.export_state import ExportState

    state = ExportState.load(directory)
    return state is not None and state.state == "running"


def _local_status(directory: Path) -> dict[str, Any]:
    from cwsctl.protocols.fhir.export_state import ExportState, status_document

    state = ExportState.load(directory)
    if state is None:
        raise InputError(
            f"no export in {directory}", hint="start one: cwsctl -p PROFILE export --out DIR"
        )
    return status_document(state)


def _print_status(out: Output, document: dict[str, Any]) -> None:
    if out.settings.json:
        out.json(document)
        return
    rows = [
        ("state", document.get("state")),
        ("kicked off", document.get("kicked_off_at")),
        ("status URL", document.get("status_url")),
        ("progress", document.get("progress")),
        ("server error", document.get("server_error")),
        ("transaction time", document.get("transaction_instant")),
        (
            "files",
            f"{document.get('files_done')} of {document.get('files')} downloaded "
            f"({_size(int(document.get('bytes_done') or 0))})",
        ),
        ("finished", document.get("finished_at")),
    ]
    last = document.get("last_done")
    if isinstance(last, dict) and last.get("transaction_instant"):
        rows.append(("--since last", last.get("transaction_instant")))
    for label, value in rows:
        if value is not None:
            out.line(f"{label + ':':<18}{value}")


def _report(out: Output, result: ExportResult) -> None:
    document = result.to_json()
    if out.settings.json:
        out.json(document)
    when = document["transaction_instant"] or "unknown"
    if result.already_done:
        out.info(
            f"{result.directory} already holds a finished export (transaction time {when}, "
            f"{document['resources']} resources in {_files(len(result.files))}); --new starts "
            "another"
        )
        return
    out.info(
        f"exported {document['resources']} resources in {_files(len(result.files))} "
        f"({_size(document['bytes'])}, {result.fetched} fetched by this run) into "
        f"{result.directory} in {result.seconds:.1f} s; transaction time {when}"
    )
    if document["error_files"] or result.inline_errors:
        count = document["error_files"] + len(result.inline_errors)
        first = f": {result.inline_errors[0]}" if result.inline_errors else ""
        out.warn(
            f"the server reported errors ({count}{first}); see the error-*.ndjson files and "
            "manifest.json"
        )

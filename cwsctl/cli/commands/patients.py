"""`cwsctl patients create`: one patient from options or a file, or a resumable bulk load."""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cwsctl.cli.common import load_target, open_client, patient_mapping, read_body
from cwsctl.cli.options import (
    CONCURRENCY_RANGE,
    RETRIES_RANGE,
    AllowHttpOption,
    MaxResponseSizeOption,
    PassphraseFileOption,
    RowTimeoutOption,
    with_globals,
)
from cwsctl.cli.output import Output
from cwsctl.cli.params import OutputFile, WholeNumber
from cwsctl.cli.progress import BulkProgress
from cwsctl.core.errors import ClientRequestError, CwsError, ExitStatus, InputError

if TYPE_CHECKING:
    from cwsctl.core.bulk.runner import RowResult, Summary

app = typer.Typer(
    help="Create patients in the profile's EMR (CorEMR, OpenEMR or openEHR), one or thousands.",
    no_args_is_help=True,
)

DATE_HELP = "YYYY-MM-DD, ISO 8601 or 'YYYY-MM-DD HH:MM:SS.fff' (normalised to the latter)."


def _opt(flag: str, *, metavar: str, help_text: str) -> Any:
    return typer.Option(
        flag, metavar=metavar, help=help_text, show_default=False, rich_help_panel="Single patient"
    )


class BulkLoadError(CwsError):
    """A bulk load ended with rows not created; the exit status names the worst class."""

    def __init__(self, message: str, status: ExitStatus, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.exit_status = status


@app.command("create")
@with_globals
def create(
    out: Output,
    external_id: Annotated[
        str | None, _opt("--external-id", metavar="TEXT", help_text="External (jail system) id.")
    ] = None,
    facility: Annotated[
        str | None, _opt("--facility", metavar="CODE", help_text="Facility code, e.g. 10000.")
    ] = None,
    agency: Annotated[str | None, _opt("--agency", metavar="N", help_text="Agency number.")] = None,
    billing_agency: Annotated[
        str | None, _opt("--billing-agency", metavar="N", help_text="Billing agency number.")
    ] = None,
    fname: Annotated[str | None, _opt("--fname", metavar="TEXT", help_text="First name.")] = None,
    lname: Annotated[str | None, _opt("--lname", metavar="TEXT", help_text="Last name.")] = None,
    dob: Annotated[
        str | None, _opt("--dob", metavar="DATE", help_text=f"Date of birth: {DATE_HELP}")
    ] = None,
    sex: Annotated[str | None, _opt("--sex", metavar="M|F|U", help_text="M, F or U.")] = None,
    booking_no: Annotated[
        str | None, _opt("--booking-no", metavar="TEXT", help_text="Booking number.")
    ] = None,
    booking_date: Annotated[
        str | None, _opt("--booking-date", metavar="DATE", help_text=f"Booking date: {DATE_HELP}")
    ] = None,
    field: Annotated[
        list[str] | None,
        _opt(
            "--field", metavar="NAME=VALUE", help_text="Any other field as NAME=VALUE (repeatable)."
        ),
    ] = None,
    body: Annotated[
        Path | None,
        _opt(
            "--body",
            metavar="FILE",
            help_text="A JSON file holding one patient object ('-' for stdin).",
        ),
    ] = None,
    from_file: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="FILE",
            help="Bulk: CSV (header row), JSON array or NDJSON file; '-' for stdin.",
            show_default=False,
        ),
    ] = None,
    file_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            metavar="csv|json|ndjson",
            help="csv, json or ndjson (default: from the extension).",
            show_default=False,
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            metavar="N",
            envvar="CWSCTL_CONCURRENCY",
            parser=WholeNumber(*CONCURRENCY_RANGE),
            help="Most requests in flight, 1 to 64 (default: adaptive, from 8 up to 32; fewer "
            "while the server answers 429/503).",
            show_default=False,
        ),
    ] = None,
    journal: Annotated[
        Path | None,
        typer.Option(
            "--journal",
            metavar="FILE",
            parser=OutputFile("journal"),
            help="Journal file (default: the input path + .journal).",
            show_default=False,
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            metavar="FILE",
            parser=OutputFile("report"),
            help="Write one line per row here (.csv or .json).",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate (and report) only; send nothing.")
    ] = False,
    stop_on_error: Annotated[
        bool, typer.Option("--stop-on-error", help="Stop at the first row that fails.")
    ] = False,
    retries: Annotated[
        int,
        typer.Option(
            "--retries",
            metavar="N",
            parser=WholeNumber(*RETRIES_RANGE),
            help="Re-tries per row after a 5xx or network failure, 0 to 10.",
        ),
    ] = 3,
    timeout: RowTimeoutOption = 30.0,
    max_response_size: MaxResponseSizeOption = None,
    allow_http: AllowHttpOption = False,
    passphrase_file: PassphraseFileOption = None,
) -> None:
    """Create one patient (from options or --body) or many (--from FILE), validated locally first.

    Dates may be given as YYYY-MM-DD or ISO 8601 and are normalised to the CWS form
    YYYY-MM-DD HH:MM:SS.fff. A bulk load journals every row, so re-running the same command
    resumes: rows that got a verified 201 (or 409) are never sent again, and a row whose outcome
    is unknown is looked up before it is re-sent. On openemr profiles every patient (single or
    bulk) is looked up before it is created, by its pubpid FACILITY:EXTERNAL_ID: OpenEMR creates
    a patient on every POST.
    """
    connection = {
        "passphrase_file": passphrase_file,
        "timeout": timeout,
        "max_response_size": max_response_size,
        "allow_http": allow_http,
    }
    if from_file is not None:
        given = [
            external_id,
            facility,
            agency,
            billing_agency,
            fname,
            lname,
            dob,
            sex,
            booking_no,
            booking_date,
            field,
            body,
        ]
        if any(value is not None for value in given):
            raise InputError("--from cannot be combined with single-patient options or --body")
        _bulk(
            out,
            from_file,
            file_format,
            journal,
            report,
            concurrency,
            dry_run,
            stop_on_error,
            retries,
            connection,
        )
        return
    options = {
        "external_id": external_id,
        "facility": facility,
        "agency": agency,
        "billing_agency": billing_agency,
        "fname": fname,
        "lname": lname,
        "dob": dob,
        "sex": sex,
        "booking_no": booking_no,
        "booking_date": booking_date,
    }
    _single(out, options, field or [], body, dry_run, connection)


def _single(
    out: Output,
    options: dict[str, str | None],
    extra_fields: list[str],
    body: Path | None,
    dry_run: bool,
    connection: dict[str, Any],
) -> None:
    from cwsctl.cli.commands.request_run import show_response
    from cwsctl.core.bulk.rows import (
        PatientValidationError,
        parse_json_object,
        patient_key,
        prepare_patient,
    )

    fields: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if body is not None:
        try:
            fields = {**parse_json_object(read_body(str(body))), **fields}
        except PatientValidationError as exc:
            raise InputError(f"{body}: {exc.message}") from None
    for item in extra_fields:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InputError(f"bad --field {item!r}", hint="use --field NAME=VALUE")
        fields[name] = value
    mapping = patient_mapping(out.settings, dry_run=dry_run)
    try:
        record = prepare_patient(fields)
        mapping.check(record)
    except PatientValidationError as exc:
        raise InputError(f"invalid patient: {exc.message}", hint=exc.hint) from None
    create = mapping.create_request(record)
    if dry_run:
        out.data(create.body + b"\n")
        out.info("valid; nothing sent (--dry-run)")
        return
    with open_client(out.settings, **connection) as client:
        if mapping.lookup_first:
            from cwsctl.core.bulk.runner import lookup_patient

            external_id, facility = patient_key(record)
            lookup, found = lookup_patient(client, mapping, external_id, facility)
            if found is not None:
                show_response(out, lookup, client)
                out.info(f"exists: found by look-up as {found}; nothing created")
                return
            if lookup.status not in (200, 404):
                # The search was refused or answered oddly: nothing is sent blind.
                show_response(out, lookup, client)  # raises for 4xx/5xx
                raise ClientRequestError(
                    f"the look-up answered HTTP {lookup.status}, not a search result; "
                    "nothing was created",
                    hint="check the profile URL (a redirect?) with cwsctl doctor",
                )
        response = client.request(*create)
    show_response(out, response, client)


def _bulk(
    out: Output,
    source: str,
    file_format: str | None,
    journal_path: Path | None,
    report_path: Path | None,
    concurrency: int | None,
    dry_run: bool,
    stop_on_error: bool,
    retries: int,
    connection: dict[str, Any],
) -> None:
    from cwsctl.core.bulk.journal import Journal
    from cwsctl.core.bulk.readers import detect_format, read_rows
    from cwsctl.core.bulk.report import ReportWriter
    from cwsctl.core.bulk.runner import DEFAULT_MAX_CONCURRENCY, BulkLoad

    if source == "-" and not file_format:
        raise InputError("reading patients from stdin needs --format csv|json|ndjson")
    fmt = detect_format(source, file_format)
    if source == "-" and journal_path is None and not dry_run:
        raise InputError("reading patients from stdin needs --journal FILE (to resume safely)")
    with ExitStack() as stack:
        stream = sys.stdin.buffer if source == "-" else _open_input(source, stack)
        client = journal = None
        if not dry_run:
            client = stack.enter_context(
                open_client(
                    out.settings,
                    max_connections=concurrency or DEFAULT_MAX_CONCURRENCY,
                    **connection,
                )
            )
            journal = stack.enter_context(
                Journal(journal_path or Path(source + ".journal"), target=load_target(out.settings))
            )
            if journal.torn_lines:
                out.warn("the journal's last line was torn (a crash?); that row will be re-checked")
        writer = ReportWriter(report_path) if report_path is not None else None
        if writer is not None:
            stack.callback(writer.close)
        progress = BulkProgress(out, stream)
        stack.callback(progress.stop)

        def on_result(result: RowResult) -> None:
            if writer is not None:
                writer.write(result)
            progress.advance(result)

        mapping = patient_mapping(out.settings, dry_run=dry_run)
        if mapping.unsent_fields:
            out.info(
                f"not sent (this kind has no place for them): {', '.join(mapping.unsent_fields)}"
            )
        loader = BulkLoad(
            client,
            journal,
            mapping,
            concurrency=concurrency,
            retries=retries,
            stop_on_error=stop_on_error,
        )
        started = time.perf_counter()
        summary = loader.run(read_rows(stream, fmt), on_result)
        elapsed = time.perf_counter() - started
    _finish(out, summary, elapsed, report_path, dry_run)


def _open_input(source: str, stack: ExitStack) -> Any:
    try:
        return stack.enter_context(open(source, "rb"))
    except FileNotFoundError:
        raise InputError(f"input file not found: {source}") from None
    except OSError as exc:
        raise InputError(f"cannot read {source}: {exc.strerror}") from None


def _finish(
    out: Output, summary: Summary, elapsed: float, report_path: Path | None, dry_run: bool
) -> None:
    counts = summary.counts
    rate = summary.total / elapsed if elapsed > 0 else 0.0
    if out.settings.json:
        out.json(
            {**summary.to_json(), "seconds": round(elapsed, 3), "rows_per_second": round(rate, 1)}
        )
    parts = (
        [f"valid {counts['valid']}"]
        if dry_run
        else [
            f"created {counts['created']}",
            f"already existed {counts['exists']}",
            f"done earlier {counts['skipped']}",
        ]
    ) + [
        f"invalid {counts['invalid']}",
        f"rejected {counts['rejected']}",
        f"failed {counts['failed']}",
        f"unknown {counts['unknown']}",
    ]
    out.info(f"{' · '.join(parts)}  ({summary.total} rows in {elapsed:.1f} s, {rate:.0f} rows/s)")
    if summary.security_error is not None:
        raise summary.security_error
    if summary.interrupted:
        raise KeyboardInterrupt
    status = summary.exit_status()
    if status is not ExitStatus.OK:
        where = f"see {report_path}" if report_path else "rerun with --report FILE to see which"
        raise BulkLoadError(
            f"{summary.not_done} of {summary.total} rows were not created",
            status,
            hint=f"{where}; re-running the same command resumes without duplicates",
        )

"""`cwsctl query`: run an AQL query (POST /query/aql), one page or all of them, streaming rows.

Formats: a table on a terminal; otherwise ndjson (one JSON object per row, keyed by the result
set's column names) unless --format says json (one document) or csv (a header of column names).
Rows are written page by page as they arrive, so --all never holds more than one page.
httpx is imported inside the command (through open_client), so `cwsctl --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cwsctl.cli.options import (
    AllowHttpOption,
    MaxResponseSizeOption,
    TimeoutOption,
    with_globals,
)
from cwsctl.cli.output import Output
from cwsctl.cli.params import Choice, WholeNumber
from cwsctl.targets.openehr.cli.common import connect

if TYPE_CHECKING:
    from cwsctl.targets.openehr.aql import ResultPage

FORMATS = ("table", "json", "csv", "ndjson")
MAX_ROWS = 2**31 - 1


def cell_text(value: Any) -> str:
    """A value as CSV or table text: strings as they are, null empty, the rest compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _table_text(value: Any) -> str:
    """Shorter than :func:`cell_text` for RM data values: a DV_* object shows its value."""
    if isinstance(value, dict):
        if isinstance(value.get("magnitude"), int | float):
            units = value.get("units")
            return f"{value['magnitude']} {units}" if units else str(value["magnitude"])
        inner = value.get("value")
        if isinstance(inner, str | int | float):
            return str(inner)
    return cell_text(value)


class RowWriter:
    """Writes a result set to stdout as it streams in, in one format."""

    def __init__(self, out: Output, fmt: str, q: str, offset: int) -> None:
        self.out = out
        self.fmt = fmt
        self.q = q
        self.offset = offset
        self.names: list[str] | None = None
        self.count = 0

    def page(self, page: ResultPage) -> None:
        """Write one page's rows (and, for the first page, what comes before them)."""
        if self.names is None:
            self.names = page.column_names
            self._start(page)
        names = self.names
        rows = [dict(zip(names, _padded(row, len(names)), strict=True)) for row in page.rows]
        if self.fmt == "ndjson":
            self._write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        elif self.fmt == "json":
            parts: list[str] = []
            for row in rows:
                lead = "\n    " if self.count + len(parts) == 0 else ",\n    "
                parts.append(lead + json.dumps(row, ensure_ascii=False))
            self._write("".join(parts))
        elif self.fmt == "csv":
            self._csv([[cell_text(r[n]) for n in names] for r in rows])
        else:
            self._table(rows)
        self.count += len(rows)

    def finish(self) -> None:
        """Close what the format opened (json's document)."""
        if self.names is None:
            self.names = []
            self._start(None)
        if self.fmt == "json":
            tail = "\n  ]," if self.count else "],"
            self._write(f'{tail}\n  "row_count": {self.count}\n}}\n')

    def _start(self, page: ResultPage | None) -> None:
        names = self.names or []
        if self.fmt == "csv" and names:
            self._csv([names])
        elif self.fmt == "json":
            columns = page.columns if page is not None else []
            described = [
                {
                    "name": name,
                    "path": (columns[i].get("path") if i < len(columns) else None),
                }
                for i, name in enumerate(names)
            ]
            head = json.dumps(
                {"q": self.q, "offset": self.offset, "columns": described},
                ensure_ascii=False,
                indent=2,
            )
            self._write(head[:-2] + ',\n  "rows": [')

    def _csv(self, rows: list[list[str]]) -> None:
        import csv
        import io

        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\r\n").writerows(rows)
        self._write(buffer.getvalue())

    def _table(self, rows: list[dict[str, Any]]) -> None:
        # Column names and cells come from the server: Output.table shows them as plain text.
        self.out.table(
            list(self.names or []), [[_table_text(v) for v in row.values()] for row in rows]
        )

    def _write(self, text: str) -> None:
        if text:
            self.out.data(text)


def _padded(row: list[Any], width: int) -> list[Any]:
    return (row + [None] * width)[:width]


def _aql(out: Output, aql: str | None, file: str | None) -> str:
    from pathlib import Path

    from cwsctl.core.errors import InputError
    from cwsctl.core.files import read_bytes

    if (aql is None) == (file is None):
        raise InputError(
            "give the query as AQL or with --file FILE (one of the two)",
            hint="cwsctl query 'SELECT e/ehr_id/value FROM EHR e', or --file q.aql ('-': stdin)",
        )
    if aql is not None:
        return aql
    assert file is not None
    data = sys.stdin.buffer.read() if file == "-" else read_bytes(Path(file), what="query file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"query file {file} is not UTF-8 text") from None


@with_globals
def query(
    out: Output,
    aql: Annotated[
        str | None,
        typer.Argument(metavar="[AQL]", help="The AQL query (or give --file)."),
    ] = None,
    file: Annotated[
        str | None,
        typer.Option(
            "--file", "-f", metavar="FILE", help="Read the AQL from FILE; '-' reads stdin."
        ),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            metavar="NAME=VALUE",
            help="Query parameter $NAME (repeatable). NAME=VALUE sends a string, always (5 stays "
            '"5"); NAME:=JSON sends a typed value (n:=5, ok:=true, ids:=\'["a","b"]\').',
            show_default=False,
        ),
    ] = None,
    offset: Annotated[
        int,
        typer.Option(
            "--offset",
            metavar="N",
            parser=WholeNumber(0, MAX_ROWS),
            help="Skip the first N rows (sent as offset); needs --limit or --all (openEHR "
            "servers refuse an offset without a fetch).",
        ),
    ] = 0,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            metavar="N",
            parser=WholeNumber(1, MAX_ROWS),
            help="At most N rows (sent as fetch); with --all, the page size [default: the "
            "server's own fetch; with --all, 1000, or the server's maximum fetch when it "
            "refuses more].",
            show_default=False,
        ),
    ] = None,
    all_pages: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Fetch page after page (offset += rows, fetch = --limit or 1000) until a page "
            "comes back short, writing rows as each page arrives; at most --max-rows rows. AQL "
            "with its own LIMIT/OFFSET/TOP is run once, as written, never paged.",
        ),
    ] = False,
    max_rows: Annotated[
        int | None,
        typer.Option(
            "--max-rows",
            metavar="N",
            parser=WholeNumber(1, MAX_ROWS),
            help="With --all: stop after N rows [default: 100000]. When the result set has "
            "more, the rows written are kept and the command exits 4 (stopped at N rows).",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            metavar="table|json|csv|ndjson",
            parser=Choice(FORMATS),
            help="Output format [default: table on a terminal, else ndjson; --json: json].",
            show_default=False,
        ),
    ] = None,
    timeout: TimeoutOption = 30.0,
    max_response_size: MaxResponseSizeOption = None,
    allow_http: AllowHttpOption = False,
) -> None:
    """Run an AQL query on an openehr profile (POST /query/aql) and write its rows.

    The result set's column names are the csv header and the keys of each ndjson/json row
    (a repeated name gets _2, _3…); strings are written as they are, objects as compact JSON.
    json: {"q", "offset", "columns": [{name, path}], "rows": [{…}], "row_count"}. Each page is
    one request within --timeout and --max-response-size. --offset needs --limit (or --all);
    --limit/--offset next to the AQL's own LIMIT/OFFSET/TOP are refused (exit 2). --all stops
    at --max-rows (100000) rows: exit 4 when there are more. Example: cwsctl query "SELECT
    e/ehr_id/value AS ehr_id FROM EHR e" --all --format csv > ehrs.csv
    """
    from cwsctl.core.errors import InputError
    from cwsctl.targets.openehr.aql import (
        DEFAULT_MAX_ROWS,
        RowCapError,
        check_paging,
        parse_query_parameter,
        query_page,
        query_pages,
    )

    q = _aql(out, aql, file)
    parameters = dict(parse_query_parameter(p) for p in param or [])
    if max_rows is not None and not all_pages:
        raise InputError(
            "--max-rows goes with --all", hint="without --all, --limit N caps the rows"
        )
    clauses = check_paging(q, offset or None, limit, all_pages=all_pages)
    chosen = fmt or ("json" if out.settings.json else "table" if out.stdout_isatty else "ndjson")
    writer = RowWriter(out, chosen, q, offset)
    pages = 0
    capped: RowCapError | None = None
    client, traced = connect(out, timeout, max_response_size, allow_http)
    # A reader that stops (`| head`) ends the run quietly: see run_reporting_errors.
    with client:
        if all_pages:
            if clauses:
                out.info(f"the AQL has its own {'/'.join(clauses)}: run once, not paged")
            stream = query_pages(
                traced,  # type: ignore[arg-type]
                q,
                parameters,
                offset=offset,
                page_size=limit,
                max_rows=max_rows or DEFAULT_MAX_ROWS,
                notice=out.warn,
            )
            try:
                for page in stream:
                    writer.page(page)
                    pages += 1
            except RowCapError as exc:
                capped = exc
        else:
            page = query_page(
                traced,  # type: ignore[arg-type]
                q,
                parameters,
                offset=offset or None,
                fetch=limit,
            )
            writer.page(page)
            pages = 1
    writer.finish()
    out.info(f"{writer.count} row(s) in {pages} page(s)")
    if capped is not None:
        raise capped

"""`cwsctl composition …`: versioned openEHR compositions — create, get, update, delete, history.

No update is blind: without --if-match, `update` and `delete` read the latest version first and
send its uid as If-Match, so a change made meanwhile by someone else is refused (412, exit 4,
"changed since it was read: latest is <version uid>") instead of overwritten.
httpx is imported inside the commands (through open_client), so `cwsctl --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cwsctl.cli.common import open_client, read_body, require_kind
from cwsctl.cli.options import (
    AllowHttpOption,
    MaxResponseSizeOption,
    TimeoutOption,
    with_globals,
)
from cwsctl.cli.output import Output
from cwsctl.cli.params import Choice, OutputFile
from cwsctl.targets.openehr.operations import VersionUid

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cwsctl.core.client import ApiClient, ApiResponse
    from cwsctl.targets.openehr.operations import CompositionVersion

app = typer.Typer(
    help="openEHR compositions: create, read (any version), update and delete without ever "
    "overwriting a change you did not see, and list their revision history.",
    no_args_is_help=True,
)


class VersionUidParam:
    """``object_id::system_id::version``, checked while the command line is parsed (exit 2)."""

    def __call__(self, value: Any) -> VersionUid:
        from cwsctl.core.errors import InputError

        if not isinstance(value, str):
            return value  # type: ignore[no-any-return]
        try:
            return VersionUid.parse(value)
        except InputError as exc:
            raise typer.BadParameter(f"{exc.message}, {exc.hint}") from None


class Timestamp:
    """An ISO 8601 date-time, as the server wants it (see core.openehr.check_timestamp)."""

    def __call__(self, value: Any) -> str:
        from cwsctl.core.errors import InputError
        from cwsctl.targets.openehr.operations import check_timestamp

        try:
            return check_timestamp(str(value))
        except InputError as exc:
            raise typer.BadParameter(f"{exc.message}; {exc.hint}") from None


class Traced:
    """The profile's client, showing each exchange on stderr with -v (headers, masked bodies).

    The credentials are added by the kind's auth on a copy of each request, so they are never
    among the request headers shown here.
    """

    def __init__(self, client: ApiClient, out: Output) -> None:
        self._client = client
        self._out = out

    def request(
        self,
        method: str,
        path_or_url: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> ApiResponse:
        """Send through the real client; show the exchange when -v is on."""
        from cwsctl.cli.commands.request_run import show_exchange

        response = self._client.request(method, path_or_url, body, headers)
        if self._out.settings.verbose:
            self._out.info(f"> {response.method} {response.url}", "dim")
            self._out.info(f"< {response.status} {response.reason}", "dim")
            show_exchange(self._out, response, body, False)
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def connect(
    out: Output,
    timeout: float,
    max_response_size: int | None,
    allow_http: bool,
    commands: str = "ehr, composition and query",
) -> tuple[Any, Traced]:
    """The profile's client (a context manager to close) and its traced face for core calls;
    ``commands`` names them in the error for a profile of another kind."""
    require_kind(out.settings, "openehr", commands)
    client = open_client(
        out.settings, timeout=timeout, max_response_size=max_response_size, allow_http=allow_http
    )
    return client, Traced(client, out)


VersionOption = Annotated[
    VersionUid | None,
    typer.Option(
        "--version",
        metavar="VERSION_UID",
        parser=VersionUidParam(),
        help="Read this version (object_id::system_id::version) instead of the latest.",
        show_default=False,
    ),
]
AtOption = Annotated[
    str | None,
    typer.Option(
        "--at",
        metavar="TIMESTAMP",
        parser=Timestamp(),
        help="Read the version that was current at this ISO 8601 time "
        "(?version_at_time=), e.g. 2024-05-01T10:00:00Z or '2024-05-01 10:00:00' (local "
        "time; sent as 2024-05-01T10:00:00+HH:MM).",
        show_default=False,
    ),
]
EhrIdArg = Annotated[str, typer.Argument(metavar="EHR_ID", help="The EHR's id (a UUID).")]
UidArg = Annotated[
    str,
    typer.Argument(
        metavar="UID",
        help="The composition's versioned object uid (a UUID), or one of its version uids.",
    ),
]
FileArg = Annotated[
    str,
    typer.Argument(
        metavar="FILE",
        help="The composition (canonical JSON or XML; FLAT or STRUCTURED JSON with --format), "
        "sent byte for byte; '-' reads stdin.",
    ),
]
IfMatchOption = Annotated[
    VersionUid | None,
    typer.Option(
        "--if-match",
        metavar="VERSION_UID",
        parser=VersionUidParam(),
        help="The version your change is based on (object_id::system_id::version). Without it, "
        "the latest version is read first and its uid sent, so the change is never blind. "
        'Sent as If-Match: "UID"; a server that refuses the quotes (EHRbase 2.0-2.31) gets '
        "the bare uid, once per run.",
        show_default=False,
    ),
]
TemplateIdOption = Annotated[
    str | None,
    typer.Option(
        "--template-id",
        metavar="ID",
        help="The template the composition follows, sent as ?templateId=ID (and the "
        "openEHR-TEMPLATE_ID header). Needed for flat and structured unless the composition "
        "names it (ctx/template_id); must match a canonical composition's own template_id.",
        show_default=False,
    ),
]
FormatOption = Annotated[
    str,
    typer.Option(
        "--format",
        metavar="canonical|flat|structured",
        parser=Choice(("canonical", "flat", "structured")),
        help="The composition's format: canonical (JSON or XML), or the web-template formats "
        "flat and structured (sent with ?format=FLAT|STRUCTURED&templateId=ID and "
        "application/openehr.wt.flat|structured.schema+json).",
    ),
]
ReadFormatOption = Annotated[
    str,
    typer.Option(
        "--format",
        metavar="canonical|flat|structured",
        parser=Choice(("canonical", "flat", "structured")),
        help="The format to read it in: canonical JSON, flat or structured (asked for with "
        "?format=, e.g. ?format=FLAT).",
    ),
]
OutputOption = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        parser=OutputFile("output file"),
        help="Save the body here, byte for byte as received, instead of printing it.",
        show_default=False,
    ),
]


def _written(out: Output, result: CompositionVersion, what: str) -> None:
    uid = str(result.version_uid) if result.version_uid else None
    if out.settings.json:
        out.json(
            {
                "ehr_id": result.ehr_id,
                "version_uid": uid,
                "uid": result.version_uid.object_id if result.version_uid else None,
                "version": result.version_uid.version if result.version_uid else None,
                "preceding_version_uid": str(result.preceding) if result.preceding else None,
                "read_first": result.read_first,
                "status": result.response.status,
                "location": result.response.headers.get("location"),
            }
        )
    elif uid:
        out.line(uid)
    based = f" (based on {result.preceding}" if result.preceding else ""
    if based:
        based += ", the latest, read first)" if result.read_first else ")"
    out.success(f"{what}{based}: {uid or 'the server named no version uid'}")


@app.command("create")
@with_globals
def create(
    out: Output,
    ehr_id: EhrIdArg,
    file: FileArg,
    template_id: TemplateIdOption = None,
    fmt: FormatOption = "canonical",
    timeout: TimeoutOption = 30.0,
    max_response_size: MaxResponseSizeOption = None,
    allow_http: AllowHttpOption = False,
) -> None:
    """Commit a new composition to an EHR (POST /ehr/{ehr_id}/composition).

    Prints the new version uid (object_id::system_id::1) on stdout, from the answer's ETag or
    Location. The template must be on the server first (cwsctl template upload FILE.opt).
    Example: cwsctl composition create 7d44b88c-… vitals.flat.json --format flat --template-id
    cwsctl.vital_signs.v1
    """
    from cwsctl.targets.openehr.operations import create_composition

    body = read_body(file)
    client, traced = connect(out, timeout, max_response_size, allow_http)
    with client:
        result = create_composition(  # type: ignore[arg-type]
            traced, ehr_id, body, template_id=template_id, fmt=fmt
        )
    _written(out, result, f"created composition in EHR {result.ehr_id}")


@app.command("get")
@with_globals
def get(
    out: Output,
    ehr_id: EhrIdArg,
    uid: UidArg,
    version: VersionOption = None,
    at: AtOption = None,
    fmt: ReadFormatOption = "canonical",
    output: OutputOption = None,
    timeout: TimeoutOption = 30.0,
    max_response_size: MaxResponseSizeOption = None,
    allow_http: AllowHttpOption = False,
) -> None:
    """Read a composition: the latest version, --version VERSION_UID, or --at TIMESTAMP.

    The body goes to stdout (or --output) exactly as received; its version uid to stderr; --json
    prints the response envelope (status, headers with etag, body). A deleted composition, or
    none at that version or time, exits 4.
    """
    from cwsctl.cli.commands.request_run import show_response
    from cwsctl.core.errors import InputError
    from cwsctl.targets.openehr.operations import get_composition

    if version is not None and at is not None:
        raise InputError("give --version or --at, not both")
    client, traced = connect(out, timeout, max_response_size, allow_http)
    with client:
        result = get_composition(  # type: ignore[arg-type]
            traced, ehr_id, uid, version=version, at=at, fmt=fmt
        )
        show_response(out, result.response, client, output)
    out.info(f"version {result.version_uid or '(the server named none)'}")


@app.command("update")
@with_globals
def update(
    out: Output,
    ehr_id: EhrIdArg,
    uid: UidArg,
    file: FileArg,
    if_match: IfMatchOption = None,
    template_id: TemplateIdOption = None,
    fmt: FormatOption = "canonical",
    timeout: TimeoutOption = 30.0,
    max_response_size: MaxResponseSizeOption = None,
    allow_http: AllowHttpOption = False,
) -> None:
    """Commit a new version of a composition (PUT … with If-Match), never blindly.

    The version the change is based on is --if-match, else the version UID names (when it is a
    version uid), else the latest, read first. If the composition changed since, the server
    refuses: exit 4, "changed since it was read: latest is <version uid>" (when the answer does
    not name it, as on EHRbase, one more read does). If-Match goes quoted as the specification
    says, bare to a server that refuses quotes (EHRbase 2.0-2.31). Prints the new version uid.
    Example: cwsctl composition update EHR_ID UID vitals.json --if-match UID::host::1
    """
    from cwsctl.targets.openehr.operations import update_composition

    body = read_body(file)
    client, traced = connect(out, timeout, max_response_size, allow_http)
    with client:
        result = update_composition(  # type: ignore[arg-type]
            traced, ehr_id, uid, body, if_match=if_match, template_id=template_id, fmt=fmt
        )
    _written(out, result, "updated")


@app.command("delete")
@with_globals
def delete(
    out: Output,
    ehr_id: EhrIdArg,
    uid: UidArg,
    if_match: IfMatchOption = None,
    timeout: TimeoutOption = 30.0,
    max_response_size: MaxResponseSizeOption = None,
    allow_http: AllowHttpOption = False,
) -> None:
    """Delete a composition (DELETE /ehr/{ehr_id}/composition/{preceding_version_uid}).

    The same rule as update: the version deleted is --if-match, or the one UID names, or the
    latest, read first; it goes in the path (no If-Match header). A stale one (409, or 412)
    exits 4 naming the latest; an already deleted composition exits 4 saying so. The server
    keeps the deletion as a new version (see history). Prints the deletion's version uid when
    the server names it.
    """
    from cwsctl.targets.openehr.operations import delete_composition

    client, traced = connect(out, timeout, max_response_size, allow_http)
    with client:
        result = delete_composition(traced, ehr_id, uid, if_match=if_match)  # type: ignore[arg-type]
    _written(
        out,
        result,
        f"deleted composition {result.preceding.object_id if result.preceding else uid}",
    )


@app.command("history")
@with_globals
def history(
    out: Output,
    ehr_id: EhrIdArg,
    uid: UidArg,
    timeout: TimeoutOption = 30.0,
    max_response_size: MaxResponseSizeOption = None,
    allow_http: AllowHttpOption = False,
) -> None:
    """List a composition's versions, oldest first (…/versioned_composition/{uid}/revision_history).

    A table on a terminal; one tab-separated line per version otherwise (version uid, time
    committed, change type, committer); --json: {"ehr_id", "uid", "versions": [{version_uid,
    time_committed, change_type, committer, description}]}.
    """
    from cwsctl.targets.openehr.operations import composition_history, object_id_of

    object_id, _ = object_id_of(uid)
    client, traced = connect(out, timeout, max_response_size, allow_http)
    with client:
        revisions = composition_history(traced, ehr_id, object_id)  # type: ignore[arg-type]
    rows = [r.as_dict() for r in revisions]
    if out.settings.json:
        out.json({"ehr_id": ehr_id, "uid": object_id, "versions": rows})
        return
    columns = ("version_uid", "time_committed", "change_type", "committer")
    if out.stdout_isatty:
        from rich.table import Column

        from cwsctl.core.text import printable_block

        widest = max((len(printable_block(row["version_uid"] or "")) for row in rows), default=11)
        shown = [c for c in columns if c == "version_uid" or any(row[c] for row in rows)]
        out.table(
            [
                Column(c, no_wrap=True, min_width=widest)
                if c == "version_uid"
                else Column(c, overflow="fold")
                for c in shown
            ],
            [[row[c] for c in shown] for row in rows],
            title=f"composition {object_id}",
        )
    else:
        out.data("".join("\t".join(row[c] or "" for c in columns) + "\n" for row in rows))
    out.info(f"{len(rows)} version(s)")

"""`cwsctl composition …`: versioned openEHR compositions — create, get, update, delete, history.

No update is blind: without --if-match, `update` and `delete` read the latest version first and
send its uid as If-Match, so a change made meanwhile by someone else is refused (412, exit 4,
"changed since it was read: latest is <version uid>") instead of overwritten.
httpx is imported inside the commands (through open_client), so `cwsctl --help` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cwsctl.cli.common import read_body
from cwsctl.cli.options import (
    AllowHttpOption,
    MaxResponseSizeOption,
    TimeoutOption,
    with_globals,
)
from cwsctl.cli.output import Output
from cwsctl.cli.params import Choice
from cwsctl.targets.openehr.cli.common import (
    AtOption,
    IfMatchOption,
    OutputOption,
    ReadFormatOption,
    VersionOption,
    connect,
    show_written,
)

app = typer.Typer(
    help="openEHR compositions: create, read (any version), update and delete without ever "
    "overwriting a change you did not see, and list their revision history.",
    no_args_is_help=True,
)


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
    from cwsctl.targets.openehr.compositions import create_composition

    body = read_body(file)
    client, traced = connect(out, timeout, max_response_size, allow_http)
    with client:
        result = create_composition(  # type: ignore[arg-type]
            traced, ehr_id, body, template_id=template_id, fmt=fmt
        )
    show_written(out, result, f"created composition in EHR {result.ehr_id}")


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
    from cwsctl.targets.openehr.compositions import get_composition

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
    from cwsctl.targets.openehr.compositions import update_composition

    body = read_body(file)
    client, traced = connect(out, timeout, max_response_size, allow_http)
    with client:
        result = update_composition(  # type: ignore[arg-type]
            traced, ehr_id, uid, body, if_match=if_match, template_id=template_id, fmt=fmt
        )
    show_written(out, result, "updated")


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
    from cwsctl.targets.openehr.compositions import delete_composition

    client, traced = connect(out, timeout, max_response_size, allow_http)
    with client:
        result = delete_composition(traced, ehr_id, uid, if_match=if_match)  # type: ignore[arg-type]
    show_written(
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
    from cwsctl.targets.openehr.compositions import composition_history
    from cwsctl.targets.openehr.ids import object_id_of

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

"""`cwsctl ehr …`: openEHR EHRs — one per subject: create, show (by id or subject), EHR_STATUS.

httpx is imported inside the commands (through open_client), so `cwsctl --help` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cwsctl.cli.options import (
    AllowHttpOption,
    MaxResponseSizeOption,
    TimeoutOption,
    with_globals,
)
from cwsctl.cli.output import Output
from cwsctl.targets.openehr.cli.common import (
    AtOption,
    IfMatchOption,
    VersionOption,
    connect,
    show_written,
)

app = typer.Typer(
    help="openEHR EHRs: create one per subject, show it by id or subject, read and update its "
    "EHR_STATUS.",
    no_args_is_help=True,
)

SubjectIdOption = Annotated[
    str | None,
    typer.Option(
        "--subject-id",
        metavar="ID",
        help="The subject's id in --namespace (e.g. the patient's external id).",
        show_default=False,
    ),
]
NamespaceOption = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        metavar="NS",
        help="The namespace of --subject-id (the EHR_STATUS subject's external_ref.namespace; "
        "patients create uses urn:cwsctl:external-id:facility:FACILITY). EHRbase accepts "
        "only [a-zA-Z][a-zA-Z0-9-_:/&+?]*; anything else is refused before sending (exit 2).",
        show_default=False,
    ),
]


def _subject(subject_id: str | None, namespace: str | None) -> tuple[str, str] | None:
    from cwsctl.core.errors import InputError

    if subject_id is None and namespace is None:
        return None
    if subject_id is None or namespace is None:
        raise InputError(
            "--subject-id and --namespace go together",
            hint="a subject is an id in a namespace: --subject-id ID --namespace NS",
        )
    return subject_id, namespace


def _print_ehr(out: Output, document: dict[str, object] | None, ehr_id: str, raw: bytes) -> None:
    if out.settings.json:
        out.json(document if document is not None else {"ehr_id": {"value": ehr_id}})
    elif out.stdout_isatty and document is not None:
        out.pretty_json(document)  # control characters escaped, C1 too (cli/output.py)
    else:
        out.data(raw if raw.endswith(b"\n") or not raw else raw + b"\n")


@app.command("create")
@with_globals
def create(
    out: Output,
    subject_id: SubjectIdOption = None,
    namespace: NamespaceOption = None,
    timeout: TimeoutOption = 30.0,
    max_response_size: MaxResponseSizeOption = None,
    allow_http: AllowHttpOption = False,
) -> None:
    """Create the EHR of a subject (POST /ehr; Prefer: return=representation).

    Its EHR_STATUS has a PARTY_SELF subject whose external_ref is ID in NS, queryable and
    modifiable. Prints the new ehr_id on stdout (--json: the EHR as the server returned it). A
    subject that already has an EHR is refused by the server: exit 4 (409). Example: cwsctl ehr
    create --subject-id 4711 --namespace urn:cwsctl:external-id:facility:10000
    """
    from cwsctl.core.errors import InputError
    from cwsctl.targets.openehr.ehr import create_ehr

    subject = _subject(subject_id, namespace)
    if subject is None:
        raise InputError("ehr create needs --subject-id ID --namespace NS")
    client, traced = connect(out, timeout, max_response_size, allow_http)
    with client:
        ehr = create_ehr(traced, *subject)  # type: ignore[arg-type]
    if out.settings.json:
        out.json(ehr.document if ehr.document is not None else {"ehr_id": {"value": ehr.ehr_id}})
    else:
        out.line(ehr.ehr_id)
    out.success(f"created EHR {ehr.ehr_id} for subject {subject[0]!r} in {subject[1]}")
    created = (ehr.document or {}).get("time_created")
    if isinstance(created, dict) and created.get("value"):
        out.info(f"time_created {created['value']}")


@app.command("show")
@with_globals
def show(
    out: Output,
    ehr_id: Annotated[
        str | None,
        typer.Argument(metavar="[EHR_ID]", help="The EHR's id; or give the subject instead."),
    ] = None,
    subject_id: SubjectIdOption = None,
    namespace: NamespaceOption = None,
    timeout: TimeoutOption = 30.0,
    max_response_size: MaxResponseSizeOption = None,
    allow_http: AllowHttpOption = False,
) -> None:
    """Show an EHR, by id (GET /ehr/{ehr_id}) or by subject (GET /ehr?subject_id=…&subject_namespace=…).

    The EHR goes to stdout as received (--json: as one JSON document); its ehr_id to stderr. No
    such EHR: exit 4, "no EHR …".
    """
    from cwsctl.core.errors import InputError
    from cwsctl.targets.openehr.ehr import find_ehr, get_ehr

    subject = _subject(subject_id, namespace)
    if (ehr_id is None) == (subject is None):
        raise InputError(
            "give an EHR_ID or --subject-id ID --namespace NS (one of the two)",
            hint="cwsctl ehr show EHR_ID, or cwsctl ehr show --subject-id ID --namespace NS",
        )
    client, traced = connect(out, timeout, max_response_size, allow_http)
    with client:
        if subject is not None:
            ehr = find_ehr(traced, *subject)  # type: ignore[arg-type]
        else:
            assert ehr_id is not None
            ehr = get_ehr(traced, ehr_id)  # type: ignore[arg-type]
    _print_ehr(out, ehr.document, ehr.ehr_id, ehr.response.body)
    out.info(f"EHR {ehr.ehr_id}")


@app.command("status")
@with_globals
def status(
    out: Output,
    ehr_id: Annotated[str, typer.Argument(metavar="EHR_ID", help="The EHR's id.")],
    version: VersionOption = None,
    at: AtOption = None,
    timeout: TimeoutOption = 30.0,
    max_response_size: MaxResponseSizeOption = None,
    allow_http: AllowHttpOption = False,
) -> None:
    """Show an EHR's EHR_STATUS: the latest, --version VERSION_UID, or --at TIMESTAMP.

    The EHR_STATUS goes to stdout as received, its version uid to stderr; --json prints
    {"ehr_id", "version_uid", "ehr_status"}.
    """
    from cwsctl.core.errors import InputError
    from cwsctl.targets.openehr.ehr import get_ehr_status

    if version is not None and at is not None:
        raise InputError("give --version or --at, not both")
    client, traced = connect(out, timeout, max_response_size, allow_http)
    with client:
        result = get_ehr_status(traced, ehr_id, version=version, at=at)  # type: ignore[arg-type]
    uid = str(result.version_uid) if result.version_uid else None
    if out.settings.json:
        out.json({"ehr_id": result.ehr_id, "version_uid": uid, "ehr_status": result.document})
    else:
        document = result.document if isinstance(result.document, dict) else None
        _print_ehr(out, document, result.ehr_id, result.response.body)
    out.info(f"EHR_STATUS version {uid or '(the server named none)'}")


@app.command("status-update")
@with_globals
def status_update(
    out: Output,
    ehr_id: Annotated[str, typer.Argument(metavar="EHR_ID", help="The EHR's id.")],
    file: Annotated[
        str,
        typer.Argument(
            metavar="FILE",
            help="The new EHR_STATUS (canonical JSON, or XML), sent byte for byte; '-' reads "
            "stdin.",
        ),
    ],
    if_match: IfMatchOption = None,
    timeout: TimeoutOption = 30.0,
    max_response_size: MaxResponseSizeOption = None,
    allow_http: AllowHttpOption = False,
) -> None:
    """Commit a new EHR_STATUS version (PUT /ehr/{ehr_id}/ehr_status with If-Match), never blindly.

    The version the change is based on is --if-match, else the latest, read first. If the
    EHR_STATUS changed since, the server refuses: exit 4, "changed since it was read: latest is
    <version uid>". If-Match goes quoted, bare to a server that refuses quotes (EHRbase
    2.0-2.31). Prints the new version uid. Example: cwsctl ehr status EHR_ID --json | jq
    .ehr_status > s.json; edit; cwsctl ehr status-update EHR_ID s.json
    """
    from cwsctl.cli.common import read_body
    from cwsctl.targets.openehr.ehr import update_ehr_status

    body = read_body(file)
    client, traced = connect(out, timeout, max_response_size, allow_http)
    with client:
        result = update_ehr_status(traced, ehr_id, body, if_match=if_match)  # type: ignore[arg-type]
    show_written(out, result, f"updated the EHR_STATUS of EHR {result.ehr_id}")

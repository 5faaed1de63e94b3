"""What the openEHR commands share: connect() and its Traced client (-v shows each exchange),
the version-uid and timestamp parsers, the options several commands take, the written version.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cwsctl.cli.common import open_client, require_kind
from cwsctl.cli.output import Output
from cwsctl.cli.params import Choice, OutputFile
from cwsctl.targets.openehr.ids import VersionUid

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cwsctl.core.client import ApiClient, ApiResponse
    from cwsctl.targets.openehr.answers import CompositionVersion


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
    """An ISO 8601 date-time, as the server wants it (see targets.openehr.ids.check_timestamp)."""

    def __call__(self, value: Any) -> str:
        from cwsctl.core.errors import InputError
        from cwsctl.targets.openehr.ids import check_timestamp

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


def show_written(out: Output, result: CompositionVersion, what: str) -> None:
    """What a write made: its version uid on stdout (--json: the result), and a success line."""
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

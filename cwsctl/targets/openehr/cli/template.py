"""`cwsctl template …`: openEHR operational templates (ADL 1.4) — list, upload, get, example.

A server such as EHRbase refuses compositions for a template it does not hold (422), so a
template is uploaded once, before the first composition. httpx is imported inside the commands
(through open_client), so `cwsctl --help` stays fast.
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
from cwsctl.cli.params import Choice
from cwsctl.targets.openehr.cli.common import OutputOption, ReadFormatOption, connect

app = typer.Typer(
    help="openEHR operational templates (ADL 1.4 OPTs): list, upload (once, before the first "
    "composition that uses one), read as OPT or web template, and example compositions.",
    no_args_is_help=True,
)

TemplateIdArg = Annotated[
    str,
    typer.Argument(metavar="TEMPLATE_ID", help="The template's id (its OPT's template_id)."),
]


@app.command("list")
@with_globals
def list_(
    out: Output,
    timeout: TimeoutOption = 30.0,
    max_response_size: MaxResponseSizeOption = None,
    allow_http: AllowHttpOption = False,
) -> None:
    """List the templates the server holds (GET /definition/template/adl1.4).

    A table on a terminal; one tab-separated line per template otherwise (template_id, concept,
    archetype_id, created_timestamp); --json: {"templates": [{template_id, concept,
    archetype_id, created_timestamp}]}.
    """
    from cwsctl.targets.openehr.templates import list_templates

    client, traced = connect(out, timeout, max_response_size, allow_http, "template commands")
    with client:
        templates = list_templates(traced)  # type: ignore[arg-type]
    rows = [t.as_dict() for t in templates]
    if out.settings.json:
        out.json({"templates": rows})
        return
    columns = ("template_id", "concept", "archetype_id", "created_timestamp")
    if out.stdout_isatty and rows:
        from rich.table import Column

        out.table(
            [Column(c, overflow="fold", no_wrap=c == "template_id") for c in columns],
            [[row[c] for c in columns] for row in rows],
            title="templates",
        )
    else:
        out.data("".join("\t".join(row[c] or "" for c in columns) + "\n" for row in rows))
    out.info(f"{len(rows)} template(s)")


@app.command("upload")
@with_globals
def upload(
    out: Output,
    file: Annotated[
        str,
        typer.Argument(
            metavar="FILE.opt",
            help="The operational template (ADL 1.4 OPT, XML), sent byte for byte; '-' reads "
            "stdin.",
        ),
    ],
    timeout: TimeoutOption = 30.0,
    max_response_size: MaxResponseSizeOption = None,
    allow_http: AllowHttpOption = False,
) -> None:
    """Upload an operational template (POST /definition/template/adl1.4, application/xml).

    The template id is read from the OPT (template_id/value) and printed on stdout. The server
    keeps the first upload of an id and answers 409 to any later one; cwsctl then reads the
    stored OPT back and compares it with FILE as XML (prefixes, declaration, attribute order,
    comments and indentation aside): the same template is "already uploaded" (exit 0), a
    different one is exit 4 naming the template id. --json: {"template_id", "outcome":
    "uploaded"|"already uploaded", "status", "location"}. Example: cwsctl template upload
    vital_signs.opt
    """
    from cwsctl.cli.common import read_body
    from cwsctl.targets.openehr.templates import read_opt, upload_template

    data = read_body(file)
    what = "stdin" if file == "-" else file
    read_opt(data, what)  # a bad file is exit 2 before anything is sent
    client, traced = connect(out, timeout, max_response_size, allow_http, "template commands")
    with client:
        result = upload_template(traced, data, what)  # type: ignore[arg-type]
    if out.settings.json:
        out.json(
            {
                "template_id": result.template_id,
                "outcome": result.outcome,
                "status": result.response.status,
                "location": result.response.headers.get("location"),
            }
        )
    else:
        out.line(result.template_id)
    if result.outcome == "uploaded":
        out.success(f"uploaded template {result.template_id!r}")
    else:
        out.success(
            f"template {result.template_id!r} already uploaded (the server's copy is the same "
            "template)"
        )


@app.command("get")
@with_globals
def get(
    out: Output,
    template_id: TemplateIdArg,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="opt|web",
            parser=Choice(("opt", "web")),
            help="opt: the OPT as XML (Accept: application/xml); web: the web template as JSON "
            "(Accept: application/json).",
        ),
    ] = "opt",
    output: OutputOption = None,
    timeout: TimeoutOption = 30.0,
    max_response_size: MaxResponseSizeOption = None,
    allow_http: AllowHttpOption = False,
) -> None:
    """Read a template: the OPT (as the server re-serialised it) or its web template.

    The body goes to stdout (or --output) exactly as received; --json prints the response
    envelope (status, headers, body). An unknown template exits 4.
    """
    from cwsctl.cli.commands.request_run import show_response
    from cwsctl.targets.openehr.templates import get_template

    client, traced = connect(out, timeout, max_response_size, allow_http, "template commands")
    with client:
        response = get_template(traced, template_id, fmt)  # type: ignore[arg-type]
        show_response(out, response, client, output)


@app.command("example")
@with_globals
def example(
    out: Output,
    template_id: TemplateIdArg,
    fmt: ReadFormatOption = "canonical",
    output: OutputOption = None,
    timeout: TimeoutOption = 30.0,
    max_response_size: MaxResponseSizeOption = None,
    allow_http: AllowHttpOption = False,
) -> None:
    """Print an example composition the server builds from a template (…/{id}/example).

    A starting point for 'cwsctl composition create EHR_ID FILE --format …'. The body goes to
    stdout (or --output) exactly as received; --json prints the response envelope.
    """
    from cwsctl.cli.commands.request_run import show_response
    from cwsctl.targets.openehr.templates import template_example

    client, traced = connect(out, timeout, max_response_size, allow_http, "template commands")
    with client:
        response = template_example(traced, template_id, fmt)  # type: ignore[arg-type]
        show_response(out, response, client, output)

"""What `cwsctl request` does, free of typer so the fast start-up path (cli/fast.py) runs the
same code as the Typer command (cli/commands/request.py declares the options), and the helpers other
commands use to show an answer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cwsctl.cli.common import open_client, read_body
from cwsctl.cli.output import Output
from cwsctl.core.errors import ClientRequestError, InputError
from cwsctl.core.files import atomic_write

if TYPE_CHECKING:
    import httpx

    from cwsctl.core.client import ApiClient, ApiResponse


def parse_header_option(values: list[str]) -> dict[str, str]:
    """Turn repeated ``-H 'Name: value'`` options into a dict."""
    from cwsctl.core.headers import check_name, check_value

    headers: dict[str, str] = {}
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise InputError("bad header: -H needs 'Name: value'", hint="use -H 'Name: value'")
        name = check_name(name.strip())
        headers[name] = check_value(content.strip(" \t"), f"-H {name}")
    return headers


def request_command(
    out: Output,
    method: str,
    path: str,
    body_file: str | None = None,
    output: Path | None = None,
    header: list[str] | None = None,
    if_match: str | None = None,
    prefer: str | None = None,
    dry_run: bool = False,
    curl: bool = False,
    timeout: float = 30.0,
    max_response_size: int | None = None,
    insecure_skip_verify: bool = False,
    allow_http: bool = False,
    show_body: bool = False,
    passphrase_file: Path | None = None,
    allow_other_host: bool = False,
) -> None:
    """`cwsctl request` with its parameters named as in the Typer command (see its help)."""
    body = read_body(body_file) if body_file is not None else b""
    extra_headers = parse_header_option(header or [])
    if if_match is not None:
        # Quoted, as the specification says; send_with_if_match retries bare where refused.
        from cwsctl.core.transport.http_auth import quoted_etag

        extra_headers["If-Match"] = quoted_etag(if_match)
    if prefer is not None:
        extra_headers["Prefer"] = f"return={prefer}"
    offline = dry_run or curl
    with open_client(
        out.settings,
        passphrase_file=passphrase_file,
        timeout=timeout,
        max_response_size=max_response_size,
        verify_responses=not (insecure_skip_verify or offline),
        allow_http=allow_http,
        allow_other_host=allow_other_host,
    ) as client:
        if offline:
            prepared = client.build_request(method, path, body, extra_headers)
            if curl:
                out.line(curl_command(prepared, body_file))
            else:
                out.data(format_request(prepared))
            return
        if out.settings.verbose:
            out.info(f"* proxy: {client.proxy_description(path)}", "dim")
        if insecure_skip_verify:
            out.warn(
                "response signature NOT verified (--insecure-skip-verify): the answer may be forged"
            )
        if if_match is not None:
            from cwsctl.registry import REQUEST_IF_MATCH, resolve

            send_with_if_match = resolve(REQUEST_IF_MATCH)
            extra_headers.pop("If-Match")
            response = send_with_if_match(client, method, path, body, extra_headers, if_match)
        else:
            response = client.request(method, path, body, extra_headers)
    if out.settings.verbose:
        show_exchange(out, response, body, show_body)
    show_response(out, response, client, output)


def show_response(
    out: Output, response: ApiResponse, client: ApiClient, output: Path | None = None
) -> None:
    """Print a complete (on CWS: verified) response and its status line; raise for 4xx/5xx."""
    _emit(out, response, output)
    out.info(status_line(response, client), "green" if response.ok else "yellow")
    try:
        response.raise_for_status()
    except ClientRequestError as exc:
        if response.status == 401:
            from cwsctl.core.transport.http_auth import challenge_reason

            reason = challenge_reason(response)
            if reason:
                exc.message += f"; {reason}"
            exc.hint = client.unauthorized_hint()
        raise


def status_line(response: ApiResponse, client: ApiClient) -> str:
    """``201 Created · verified by coremr (SHA256:…) · 12 ms``."""
    from cwsctl.core.text import printable

    trust = client.trust_description(response)
    line = f"{response.status} {printable(response.reason)} · {trust}"
    if 300 <= response.status < 400:
        line += " · a redirect: redirects are not followed"
    return f"{line} · {response.elapsed_ms:.0f} ms"


def response_document(response: ApiResponse) -> dict[str, object]:
    """The ``--json`` envelope of a response."""
    from cwsctl.core.jsondoc import loads_json

    check = response.verification
    try:
        body: object = loads_json(response.body) if response.body else None
    except ValueError:
        body = response.body.decode("utf-8", "replace")
    return {
        "status": response.status,
        "reason": response.reason,
        "headers": dict(response.headers),
        "verified": bool(check and check.verified),
        "signer": check.signer if check else None,
        "key_fingerprint": check.key_fingerprint if check else None,
        "body_sha256": response.body_sha256,
        # Versioning headers, for openEHR (and any server that uses them); None when absent.
        "etag": response.headers.get("etag"),
        "location": response.headers.get("location"),
        "content_location": response.headers.get("content-location"),
        "last_modified": response.headers.get("last-modified"),
        "body": body,
    }


def _emit(out: Output, response: ApiResponse, output: Path | None) -> None:
    if output is not None:
        atomic_write(output, response.body)
        if response.signature_header:
            atomic_write(
                output.with_name(output.name + ".sig"), (response.signature_header + "\n").encode()
            )
        where = f" (signature in {output}.sig)" if response.signature_header else ""
        out.info(f"saved {len(response.body)} bytes to {output}{where}")
    if out.settings.json:
        out.json(response_document(response))
    elif output is None:
        _write_body(out, response.body)


def _write_body(out: Output, body: bytes) -> None:
    if out.stdout_isatty and body:
        from cwsctl.core.jsondoc import loads_json

        try:
            document = loads_json(body)
        except ValueError:
            pass
        else:
            out.pretty_json(document)  # control characters escaped, C1 too (cli/output.py)
            return
    out.data(body)


def show_exchange(out: Output, response: ApiResponse, body: bytes, show_body: bool) -> None:
    from cwsctl.core.redact import masked_body

    for key, value in response.request_headers.items():
        out.info(f"> {key}: {value}", "dim")
    out.info(f"> {body.decode('utf-8', 'replace') if show_body else masked_body(body)}", "dim")
    for key, value in response.headers.items():
        out.info(f"< {key}: {value}", "dim")
    if response.body:
        shown = (
            response.body.decode("utf-8", "replace") if show_body else masked_body(response.body)
        )
        out.info(f"< {shown}", "dim")


def format_request(request: httpx.Request) -> bytes:
    """The request as it goes on the wire (request line, headers, blank line, exact body)."""
    lines = [f"{request.method} {request.url}"]
    lines += [f"{key}: {value}" for key, value in request.headers.items()]
    return ("\n".join(lines) + "\n\n").encode() + request.content


def curl_command(request: httpx.Request, body_file: str | None) -> str:
    """A curl command line that sends the same bytes with the same signature."""
    import shlex

    parts = ["curl", "-sS", "-X", request.method, request.url.__str__()]
    for key, value in request.headers.items():
        if key.lower() not in (
            "host",
            "content-length",
            "accept-encoding",
            "connection",
            "user-agent",
            "accept",
        ):
            parts += ["-H", f"{key}: {value}"]
    if request.content:
        if body_file and body_file != "-":
            parts += ["--data-binary", f"@{body_file}"]
        else:
            parts += ["--data-binary", request.content.decode("utf-8", "replace")]
    return shlex.join(parts)

"""`cwsctl sandbox …`: run a local CorEMR (CWS), OpenEMR or openEHR stand-in and manage its state.

Nothing from cwsctl.sandbox (nor starlette/uvicorn) is imported until a command runs, so
`cwsctl --help` stays fast and works without the `cwsctl[sandbox]` extra.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cwsctl.cli.options import (
    KEY_BITS,
    MAX_CLOCK_SKEW_S,
    MAX_LATENCY_MS,
    PORT_RANGE,
    with_globals,
)
from cwsctl.cli.output import Output
from cwsctl.cli.params import Choice, Fraction, HttpUrl, ListenHost, Number, WholeNumber
from cwsctl.core.errors import InputError
from cwsctl.core.keys import DEFAULT_BITS

if TYPE_CHECKING:
    from cwsctl.sandbox.faults import Faults
    from cwsctl.sandbox.server import BaseSandboxServer

SANDBOX_KINDS = ("cws", "openemr", "openehr")
OPENEMR_VERSIONS = ("7.0.3", "7.0.4")
#: Longest --token-lifetime: a day (OpenEMR's own are 300 s and 3600 s; long ones hide bugs).
MAX_TOKEN_LIFETIME_S = 86400

app = typer.Typer(
    help="Run a local sandbox server (CorEMR, OpenEMR or EHRbase stand-in) for demos and tests.",
    no_args_is_help=True,
)
openemr_app = typer.Typer(
    help="Administer the OpenEMR sandbox's state (what OpenEMR's admin pages do).",
    no_args_is_help=True,
)
app.add_typer(openemr_app, name="openemr")

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        metavar="DIR",
        envvar="CWSCTL_SANDBOX_DIR",
        help="Sandbox state: server key, client keys, patients "
        "[env: CWSCTL_SANDBOX_DIR; default: $CWSCTL_HOME/sandbox].",
        show_default=False,
        show_envvar=False,
    ),
]
KeyBitsOption = Annotated[
    int,
    typer.Option(
        "--key-bits",
        metavar="BITS",
        parser=KEY_BITS,
        help="Size of the server key, if one has to be made: 2048, 3072 or 4096.",
    ),
]


def _data_dir(option: Path | None) -> Path:
    from cwsctl.sandbox.db import default_data_dir

    return option.expanduser() if option is not None else default_data_dir()


@app.command("serve")
@with_globals
def serve(
    out: Output,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            metavar="HOST",
            parser=ListenHost(),
            help="Address to listen on: a host name or IP address (keep it loopback).",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            "--port",
            metavar="PORT",
            parser=WholeNumber(*PORT_RANGE),
            help="TCP port, 0 to 65535; 0 picks a free one.",
        ),
    ] = 8080,
    data_dir: DataDirOption = None,
    key_bits: KeyBitsOption = DEFAULT_BITS,
    drop_rate: Annotated[
        float | None,
        typer.Option(
            "--drop-rate",
            metavar="RATE",
            envvar="CWSCTL_SANDBOX_DROP_RATE",
            show_envvar=False,
            parser=Fraction(),
            help="Fraction of patient requests processed, then cut off mid-response "
            "[env: CWSCTL_SANDBOX_DROP_RATE].",
            show_default=False,
        ),
    ] = None,
    error_rate: Annotated[
        float | None,
        typer.Option(
            "--error-rate",
            metavar="RATE",
            envvar="CWSCTL_SANDBOX_ERROR_RATE",
            show_envvar=False,
            parser=Fraction(),
            help="Fraction of patient requests answered 500 without processing "
            "[env: CWSCTL_SANDBOX_ERROR_RATE].",
            show_default=False,
        ),
    ] = None,
    latency_ms: Annotated[
        int | None,
        typer.Option(
            "--latency-ms",
            metavar="MS",
            envvar="CWSCTL_SANDBOX_LATENCY_MS",
            show_envvar=False,
            parser=WholeNumber(0, MAX_LATENCY_MS, "milliseconds"),
            help="Random extra delay up to N ms (0 to 600000) per patient request "
            "[env: CWSCTL_SANDBOX_LATENCY_MS].",
            show_default=False,
        ),
    ] = None,
    corrupt_rate: Annotated[
        float | None,
        typer.Option(
            "--corrupt-rate",
            metavar="RATE",
            envvar="CWSCTL_SANDBOX_CORRUPT_RATE",
            show_envvar=False,
            parser=Fraction(),
            help="Fraction of patient responses with a corrupted signature "
            "[env: CWSCTL_SANDBOX_CORRUPT_RATE].",
            show_default=False,
        ),
    ] = None,
    unsigned_rate: Annotated[
        float | None,
        typer.Option(
            "--unsigned-rate",
            metavar="RATE",
            envvar="CWSCTL_SANDBOX_UNSIGNED_RATE",
            show_envvar=False,
            parser=Fraction(),
            help="Fraction of patient responses without a signature "
            "[env: CWSCTL_SANDBOX_UNSIGNED_RATE].",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            metavar="N",
            help="Seed the fault dice [env: CWSCTL_SANDBOX_SEED].",
            show_default=False,
        ),
    ] = None,
    clock_skew_s: Annotated[
        int | None,
        typer.Option(
            "--clock-skew-s",
            metavar="SECONDS",
            envvar="CWSCTL_SANDBOX_CLOCK_SKEW_S",
            show_envvar=False,
            parser=WholeNumber(-MAX_CLOCK_SKEW_S, MAX_CLOCK_SKEW_S, "seconds, a year either way"),
            help="Shift the Date header of every response by N seconds, at most a year either "
            "way [env: CWSCTL_SANDBOX_CLOCK_SKEW_S].",
            show_default=False,
        ),
    ] = None,
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            metavar="KIND",
            parser=Choice(SANDBOX_KINDS),
            help="Which EMR API to stand in for: cws (CorEMR, signed bodies), openemr "
            "(OAuth2 bearer tokens, Standard API and FHIR R4) or openehr (openEHR REST, EHRs, "
            "versioned compositions, AQL); described above.",
        ),
    ] = "cws",
    token_lifetime: Annotated[
        int | None,
        typer.Option(
            "--token-lifetime",
            metavar="SECONDS",
            parser=WholeNumber(1, MAX_TOKEN_LIFETIME_S, "seconds"),
            help="--kind openemr: seconds every access token lives [default: OpenEMR's, 300 for "
            "client credentials, 3600 for a user's tokens].",
            show_default=False,
        ),
    ] = None,
    openemr_version: Annotated[
        str,
        typer.Option(
            "--openemr-version",
            metavar="VERSION",
            parser=Choice(OPENEMR_VERSIONS),
            help="--kind openemr: the OpenEMR release to behave like, 7.0.3 or 7.0.4 (7.0.4 is "
            "also master's behaviour).",
        ),
    ] = "7.0.4",
    site_address: Annotated[
        str | None,
        typer.Option(
            "--site-address",
            metavar="URL",
            parser=HttpUrl(),
            help="--kind openemr: OpenEMR's Site Address Override, the base of its discovery "
            "URLs and of the aud a client assertion must carry [default: each request's scheme "
            "and X-Forwarded-Host or Host].",
            show_default=False,
        ),
    ] = None,
    system_scopes: Annotated[
        bool,
        typer.Option(
            "--system-scopes",
            help="--kind openemr: turn on OpenEMR's FHIR system scopes (system/*.read and "
            "$export; Admin → Config → Connectors).",
        ),
    ] = False,
    manual_approval: Annotated[
        bool,
        typer.Option(
            "--manual-approval",
            help="--kind openemr: every new client starts disabled (OpenEMR's "
            "oauth_app_manual_approval), not only confidential ones with user/ or system/ scopes.",
        ),
    ] = False,
    export_mode: Annotated[
        str,
        typer.Option(
            "--export-mode",
            metavar="MODE",
            parser=Choice(("openemr", "spec")),
            help="--kind openemr: bulk FHIR export as OpenEMR does it (openemr: the export runs "
            "inside the kick-off, `type`, a PHP DateTime transactionTime, no counts) or as the "
            "Bulk Data Access IG says (spec: 202s with X-Progress and Retry-After, 429 when "
            "polled early, `_type`, counts).",
        ),
    ] = "openemr",
    export_delay: Annotated[
        float,
        typer.Option(
            "--export-delay",
            metavar="SECONDS",
            parser=Number("seconds", at_least=0, at_most=86400),
            help="--export-mode spec: seconds every export job answers 202 before its manifest.",
        ),
    ] = 0.0,
    basic_auth_file: Annotated[
        Path | None,
        typer.Option(
            "--basic-auth-file",
            metavar="FILE",
            help="--kind openehr: require HTTP basic auth with the one user:password line in "
            "FILE (kept off the command line); without it no credentials are needed.",
            show_default=False,
        ),
    ] = None,
    bearer_token_file: Annotated[
        Path | None,
        typer.Option(
            "--bearer-token-file",
            metavar="FILE",
            help="--kind openehr: require a bearer token, one of those in FILE (one a line), as "
            "EHRbase's OAUTH mode does; a wrong one gets 401 with WWW-Authenticate: Bearer "
            'error="invalid_token". Not with --basic-auth-file.',
            show_default=False,
        ),
    ] = None,
    if_match: Annotated[
        str,
        typer.Option(
            "--if-match",
            metavar="MODE",
            parser=Choice(("ehrbase", "spec")),
            help="--kind openehr: ehrbase (EHRbase 2.0-2.31: a quoted If-Match is refused 400 "
            '"UUID string too large") or spec (quoted, as the openEHR REST release says).',
        ),
    ] = "ehrbase",
    max_fetch: Annotated[
        int | None,
        typer.Option(
            "--max-fetch",
            metavar="N",
            parser=WholeNumber(1, 10_000_000),
            help="--kind openehr: EHRbase's ehrbase.rest.aql.max-fetch: a query asking for more "
            "rows gets 422 [default: no maximum].",
            show_default=False,
        ),
    ] = None,
    fetch_precedence: Annotated[
        str,
        typer.Option(
            "--fetch-precedence",
            metavar="MODE",
            parser=Choice(("reject", "min-fetch")),
            help="--kind openehr: EHRbase's ehrbase.rest.aql.fetch-precedence for AQL with its own "
            "LIMIT and a fetch: reject (422) or min-fetch (the smaller one).",
        ),
    ] = "reject",
    default_limit: Annotated[
        int | None,
        typer.Option(
            "--default-limit",
            metavar="N",
            parser=WholeNumber(1, 10_000_000),
            help="--kind openehr: EHRbase's ehrbase.rest.aql.default-limit: rows a query answers "
            "when neither fetch nor LIMIT says [default: every row].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve a CWS, OpenEMR or openEHR sandbox until Ctrl-C or SIGTERM (then exit 0).

    --kind cws (the default): requests must be signed by a key registered with `cwsctl sandbox
    add-key`; every response is signed as `coremr` with the key shown by `cwsctl sandbox
    server-key`. Faults hit only /ws/patients requests. One access line per request goes to
    stderr (method, path without query, status; no bodies); --quiet turns it off.

    --kind openemr: a stand-in for OpenEMR 7.0.3 or 7.0.4+ (--openemr-version), modelled on
    OpenEMR's source (cwsctl/sandbox/README.md has the table), site `default`, state in openemr.db
    in the data dir. URLs are built from the site address (--site-address, else each request's
    scheme and X-Forwarded-Host or Host): discovery at GET
    /oauth2/default/.well-known/openid-configuration and GET
    /apis/default/fhir/.well-known/smart-configuration. POST /oauth2/default/registration (JSON)
    validates every scope against the server's list (system/* only with --system-scopes, and
    only read and $export ones), refuses token_endpoint_auth_method private_key_jwt on 7.0.3,
    answers 200; a confidential client (application_type private) with a user/ or system/
    scope starts disabled — every grant answers 401 invalid_client — until `cwsctl sandbox
    openemr enable-client --data-dir D -- CLIENT_ID` (works while the server runs). GET
    /oauth2/default/authorize approves at once (no login page) and redirects with a code.
    POST /oauth2/default/token: client_credentials with an RS384 client_assertion verified
    with the first RSA key of the client's JWKS (kid ignored), aud exactly the token URL, 60 s
    leeway, single-use jti → a token of the system user (300 s, system/* scopes only count);
    authorization_code (PKCE S256) and refresh_token → a user's tokens (3600 s; a refresh
    token with offline_access; a refresh revokes the old refresh and access tokens). Bearer
    token required on /apis/default/api/patient[/UUID] (api:oemr and user/patient.* needed)
    and /apis/default/fhir/Patient[/ID] (user/Patient.write to create, .read to read); a
    missing scope is 401 (empty on 7.0.3). FHIR create reads only the name with use
    "official", keeps identifiers by type code only (PT → pubpid, SS → ss), ignores
    If-None-Exist and answers 201 {"pid", "uuid"}; search by identifier matches the value
    only. Faults (drop, error, latency) hit the patient routes. The access log names the
    client id, never a token.

    --kind openehr: a stand-in for EHRbase 2.x (the openEHR REST API, ITS-REST 1.0.3, as
    EHRbase serves it; cwsctl/sandbox/README.md has the table), state in openehr.db in the data
    dir. Base path /ehrbase/rest/openehr/v1 (B below; a profile URL is the server URL + B);
    GET /ehrbase/rest/status reports ehrbase_version (2.31.0, or 2.32.0 with --if-match spec).
    Version uids are UUID::cwsctl-sandbox::N; Prefer: return=representation (exactly) answers
    with the resource, else no body. Templates first: POST B/definition/template/adl1.4 with an
    OPT (Content-Type and Accept application/xml, else 415/406) → 201, the id read from the
    XML, a second upload of an id → 409; GET B/definition/template/adl1.4[/ID[/example]] (the
    OPT as XML, or a web template for application/json). A composition whose template is not
    uploaded → 422. POST B/ehr (an EHR_STATUS or nothing) → 201 with ETag "EHR_ID"; the EHR's
    ehr_status is an OBJECT_REF; a subject namespace outside [a-zA-Z][a-zA-Z0-9-_:/&+?]* → 400;
    a subject twice → 409. POST B/ehr/EHR_ID/composition (canonical JSON, or FLAT/STRUCTURED
    with ?format=FLAT|STRUCTURED&templateId=ID or the application/openehr.wt.flat.schema+json
    and …structured.schema+json types) → 204 (201 with the body when asked), Location = the
    object uid. PUT B/ehr/EHR_ID/composition/OBJECT_UID with If-Match → 204: with --if-match
    ehrbase (the default, EHRbase 2.0-2.31) a quoted If-Match is 400 "UUID string too large"
    and a bare version uid works; with spec both work. A stale update → 412, a stale DELETE
    B/ehr/EHR_ID/composition/VERSION_UID → 409, both without ETag or Location; deleting a deleted
    one → 404; reading a deleted one → 204. version_at_time must be extended ISO 8601 (a space
    → 400). Revision history: {"items": […]}. POST B/query/aql {"q", "query_parameters",
    "offset", "fetch"} (or GET): offset without fetch → 422; fetch above --max-fetch → 422; AQL
    with its own LIMIT plus fetch/offset → 422 (--fetch-precedence reject, the default) or the
    smaller of LIMIT and fetch (min-fetch); without fetch or LIMIT every row, or
    --default-limit rows. The AQL subset: SELECT paths [AS alias] FROM EHR e [[ehr_id/value=V]]
    [CONTAINS COMPOSITION c [[ARCHETYPE_ID]]] (or FROM COMPOSITION c) [WHERE path OP V [AND
    …]] [ORDER BY path [ASC|DESC], …] [LIMIT n [OFFSET m]]; anything else is 400 "not
    supported by the sandbox". Errors are {"error", "message"}. --basic-auth-file FILE: every
    request needs Authorization: Basic with FILE's user:password; --bearer-token-file FILE: a
    bearer token from FILE (401 with WWW-Authenticate: Bearer error="invalid_token"
    otherwise). Faults (drop, error, latency) hit B/ehr and everything under it.

    Limits, so that one misbehaving client cannot exhaust the sandbox or lock others out: a
    request body over 1 MiB gets 413 as soon as that much has arrived (or is declared in
    Content-Length), then the connection is closed after at most 16 MiB more is read and thrown
    away; a request head (request line and headers) over 16 KiB gets 400 and is closed. A client
    has 10 s to send a request head, counted from connecting or from its previous answer, then
    10 s more for the body; past that it is disconnected without an answer, and a connection
    that sends nothing is closed the same way. An idle keep-alive connection is closed 5 s after
    its last answer. There is no cap on connections or concurrent requests (only the open-file
    limit, ulimit -n): idle ones are reclaimed by these timeouts rather than refused.
    """
    from cwsctl.sandbox import require_server_deps

    require_server_deps()
    from cwsctl.core.urls import is_loopback
    from cwsctl.sandbox.faults import Faults
    from cwsctl.targets.cws.sandbox.server import SandboxServer
    from cwsctl.targets.cws.sandbox.store import SERVER_KEY_FILE

    basic_auth = None
    openemr_only = {
        "--token-lifetime": token_lifetime is not None,
        "--site-address": site_address is not None,
        "--system-scopes": system_scopes,
        "--manual-approval": manual_approval,
        "--openemr-version": openemr_version != "7.0.4",
        "--export-mode": export_mode != "openemr",
        "--export-delay": export_delay != 0.0,
    }
    misplaced = [name for name, given in openemr_only.items() if given]
    if misplaced and kind != "openemr":
        raise InputError(f"{misplaced[0]} applies only to --kind openemr")
    openehr_only = {
        "--basic-auth-file": basic_auth_file is not None,
        "--bearer-token-file": bearer_token_file is not None,
        "--if-match": if_match != "ehrbase",
        "--max-fetch": max_fetch is not None,
        "--fetch-precedence": fetch_precedence != "reject",
        "--default-limit": default_limit is not None,
    }
    misplaced = [name for name, given in openehr_only.items() if given]
    if misplaced and kind != "openehr":
        raise InputError(f"{misplaced[0]} applies only to --kind openehr")
    if export_delay and export_mode != "spec":
        raise InputError("--export-delay applies only to --export-mode spec")
    if basic_auth_file is not None and bearer_token_file is not None:
        raise InputError("--basic-auth-file and --bearer-token-file exclude each other")
    bearer_tokens = None
    if basic_auth_file is not None:
        from cwsctl.targets.openehr.sandbox.server import read_basic_auth_file

        basic_auth = read_basic_auth_file(basic_auth_file.expanduser())
    if bearer_token_file is not None:
        from cwsctl.targets.openehr.sandbox.server import read_bearer_token_file

        bearer_tokens = read_bearer_token_file(bearer_token_file.expanduser())
    openehr_settings = {
        "bearer_tokens": bearer_tokens,
        "if_match": if_match,
        "max_fetch": max_fetch,
        "fetch_precedence": fetch_precedence,
        "default_limit": default_limit,
    }
    faults = Faults.from_env(
        drop_rate=drop_rate,
        error_rate=error_rate,
        latency_ms=latency_ms,
        corrupt_rate=corrupt_rate,
        unsigned_rate=unsigned_rate,
        seed=seed,
        clock_skew_s=clock_skew_s,
    )
    directory = _data_dir(data_dir)
    if not is_loopback(host):
        out.warn(
            f"listening on {host}, NOT a loopback address: other machines can reach this sandbox. "
            "It is a test server: plain HTTP, no rate limits, fake-patient storage. "
            "Never put real patient data in it; prefer --host 127.0.0.1."
        )
    if kind == "cws" and not (directory / SERVER_KEY_FILE).exists():
        out.info(f"Generating the sandbox's {key_bits}-bit server key in {directory}…")

    def ready(server: BaseSandboxServer) -> None:
        if kind == "openemr":
            _openemr_ready(out, server)
            return
        if kind == "openehr":
            _openehr_ready(out, server)
            return
        assert isinstance(server, SandboxServer)
        if out.settings.json:
            out.json(
                {
                    "url": server.url,
                    "data_dir": str(server.data_dir),
                    "server_username": server.trusted_key.username,
                    "server_key_fingerprint": server.fingerprint,
                    "faults": server.faults.to_json(),
                }
            )
        out.success(f"CWS sandbox listening on {server.url} (data: {server.data_dir})")
        out.info(f"Responses are signed as 'coremr' with {server.fingerprint}")
        if server.faults.active:
            out.warn(f"fault injection on /ws/patients: {server.faults.describe()}")
        registered = server.store.client_keys()
        if not registered:
            out.warn(
                "no client keys registered yet; every request will get 401. "
                "Register one: cwsctl sandbox add-key USERNAME PUBLIC_KEY.pem"
            )
        out.info("Press Ctrl-C to stop.")

    server = _build_server(
        kind,
        host=host,
        port=port,
        data_dir=directory,
        key_bits=key_bits,
        faults=faults,
        access_log=not out.settings.quiet,
        token_lifetime=token_lifetime,
        basic_auth=basic_auth,
        openemr_version=openemr_version,
        site_address=site_address,
        system_scopes=system_scopes,
        manual_approval=manual_approval,
        openehr_settings=openehr_settings,
        export_settings={"export_mode": export_mode, "export_delay": export_delay},
    )
    stop_signal = server.serve_forever(ready)
    how = f" ({signal.Signals(stop_signal).name})" if stop_signal else ""
    out.info(f"Sandbox stopped{how}.")


def _build_server(
    kind: str,
    *,
    host: str,
    port: int,
    data_dir: Path,
    key_bits: int,
    faults: Faults,
    access_log: bool,
    token_lifetime: int | None,
    basic_auth: tuple[str, str] | None,
    openemr_version: str,
    site_address: str | None,
    system_scopes: bool,
    manual_approval: bool,
    openehr_settings: dict[str, Any] | None = None,
    export_settings: dict[str, Any] | None = None,
) -> BaseSandboxServer:
    """The flavour ``kind`` asks for (the dispatch lives here, so no flavour imports another)."""
    common = {"host": host, "port": port, "faults": faults, "access_log": access_log}
    if kind == "openemr":
        from cwsctl.targets.openemr.sandbox.server import OpenEmrSandboxServer

        return OpenEmrSandboxServer(
            data_dir,
            version=openemr_version,
            site_address=site_address,
            system_scopes=system_scopes,
            manual_approval=manual_approval,
            token_lifetime=token_lifetime,
            **(export_settings or {}),
            **common,  # type: ignore[arg-type]
        )
    if kind == "openehr":
        from cwsctl.targets.openehr.sandbox.server import OpenEhrSandboxServer

        return OpenEhrSandboxServer(
            data_dir,
            basic_auth=basic_auth,
            **(openehr_settings or {}),
            **common,  # type: ignore[arg-type]
        )
    from cwsctl.targets.cws.sandbox.server import SandboxServer

    return SandboxServer(data_dir, key_bits=key_bits, **common)  # type: ignore[arg-type]


def _openemr_ready(out: Output, server: BaseSandboxServer) -> None:
    from cwsctl.targets.openemr.sandbox.server import OpenEmrSandboxServer

    assert isinstance(server, OpenEmrSandboxServer)
    lifetimes = (
        f"{server.token_lifetime}-second access tokens"
        if server.token_lifetime is not None
        else "access tokens: 300 s client credentials, 3600 s user"
    )
    if out.settings.json:
        out.json(
            {
                "kind": "openemr",
                "url": server.url,
                "site": server.site,
                "openemr_version": server.version,
                "site_address": server.site_address,
                "system_scopes": server.system_scopes,
                "manual_approval": server.manual_approval,
                "data_dir": str(server.data_dir),
                "token_url": server.token_url,
                "fhir_url": server.fhir_url,
                "api_url": server.api_url,
                "token_lifetime": server.token_lifetime,
                "export_mode": server.export_mode,
                "export_delay": server.export_delay,
                "faults": server.faults.to_json(),
            }
        )
    out.success(
        f"OpenEMR {server.version} sandbox listening on {server.url} (data: {server.data_dir})"
    )
    out.info(f"Discovery: {server.fhir_url}/.well-known/smart-configuration")
    out.info(f"Register: POST {server.oauth_url}/registration")
    out.info(f"Token URL (the assertion's aud): {server.token_url} ({lifetimes})")
    out.info(f"APIs: {server.api_url}/api/patient and {server.api_url}/fhir/Patient")
    scopes = "on" if server.system_scopes else "off (--system-scopes turns them on)"
    out.info(f"System scopes: {scopes}")
    delay = f", {server.export_delay:g} s of 202s" if server.export_mode == "spec" else ""
    out.info(
        f"Bulk export ({server.export_mode} mode{delay}): GET {server.api_url}/fhir/$export, "
        f"/Patient/$export, /Group/{server.group_id}/$export"
    )
    out.info(
        "New confidential clients with user/ or system/ scopes start disabled"
        f"{' (with --manual-approval: every new client)' if server.manual_approval else ''}: "
        f"cwsctl sandbox openemr enable-client --data-dir {server.data_dir} -- CLIENT_ID"
    )
    if server.faults.active:
        out.warn(f"fault injection on the patient routes: {server.faults.describe()}")
    out.info("Press Ctrl-C to stop.")


def _openehr_ready(out: Output, server: BaseSandboxServer) -> None:
    from cwsctl.targets.openehr.sandbox.server import OpenEhrSandboxServer

    assert isinstance(server, OpenEhrSandboxServer)
    auth = server.basic_auth
    bearer = server.bearer_tokens is not None
    if out.settings.json:
        out.json(
            {
                "kind": "openehr",
                "url": server.url,
                "base_url": server.base_url,
                "status_url": server.status_url,
                "system_id": server.system_id,
                "data_dir": str(server.data_dir),
                "auth": "basic" if auth else "bearer" if bearer else "none",
                "username": auth[0] if auth else None,
                "if_match": server.if_match,
                "ehrbase_version": server.ehrbase_version,
                "max_fetch": server.max_fetch,
                "fetch_precedence": server.fetch_precedence,
                "default_limit": server.default_limit,
                "templates": server.template_ids(),
                "faults": server.faults.to_json(),
            }
        )
    out.success(f"openEHR sandbox listening on {server.url} (data: {server.data_dir})")
    out.info(f"Base URL (profile --url): {server.base_url}")
    quoting = (
        'a quoted If-Match is refused (400 "UUID string too large")'
        if server.if_match == "ehrbase"
        else "If-Match quoted as the specification says (bare accepted too)"
    )
    out.info(f"Behaves like EHRbase {server.ehrbase_version}: {quoting}")
    limits = [f"fetch precedence {server.fetch_precedence}"]
    if server.max_fetch is not None:
        limits.append(f"max fetch {server.max_fetch}")
    if server.default_limit is not None:
        limits.append(f"default limit {server.default_limit}")
    out.info("AQL: " + ", ".join(limits))
    templates = server.template_ids()
    out.info(
        f"Templates uploaded: {', '.join(templates)}"
        if templates
        else "No templates uploaded yet: compositions need one (POST "
        f"{server.base_url}/definition/template/adl1.4, Content-Type and Accept application/xml)"
    )
    if auth:
        out.info(f"Basic auth required, user {auth[0]!r} (password from the --basic-auth-file)")
    elif bearer:
        out.info("Bearer token required (one of those in the --bearer-token-file)")
    else:
        out.info("No authentication required (use --basic-auth-file or --bearer-token-file)")
    if server.faults.active:
        out.warn(f"fault injection on {server.base_url}/ehr…: {server.faults.describe()}")
    out.info("Press Ctrl-C to stop.")


@app.command("add-key")
@with_globals
def add_key(
    out: Output,
    username: Annotated[
        str, typer.Argument(metavar="USERNAME", help="Username the client signs as (Access=…).")
    ],
    public_key_file: Annotated[
        Path,
        typer.Argument(
            metavar="PUBLIC_KEY_FILE",
            help="The client's public key PEM (a private key file works too).",
        ),
    ],
    data_dir: DataDirOption = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace a different key already registered.")
    ] = False,
) -> None:
    """Register a client's public key, like CorEMR's Administration → Public Keys → +.

    Works while the server runs; it sees the key on the next request.
    """
    from cwsctl.core import keys
    from cwsctl.targets.cws.sandbox.store import register_client_key

    key = keys.load_public_key(public_key_file)
    directory = _data_dir(data_dir)
    entry = register_client_key(directory, username, key, replace=replace)
    if out.settings.json:
        out.json({"data_dir": str(directory), **entry.to_json()})
    out.success(f"Registered {entry.username} {entry.fingerprint} in {directory}")


@app.command("keys")
@with_globals
def list_keys(out: Output, data_dir: DataDirOption = None) -> None:
    """List registered client usernames and key fingerprints."""
    from cwsctl.targets.cws.sandbox.store import list_client_keys

    directory = _data_dir(data_dir)
    entries = list_client_keys(directory)
    if out.settings.json:
        out.json({"data_dir": str(directory), "keys": [e.to_json() for e in entries]})
        return
    if not entries:
        out.info(f"No client keys registered in {directory}.")
        out.info("Register one: cwsctl sandbox add-key USERNAME PUBLIC_KEY.pem")
        return
    width = max(len(e.username) for e in entries)
    for entry in entries:
        out.line(f"{entry.username:<{width}}  {entry.fingerprint}")


@app.command("server-key")
@with_globals
def server_key(
    out: Output, data_dir: DataDirOption = None, key_bits: KeyBitsOption = DEFAULT_BITS
) -> None:
    """Print the sandbox's public key PEM (made if the data dir is new), to pin with profile trust.

    The sandbox signs responses as `coremr`:
    `cwsctl sandbox server-key > sandbox.pem && cwsctl profile trust sandbox.pem`.
    """
    from cwsctl.core import keys
    from cwsctl.targets.cws.sandbox.store import (
        SERVER_KEY_FILE,
        SERVER_USERNAME,
        load_or_create_server_key,
    )

    directory = _data_dir(data_dir)
    if not (directory / SERVER_KEY_FILE).exists():
        out.info(f"Generating the sandbox's {key_bits}-bit server key in {directory}…")
    public = load_or_create_server_key(directory, key_bits).public_key()
    pem = keys.public_key_pem(public).decode("ascii")
    fingerprint = keys.fingerprint(public)
    if out.settings.json:
        out.json(
            {
                "data_dir": str(directory),
                "username": SERVER_USERNAME,
                "bits": public.key_size,
                "fingerprint": fingerprint,
                "public_key": pem,
            }
        )
        return
    out.data(pem)
    out.info(f"Fingerprint: {fingerprint} (signs as {SERVER_USERNAME!r})")
    out.info(
        f"Pin it: cwsctl sandbox server-key > sandbox.pem && cwsctl profile trust sandbox.pem "
        f"--username {SERVER_USERNAME}"
    )


@openemr_app.command("enable-client")
@with_globals
def enable_client(
    out: Output,
    client_id: Annotated[
        str, typer.Argument(metavar="CLIENT_ID", help="The client_id registration answered.")
    ],
    data_dir: DataDirOption = None,
) -> None:
    """Enable a registered client, like OpenEMR's Admin → System → API Clients → Enable.

    Works while the server runs (same SQLite file); the client's next grant succeeds. Client
    ids are base64url and may begin with "-": put "--" before one
    (`cwsctl sandbox openemr enable-client --data-dir DIR -- CLIENT_ID`).
    """
    from cwsctl.targets.openemr.sandbox.store import enable_client as enable

    directory = _data_dir(data_dir)
    client = enable(directory, client_id)
    if client is None:
        raise InputError(
            f"no client {client_id!r} is registered in {directory}",
            hint=f"list them: cwsctl sandbox openemr clients --data-dir {directory}",
        )
    if out.settings.json:
        out.json({"data_dir": str(directory), **client.to_json()})
    out.success(f"Enabled client {client.client_id} in {directory}")


@openemr_app.command("clients")
@with_globals
def list_clients(out: Output, data_dir: DataDirOption = None) -> None:
    """List the registered OAuth clients: id, enabled or not, scopes."""
    from cwsctl.targets.openemr.sandbox.store import list_clients as registered

    directory = _data_dir(data_dir)
    clients = registered(directory)
    if out.settings.json:
        out.json({"data_dir": str(directory), "clients": [c.to_json() for c in clients]})
        return
    if not clients:
        out.info(f"No OAuth clients registered in {directory}.")
        return
    for client in clients:
        state = "enabled " if client.enabled else "disabled"
        out.line(f"{client.client_id}  {state}  {client.scope}")


@openemr_app.command("seed")
@with_globals
def seed_patients(
    out: Output,
    patients: Annotated[
        int,
        typer.Option(
            "--patients",
            metavar="N",
            parser=WholeNumber(1, 10_000_000),
            help="How many generated (fake) patients to add.",
        ),
    ],
    data_dir: DataDirOption = None,
    facility: Annotated[
        str,
        typer.Option("--facility", metavar="ID", help="Facility part of each public id."),
    ] = "10000",
    prefix: Annotated[
        str,
        typer.Option("--prefix", metavar="TEXT", help="Prefix of each public id's number."),
    ] = "P",
) -> None:
    """Add N generated patients to an OpenEMR sandbox's data dir at once (for exports and
    benchmarks): public ids FACILITY:PREFIXk, k counting on from the patients already there,
    in one transaction (100,000 take a few seconds). Works while the server runs.
    """
    import time

    from cwsctl.targets.openemr.sandbox.store import OpenEmrStore

    directory = _data_dir(data_dir)
    started = time.perf_counter()
    with OpenEmrStore(directory) as store:
        added = store.seed_patients(patients, facility=facility, prefix=prefix)
        total = store.count_patients()
    elapsed = time.perf_counter() - started
    if out.settings.json:
        out.json(
            {"data_dir": str(directory), "added": added, "patients": total, "seconds": elapsed}
        )
    out.success(f"Added {added} patients in {elapsed:.1f} s ({total} in {directory})")

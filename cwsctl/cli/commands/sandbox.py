"""`cwsctl sandbox …`: run a local CorEMR (CWS), OpenEMR or openEHR stand-in and manage its state.

`serve` declares every flavour's options (Typer builds options from the signature), refuses an
option of another flavour and hands the rest to that flavour's CLI module,
``cwsctl.targets.<kind>.cli.sandbox`` (loaded by :func:`flavour` only), which holds:

- ``OPTIONS``: the serve options only that flavour takes ("--x applies only to --kind y");
- ``server_options(options)``: serve's options (by parameter name) checked together, turned into
  the keyword arguments of the flavour's server;
- ``build(out, data_dir, own, common)``: the server (``common``: host, port, faults, access_log);
- ``ready(out, server)``: the banner once the server listens;
- ``extend(group)``: adds the flavour's own commands to this group (`add-key`, `openemr …`).

Nothing from cwsctl.sandbox (nor starlette/uvicorn) is imported until a command runs, so
`cwsctl --help` stays fast and works without the `cwsctl[sandbox]` extra.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import signal
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

from cwsctl import registry
from cwsctl.cli.options import with_globals
from cwsctl.cli.output import Output
from cwsctl.cli.params import Choice, HttpUrl, Number, WholeNumber
from cwsctl.cli.sandbox_options import (
    ClockSkewOption,
    CorruptRateOption,
    DataDirOption,
    DropRateOption,
    ErrorRateOption,
    HostOption,
    KeyBitsOption,
    LatencyMsOption,
    PortOption,
    SeedOption,
    UnsignedRateOption,
    resolve_data_dir,
)
from cwsctl.core.errors import InputError
from cwsctl.core.keys import DEFAULT_BITS

SANDBOX_KINDS = registry.NAMES
OPENEMR_VERSIONS = ("7.0.3", "7.0.4")
#: Longest --token-lifetime: a day (OpenEMR's own are 300 s and 3600 s; long ones hide bugs).
MAX_TOKEN_LIFETIME_S = 86400

app = typer.Typer(
    help="Run a local sandbox server (CorEMR, OpenEMR or EHRbase stand-in) for demos and tests.",
    no_args_is_help=True,
)


@app.command("serve")
@with_globals
def serve(
    out: Output,
    host: HostOption = "127.0.0.1",
    port: PortOption = 8080,
    data_dir: DataDirOption = None,
    key_bits: KeyBitsOption = DEFAULT_BITS,
    drop_rate: DropRateOption = None,
    error_rate: ErrorRateOption = None,
    latency_ms: LatencyMsOption = None,
    corrupt_rate: CorruptRateOption = None,
    unsigned_rate: UnsignedRateOption = None,
    seed: SeedOption = None,
    clock_skew_s: ClockSkewOption = None,
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
    ] = registry.DEFAULT_KIND,
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
    # Every option by parameter name, for the flavours (taken before any other local exists).
    options = {name: value for name, value in locals().items() if name != "out"}
    from cwsctl.sandbox import require_server_deps

    require_server_deps()
    from cwsctl.core.urls import is_loopback
    from cwsctl.sandbox.faults import Faults

    _refuse_other_flavours_options(kind, options)
    chosen = flavour(kind)
    own = chosen.server_options(options)
    faults = Faults.from_env(
        drop_rate=drop_rate,
        error_rate=error_rate,
        latency_ms=latency_ms,
        corrupt_rate=corrupt_rate,
        unsigned_rate=unsigned_rate,
        seed=seed,
        clock_skew_s=clock_skew_s,
    )
    directory = resolve_data_dir(data_dir)
    if not is_loopback(host):
        out.warn(
            f"listening on {host}, NOT a loopback address: other machines can reach this sandbox. "
            "It is a test server: plain HTTP, no rate limits, fake-patient storage. "
            "Never put real patient data in it; prefer --host 127.0.0.1."
        )
    common = {"host": host, "port": port, "faults": faults, "access_log": not out.settings.quiet}
    server = chosen.build(out, directory, own, common)
    stop_signal = server.serve_forever(functools.partial(chosen.ready, out))
    how = f" ({signal.Signals(stop_signal).name})" if stop_signal else ""
    out.info(f"Sandbox stopped{how}.")


def flavour(kind: str) -> ModuleType:
    """The CLI side of sandbox flavour ``kind``, as the registry names it.

    The one place the `sandbox` commands reach a target (so no flavour imports another).
    """
    return importlib.import_module(registry.target(kind).sandbox)


def _refuse_other_flavours_options(kind: str, options: Mapping[str, Any]) -> None:
    """Refuse an option only another flavour takes: "--site-address applies only to --kind
    openemr". An option counts as given when its value is not serve's default; the first given
    one is named, in the order of the kinds and of each flavour's ``OPTIONS``."""
    defaults = inspect.signature(serve).parameters
    for other in SANDBOX_KINDS:
        given = [
            name
            for name in flavour(other).OPTIONS
            if options[_parameter(name)] != defaults[_parameter(name)].default
        ]
        if given and kind != other:
            raise InputError(f"{given[0]} applies only to --kind {other}")


def _parameter(option: str) -> str:
    """serve's parameter for ``option``: ``--site-address`` → ``site_address``."""
    return option.removeprefix("--").replace("-", "_")


# Each flavour's own commands (`add-key`, `keys`, `server-key`, `openemr …`) follow serve.
for _kind in SANDBOX_KINDS:
    flavour(_kind).extend(app)

"""`cwsctl oauth …`: OpenEMR's OAuth2 for an openemr profile (register, token, login).

The group and `discover`, `register`; `token` and `login` are in
:mod:`cwsctl.targets.openemr.cli.login`. httpx and PyJWT are imported inside the commands, so
`cwsctl --help` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from cwsctl.cli.common import passphrase_source
from cwsctl.cli.options import (
    AllowHttpOption,
    MaxResponseSizeOption,
    PassphraseFileOption,
    TimeoutOption,
    with_globals,
)
from cwsctl.cli.output import Output
from cwsctl.cli.params import HttpUrl
from cwsctl.core.errors import InputError
from cwsctl.targets.openemr.cli.common import check_transport, openemr_profile
from cwsctl.targets.openemr.cli.login import login, token
from cwsctl.targets.openemr.cli.options import DiscoveryTimeoutOption

if TYPE_CHECKING:
    from cwsctl.core.profile import Profile
    from cwsctl.targets.openemr.registration import Registration

app = typer.Typer(
    help="OAuth2 with OpenEMR for an openemr profile: register the client, get tokens, sign in.",
    no_args_is_help=True,
)


def discover_into(out: Output, profile: Profile, timeout: float) -> dict[str, object]:
    """Read OpenEMR's discovery documents into ``profile`` (not saved here); warn in one line
    when they cannot be read (the documented paths are used then). Returns the ``--json``
    document of what is now in force."""
    from cwsctl.targets.openemr.discovery import apply_discovery, discover
    from cwsctl.targets.openemr.endpoints import endpoints, origin, site_address
    from cwsctl.targets.openemr.settings import OpenEmrSettings

    settings = OpenEmrSettings.of(profile)
    found = discover(profile.url, settings.site, timeout=timeout)
    apply_discovery(profile, found)
    ends = endpoints(profile)
    if not found.token_endpoint:
        out.warn(
            f"OpenEMR discovery at {profile.url} failed ({'; '.join(found.problems)}): using the "
            f"documented paths; retry with: cwsctl -p {profile.name} oauth discover"
        )
    elif found.problems:
        out.warn(f"OpenEMR discovery was partial ({'; '.join(found.problems)})")
    if found.token_endpoint:
        out.info(f"Token endpoint (assertion aud): {ends.audience}")
        out.info(f"FHIR base: {ends.fhir_base}")
    address = site_address(profile)
    differs = address is not None and address != origin(profile.url)
    if differs:
        out.info(
            f"OpenEMR's site address is {address}, not {origin(profile.url)}: cwsctl "
            "sends to the URL you gave and names the site address in its assertions"
        )
    return {
        "discovered": bool(found.token_endpoint),
        "problems": list(found.problems),
        "token_endpoint": ends.audience,
        "authorization_endpoint": settings.authorization_endpoint or None,
        "registration_endpoint": settings.registration_endpoint or None,
        "fhir_base": ends.fhir_base,
        "issuer": settings.issuer or None,
        "site_address": address,
        "site_address_differs": differs,
        "token_url": ends.token,
    }


@app.command("discover")
@with_globals
def discover(
    out: Output,
    timeout: DiscoveryTimeoutOption = 10.0,
) -> None:
    """Read OpenEMR's discovery documents again and store the endpoints they name.

    GETs URL/oauth2/SITE/.well-known/openid-configuration and
    URL/apis/SITE/fhir/.well-known/smart-configuration (as `profile init` does). Requests
    keep going to the profile URL's host with the discovered paths; client assertions name the
    discovered token endpoint as their aud. When the documents cannot be read, says so and uses
    OpenEMR's documented paths.
    """
    store, profile = openemr_profile(out)
    config = store.load()
    stored = config.profiles[profile.name]
    document = discover_into(out, stored, timeout)
    store.save(config)
    if out.settings.json:
        out.json({"profile": profile.name, **document})
    else:
        out.line(str(document["token_endpoint"]))
    out.success(f"Profile {profile.name!r} updated")


@app.command("register")
@with_globals
def register(
    out: Output,
    client_id: Annotated[
        str | None,
        typer.Option(
            "--client-id",
            metavar="ID",
            help="Record a client registered by hand in OpenEMR's admin pages (sends nothing).",
        ),
    ] = None,
    client_name: Annotated[
        str | None,
        typer.Option(
            "--client-name", metavar="NAME", help="Client name shown in OpenEMR [default: cwsctl]."
        ),
    ] = None,
    contacts: Annotated[
        list[str] | None,
        typer.Option("--contact", metavar="EMAIL", help="Contact e-mail address (repeatable)."),
    ] = None,
    scope: Annotated[
        str | None,
        typer.Option(
            "--scope",
            metavar="SCOPES",
            help="Space-separated scopes to register [default: the profile's, else openid "
            "offline_access api:fhir user/Patient.read user/Patient.write].",
        ),
    ] = None,
    system_scopes: Annotated[
        bool,
        typer.Option(
            "--system-scopes",
            help="Also register system/Patient.read, for tokens without a person (the "
            "client-credentials grant); OpenEMR offers system/ scopes only after an "
            'administrator turns them on (Administration → Config → Connectors → "Enable '
            'OpenEMR FHIR System Scopes").',
        ),
    ] = False,
    export_scopes: Annotated[
        bool,
        typer.Option(
            "--export-scopes",
            help="Also register what a bulk FHIR export needs: system/Patient.read, "
            "system/*.$export, system/Patient.$export, system/Group.$export, "
            "system/*.$bulkdata-status, system/Binary.read (system scopes turned on first).",
        ),
    ] = False,
    standard_api: Annotated[
        bool,
        typer.Option(
            "--standard-api", help="Also register api:oemr, for OpenEMR's Standard API (/api/)."
        ),
    ] = False,
    jwks_uri: Annotated[
        str | None,
        typer.Option(
            "--jwks-uri",
            metavar="URL",
            parser=HttpUrl(),
            help="Register this JWKS URL instead of the key set inline (host `cwsctl keys jwks`).",
        ),
    ] = None,
    redirect_uris: Annotated[
        list[str] | None,
        typer.Option(
            "--redirect-uri",
            metavar="URI",
            help="Redirect URI (repeatable) [default: http://127.0.0.1/callback, which "
            "`cwsctl oauth login` uses on any port].",
        ),
    ] = None,
    show_secret: Annotated[
        bool,
        typer.Option(
            "--show-secret", help="Also print the registration access token (kept 0600 on disk)."
        ),
    ] = False,
    passphrase_file: PassphraseFileOption = None,
    timeout: TimeoutOption = 30.0,
    max_response_size: MaxResponseSizeOption = None,
    allow_http: AllowHttpOption = False,
) -> None:
    """Register cwsctl as an OAuth2 client of OpenEMR (dynamic registration, private_key_jwt).

    POSTs the registration endpoint (discovered, else /oauth2/SITE/registration) with
    application_type private, token_endpoint_auth_method private_key_jwt (sent again without it
    when OpenEMR 7.0.3 refuses it) and the profile's public key(s) as an inline JWKS (active key
    first: OpenEMR verifies with the first key), then stores the client id in the profile and
    the registration access token in $CWSCTL_HOME/tokens/PROFILE.json (mode 0600; printed only
    with --show-secret). The client id goes to stdout. OpenEMR keeps a new client with user/ or
    system/ scopes disabled until an administrator enables it (Administration → System → API
    Clients). With --client-id nothing is sent: the id is recorded as given.
    """
    from cwsctl.protocols.oauth2.grants import run_flow
    from cwsctl.protocols.oauth2.login import LOOPBACK_REDIRECT_URI
    from cwsctl.protocols.oauth2.tokens import TokenStore
    from cwsctl.targets.openemr.client_id import client_id_problem
    from cwsctl.targets.openemr.endpoints import endpoints
    from cwsctl.targets.openemr.registration import (
        record_client,
        record_registration,
        registration_document,
        registration_flow,
    )
    from cwsctl.targets.openemr.scopes import (
        EXPORT_SCOPES,
        STANDARD_API_SCOPE,
        SYSTEM_SCOPES,
        SYSTEM_SCOPES_PLACE,
        effective_scope,
        system_scope,
        with_scopes,
    )
    from cwsctl.targets.openemr.settings import OpenEmrSettings

    store, profile = openemr_profile(out)
    extra: list[str] = []
    if system_scopes:
        extra += SYSTEM_SCOPES
    if export_scopes:
        extra += EXPORT_SCOPES
    if standard_api:
        extra.append(STANDARD_API_SCOPE)
    wanted_scope = with_scopes(
        " ".join(scope.split()) if scope else effective_scope(profile), extra
    )
    if client_id is not None:
        problem = client_id_problem(client_id)
        if problem is not None:
            raise InputError(f"--client-id is not a usable OAuth client id: {problem}")
        given = wanted_scope if (scope or extra) else None
        recorded = record_client(store, profile.name, client_id, scope=given)
        if out.settings.json:
            out.json(
                {
                    "client_id": OpenEmrSettings.of(recorded).client_id,
                    "scope": effective_scope(recorded),
                    "registration_access_token_stored": False,
                }
            )
        else:
            out.line(OpenEmrSettings.of(recorded).client_id)
        out.success(f"Profile {profile.name!r} now uses client {client_id!r}")
        out.info("Next: cwsctl oauth token (or cwsctl oauth login for user scopes)")
        return
    check_transport(profile, allow_http)
    if jwks_uri is not None:
        from cwsctl.core.urls import check_transport_security

        check_transport_security(jwks_uri, allow_http=allow_http)
        key_set = None
    else:
        from cwsctl.protocols.oauth2.jwks import jwk_set, profile_public_keys

        key_set = jwk_set(
            profile_public_keys(store, profile.name, passphrase_source(passphrase_file))
        )
    document = registration_document(
        client_name=client_name or "cwsctl",
        scope=wanted_scope,
        redirect_uris=redirect_uris or [LOOPBACK_REDIRECT_URI],
        contacts=contacts,
        jwks=key_set,
        jwks_uri=jwks_uri,
    )
    if system_scope(wanted_scope):
        out.info(
            "system/ scopes: OpenEMR offers them only after an administrator turns them on "
            f"({SYSTEM_SCOPES_PLACE}); until then it refuses the registration (invalid_scope)"
        )
    out.info(f"Registering with {endpoints(profile).registration} …")
    registration = run_flow(
        registration_flow(profile, document),
        timeout=timeout,
        max_response_size=max_response_size,
    )
    if registration.sent_without_auth_method:
        out.info(
            "OpenEMR refused token_endpoint_auth_method private_key_jwt (7.0.3); registered "
            "without it (assertions work the same)"
        )
    record_registration(store, profile.name, registration)
    stored = registration.registration_access_token is not None
    where = TokenStore(store, profile.name).path
    if out.settings.json:
        document_out: dict[str, object] = {
            "client_id": registration.client_id,
            "scope": registration.scope,
            "registration_access_token_stored": stored,
        }
        if show_secret and stored:
            document_out["registration_access_token"] = registration.registration_access_token
        out.json(document_out)
    else:
        out.line(registration.client_id)
        if show_secret and stored:
            out.line(f"registration_access_token: {registration.registration_access_token}")
    out.success(f"Registered client {registration.client_id!r} for profile {profile.name!r}")
    if stored:
        out.info(f"Registration access token stored in {where} (mode 0600)")
    _say_next_steps(out, profile.name, registration)


def warn_disabled(out: Output, registration: Registration) -> None:
    """Say plainly that OpenEMR keeps a new client disabled until an administrator acts."""
    from cwsctl.targets.openemr.scopes import ENABLE_CLIENT_PLACE

    out.warn(
        f"OpenEMR keeps client {registration.client_id!r} disabled until an administrator "
        f"enables it ({ENABLE_CLIENT_PLACE}); until then every token request is "
        "refused (401 invalid_client)"
    )


def _say_next_steps(out: Output, profile_name: str, registration: Registration) -> None:
    """The admin enable step (said plainly) and what to run next, after a registration."""
    from cwsctl.targets.openemr.scopes import ENABLE_CLIENT_PLACE, has_user_scope, system_scope

    if registration.starts_disabled:
        warn_disabled(out, registration)
    else:
        out.info(
            "If OpenEMR requires manual approval of new clients, an administrator must enable "
            f"it first ({ENABLE_CLIENT_PLACE})"
        )
    steps = []
    if has_user_scope(registration.scope):
        steps.append(f"cwsctl -p {profile_name} oauth login (signs a user in; writes need one)")
    if system_scope(registration.scope):
        steps.append(f"cwsctl -p {profile_name} oauth token (system/ scopes, no person)")
    if steps:
        out.info("Then: " + "; ".join(steps))


app.command("token")(token)
app.command("login")(login)

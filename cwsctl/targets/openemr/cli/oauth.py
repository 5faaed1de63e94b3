"""`cwsctl oauth …`: OpenEMR's OAuth2 for an openemr profile (register, token, login).

httpx and PyJWT are imported inside the commands, so `cwsctl --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cwsctl.cli.common import passphrase_source, store_and_profile
from cwsctl.cli.options import (
    PORT_RANGE,
    SECONDS,
    AllowHttpOption,
    MaxResponseSizeOption,
    PassphraseFileOption,
    TimeoutOption,
    with_globals,
)
from cwsctl.cli.output import Output
from cwsctl.cli.params import HttpUrl, WholeNumber
from cwsctl.core.errors import InputError
from cwsctl.targets.openemr.cli.options import DiscoveryTimeoutOption

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from cwsctl.core.profile import Profile, Store
    from cwsctl.targets.openemr.oauth import Registration

app = typer.Typer(
    help="OAuth2 with OpenEMR for an openemr profile: register the client, get tokens, sign in.",
    no_args_is_help=True,
)

DEFAULT_WAIT_S = 300.0


def _openemr_profile(out: Output) -> tuple[Store, Profile]:
    from cwsctl.targets.openemr.oauth import require_openemr

    store, name = store_and_profile(out.settings)
    profile = store.get_profile(name)
    require_openemr(profile)
    return store, profile


def _check_transport(profile: Profile, allow_http: bool) -> None:
    from cwsctl.core.urls import check_transport_security

    check_transport_security(profile.url, allow_http=allow_http)


def _private_key(store: Store, profile: Profile, passphrase_file: Path | None) -> rsa.RSAPrivateKey:
    from cwsctl.core.profile import load_profile_key

    return load_profile_key(store, profile.name, passphrase_source(passphrase_file))


def discover_into(out: Output, profile: Profile, timeout: float) -> dict[str, object]:
    """Read OpenEMR's discovery documents into ``profile`` (not saved here); warn in one line
    when they cannot be read (the documented paths are used then). Returns the ``--json``
    document of what is now in force."""
    from cwsctl.targets.openemr import oauth

    found = oauth.discover(profile.url, profile.site, timeout=timeout)
    oauth.apply_discovery(profile, found)
    ends = oauth.endpoints(profile)
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
    address = oauth.site_address(profile)
    differs = address is not None and address != oauth.origin(profile.url)
    if differs:
        out.info(
            f"OpenEMR's site address is {address}, not {oauth.origin(profile.url)}: cwsctl "
            "sends to the URL you gave and names the site address in its assertions"
        )
    return {
        "discovered": bool(found.token_endpoint),
        "problems": list(found.problems),
        "token_endpoint": ends.audience,
        "authorization_endpoint": profile.authorization_endpoint or None,
        "registration_endpoint": profile.registration_endpoint or None,
        "fhir_base": ends.fhir_base,
        "issuer": profile.issuer or None,
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
    store, profile = _openemr_profile(out)
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
    from cwsctl.targets.openemr import oauth

    store, profile = _openemr_profile(out)
    extra: list[str] = []
    if system_scopes:
        extra += oauth.SYSTEM_SCOPES
    if export_scopes:
        extra += oauth.EXPORT_SCOPES
    if standard_api:
        extra.append(oauth.STANDARD_API_SCOPE)
    wanted_scope = oauth.with_scopes(
        " ".join(scope.split()) if scope else oauth.effective_scope(profile), extra
    )
    if client_id is not None:
        problem = oauth.client_id_problem(client_id)
        if problem is not None:
            raise InputError(f"--client-id is not a usable OAuth client id: {problem}")
        given = wanted_scope if (scope or extra) else None
        recorded = oauth.record_client(store, profile.name, client_id, scope=given)
        if out.settings.json:
            out.json(
                {
                    "client_id": recorded.client_id,
                    "scope": oauth.effective_scope(recorded),
                    "registration_access_token_stored": False,
                }
            )
        else:
            out.line(recorded.client_id)
        out.success(f"Profile {profile.name!r} now uses client {client_id!r}")
        out.info("Next: cwsctl oauth token (or cwsctl oauth login for user scopes)")
        return
    _check_transport(profile, allow_http)
    if jwks_uri is not None:
        from cwsctl.core.urls import check_transport_security

        check_transport_security(jwks_uri, allow_http=allow_http)
        key_set = None
    else:
        from cwsctl.core.jwks import jwk_set, profile_public_keys

        key_set = jwk_set(
            profile_public_keys(store, profile.name, passphrase_source(passphrase_file))
        )
    document = oauth.registration_document(
        client_name=client_name or "cwsctl",
        scope=wanted_scope,
        redirect_uris=redirect_uris or [oauth.LOOPBACK_REDIRECT_URI],
        contacts=contacts,
        jwks=key_set,
        jwks_uri=jwks_uri,
    )
    if oauth.system_scope(wanted_scope):
        out.info(
            "system/ scopes: OpenEMR offers them only after an administrator turns them on "
            f"({oauth.SYSTEM_SCOPES_PLACE}); until then it refuses the registration (invalid_scope)"
        )
    out.info(f"Registering with {oauth.endpoints(profile).registration} …")
    registration = oauth.run_flow(
        oauth.registration_flow(profile, document),
        timeout=timeout,
        max_response_size=max_response_size,
    )
    if registration.sent_without_auth_method:
        out.info(
            "OpenEMR refused token_endpoint_auth_method private_key_jwt (7.0.3); registered "
            "without it (assertions work the same)"
        )
    oauth.record_registration(store, profile.name, registration)
    stored = registration.registration_access_token is not None
    where = oauth.TokenStore(store, profile.name).path
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
    from cwsctl.targets.openemr import oauth

    out.warn(
        f"OpenEMR keeps client {registration.client_id!r} disabled until an administrator "
        f"enables it ({oauth.ENABLE_CLIENT_PLACE}); until then every token request is "
        "refused (401 invalid_client)"
    )


def _say_next_steps(out: Output, profile_name: str, registration: Registration) -> None:
    """The admin enable step (said plainly) and what to run next, after a registration."""
    from cwsctl.targets.openemr import oauth

    if registration.starts_disabled:
        warn_disabled(out, registration)
    else:
        out.info(
            "If OpenEMR requires manual approval of new clients, an administrator must enable "
            f"it first ({oauth.ENABLE_CLIENT_PLACE})"
        )
    steps = []
    if oauth.has_user_scope(registration.scope):
        steps.append(f"cwsctl -p {profile_name} oauth login (signs a user in; writes need one)")
    if oauth.system_scope(registration.scope):
        steps.append(f"cwsctl -p {profile_name} oauth token (system/ scopes, no person)")
    if steps:
        out.info("Then: " + "; ".join(steps))


@app.command("token")
@with_globals
def token(
    out: Output,
    passphrase_file: PassphraseFileOption = None,
    timeout: TimeoutOption = 30.0,
    max_response_size: MaxResponseSizeOption = None,
    allow_http: AllowHttpOption = False,
) -> None:
    """Print a valid access token on stdout, for other tools (like `gh auth token`).

    A cached token is reused until shortly before it expires (10 s, or 10% of its lifetime if
    less); otherwise one is obtained with the stored refresh token (from `cwsctl oauth login`)
    or the client-credentials grant, authenticated by a JWT signed RS384 with the profile's key.
    --json prints {access_token, token_type, expires_in, scope}.
    """
    import time

    from cwsctl.targets.openemr import oauth

    store, profile = _openemr_profile(out)
    oauth.require_client_id(profile)
    _check_transport(profile, allow_http)
    ends = oauth.endpoints(profile)
    cached = oauth.TokenStore(store, profile.name).access_token(profile.client_id, ends.token)
    if cached is not None and cached.usable():
        result = cached
        out.info("Using the cached access token")
    else:
        source = oauth.TokenSource(profile, store, _private_key(store, profile, passphrase_file))
        result = oauth.run_flow(
            source.token_flow(), timeout=timeout, max_response_size=max_response_size
        )
        out.info("Obtained a new access token")
    if out.settings.json:
        out.json(
            {
                "access_token": result.access_token,
                "token_type": result.token_type,
                "expires_in": max(0, int(result.expires_at - time.time())),
                "scope": result.scope,
            }
        )
    else:
        out.line(result.access_token)


def _can_open_browser() -> bool:
    """A browser only for a person at a graphical session: stdin a terminal, not CI."""
    if not (sys.stdin is not None and sys.stdin.isatty()):
        return False
    if os.environ.get("CI"):
        return False
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


#: Variables the browser must not inherit: secrets, and where they are.
_SECRET_VARIABLES = ("CWSCTL_PASSWORD", "CWSCTL_TOKEN", "CWSCTL_PASSPHRASE")


def _open_browser(url: str) -> bool:
    """Open ``url`` in the user's browser, which inherits no ``CWSCTL_PASSWORD*``,
    ``CWSCTL_TOKEN*`` or ``CWSCTL_PASSPHRASE*`` variable (it outlives cwsctl, and runs plug-ins
    and helpers of its own). webbrowser starts it with this process's environment, so the
    variables are taken out of it for the call and put back after."""
    import webbrowser

    hidden = {
        name: value for name, value in os.environ.items() if name.startswith(_SECRET_VARIABLES)
    }
    for name in hidden:
        del os.environ[name]
    try:
        return webbrowser.open(url)
    finally:
        os.environ.update(hidden)


@app.command("login")
@with_globals
def login(
    out: Output,
    scope: Annotated[
        str | None,
        typer.Option(
            "--scope",
            metavar="SCOPES",
            help="Scopes to ask for [default: the profile's, without system/ ones]. Include "
            "offline_access to get a refresh token.",
        ),
    ] = None,
    no_browser: Annotated[
        bool,
        typer.Option(
            "--no-browser",
            help="Only print the URL (on stderr) and wait for the redirect; needed without a terminal.",
        ),
    ] = False,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            metavar="SECONDS",
            parser=SECONDS,
            help="How long to wait for the browser's redirect.",
        ),
    ] = DEFAULT_WAIT_S,
    port: Annotated[
        int,
        typer.Option(
            "--port",
            metavar="PORT",
            parser=WholeNumber(*PORT_RANGE),
            help="Loopback port for the redirect (0: any free port; give one if OpenEMR "
            "matches redirect URIs exactly).",
        ),
    ] = 0,
    passphrase_file: PassphraseFileOption = None,
    timeout: TimeoutOption = 30.0,
    max_response_size: MaxResponseSizeOption = None,
    allow_http: AllowHttpOption = False,
) -> None:
    """Sign in once as an OpenEMR user: authorization code with PKCE and a loopback redirect.

    Prints the authorization URL on stderr (and opens a browser when there is one), receives
    the redirect on http://127.0.0.1:PORT/callback, checks its state, exchanges the code (with a
    client assertion) and stores the refresh token (mode 0600). From then on requests and cron
    use the refresh-token grant with no prompt. Without a terminal it refuses to wait unless
    --no-browser is given.
    """
    from cwsctl.targets.openemr import oauth

    store, profile = _openemr_profile(out)
    oauth.require_client_id(profile)
    _check_transport(profile, allow_http)
    interactive = sys.stdin is not None and sys.stdin.isatty()
    if not interactive and not no_browser:
        raise InputError(
            "cwsctl oauth login needs a person, and stdin is not a terminal",
            hint="run cwsctl oauth login on a terminal, or pass --no-browser to print the URL "
            "and wait for the redirect",
        )
    private_key = _private_key(store, profile, passphrase_file)
    source = oauth.TokenSource(profile, store, private_key)
    wanted_scope = " ".join(scope.split()) if scope else oauth.user_scope(source.scope)
    if not wanted_scope:
        raise InputError(
            f"profile {profile.name!r} asks only for system/ scopes, which need no sign-in",
            hint="use cwsctl oauth token, or ask for user scopes with --scope",
        )
    pkce = oauth.pkce_pair()
    state = oauth.new_state()
    with oauth.LoopbackReceiver(port) as receiver:
        url = oauth.authorize_url(
            profile,
            redirect_uri=receiver.redirect_uri,
            state=state,
            code_challenge=pkce.challenge,
            scope=wanted_scope,
        )
        # Always shown, even with -q or --json: the person needs it to go on.
        sys.stderr.write(f"Open this URL to sign in to OpenEMR:\n{url}\n")
        sys.stderr.flush()
        if not no_browser and _can_open_browser() and _open_browser(url):
            out.info("(opened in your browser)")
        out.info(f"Waiting up to {wait:g} s for the redirect to {receiver.redirect_uri} …")
        code = receiver.wait(state, wait, on_ignored=out.warn)
    granted = oauth.run_flow(
        source.code_flow(code, receiver.redirect_uri, pkce.verifier),
        timeout=timeout,
        max_response_size=max_response_size,
    )
    has_refresh = granted.refresh_token is not None
    if out.settings.json:
        out.json(
            {
                "profile": profile.name,
                "client_id": profile.client_id,
                "scope": granted.token.scope or wanted_scope,
                "refresh_token_stored": has_refresh,
            }
        )
    out.success(f"Signed in; tokens stored in {source.tokens.path} (mode 0600)")
    if not has_refresh:
        out.warn(
            "OpenEMR granted no refresh token (ask for offline_access): "
            "cron cannot renew tokens without a person"
        )

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

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from cwsctl.core.profile import Profile, Store

app = typer.Typer(
    help="OAuth2 with OpenEMR for an openemr profile: register the client, get tokens, sign in.",
    no_args_is_help=True,
)

DEFAULT_WAIT_S = 300.0


def _openemr_profile(out: Output) -> tuple[Store, Profile]:
    from cwsctl.core.oauth import require_openemr

    store, name = store_and_profile(out.settings)
    profile = store.get_profile(name)
    require_openemr(profile)
    return store, profile


def _check_transport(profile: Profile, allow_http: bool) -> None:
    from cwsctl.core.urls import check_transport_security

    check_transport_security(profile.url, allow_http=allow_http)


def _private_key(store: Store, profile: Profile, passphrase_file: Path | None) -> rsa.RSAPrivateKey:
    from cwsctl.core.identity import load_profile_key

    return load_profile_key(store, profile.name, passphrase_source(passphrase_file))


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
            "offline_access api:oemr api:fhir user/Patient.read user/Patient.write "
            "system/Patient.read].",
        ),
    ] = None,
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

    POSTs /oauth2/SITE/registration with application_type private, token_endpoint_auth_method
    private_key_jwt and the profile's public key(s) as an inline JWKS (active and next key during
    a rotation), then stores the client id in the profile and the registration access token in
    $CWSCTL_HOME/tokens/PROFILE.json (mode 0600; printed only with --show-secret). The client id
    goes to stdout. With --client-id nothing is sent: the id is recorded as given.
    """
    from cwsctl.core import oauth

    store, profile = _openemr_profile(out)
    if client_id is not None:
        if not client_id.strip() or any(not ch.isprintable() or ch.isspace() for ch in client_id):
            raise InputError(
                f"--client-id must be a non-empty id without spaces, not {client_id!r}"
            )
        recorded = oauth.record_client(store, profile.name, client_id, scope=scope)
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
    wanted_scope = " ".join(scope.split()) if scope else oauth.effective_scope(profile)
    document = oauth.registration_document(
        client_name=client_name or "cwsctl",
        scope=wanted_scope,
        redirect_uris=redirect_uris or [oauth.LOOPBACK_REDIRECT_URI],
        contacts=contacts,
        jwks=key_set,
        jwks_uri=jwks_uri,
    )
    out.info(f"Registering with {oauth.endpoints(profile).registration} …")
    registration = oauth.run_flow(
        oauth.registration_flow(profile, document),
        timeout=timeout,
        max_response_size=max_response_size,
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
    out.info(
        "OpenEMR may list the client as disabled until an administrator enables it "
        "(Administration → System → API Clients). Next: cwsctl oauth token"
    )


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

    from cwsctl.core import oauth

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


@app.command("login")
@with_globals
def login(
    out: Output,
    scope: Annotated[
        str | None,
        typer.Option(
            "--scope",
            metavar="SCOPES",
            help="Scopes to ask for [default: the profile's]. Include offline_access to get a "
            "refresh token.",
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
    from cwsctl.core import oauth

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
    wanted_scope = " ".join(scope.split()) if scope else source.scope
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
        if not no_browser and _can_open_browser():
            import webbrowser

            if webbrowser.open(url):
                out.info("(opened in your browser)")
        out.info(f"Waiting up to {wait:g} s for the redirect to {receiver.redirect_uri} …")
        code = receiver.wait(state, wait)
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

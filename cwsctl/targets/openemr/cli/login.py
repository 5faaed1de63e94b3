"""`cwsctl oauth token` and `cwsctl oauth login`: an access token for other tools, and a person's
sign-in (registered on the `oauth` group in :mod:`cwsctl.targets.openemr.cli.oauth`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cwsctl.cli.common import passphrase_source
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
from cwsctl.cli.params import WholeNumber
from cwsctl.core.errors import InputError
from cwsctl.targets.openemr.cli.common import check_transport, openemr_profile

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from cwsctl.core.profile import Profile, Store

DEFAULT_WAIT_S = 300.0


def _private_key(store: Store, profile: Profile, passphrase_file: Path | None) -> rsa.RSAPrivateKey:
    from cwsctl.core.profile import load_profile_key

    return load_profile_key(store, profile.name, passphrase_source(passphrase_file))


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

    from cwsctl.protocols.oauth2.grants import run_flow
    from cwsctl.protocols.oauth2.tokens import TokenStore
    from cwsctl.targets.openemr.client_id import require_client_id
    from cwsctl.targets.openemr.endpoints import endpoints
    from cwsctl.targets.openemr.tokens import TokenSource

    store, profile = openemr_profile(out)
    client_id = require_client_id(profile)
    check_transport(profile, allow_http)
    ends = endpoints(profile)
    cached = TokenStore(store, profile.name).access_token(client_id, ends.token)
    if cached is not None and cached.usable():
        result = cached
        out.info("Using the cached access token")
    else:
        source = TokenSource(profile, store, _private_key(store, profile, passphrase_file))
        result = run_flow(source.token_flow(), timeout=timeout, max_response_size=max_response_size)
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
    from cwsctl.protocols.oauth2.grants import run_flow
    from cwsctl.protocols.oauth2.login import LoopbackReceiver, new_state, pkce_pair
    from cwsctl.targets.openemr.client_id import require_client_id
    from cwsctl.targets.openemr.scopes import user_scope
    from cwsctl.targets.openemr.tokens import TokenSource, authorize_url

    store, profile = openemr_profile(out)
    client_id = require_client_id(profile)
    check_transport(profile, allow_http)
    interactive = sys.stdin is not None and sys.stdin.isatty()
    if not interactive and not no_browser:
        raise InputError(
            "cwsctl oauth login needs a person, and stdin is not a terminal",
            hint="run cwsctl oauth login on a terminal, or pass --no-browser to print the URL "
            "and wait for the redirect",
        )
    private_key = _private_key(store, profile, passphrase_file)
    source = TokenSource(profile, store, private_key)
    wanted_scope = " ".join(scope.split()) if scope else user_scope(source.scope)
    if not wanted_scope:
        raise InputError(
            f"profile {profile.name!r} asks only for system/ scopes, which need no sign-in",
            hint="use cwsctl oauth token, or ask for user scopes with --scope",
        )
    pkce = pkce_pair()
    state = new_state()
    with LoopbackReceiver(port) as receiver:
        url = authorize_url(
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
    granted = run_flow(
        source.code_flow(code, receiver.redirect_uri, pkce.verifier),
        timeout=timeout,
        max_response_size=max_response_size,
    )
    has_refresh = granted.refresh_token is not None
    if out.settings.json:
        out.json(
            {
                "profile": profile.name,
                "client_id": client_id,
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

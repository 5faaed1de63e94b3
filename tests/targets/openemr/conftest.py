"""OpenEMR fixtures for tests/targets/openemr (the default ``openemr_sandbox`` is shared, in
tests/sandbox_plugin.py: tests/cli uses it too).

- ``make_openemr_sandbox(site="default", version=…, site_address=…, system_scopes=…,
  token_lifetime=…, export_mode=…, export_delay=…, export_ttl=…, **faults)`` (function): an
  OpenEMR-flavour server (``OpenEmrSandboxServer``) built with those options, running. Options
  not given keep the server's defaults (OpenEMR 7.0.4, its token lifetimes, export mode
  ``openemr``). Servers are pooled per worker by their options and emptied with ``reset()``
  for each test (tests/sandbox_plugin.py, ``SandboxPool``); each call in one test gets its own.
  ``.url``, ``.site``, ``.token_url``, ``.api_url``, ``.revoke_tokens(refresh=False)``,
  ``.logout()``, ``.enable_client(id)``, ``.patients()``, ``.count_patients()``,
  ``.seed_patients(n)``, ``.group_id``, ``.export_faults``, ``.token_lifetime`` (settable),
  ``.faults`` (settable).
- ``make_openemr_login(server=None, name="emr", scope=None, **server_options)`` (function): an
  openemr profile logged in as a user, made the way a user makes one: the session rsa2048 key
  at the profile's key path, ``profile init --kind openemr``, ``oauth register`` (both
  in-process, through the ``cli`` fixture), the admin step ``server.enable_client(client_id)``,
  then ``oauth login --no-browser`` as a subprocess whose printed authorize URL is fetched (the
  sandbox's authorize page approves at once and redirects to the loopback callback). The first
  profile made is the default. Returns an :class:`OpenEmrLogin` (``.server``, ``.name``,
  ``.client_id``).
- ``start_oauth_login(env, *args, profile=None)`` / ``read_login_url(process)`` /
  ``complete_oauth_login(home, name)``:
  the ``cwsctl oauth login`` subprocess, its printed URL, and the whole browser side.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from cwsctl.core import keys
from cwsctl.core.profile import Store
from tests.sandbox_plugin import (
    SandboxPool,
    _sandbox_modules,
    openemr_key,
    openemr_server,
    pooled_factory,
    restore_openemr,
)

if TYPE_CHECKING:
    from cwsctl.targets.openemr.sandbox.server import OpenEmrSandboxServer


@pytest.fixture
def make_openemr_sandbox(
    tmp_path: Path, sandbox_pool: SandboxPool
) -> Iterator[Callable[..., OpenEmrSandboxServer]]:
    """Factory: ``make_openemr_sandbox(token_lifetime=2, drop_rate=1.0, ...)`` gives a server."""
    _sandbox_modules()
    pytest.importorskip("jwt")
    yield from pooled_factory(
        tmp_path, sandbox_pool, "openemr-sandbox", openemr_server, restore_openemr, openemr_key
    )


def start_oauth_login(
    env: dict[str, str], *args: str, profile: str | None = None
) -> subprocess.Popen[bytes]:
    """``cwsctl [-p PROFILE] oauth login ARGS`` as its own process (stdin closed, pipes)."""
    chosen = ["-p", profile] if profile else []
    return subprocess.Popen(
        [sys.executable, "-m", "cwsctl", *chosen, "oauth", "login", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def read_login_url(process: subprocess.Popen[bytes], wait: float = 20) -> str:
    """The authorize URL ``cwsctl oauth login --no-browser`` prints on stderr."""
    assert process.stderr is not None
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        line = process.stderr.readline().decode()
        if line.startswith("http"):
            return line.strip()
        if not line and process.poll() is not None:
            break
    raise AssertionError("cwsctl oauth login printed no URL")


def complete_oauth_login(home: Path, name: str, *options: str) -> str:
    """Run ``cwsctl -p NAME oauth login --no-browser --wait 20 OPTIONS`` and play the browser:
    GET the printed URL following redirects (the sandbox approves at once and sends the browser to
    the loopback callback). Returns the login's stderr; fails the test unless it exited 0."""
    import httpx

    env = {**os.environ, "CWSCTL_HOME": str(home)}
    process = start_oauth_login(env, "--no-browser", "--wait", "20", *options, profile=name)
    try:
        url = read_login_url(process)
        answer = httpx.get(url, follow_redirects=True, timeout=10)
        assert answer.status_code == 200, (answer.status_code, answer.text[:200])
        _, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err.decode()
    return err.decode()


@dataclass
class OpenEmrLogin:
    """An openemr profile registered, enabled and logged in at a sandbox."""

    server: OpenEmrSandboxServer
    name: str
    client_id: str


@pytest.fixture
def make_openemr_login(
    make_openemr_sandbox: Callable[..., OpenEmrSandboxServer],
    rsa2048: rsa.RSAPrivateKey,
    cwsctl_home: Path,
    cli: Callable[..., Any],
) -> Callable[..., OpenEmrLogin]:
    """Factory: ``make_openemr_login(version="7.0.3")`` → a logged-in openemr profile (see the
    module docstring); ``server=`` reuses a sandbox, ``login=False`` stops before the login."""
    made: list[str] = []

    def make(
        server: OpenEmrSandboxServer | None = None,
        *,
        name: str = "emr",
        scope: str | None = None,
        login: bool = True,
        **server_options: Any,
    ) -> OpenEmrLogin:
        server = server if server is not None else make_openemr_sandbox(**server_options)
        init = ["profile", "init", name, "--kind", "openemr", "--url", server.url]
        init += ["--site", server.site] + ([] if made else ["--default"])
        _cwsctl(cli, *init)
        store = Store(cwsctl_home)
        keys.save_private_key(store.private_key_path(name), rsa2048, None, overwrite=True)
        register = ["-p", name, "oauth", "register", "--client-name", "tests"]
        _cwsctl(cli, *register, *(["--scope", scope] if scope else []))
        client_id = store.get_profile(name).settings.client_id
        assert client_id, "oauth register stored no client id"
        server.enable_client(client_id)  # the administrator's step
        if login:
            complete_oauth_login(cwsctl_home, name)
        made.append(name)
        return OpenEmrLogin(server, name, client_id)

    return make


def _cwsctl(cli: Callable[..., Any], *args: str) -> None:
    """A set-up step in-process (the ``cli`` fixture): what is tested is what comes after."""
    result = cli(*args)
    assert result.exit_code == 0, (args, result.stderr)

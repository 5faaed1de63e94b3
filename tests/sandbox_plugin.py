"""Sandbox fixtures: a real CWS sandbox server on 127.0.0.1, ephemeral port, 2048-bit server key.

- ``sandbox_server`` (session): the one shared server; prefer ``sandbox``.
- ``sandbox`` (function): the shared server, emptied before the test (no patients, no client
  keys, no faults). ``sandbox.url``, ``sandbox.trusted_key``, ``sandbox.store``,
  ``sandbox.register_key(...)``; assign ``sandbox.faults = Faults(...)`` to misbehave.
- ``sandbox_user`` (function): ``SandboxUser("tester", rsa2048)`` registered in ``sandbox``;
  ``sandbox_user.headers(body)`` gives signed request headers.
- ``sandbox_profile`` (function): a ``default`` profile in the test's CWSCTL_HOME pointing at
  ``sandbox`` as ``tester`` with rsa2048 as its key and the sandbox key pinned.
- ``make_sandbox(**faults)`` (function): a fresh server with its own data dir and the given
  fault switches (reuses the session server key, so ``sandbox_server.trusted_key`` trusts it);
  stopped after the test.
- ``make_openemr_sandbox(site="default", version=…, site_address=…, system_scopes=…,
  token_lifetime=…, export_mode=…, export_delay=…, export_ttl=…, **faults)`` (function): a
  fresh OpenEMR-flavour server (``OpenEmrSandboxServer``) with its own data dir, started;
  stopped after the test. Options not given keep the server's defaults (OpenEMR 7.0.4, its token
  lifetimes, export mode ``openemr``). ``.url``, ``.site``, ``.token_url``, ``.api_url``,
  ``.revoke_tokens(refresh=False)``, ``.logout()``, ``.enable_client(id)``, ``.patients()``,
  ``.count_patients()``, ``.seed_patients(n)``, ``.group_id``, ``.export_faults``,
  ``.token_lifetime`` (settable), ``.faults`` (settable).
- ``openemr_sandbox`` (function): ``make_openemr_sandbox()`` with the defaults.
- ``make_openemr_login(server=None, name="emr", scope=None, **server_options)`` (function): an
  openemr profile logged in as a user, made the way a user makes one: the session rsa2048 key
  at the profile's key path, ``profile init --kind openemr``, ``oauth register``, the admin step
  ``server.enable_client(client_id)``, then ``oauth login --no-browser`` as a subprocess whose
  printed authorize URL is fetched (the sandbox's authorize page approves at once and redirects
  to the loopback callback). The first profile made is the default. Returns an
  :class:`OpenEmrLogin` (``.server``, ``.name``, ``.client_id``).
- ``start_oauth_login(env, *args, profile=None)`` / ``read_login_url(process)`` /
  ``complete_oauth_login(home, name)``:
  the ``cwsctl oauth login`` subprocess, its printed URL, and the whole browser side.
- ``make_openehr_sandbox(*, basic_auth, if_match, max_fetch, fetch_precedence, default_limit,
  bearer_tokens, template_overwrite, templates, **faults)`` (function, keywords only, each
  defaulting to ``OpenEhrSandboxServer``'s): a fresh
  openEHR-flavour server (``OpenEhrSandboxServer``) with its own data dir, started; stopped after
  the test. ``basic_auth=("user", "pass")`` requires those credentials. ``.url``, ``.base_url``
  (``.url`` + ``/ehrbase/rest/openehr/v1``, a profile's URL), ``.system_id``, ``.ehrs()``,
  ``.count_ehrs()``, ``.basic_auth`` and ``.faults`` (settable), ``.reset()``.
- ``openehr_sandbox`` (function): ``make_openehr_sandbox()`` with the defaults (no auth).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from cwsctl.core import keys
from cwsctl.core.profile import Config, Profile, Store
from cwsctl.protocols import cws_signature as signing
from cwsctl.protocols.cws_signature import Algorithm, AuthorizationHeader
from cwsctl.targets.cws.settings import CwsSettings

if TYPE_CHECKING:
    from cwsctl.targets.cws.sandbox.server import SandboxServer
    from cwsctl.targets.openehr.sandbox.server import OpenEhrSandboxServer
    from cwsctl.targets.openemr.sandbox.server import OpenEmrSandboxServer

SANDBOX_USERNAME = "tester"


@dataclass
class SandboxUser:
    """A client identity registered in a sandbox."""

    username: str
    private_key: rsa.RSAPrivateKey
    algorithm: Algorithm = Algorithm.SHA256

    def authorization(self, body: bytes = b"", algorithm: Algorithm | None = None) -> str:
        """The Authorization header value for ``body``."""
        algo = algorithm or self.algorithm
        signature = signing.sign(self.private_key, body, algo)
        return AuthorizationHeader(algo, self.username, signature).format()

    def headers(self, body: bytes = b"", algorithm: Algorithm | None = None) -> dict[str, str]:
        """Signed request headers for ``body`` (JSON content type)."""
        return {
            "Authorization": self.authorization(body, algorithm),
            "Content-Type": "application/json",
        }


def _sandbox_modules() -> Any:
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    from cwsctl.sandbox import faults
    from cwsctl.targets.cws.sandbox import server

    return server, faults


@pytest.fixture(scope="session")
def sandbox_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    """One sandbox for the whole session (2048-bit key, data dir in tmp, no faults)."""
    server_mod, faults_mod = _sandbox_modules()
    data_dir = tmp_path_factory.mktemp("sandbox")
    server = server_mod.SandboxServer(data_dir, key_bits=2048, faults=faults_mod.Faults())
    with server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> SandboxServer:
    """The session sandbox, with no patients, no client keys and no faults."""
    sandbox_server.reset()
    return sandbox_server


@pytest.fixture
def sandbox_user(sandbox: SandboxServer, rsa2048: rsa.RSAPrivateKey) -> SandboxUser:
    """``tester`` with the session's rsa2048 key, registered in ``sandbox``."""
    sandbox.register_key(SANDBOX_USERNAME, rsa2048.public_key())
    return SandboxUser(SANDBOX_USERNAME, rsa2048)


@pytest.fixture
def sandbox_profile(
    sandbox: SandboxServer, sandbox_user: SandboxUser, cwsctl_home: Path
) -> Profile:
    """The ``default`` profile in this test's CWSCTL_HOME, set up for ``sandbox``."""
    store = Store(cwsctl_home)
    profile = Profile(
        name="default",
        url=sandbox.url,
        settings=CwsSettings(
            username=sandbox_user.username,
            algorithm=Algorithm.SHA256,
            trusted=[sandbox.trusted_key],
        ),
    )
    store.save(Config(default_profile="default", profiles={"default": profile}))
    keys.save_private_key(
        store.private_key_path("default"), sandbox_user.private_key, None, overwrite=True
    )
    return profile


def _server_factory(
    tmp_path: Path, name: str, build: Callable[..., Any]
) -> Iterator[Callable[..., Any]]:
    """A factory fixture's body: ``build(data_dir, *args, **kwargs)`` makes a server in a fresh
    private data dir; it is started at once and stopped after the test."""
    started: list[Any] = []

    def make(*args: Any, **kwargs: Any) -> Any:
        data_dir = tmp_path / f"{name}-{len(started)}"
        data_dir.mkdir(mode=0o700)
        server = build(data_dir, *args, **kwargs)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def make_sandbox(
    tmp_path: Path, sandbox_server: SandboxServer
) -> Iterator[Callable[..., SandboxServer]]:
    """Factory: ``make_sandbox(drop_rate=1.0, ...)`` starts a fresh, fault-configured server."""
    server_mod, faults_mod = _sandbox_modules()

    def build(data_dir: Path, **faults: Any) -> SandboxServer:
        key_path = data_dir / "server.pem"
        shutil.copyfile(sandbox_server.data_dir / "server.pem", key_path)
        os.chmod(key_path, 0o600)
        return server_mod.SandboxServer(data_dir, key_bits=2048, faults=faults_mod.Faults(**faults))

    yield from _server_factory(tmp_path, "sandbox", build)


@pytest.fixture
def make_openemr_sandbox(tmp_path: Path) -> Iterator[Callable[..., OpenEmrSandboxServer]]:
    """Factory: ``make_openemr_sandbox(token_lifetime=2, drop_rate=1.0, ...)`` starts a server."""
    _sandbox_modules()
    pytest.importorskip("jwt")
    from cwsctl.sandbox.faults import Faults
    from cwsctl.targets.openemr.sandbox.server import OpenEmrSandboxServer

    def build(data_dir: Path, **options: Any) -> OpenEmrSandboxServer:
        server_options = {k: options.pop(k) for k in OPENEMR_SERVER_OPTIONS if k in options}
        return OpenEmrSandboxServer(data_dir, **server_options, faults=Faults(**options))

    yield from _server_factory(tmp_path, "openemr-sandbox", build)


#: make_openemr_sandbox's keyword arguments that go to the server (the rest are fault switches).
OPENEMR_SERVER_OPTIONS = (
    "site",
    "version",
    "site_address",
    "system_scopes",
    "manual_approval",
    "token_lifetime",
    "export_mode",
    "export_delay",
    "export_ttl",
)


@pytest.fixture
def openemr_sandbox(
    make_openemr_sandbox: Callable[..., OpenEmrSandboxServer],
) -> OpenEmrSandboxServer:
    """A fresh OpenEMR-flavour sandbox (site ``default``, 60-second tokens, no faults)."""
    return make_openemr_sandbox()


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
    run_cwsctl: Callable[..., subprocess.CompletedProcess[bytes]],
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
        _cwsctl(run_cwsctl, *init)
        store = Store(cwsctl_home)
        keys.save_private_key(store.private_key_path(name), rsa2048, None, overwrite=True)
        register = ["-p", name, "oauth", "register", "--client-name", "tests"]
        _cwsctl(run_cwsctl, *register, *(["--scope", scope] if scope else []))
        client_id = store.get_profile(name).settings.client_id
        assert client_id, "oauth register stored no client id"
        server.enable_client(client_id)  # the administrator's step
        if login:
            complete_oauth_login(cwsctl_home, name)
        made.append(name)
        return OpenEmrLogin(server, name, client_id)

    return make


def _cwsctl(run: Callable[..., subprocess.CompletedProcess[bytes]], *args: str) -> None:
    result = run(*args)
    assert result.returncode == 0, (args, result.stderr.decode())


@pytest.fixture
def make_openehr_sandbox(tmp_path: Path) -> Iterator[Callable[..., OpenEhrSandboxServer]]:
    """Factory: ``make_openehr_sandbox(basic_auth=("u", "p"), if_match="spec", max_fetch=500,
    fetch_precedence="min-fetch", default_limit=N, bearer_tokens={...}, templates=[opt],
    drop_rate=1.0, ...)`` starts one (keywords only; the server's defaults otherwise)."""
    _sandbox_modules()
    from cwsctl.sandbox.faults import Faults
    from cwsctl.targets.openehr.sandbox.server import OpenEhrSandboxServer

    def build(data_dir: Path, **options: Any) -> OpenEhrSandboxServer:
        server_options = {k: options.pop(k) for k in OPENEHR_SERVER_OPTIONS if k in options}
        return OpenEhrSandboxServer(data_dir, **server_options, faults=Faults(**options))

    yield from _server_factory(tmp_path, "openehr-sandbox", build)


#: make_openehr_sandbox's keyword arguments that go to the server (the rest are fault switches).
OPENEHR_SERVER_OPTIONS = (
    "basic_auth",
    "bearer_tokens",
    "if_match",
    "max_fetch",
    "fetch_precedence",
    "default_limit",
    "template_overwrite",
    "templates",
)


@pytest.fixture
def openehr_sandbox(
    make_openehr_sandbox: Callable[..., OpenEhrSandboxServer],
) -> OpenEhrSandboxServer:
    """A fresh openEHR-flavour sandbox (EHRbase 2.31 defaults: no auth, no faults, no templates)."""
    return make_openehr_sandbox()


@dataclass
class ServedSandbox:
    """``cwsctl sandbox serve`` running as its own process (see :func:`serve_sandbox`)."""

    port: int
    startup: str = ""  # stderr up to and including the ready line
    log: str = ""  # the rest of stderr, read after SIGTERM
    stdout: str = ""
    returncode: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def serve_sandbox(tmp_path: Path, *args: str, ready: str) -> Iterator[ServedSandbox]:
    """Run ``cwsctl sandbox serve --port P ARGS`` as users run it (CWSCTL_HOME in ``tmp_path``,
    no CWSCTL_SANDBOX_* from the environment) until its stderr shows ``ready``; on leaving, stop
    it with SIGTERM and keep the rest of its stderr and its exit status."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        served = ServedSandbox(int(sock.getsockname()[1]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CWSCTL_SANDBOX_")}
    env["CWSCTL_HOME"] = str(tmp_path / "home")
    process = subprocess.Popen(
        [sys.executable, "-m", "cwsctl", "sandbox", "serve", "--port", str(served.port), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert process.stderr is not None
        while ready not in served.startup:
            line = process.stderr.readline()
            assert line, f"server exited early: {served.startup}"
            served.startup += line
        yield served
        process.send_signal(signal.SIGTERM)
        served.stdout, served.log = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        served.returncode = process.returncode

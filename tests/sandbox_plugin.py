"""Sandbox fixtures shared by every folder of tests/ (a target's own factories are in
tests/targets/<t>/conftest.py): a real CWS sandbox server on 127.0.0.1, ephemeral port,
2048-bit server key; the default OpenEMR and openEHR sandboxes; the pool they come from.

- ``sandbox_server`` (session): the one shared server; prefer ``sandbox``.
- ``sandbox`` (function): the shared server, emptied before the test (no patients, no client
  keys, no faults). ``sandbox.url``, ``sandbox.trusted_key``, ``sandbox.store``,
  ``sandbox.register_key(...)``; assign ``sandbox.faults = Faults(...)`` to misbehave.
- ``sandbox_user`` (function): ``SandboxUser("tester", rsa2048)`` registered in ``sandbox``;
  ``sandbox_user.headers(body)`` gives signed request headers.
- ``sandbox_profile`` (function): a ``default`` profile in the test's CWSCTL_HOME pointing at
  ``sandbox`` as ``tester`` with rsa2048 as its key and the sandbox key pinned.
- ``sandbox_pool`` (session): a :class:`SandboxPool`, the OpenEMR and openEHR servers this
  worker keeps running, by the options they were built with; a test takes one emptied with its
  ``reset()`` (as ``sandbox`` is) and gives it back at its end (a server stopped by its test
  is dropped). tests/targets/openemr and tests/targets/openehr's ``make_*_sandbox`` factories
  take from it.
- ``openemr_sandbox`` (function): the OpenEMR-flavour sandbox with the defaults (site
  ``default``, OpenEMR 7.0.4, its token lifetimes, export mode ``openemr``, no faults), from the
  pool.
- ``openehr_sandbox`` (function): the openEHR-flavour sandbox with the defaults (EHRbase 2.31:
  no auth, no faults, no templates), from the pool. ``.url``, ``.base_url``, ``.ehrs()``, ...
- ``serve_sandbox(tmp_path, *args, ready=...)``: ``cwsctl sandbox serve`` as its own process.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Hashable, Iterator
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


class SandboxPool:
    """Running flavour servers kept for this process's session (one pool per xdist worker),
    by the options they were built with. A test takes one: it comes back emptied with its
    server's ``reset()`` and restored to those options (faults, settable lifetimes, templates);
    at the test's end it is given back. Two takes in one test give two servers; a server its
    test stopped is dropped (its store is closed, so ``reset()`` fails)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.idle: dict[Hashable, list[Any]] = {}
        self.servers: list[Any] = []

    def take(
        self, key: Hashable, build: Callable[[Path], Any], restore: Callable[[Any], None]
    ) -> Any:
        idle = self.idle.setdefault(key, [])
        while idle:
            server = idle.pop()
            try:
                server.reset()
            except sqlite3.ProgrammingError:  # stopped by the test that had it
                continue
            restore(server)
            return server
        data_dir = self.directory / f"server-{len(self.servers)}"
        data_dir.mkdir(mode=0o700)
        server = build(data_dir).start()
        self.servers.append(server)
        return server

    def give_back(self, key: Hashable, server: Any) -> None:
        self.idle[key].append(server)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture(scope="session")
def sandbox_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxPool]:
    """The session's :class:`SandboxPool`; servers are stopped when the session ends."""
    pool = SandboxPool(tmp_path_factory.mktemp("sandbox-pool"))
    yield pool
    pool.stop()


def pooled_factory(
    tmp_path: Path,
    pool: SandboxPool,
    name: str,
    build: Callable[..., Any],
    restore: Callable[..., None],
    key: Callable[[dict[str, Any]], Hashable | None],
) -> Iterator[Callable[..., Any]]:
    """A factory fixture's body: ``make(**options)`` takes a server built with ``options`` from
    ``pool`` (given back after the test) when ``key(options)`` names them, else builds a fresh
    one in ``tmp_path`` (stopped after the test). ``build(data_dir, **options)`` makes a server,
    ``restore(server, **options)`` puts a reset one back to ``options``."""
    taken: list[tuple[Hashable, Any]] = []

    def make(factory: Callable[..., Any], **options: Any) -> Any:
        pooled = key(options)
        if pooled is None:
            return factory(**options)
        server = pool.take(
            pooled,
            lambda data_dir: build(data_dir, **options),
            lambda server: restore(server, **options),
        )
        taken.append((pooled, server))
        return server

    factories = _server_factory(tmp_path, name, build)
    factory = next(factories)
    yield lambda **options: make(factory, **options)
    for pooled, server in taken:
        pool.give_back(pooled, server)
    next(factories, None)


def openemr_server(data_dir: Path, **options: Any) -> OpenEmrSandboxServer:
    """An OpenEMR-flavour server: OPENEMR_SERVER_OPTIONS go to the server, the rest are faults."""
    from cwsctl.sandbox.faults import Faults
    from cwsctl.targets.openemr.sandbox.server import OpenEmrSandboxServer

    server_options = {k: options.pop(k) for k in OPENEMR_SERVER_OPTIONS if k in options}
    return OpenEmrSandboxServer(data_dir, **server_options, faults=Faults(**options))


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


def restore_openemr(server: OpenEmrSandboxServer, **options: Any) -> None:
    """After ``reset()``: the lifetimes, export delay and faults ``options`` built it with."""
    from cwsctl.sandbox.faults import Faults

    server_options = {k: options.pop(k) for k in OPENEMR_SERVER_OPTIONS if k in options}
    server.token_lifetime = server_options.get("token_lifetime")
    server.export.delay = server_options.get("export_delay", 0.0)
    server.export_faults = type(server.export_faults)()
    server.faults = Faults(**options)


def openemr_key(options: dict[str, Any]) -> Hashable | None:
    """Every OpenEMR option can be restored: one pool entry per set of options."""
    return _hashable(("openemr", *sorted(options.items())))


def openehr_server(data_dir: Path, **options: Any) -> OpenEhrSandboxServer:
    """An openEHR-flavour server: OPENEHR_SERVER_OPTIONS go to the server, the rest are faults."""
    from cwsctl.sandbox.faults import Faults
    from cwsctl.targets.openehr.sandbox.server import OpenEhrSandboxServer

    server_options = {k: options.pop(k) for k in OPENEHR_SERVER_OPTIONS if k in options}
    return OpenEhrSandboxServer(data_dir, **server_options, faults=Faults(**options))


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


def restore_openehr(server: OpenEhrSandboxServer, **options: Any) -> None:
    """After ``reset()``: the credentials, templates and faults ``options`` built it with."""
    from cwsctl.sandbox.faults import Faults

    server_options = {k: options.pop(k) for k in OPENEHR_SERVER_OPTIONS if k in options}
    server.basic_auth = server_options.get("basic_auth")
    for opt in server_options.get("templates", ()):
        server.upload_template(opt, exist_ok=True)
    server.faults = Faults(**options)


def openehr_key(options: dict[str, Any]) -> Hashable | None:
    """Bearer tokens are not pooled (a token a test expired would stay expired)."""
    if "bearer_tokens" in options:
        return None
    items = {k: tuple(v) if k == "templates" else v for k, v in options.items()}
    return _hashable(("openehr", *sorted(items.items())))


def _hashable(key: tuple[Any, ...]) -> Hashable | None:
    try:
        hash(key)
    except TypeError:  # an option given as a list or dict: not pooled
        return None
    return key


@pytest.fixture
def openemr_sandbox(tmp_path: Path, sandbox_pool: SandboxPool) -> Iterator[OpenEmrSandboxServer]:
    """The OpenEMR-flavour sandbox with the defaults (site ``default``, 60-second tokens, no
    faults), shared by this worker's tests and emptied for each."""
    _sandbox_modules()
    pytest.importorskip("jwt")
    factories = pooled_factory(
        tmp_path, sandbox_pool, "openemr-sandbox", openemr_server, restore_openemr, openemr_key
    )
    yield next(factories)()
    next(factories, None)


@pytest.fixture
def openehr_sandbox(tmp_path: Path, sandbox_pool: SandboxPool) -> Iterator[OpenEhrSandboxServer]:
    """The openEHR-flavour sandbox with the defaults (EHRbase 2.31: no auth, no faults, no
    templates), shared by this worker's tests and emptied for each."""
    _sandbox_modules()
    factories = pooled_factory(
        tmp_path, sandbox_pool, "openehr-sandbox", openehr_server, restore_openehr, openehr_key
    )
    yield next(factories)()
    next(factories, None)


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

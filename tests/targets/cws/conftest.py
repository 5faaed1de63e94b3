"""CWS fixtures for tests/targets/cws (the shared ones, ``sandbox``, ``sandbox_user``,
``sandbox_profile``, are in tests/sandbox_plugin.py: most folders use them).

- ``make_sandbox(**faults)`` (function): a fresh server with its own data dir and the given
  fault switches (reuses the session server key, so ``sandbox_server.trusted_key`` trusts it);
  stopped after the test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.sandbox_plugin import _sandbox_modules, _server_factory

if TYPE_CHECKING:
    from cwsctl.targets.cws.sandbox.server import SandboxServer


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

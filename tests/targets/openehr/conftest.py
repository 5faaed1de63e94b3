"""openEHR fixtures for tests/targets/openehr (the default ``openehr_sandbox`` is shared, in
tests/sandbox_plugin.py: tests/cli uses it too).

- ``make_openehr_sandbox(*, basic_auth, if_match, max_fetch, fetch_precedence, default_limit,
  bearer_tokens, template_overwrite, templates, **faults)`` (function, keywords only, each
  defaulting to ``OpenEhrSandboxServer``'s): an openEHR-flavour server (``OpenEhrSandboxServer``)
  built with those options, running. Servers are pooled per worker by their options and emptied
  with ``reset()`` for each test (tests/sandbox_plugin.py, ``SandboxPool``; with
  ``bearer_tokens`` a fresh one, stopped after the test); each call in one test gets its own.
  ``basic_auth=("user", "pass")`` requires those credentials. ``.url``, ``.base_url`` (``.url``
  + ``/ehrbase/rest/openehr/v1``, a profile's URL), ``.system_id``, ``.ehrs()``,
  ``.count_ehrs()``, ``.basic_auth`` and ``.faults`` (settable), ``.reset()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.sandbox_plugin import (
    SandboxPool,
    _sandbox_modules,
    openehr_key,
    openehr_server,
    pooled_factory,
    restore_openehr,
)

if TYPE_CHECKING:
    from cwsctl.targets.openehr.sandbox.server import OpenEhrSandboxServer


@pytest.fixture
def make_openehr_sandbox(
    tmp_path: Path, sandbox_pool: SandboxPool
) -> Iterator[Callable[..., OpenEhrSandboxServer]]:
    """Factory: ``make_openehr_sandbox(basic_auth=("u", "p"), if_match="spec", max_fetch=500,
    fetch_precedence="min-fetch", default_limit=N, bearer_tokens={...}, templates=[opt],
    drop_rate=1.0, ...)`` gives one (keywords only; the server's defaults otherwise)."""
    _sandbox_modules()
    yield from pooled_factory(
        tmp_path, sandbox_pool, "openehr-sandbox", openehr_server, restore_openehr, openehr_key
    )

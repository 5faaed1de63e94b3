"""The server framework every sandbox flavour builds on: local stand-ins for demos and tests.

One flavour per target, each a Starlette app on uvicorn with its state in SQLite, in its target's
package: CorEMR's CWS API (signed bodies, :mod:`cwsctl.targets.cws.sandbox`), OpenEMR's OAuth2 +
Standard API + FHIR R4 (:mod:`cwsctl.targets.openemr.sandbox`, modelled on OpenEMR 7.0.3 /
7.0.4+) and an openEHR REST server as EHRbase serves it (:mod:`cwsctl.targets.openehr.sandbox`);
README.md in this package is the index of their fidelity tables. This package imports only
:mod:`cwsctl.core`: no flavour, no target.

- :mod:`cwsctl.sandbox.db` — where the data dir is, and how every flavour opens its SQLite
  database; needs no extra.
- :mod:`cwsctl.sandbox.faults` — fault switches (``CWSCTL_SANDBOX_*``); needs no extra.
- :mod:`cwsctl.sandbox.envelope` — the ASGI envelope every flavour shares (body limit, faults,
  access log, the answer captured whole).
- :mod:`cwsctl.sandbox.protocol` — the h11 protocol with request deadlines.
- :mod:`cwsctl.sandbox.server` — ``BaseSandboxServer`` (socket, uvicorn, limits,
  ``serve_forever``). The flavours build on it; it imports none of them (the CLI,
  ``cwsctl sandbox serve``, picks the flavour).

Everything but ``db`` and ``faults`` needs the optional extra ``cwsctl[sandbox]``; call
:func:`require_server_deps` first to get a clear error instead of an ImportError. Importing this
package imports none of them.
"""

from __future__ import annotations

import importlib.util

from cwsctl.core.errors import InputError

__all__ = ["SandboxUnavailableError", "require_server_deps"]


class SandboxUnavailableError(InputError):
    """starlette or uvicorn is not installed."""


def require_server_deps() -> None:
    """Raise SandboxUnavailableError unless starlette and uvicorn can be imported."""
    missing = [name for name in ("starlette", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise SandboxUnavailableError(
            f"the sandbox server needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed",
            hint="pip install 'cwsctl[sandbox]'",
        )

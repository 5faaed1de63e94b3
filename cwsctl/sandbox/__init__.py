"""Local stand-ins for the three servers cwsctl speaks to, for demos and tests.

One flavour per target, each a Starlette app on uvicorn with its state in SQLite:
CorEMR's CWS API (signed bodies), OpenEMR's OAuth2 + Standard API + FHIR R4 (:mod:`.openemr`,
modelled on OpenEMR 7.0.3 / 7.0.4+; see README.md in this package) and an openEHR REST server
as EHRbase serves it (:mod:`.openehr`).

- :mod:`cwsctl.sandbox.store` — data dir, server key, client keys, patients (SQLite); needs no extra.
- :mod:`cwsctl.sandbox.faults` — fault switches (``CWSCTL_SANDBOX_*``); needs no extra.
- :mod:`cwsctl.sandbox.app` — the ASGI envelope every flavour shares (body limit, faults, access
  log) and the CWS flavour's signatures.
- :mod:`cwsctl.targets.cws.sandbox.routes` — the CWS endpoints inside it (starlette).
- :mod:`cwsctl.sandbox.server` — ``BaseSandboxServer`` (socket, uvicorn, limits, ``serve_forever``)
  and the CWS ``SandboxServer``. The flavours build on it; it imports none of them (the CLI,
  ``cwsctl sandbox serve``, picks the flavour).
- :mod:`cwsctl.targets.openemr.sandbox.server` (``openemr_*``) and :mod:`cwsctl.targets.openehr.sandbox.server`
  (``openehr_*``) — the other two flavours.

Everything but ``store`` and ``faults`` needs the optional extra ``cwsctl[sandbox]``; call
:func:`require_server_deps` first to get a clear error instead of an ImportError. Importing this
package imports none of them.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from cwsctl.core.errors import InputError

if TYPE_CHECKING:
    from cwsctl.sandbox.server import SandboxServer

__all__ = ["SandboxServer", "SandboxUnavailableError", "require_server_deps"]


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


def __getattr__(name: str) -> Any:
    if name == "SandboxServer":
        require_server_deps()
        from cwsctl.sandbox import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

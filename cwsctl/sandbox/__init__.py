"""A local CWS-compatible server (a CorEMR stand-in) for demos and tests.

- :mod:`cwsctl.sandbox.store` — data dir, server key, client keys, patients (SQLite); needs no extra.
- :mod:`cwsctl.sandbox.faults` — fault switches (``CWSCTL_SANDBOX_*``); needs no extra.
- :mod:`cwsctl.sandbox.app` — the ASGI app: the CWS envelope (body limit, signatures, faults).
- :mod:`cwsctl.sandbox.routes` — the endpoints inside it (starlette).
- :mod:`cwsctl.sandbox.server` — ``SandboxServer`` and ``serve`` (uvicorn).

The last three need the optional extra ``cwsctl[sandbox]``; call :func:`require_server_deps` first
to get a clear error instead of an ImportError. Importing this package imports none of them.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from cwsctl.core.errors import InputError

if TYPE_CHECKING:
    from cwsctl.sandbox.server import SandboxServer, serve

__all__ = ["SandboxServer", "SandboxUnavailableError", "require_server_deps", "serve"]


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
    if name in ("SandboxServer", "serve"):
        require_server_deps()
        from cwsctl.sandbox import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

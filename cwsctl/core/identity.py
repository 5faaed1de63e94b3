"""Deprecated: ``load_identity`` and ``SigningIdentity`` moved to :mod:`cwsctl.targets.cws.identity`.

Kept for one release so that scripts written against 0.1 keep working; importing a name from here
warns (DeprecationWarning) and hands over the new one.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED = {"load_identity", "SigningIdentity"}
_NEW_HOME = "cwsctl.targets.cws.identity"


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"cwsctl.core.identity.{name} moved to {_NEW_HOME}.{name}",
        DeprecationWarning,
        stacklevel=2,
    )
    # By name, not by import statement: core never depends on a target (this shim is the
    # one sanctioned exception, and it goes away in the next release).
    return getattr(importlib.import_module(_NEW_HOME), name)

"""Crash signatures, and the findings already reported and pinned in ``test_regressions.py``.

A signature names a finding by the exception type and the innermost cwsctl function it escaped
from (or, for a broken invariant, the invariant's message), so one bug found through many inputs
is counted once. ``test_fuzz.py`` tolerates a known finding, so that the suite stays green while
the owner fixes it; ``test_regressions.py`` keeps each one visible as a strict xfail. When a fix
lands, that xfail turns into a failure: delete its marker and its line here together.
"""

from __future__ import annotations

import re
import traceback
from pathlib import PurePath

_PACKAGE = "cwsctl"


def crash_signature(exc: BaseException) -> str:
    """``Type@cwsctl/core/module.py:function`` or ``AssertionError: <invariant>``."""
    name = type(exc).__name__
    if isinstance(exc, AssertionError):
        return f"{name}: {re.sub(r'[0-9]+', 'N', str(exc))[:80]}"
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if _PACKAGE in PurePath(f.filename).parts]
    frame = (ours or frames or [None])[-1]
    if frame is None:
        return name
    parts = PurePath(frame.filename).parts
    where = "/".join(parts[parts.index(_PACKAGE) :]) if _PACKAGE in parts else parts[-1]
    return f"{name}@{where}:{frame.name}"


#: signature -> the regression test in test_regressions.py that pins it.
KNOWN_FINDINGS: dict[str, str] = {}  # none open: all fixed in a41b9ee


def known(exc: BaseException) -> str | None:
    """The regression test that pins this finding, or None if it is new."""
    return KNOWN_FINDINGS.get(crash_signature(exc))

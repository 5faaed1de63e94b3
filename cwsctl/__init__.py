"""cwsctl: signed, verified requests and bulk loads for CorEMR (CWS), OpenEMR and openEHR."""

import sys

# httpx's package __init__ does `try: from ._main import main / except ImportError`: its own
# command line, which imports click, rich and pygments (~40 ms on every cwsctl call that sends).
# A None entry in sys.modules makes that import fail, so httpx takes its fallback; cwsctl never
# uses httpx's CLI. Set here, before anything in cwsctl can import httpx
# (tests/cli/test_lazy_app.py checks it).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

__version__ = "0.1.0"

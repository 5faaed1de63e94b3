"""`cwsctl audit`: what was sent, when, and whether each answer verified."""

from __future__ import annotations

from typing import Annotated

import typer

from cwsctl.cli.common import store_and_profile
from cwsctl.cli.options import with_globals
from cwsctl.cli.output import Output
from cwsctl.core.audit import AuditLog, cutoff


@with_globals
def audit(
    out: Output,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="DURATION",
            help="Only entries newer than this: 30m, 24h, 7d, 2w.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Show the profile's audit log (one line per request; no patient data).

    Columns: time, method, path, status, verified-by, duration. The log lives in
    $CWSCTL_HOME/audit/PROFILE.jsonl and rotates at 10 MiB (5 files kept).
    """
    store, name = store_and_profile(out.settings)
    log = AuditLog(store.root, name)
    entries = log.entries(cutoff(since))
    if out.settings.json:
        out.json({"profile": name, "path": str(log.path), "entries": list(entries)})
        return
    from cwsctl.core.text import printable

    count = 0
    for entry in entries:
        count += 1
        trust = (
            f"verified by {entry['signer']}"
            if entry.get("verified")
            else entry.get("error") or "NOT verified"
        )
        # The log is a file anyone with access may have edited: every field shown as plain text.
        time, method, path, status, trust = (
            printable(v, limit=None)
            for v in (entry["time"], entry["method"], entry["path"], entry["status"] or "-", trust)
        )
        out.line(f"{time}  {method:<6} {path}  {status}  {trust}  {entry['duration_ms']:.0f} ms")
    if not count:
        out.info(
            f"no audit entries for profile {name!r}" + (f" in the last {since}" if since else "")
        )

"""`cwsctl doctor`: find out why a setup fails, one check at a time."""

from __future__ import annotations

from typing import Annotated

import typer

from cwsctl.cli.common import passphrase_source
from cwsctl.cli.options import DoctorTimeoutOption, PassphraseFileOption, with_globals
from cwsctl.cli.output import Output
from cwsctl.cli.params import UrlPath
from cwsctl.core.errors import CwsError


class DoctorFoundProblems(CwsError):
    """Some checks failed; the exit status is the worst one's class."""


@with_globals
def doctor(
    out: Output,
    path: Annotated[
        str | None,
        typer.Option(
            "--path",
            metavar="PATH",
            parser=UrlPath(),
            help="Harmless endpoint to test with, a path on the profile's server "
            "[default: /ws/ on cws, the FHIR metadata on openemr, the template list on openehr].",
            show_default=False,
        ),
    ] = None,
    timeout: DoctorTimeoutOption = 10.0,
    passphrase_file: PassphraseFileOption = None,
) -> None:
    """Check config, profile, key (present, 0600, 0700 dir, readable), https, DNS, TLS, clock
    skew, and what the profile's kind needs: on cws, pinned server keys and a signed request whose
    response must verify; on openemr, the registered client, a token and an authenticated FHIR
    search (OpenEMR's answers carry no signature: only TLS protects them).

    Each check prints ✓ or ✗ with the fix. Exit status: the worst failure's class
    (3 local, 4 rejected, 5 server, 6 network/clock, 7 signature), 0 when all pass.
    """
    from cwsctl.core.checks import worst_exit_status
    from cwsctl.core.doctor import run_checks
    from cwsctl.core.profile import Store
    from cwsctl.core.text import printable
    from cwsctl.registry import kind_of

    checks = []
    for check in run_checks(
        Store(),
        out.settings.profile,
        passphrase_source(passphrase_file),
        kind_of=kind_of,
        path=path,
        timeout=timeout,
    ):
        checks.append(check)
        if out.settings.json or (out.settings.quiet and check.ok):
            continue
        mark = "✓" if check.ok else "✗"
        # Details quote servers and stored settings: one plain line each, wherever it goes.
        out.line(f"{mark} {check.name}: {printable(check.detail, limit=None)}")
        if check.fix:
            out.line(f"    fix: {printable(check.fix, limit=None)}")
    if out.settings.json:
        out.json({"ok": all(c.ok for c in checks), "checks": [c.to_json() for c in checks]})
    failures = [c for c in checks if not c.ok]
    if failures:
        error = DoctorFoundProblems(
            f"{len(failures)} check(s) failed: {', '.join(c.name for c in failures)}",
            hint=failures[0].fix,
        )
        error.exit_status = worst_exit_status(checks)
        raise error
    out.success("all checks passed")
